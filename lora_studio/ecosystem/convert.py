"""Lossless conversion of LoRA files between the kohya, diffusers/peft and ComfyUI formats.

Every file is read into one canonical form - per adapted layer its diffusers component and
module path, ``down`` (A), ``up`` (B), ``alpha`` and the DoRA magnitude - and written from
it. "Lossless" means every layer's update ``up @ down * alpha / rank`` (and its DoRA
magnitude) is the same after conversion:

* **alpha**: kohya and ComfyUI store it per module (``.alpha``). The diffusers format has no
  per-module alpha that all readers apply (diffusers reads its JSON ``lora_adapter_metadata``,
  ComfyUI and Forge ignore it and use scale 1), so writing diffusers folds ``alpha / rank``
  into ``lora_A`` - which is what diffusers assumes when a file says nothing (alpha = rank).
* **fused linears** (Flux's ``img_attn.qkv`` and ``linear1``, SD 3's ``attn.qkv``): writing
  native names stacks the q/k/v LoRAs' down matrices and places their up matrices
  block-diagonally (rank = the sum of the ranks); reading them splits a block-diagonal up
  back into the members' own LoRAs, else gives each member the shared down matrix and its
  rows of up - exact either way.
* What cannot be carried is said in :attr:`Conversion.notes`: DoRA magnitudes of a fused
  linear whose members were not all trained, ComfyUI's full ``.diff`` / ``.diff_b`` deltas,
  LyCORIS layer types (LoHa, LoKr...).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from lora_studio.core.atomic import atomic_write_bytes
from lora_studio.core.errors import OutputError
from lora_studio.ecosystem import naming
from lora_studio.ecosystem.lora_file import (
    DEFAULT_VERSIONS,
    FAMILIES,
    LoraFileError,
    adapter_metadata,
    diffusers_alpha,
    family_from_metadata,
    family_from_names,
    key_format,
    split_key,
)

if TYPE_CHECKING:
    import torch

FORMATS = ("kohya", "diffusers", "comfyui")


@dataclass
class LoraModule:
    """One adapted layer in canonical form.

    Attributes:
        component: ``denoiser``, ``text_encoder``, ``text_encoder_2``.
        path: the diffusers module path (text encoders from the CLIP root,
            ``text_model.encoder...``).
        down: ``(rank, in)`` or ``(rank, in, kh, kw)``.
        up: ``(out, rank)`` or ``(out, rank, 1, 1)``.
        alpha: scale = alpha / rank.
        magnitude: DoRA magnitude, ``(out,)``.
    """

    component: str
    path: str
    down: torch.Tensor
    up: torch.Tensor
    alpha: float
    magnitude: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def delta(self) -> torch.Tensor:
        """The weight update ``up @ down * alpha / rank`` (in float32, convolutions as
        ``(out, in * kh * kw)``)."""
        return (self.up.flatten(1).float() @ self.down.flatten(1).float()) * self.scale


@dataclass
class CanonicalLora:
    """A LoRA file read into canonical form."""

    family: str
    source_format: str
    modules: dict[tuple[str, str], LoraModule]
    metadata: dict[str, str]
    notes: list[str] = field(default_factory=list)


@dataclass
class Conversion:
    """The result of :func:`convert_file`."""

    path: Path
    source_format: str
    target_format: str
    family: str
    modules: int
    notes: list[str]


# ---- reading -----------------------------------------------------------------------------------


def load_lora(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a safetensors file."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise LoraFileError(f"{p} does not exist.")
    try:
        with safe_open(str(p), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types
        raise LoraFileError(f"{p} is not a readable safetensors file: {exc}") from None
    return tensors, metadata


def read_canonical(
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str],
    *,
    family: str | None = None,
) -> CanonicalLora:
    """Read a LoRA state dict in any of the three formats into canonical form.

    Raises:
        LoraFileError: unknown family, unknown layer types or names.
    """
    stems: dict[str, dict[str, torch.Tensor]] = {}
    other: list[str] = []
    for key, tensor in tensors.items():
        stem, part = split_key(key)
        if part:
            stems.setdefault(stem, {})[part] = tensor
        else:
            other.append(key)
    lycoris = [k for k in other if any(t in k for t in (".hada_", ".lokr_", ".oft_", ".w_norm"))]
    if lycoris:
        raise LoraFileError(
            f"The file holds LyCORIS layers ({lycoris[0]}...), which only LoRA layers "
            f"(down/up) can be converted to other formats."
        )
    fam = family or family_from_metadata(metadata)
    if not fam:
        shapes = {s: tuple(p["down"].shape) for s, p in stems.items() if "down" in p}
        fam = family_from_names(shapes)
    if fam not in FAMILIES:
        raise LoraFileError(
            "Cannot tell which model family this LoRA is for; give it with --family "
            "(sd15, sdxl, sd3, flux)."
        )
    formats = {key_format(stem) for stem in stems} - {"unknown"}
    source = formats.pop() if len(formats) == 1 else ("mixed" if formats else "unknown")
    lora = CanonicalLora(fam, source, {}, dict(metadata))
    if other:
        lora.notes.append(
            f"Left out {len(other)} tensors that are not LoRA layers (e.g. {other[0]})."
        )
    comfy_denoiser = {k: v for k, v in tensors.items() if k.startswith("diffusion_model.")}
    if comfy_denoiser:
        _read_comfy_denoiser(lora, comfy_denoiser, metadata)
    adapter_meta = adapter_metadata(metadata)
    for stem, parts in stems.items():
        if stem.startswith("diffusion_model."):
            continue
        if set(parts) <= {"diff", "diff_b"}:
            continue
        if "down" not in parts or "up" not in parts:
            lora.notes.append(f"Left out {stem}: it lacks its down or up weight.")
            continue
        if "mid" in parts:
            raise LoraFileError(f"{stem} is a LoCon layer with a mid weight (Tucker), not a LoRA.")
        alpha = (
            float(parts["alpha"].float().item())
            if "alpha" in parts
            else diffusers_alpha(adapter_meta, stem, int(parts["down"].shape[0]))
        )
        _add_stem(lora, stem, parts, alpha)
    if not lora.modules:
        raise LoraFileError("The file holds no LoRA layers.")
    return lora


def _add(lora: CanonicalLora, module: LoraModule) -> None:
    key = (module.component, module.path)
    if key in lora.modules:
        raise LoraFileError(f"The file holds two LoRAs for {module.component} {module.path}.")
    lora.modules[key] = module


def _magnitude(value: torch.Tensor | None) -> torch.Tensor | None:
    """DoRA magnitudes as peft keeps them for linears, ``(out,)``; kohya's ``(out, 1)``
    flattened. Convolutions keep their shape."""
    if value is None:
        return None
    if value.ndim == 2 and value.shape[1] == 1:
        return value.reshape(-1)
    return value


def _add_stem(
    lora: CanonicalLora, stem: str, parts: Mapping[str, torch.Tensor], alpha: float
) -> None:
    fam = lora.family
    down, up, magnitude = parts["down"], parts["up"], _magnitude(parts.get("magnitude"))
    fmt = key_format(stem)
    if fmt == "kohya":
        prefix, flat = _kohya_split(stem)
        if prefix == "lora_unet_":
            _add_native_denoiser(lora, naming.dotted(flat), down, up, alpha, magnitude, stem)
            return
        component = naming.kohya_te_component(prefix, fam)
        if component is None:
            raise LoraFileError(f"{stem}: {prefix} is no text encoder of a {fam} model.")
        path = naming.text_encoder_path(naming.dotted(flat))
        _add(lora, LoraModule(component, path, down, up, alpha, magnitude))
        return
    if fmt == "diffusers":
        head, _, path = stem.partition(".")
        if head in ("unet", "transformer"):
            _add(lora, LoraModule("denoiser", path, down, up, alpha, magnitude))
        else:
            path = naming.text_encoder_path(path)
            _add(lora, LoraModule(head, path, down, up, alpha, magnitude))
        return
    if fmt == "comfyui" and stem.startswith("text_encoders."):
        _, clip, rest = stem.split(".", 2)
        component = naming.comfy_component(clip, fam)
        if component is None:
            raise LoraFileError(f"{stem}: {clip} is no trainable text encoder of a {fam} model.")
        path = rest[len("transformer.") :] if rest.startswith("transformer.") else rest
        _add(
            lora, LoraModule(component, naming.text_encoder_path(path), down, up, alpha, magnitude)
        )
        return
    raise LoraFileError(f"{stem} is in no LoRA key format LoRA Studio knows.")


def _kohya_split(stem: str) -> tuple[str, str]:
    for prefix in ("lora_unet_", "lora_te1_", "lora_te2_", "lora_te_"):
        if stem.startswith(prefix):
            return prefix, stem[len(prefix) :]
    raise LoraFileError(f"{stem} is not a kohya key.")


def _add_native_denoiser(
    lora: CanonicalLora,
    path: str,
    down: torch.Tensor,
    up: torch.Tensor,
    alpha: float,
    magnitude: torch.Tensor | None,
    stem: str,
) -> None:
    """A denoiser module named as kohya or ComfyUI name it (dotted)."""
    fam = lora.family
    if fam in ("sd15", "sdxl"):
        if naming.is_sgm_path(path):
            try:
                path = naming.diffusers_unet_path(path, naming.UNET_LAYOUTS[fam])
            except ValueError as exc:
                raise LoraFileError(f"{stem}: {exc}.") from None
        _add(lora, LoraModule("denoiser", path, down, up, alpha, magnitude))
        return
    if path.startswith(("transformer_blocks.", "single_transformer_blocks.")):
        _add(lora, LoraModule("denoiser", path, down, up, alpha, magnitude))
        return
    try:
        members = naming.diffusers_dit_members(path, fam)
    except ValueError as exc:
        raise LoraFileError(f"{stem}: {exc}.") from None
    for module in _split(path, members, down, up, alpha, magnitude):
        _add(lora, module)


def _split(
    native: str,
    members: list[str],
    down: torch.Tensor,
    up: torch.Tensor,
    alpha: float,
    magnitude: torch.Tensor | None,
) -> list[LoraModule]:
    """The diffusers members' LoRAs of a (possibly fused) native module (module docstring)."""
    import torch

    if native in naming.SWAPPED:
        up = torch.cat(up.chunk(2, dim=0)[::-1], dim=0)
        if magnitude is not None:
            magnitude = torch.cat(magnitude.chunk(2, dim=0)[::-1], dim=0)
    if len(members) == 1:
        return [LoraModule("denoiser", members[0], down, up, alpha, magnitude)]
    width = int(down.shape[1])
    rows = [naming.fused_width(native, i, width) for i in range(len(members))]
    if sum(rows) != up.shape[0]:
        raise LoraFileError(
            f"{native}: the up weight has {up.shape[0]} rows, expected {sum(rows)} "
            f"({' + '.join(map(str, rows))})."
        )
    scale = alpha / down.shape[0]
    starts = [sum(rows[:i]) for i in range(len(rows))]
    used = []
    for start, n in zip(starts, rows, strict=True):
        block = up[start : start + n]
        used.append(torch.nonzero(block.abs().sum(dim=0)).flatten())
    disjoint = all(
        not set(a.tolist()) & set(b.tolist()) for i, a in enumerate(used) for b in used[i + 1 :]
    )
    out = []
    for index, (start, n) in enumerate(zip(starts, rows, strict=True)):
        block = up[start : start + n]
        mag = magnitude[start : start + n] if magnitude is not None else None
        if used[index].numel() == 0 and mag is None:
            continue  # an untrained member of the fused linear
        if disjoint and used[index].numel():
            cols = used[index]
            member_down, member_up = down[cols], block[:, cols]
            rank = int(cols.numel())
        else:
            member_down, member_up, rank = down, block, int(down.shape[0])
        out.append(
            LoraModule(
                "denoiser",
                members[index],
                member_down.contiguous(),
                member_up.contiguous(),
                scale * rank,
                mag.contiguous() if mag is not None else None,
            )
        )
    return out


def _read_comfy_denoiser(
    lora: CanonicalLora, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]
) -> None:
    """ComfyUI's ``diffusion_model.*`` layers: flattened convolutions are given their kernel
    shape back and ``.diff``/``.diff_b`` deltas noted (``backends.comfyui_lora``)."""
    from lora_studio.backends.comfyui_lora import comfy_lora_to_kohya

    fallback = DEFAULT_VERSIONS[lora.family]
    if lora.family == "sd15" and metadata.get("ss_base_model_version", "").startswith("sd_v2"):
        fallback = "sd_v2"
    has_lora = any(k.endswith((".lora_down.weight", ".lora_A.weight")) for k in tensors)
    if not has_lora:
        return
    plain = {}
    for key, value in tensors.items():
        # ComfyUI also reads peft-style lora_A/lora_B under its own names.
        plain[
            key.replace(".lora_A.weight", ".lora_down.weight").replace(
                ".lora_B.weight", ".lora_up.weight"
            )
        ] = value
    magnitudes = {
        k[: -len(".dora_scale")]: v for k, v in plain.items() if k.endswith(".dora_scale")
    }
    try:
        result = comfy_lora_to_kohya(plain, fallback_version=fallback)
    except ValueError as exc:
        raise LoraFileError(f"ComfyUI layers: {exc}.") from None
    lora.notes.extend(
        n for n in result.notes if not n.startswith(("Converted ", "Left out ", "Reshaped "))
    )
    lora.notes.extend(n for n in result.notes if n.startswith("Left out ") and "deltas" in n)
    stems: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in result.tensors.items():
        stem, part = split_key(key)
        stems.setdefault(stem, {})[part] = value
    for stem, parts in stems.items():
        _, flat = _kohya_split(stem)
        path = naming.dotted(flat)
        comfy_name = _comfy_name_of(path, lora.family)
        magnitude = _magnitude(magnitudes.get("diffusion_model." + comfy_name))
        _add_native_denoiser(
            lora, path, parts["down"], parts["up"], float(parts["alpha"].item()), magnitude, stem
        )


def _comfy_name_of(kohya_path: str, family: str) -> str:
    """The ComfyUI module name that ``comfy_lora_to_kohya`` turned into ``kohya_path``."""
    if family == "sd15" and not naming.is_sgm_path(kohya_path):
        try:
            return naming.native_unet_path(kohya_path, "sd15")
        except ValueError:
            return kohya_path
    return kohya_path


# ---- writing -----------------------------------------------------------------------------------


def to_format(lora: CanonicalLora, target: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The state dict of ``lora`` in ``target`` format, and notes on what changed."""
    if target == "diffusers":
        return _to_diffusers(lora)
    if target in ("kohya", "comfyui"):
        return _to_native(lora, target)
    raise LoraFileError(f"Unknown format {target!r}; use one of {', '.join(FORMATS)}.")


def _to_diffusers(lora: CanonicalLora) -> tuple[dict[str, torch.Tensor], list[str]]:
    out: dict[str, torch.Tensor] = {}
    folded = 0
    for module in lora.modules.values():
        prefix = naming.component_prefix(module.component, lora.family)
        name = f"{prefix}.{module.path}"
        down = module.down
        if module.scale != 1.0:
            down = down * module.scale
            folded += 1
        out[f"{name}.lora_A.weight"] = down.contiguous()
        out[f"{name}.lora_B.weight"] = module.up.contiguous()
        if module.magnitude is not None:
            out[f"{name}.lora_magnitude_vector"] = module.magnitude.contiguous()
    notes = []
    if folded:
        notes.append(
            f"alpha / rank folded into lora_A of {folded} layers: the diffusers format has no "
            f"per-layer alpha every reader applies (diffusers then assumes alpha = rank)."
        )
    return out, notes


def _to_native(lora: CanonicalLora, target: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    import torch

    fam = lora.family
    out: dict[str, torch.Tensor] = {}
    notes: list[str] = []
    fused: dict[str, dict[int, LoraModule]] = {}
    for module in lora.modules.values():
        if module.component == "denoiser":
            if fam in ("sd15", "sdxl"):
                path = module.path
                if fam == "sdxl" or target == "comfyui":
                    try:
                        path = naming.native_unet_path(path, fam)
                    except ValueError as exc:
                        raise LoraFileError(str(exc)) from None
                _put(
                    out,
                    _native_stem(path, target),
                    module.down,
                    module.up,
                    module.alpha,
                    _kohya_magnitude(module.magnitude),
                )
                continue
            try:
                native, member = naming.native_dit_name(module.path, fam)
            except ValueError as exc:
                raise LoraFileError(str(exc)) from None
            if member is None:
                up, magnitude = module.up, module.magnitude
                if native in naming.SWAPPED:
                    up = torch.cat(up.chunk(2, dim=0)[::-1], dim=0)
                    if magnitude is not None:
                        magnitude = torch.cat(magnitude.chunk(2, dim=0)[::-1], dim=0)
                _put(
                    out,
                    _native_stem(native, target),
                    module.down,
                    up,
                    module.alpha,
                    _kohya_magnitude(magnitude),
                )
            else:
                fused.setdefault(native, {})[member] = module
            continue
        if target == "kohya":
            prefix = naming.KOHYA_TE_PREFIX[fam].get(module.component)
            if prefix is None:
                raise LoraFileError(f"A {fam} kohya LoRA has no place for {module.component}.")
            stem = prefix + module.path.replace(".", "_")
        else:
            clip = naming.COMFY_CLIP[fam].get(module.component)
            if clip is None:
                raise LoraFileError(f"ComfyUI has no {module.component} in a {fam} model.")
            stem = f"text_encoders.{clip}.transformer.{module.path}"
        _put(out, stem, module.down, module.up, module.alpha, _kohya_magnitude(module.magnitude))
    for native, members in sorted(fused.items()):
        down, up, alpha, magnitude, note = _fuse(native, members)
        if note:
            notes.append(note)
        _put(out, _native_stem(native, target), down, up, alpha, _kohya_magnitude(magnitude))
    if fused:
        notes.append(
            f"{sum(len(m) for m in fused.values())} q/k/v LoRAs written as {len(fused)} exact "
            f"LoRAs on the fused linears (rank = the sum of the members' ranks)."
        )
    return out, notes


def _native_stem(path: str, target: str) -> str:
    if target == "kohya":
        return "lora_unet_" + path.replace(".", "_")
    return "diffusion_model." + path


def _kohya_magnitude(magnitude: torch.Tensor | None) -> torch.Tensor | None:
    """kohya/LyCORIS store a linear's DoRA magnitude as ``(out, 1)``."""
    if magnitude is None:
        return None
    return magnitude.reshape(-1, 1) if magnitude.ndim == 1 else magnitude


def _put(
    out: dict[str, torch.Tensor],
    stem: str,
    down: torch.Tensor,
    up: torch.Tensor,
    alpha: float,
    magnitude: torch.Tensor | None,
) -> None:
    import torch

    out[f"{stem}.lora_down.weight"] = down.contiguous()
    out[f"{stem}.lora_up.weight"] = up.contiguous()
    out[f"{stem}.alpha"] = torch.tensor(float(alpha), dtype=torch.float32)
    if magnitude is not None:
        out[f"{stem}.dora_scale"] = magnitude.contiguous()


def _fuse(
    native: str, members: Mapping[int, LoraModule]
) -> tuple[torch.Tensor, torch.Tensor, float, torch.Tensor | None, str]:
    """One exact LoRA on a fused linear from its members' LoRAs: downs stacked, ups
    block-diagonal; members whose scale differs from the first's get the ratio folded into
    their up."""
    import torch

    present = sorted(members)
    first = members[present[0]]
    width = int(first.down.shape[1])
    count = naming.fused_members(native)
    rows = [naming.fused_width(native, i, width) for i in range(count)]
    ranks = [members[m].rank for m in present]
    total = sum(ranks)
    scale = first.scale
    dtype = first.up.dtype
    down = torch.cat([members[m].down for m in present], dim=0)
    up = torch.zeros(sum(rows), total, dtype=dtype)
    column = 0
    for member, rank in zip(present, ranks, strict=True):
        block = members[member].up
        if block.shape[0] != rows[member]:
            raise LoraFileError(
                f"{native}: member {member} has {block.shape[0]} outputs, expected {rows[member]}."
            )
        ratio = members[member].scale / scale
        row = sum(rows[:member])
        up[row : row + rows[member], column : column + rank] = (
            block * ratio if ratio != 1 else block
        )
        column += rank
    magnitude = None
    note = ""
    if any(members[m].magnitude is not None for m in present):
        if present == list(range(count)) and all(members[m].magnitude is not None for m in present):
            magnitude = torch.cat([members[m].magnitude for m in present], dim=0)  # type: ignore[misc]
        else:
            note = (
                f"DoRA magnitudes of {native} cannot be carried: it fuses {count} layers and "
                f"not all of them were trained (the fused magnitude needs the base weights). "
                f"The diffusers format keeps them."
            )
    return down, up, scale * total, magnitude, note


# ---- files -------------------------------------------------------------------------------------


def output_metadata(
    lora: CanonicalLora, tensors: Mapping[str, torch.Tensor], target: str, notes: list[str]
) -> dict[str, str]:
    """The source metadata, kept, with what the conversion changes brought up to date."""
    from lora_studio.training.export import model_hashes

    meta = {
        k: v
        for k, v in lora.metadata.items()
        if k not in ("lora_adapter_metadata", "sshs_model_hash", "sshs_legacy_hash", "format")
    }
    meta.setdefault("ss_base_model_version", DEFAULT_VERSIONS[lora.family])
    if target == "diffusers":
        meta["format"] = "pt"
    if target != "diffusers" and "ss_network_dim" in meta:
        ranks = [int(t.shape[0]) for k, t in tensors.items() if k.endswith(".lora_down.weight")]
        if ranks:
            meta["ss_network_dim"] = str(max(set(ranks), key=ranks.count))
    meta["lora_studio.conversion"] = json.dumps(
        {"from": lora.source_format, "to": target, "family": lora.family, "notes": notes}
    )
    meta["sshs_model_hash"], meta["sshs_legacy_hash"] = model_hashes(tensors, meta)
    return meta


def convert_file(
    source: str | Path,
    target: str,
    out: str | Path,
    *,
    family: str | None = None,
    overwrite: bool = False,
) -> Conversion:
    """Convert the LoRA at ``source`` to ``target`` format (``kohya``, ``diffusers``,
    ``comfyui``) and write it to ``out``.

    Raises:
        LoraFileError: the file cannot be read or converted.
        OutputError: ``out`` exists (without ``overwrite``) or cannot be written.
    """
    from safetensors.torch import save

    if target not in FORMATS:
        raise LoraFileError(f"Unknown format {target!r}; use one of {', '.join(FORMATS)}.")
    out_path = Path(out)
    if out_path.is_dir():
        name = (
            "pytorch_lora_weights.safetensors"
            if target == "diffusers"
            else f"{Path(source).stem}_{target}.safetensors"
        )
        out_path = out_path / name
    if out_path.resolve() == Path(source).resolve():
        raise OutputError(f"{out_path} is the file being converted; choose another name.")
    if out_path.exists() and not overwrite:
        raise OutputError(f"{out_path} exists; pass --overwrite to replace it.")
    tensors, metadata = load_lora(source)
    lora = read_canonical(tensors, metadata, family=family)
    converted, notes = to_format(lora, target)
    notes = lora.notes + notes
    meta = output_metadata(lora, converted, target, notes)
    try:
        atomic_write_bytes(out_path, save(converted, metadata=meta))
    except OSError as exc:
        raise OutputError(f"Cannot write {out_path}: {exc.strerror or exc}.") from None
    return Conversion(out_path, lora.source_format, target, lora.family, len(lora.modules), notes)
