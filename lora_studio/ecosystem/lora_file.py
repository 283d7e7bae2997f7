"""What a LoRA ``.safetensors`` file is, from its header alone (no torch).

A safetensors file is an 8-byte little-endian header length, a JSON header (every
tensor's dtype, shape and byte range, and a ``__metadata__`` table of strings), then the
tensor bytes. Everything :func:`inspect_lora` reports comes from the header, except the
``.alpha`` scalars, whose few bytes are read directly.

The three key formats LoRA files come in:

* **kohya** (sd-scripts, Automatic1111/Forge, most shared LoRAs):
  ``lora_unet_<module with _>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``
  (``.dora_scale`` for DoRA); text encoders ``lora_te_`` (SD 1.x), ``lora_te1_`` /
  ``lora_te2_`` (SDXL, SD 3, Flux's CLIP-L).
* **diffusers** / peft (``save_lora_weights``, most diffusers training scripts):
  ``unet.`` / ``transformer.`` / ``text_encoder[_2].`` + the module path +
  ``.lora_A.weight`` / ``.lora_B.weight`` (``.lora_magnitude_vector`` for DoRA); no alpha
  tensors - diffusers assumes alpha = rank unless the ``lora_adapter_metadata`` JSON says
  otherwise.
* **comfyui**: ComfyUI's own module names, ``diffusion_model.<module>.lora_down.weight``
  (what its ``SaveLoRA`` node writes) and ``text_encoders.clip_l.transformer.<module>``
  for text encoders (the "generic" form of ``comfy/lora.py``'s key maps).
"""

from __future__ import annotations

import collections
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_studio.core.errors import LoraStudioError

#: tensor-name suffixes and what they are, in matching order (longest first).
SUFFIXES: tuple[tuple[str, str], ...] = (
    (".lora_magnitude_vector.weight", "magnitude"),
    (".lora_magnitude_vector", "magnitude"),
    (".lora_down.weight", "down"),
    (".lora_up.weight", "up"),
    (".lora_mid.weight", "mid"),
    (".lora_A.weight", "down"),
    (".lora_B.weight", "up"),
    (".lora.down.weight", "down"),
    (".lora.up.weight", "up"),
    (".dora_scale", "magnitude"),
    (".alpha", "alpha"),
    (".diff_b", "diff_b"),
    (".diff", "diff"),
)
#: kohya key prefixes -> diffusers component.
KOHYA_PREFIXES: dict[str, str] = {
    "lora_unet_": "denoiser",
    "lora_te_": "text_encoder",
    "lora_te1_": "text_encoder",
    "lora_te2_": "text_encoder_2",
}
DIFFUSERS_COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3")
#: ComfyUI's CLIP names -> diffusers component.
COMFY_CLIPS = {"clip_l": "text_encoder", "clip_g": "text_encoder_2"}
FAMILIES = ("sd15", "sdxl", "sd3", "flux")
#: kohya's ``ss_base_model_version`` when the file does not say.
DEFAULT_VERSIONS = {"sd15": "sd_v1", "sdxl": "sdxl_base_v1-0", "sd3": "sd3", "flux": "flux1"}

_DTYPES = {"F32": ("<f", 4), "F16": ("<e", 2), "F64": ("<d", 8)}


class LoraFileError(LoraStudioError):
    """A file is not a LoRA safetensors file LoRA Studio understands."""


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass
class SafetensorsHeader:
    """The header of a safetensors file: tensors by name and the metadata strings."""

    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_offset: int

    def read_scalar(self, name: str) -> float:
        """The value of a one-element tensor (e.g. a kohya ``.alpha``), read from disk."""
        info = self.tensors[name]
        with self.path.open("rb") as handle:
            handle.seek(self.data_offset + info.start)
            raw = handle.read(info.end - info.start)
        if info.dtype == "BF16":
            return float(struct.unpack("<f", b"\x00\x00" + raw[:2])[0])
        if info.dtype in _DTYPES:
            fmt, size = _DTYPES[info.dtype]
            return float(struct.unpack(fmt, raw[:size])[0])
        if info.dtype in ("I64", "I32", "I16", "I8", "U8"):
            size = {"I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1}[info.dtype]
            return float(int.from_bytes(raw[:size], "little", signed=info.dtype != "U8"))
        raise LoraFileError(f"{name} in {self.path} has an unexpected dtype {info.dtype}.")


def read_header(path: str | Path) -> SafetensorsHeader:
    """Read a safetensors header (a few kB) without loading any tensor.

    Raises:
        LoraFileError: the file is missing, unreadable or not safetensors.
    """
    p = Path(path)
    try:
        with p.open("rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise LoraFileError(f"{p} is not a safetensors file (it is too short).")
            (length,) = struct.unpack("<Q", head)
            if length > 100_000_000:
                raise LoraFileError(f"{p} is not a safetensors file (bad header length).")
            raw = handle.read(length)
    except FileNotFoundError:
        raise LoraFileError(f"{p} does not exist.") from None
    except OSError as exc:
        raise LoraFileError(f"{p} cannot be read: {exc.strerror or exc}.") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise LoraFileError(f"{p} is not a safetensors file (its header is not JSON).") from None
    if not isinstance(header, dict):
        raise LoraFileError(f"{p} is not a safetensors file.")
    metadata = {str(k): str(v) for k, v in (header.pop("__metadata__", None) or {}).items()}
    tensors: dict[str, TensorInfo] = {}
    for name, info in header.items():
        try:
            start, end = info["data_offsets"]
            tensors[name] = TensorInfo(str(info["dtype"]), tuple(info["shape"]), start, end)
        except (KeyError, TypeError, ValueError):
            raise LoraFileError(f"{p}: tensor {name!r} has a malformed header entry.") from None
    return SafetensorsHeader(p, tensors, metadata, 8 + length)


def split_key(key: str) -> tuple[str, str]:
    """``(module stem, part)`` of a LoRA tensor name: ``("lora_unet_x", "down")``;
    ``(key, "")`` for a tensor that is no known LoRA part."""
    for suffix, part in SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], part
    return key, ""


def key_format(stem: str) -> str:
    """``kohya``, ``diffusers``, ``comfyui`` or ``unknown`` for one module stem."""
    if any(stem.startswith(p) for p in KOHYA_PREFIXES):
        return "kohya"
    head = stem.split(".", 1)[0]
    if head in DIFFUSERS_COMPONENTS and "." in stem:
        return "diffusers"
    if head in ("diffusion_model", "text_encoders") and "." in stem:
        return "comfyui"
    return "unknown"


def stem_component(stem: str) -> str:
    """The diffusers component a module stem belongs to (``denoiser`` for the UNet or
    transformer, ``text_encoder``, ``text_encoder_2``...)."""
    for prefix, component in KOHYA_PREFIXES.items():
        if stem.startswith(prefix):
            return component
    parts = stem.split(".")
    if parts[0] in ("unet", "transformer", "diffusion_model"):
        return "denoiser"
    if parts[0] == "text_encoders" and len(parts) > 1:
        return COMFY_CLIPS.get(parts[1], parts[1])
    return parts[0]


@dataclass
class ModuleInfo:
    """One adapted layer: its stem in the file, component, rank, alpha, shape kind."""

    stem: str
    component: str
    rank: int
    alpha: float
    conv: bool
    dora: bool

    @property
    def scale(self) -> float:
        return self.alpha / self.rank if self.rank else 0.0


@dataclass
class LoraInfo:
    """What :func:`inspect_lora` tells about a LoRA file."""

    path: Path
    format: str
    family: str
    family_source: str
    base_model_version: str
    modules: list[ModuleInfo]
    target_modules: list[str]
    components: list[str]
    has_text_encoder: bool
    dora: bool
    metadata: dict[str, str]
    top_tags: list[tuple[str, int]]
    other_tensors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ranks(self) -> dict[int, int]:
        return dict(collections.Counter(m.rank for m in self.modules).most_common())

    @property
    def alphas(self) -> dict[float, int]:
        return dict(collections.Counter(m.alpha for m in self.modules).most_common())

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "format": self.format,
            "family": self.family,
            "family_source": self.family_source,
            "base_model_version": self.base_model_version,
            "module_count": len(self.modules),
            "ranks": {str(k): v for k, v in self.ranks.items()},
            "alphas": {_num(k): v for k, v in self.alphas.items()},
            "target_modules": self.target_modules,
            "components": self.components,
            "has_text_encoder": self.has_text_encoder,
            "dora": self.dora,
            "modules": [
                {
                    "name": m.stem,
                    "component": m.component,
                    "rank": m.rank,
                    "alpha": m.alpha,
                    "conv": m.conv,
                    "dora": m.dora,
                }
                for m in self.modules
            ],
            "top_tags": [[tag, count] for tag, count in self.top_tags],
            "metadata": self.metadata,
            "other_tensors": self.other_tensors,
            "notes": self.notes,
        }


def inspect_lora(path: str | Path, *, family: str | None = None, top: int = 20) -> LoraInfo:
    """Describe the LoRA at ``path`` from its header (see the module docstring).

    Args:
        family: the family to assume (``sd15``, ``sdxl``, ``sd3``, ``flux``) when the file
            does not tell.
        top: how many of the most frequent training tags to list.

    Raises:
        LoraFileError: not a safetensors file, or no LoRA layers in it.
    """
    header = read_header(path)
    groups: dict[str, dict[str, TensorInfo]] = {}
    other: list[str] = []
    for key, info in header.tensors.items():
        stem, part = split_key(key)
        if part:
            groups.setdefault(stem, {})[part] = info
        else:
            other.append(key)
    formats = collections.Counter(key_format(stem) for stem in groups)
    if not groups or set(formats) == {"unknown"}:
        kinds = ", ".join(sorted(other)[:3]) or "no tensors"
        raise LoraFileError(f"{header.path} holds no LoRA layers in a known format ({kinds}).")
    fmt = formats.most_common(1)[0][0] if len(formats) == 1 else "mixed"
    notes: list[str] = []
    if fmt == "mixed":
        notes.append(
            "The file mixes key formats: "
            + ", ".join(f"{n} {f}" for f, n in formats.most_common())
            + "."
        )
    adapter_meta = adapter_metadata(header.metadata)
    modules: list[ModuleInfo] = []
    for stem, parts in sorted(groups.items()):
        down = parts.get("down")
        if down is None or "up" not in parts:
            if set(parts) <= {"diff", "diff_b"}:
                other.extend(stem + "." + p for p in parts)
                continue
            notes.append(f"{stem} lacks its down or up weight.")
            continue
        rank = int(down.shape[0])
        component = stem_component(stem)
        if "alpha" in parts:
            alpha = header.read_scalar(stem + ".alpha")
        else:
            alpha = diffusers_alpha(adapter_meta, stem, rank)
        modules.append(
            ModuleInfo(stem, component, rank, alpha, len(down.shape) == 4, "magnitude" in parts)
        )
    if not modules:
        raise LoraFileError(f"{header.path} holds no complete LoRA layers.")
    fam, source = detect_family(header, modules, family)
    version = _base_model_version(header, fam, modules)
    components = sorted({m.component for m in modules}, key=_component_order)
    return LoraInfo(
        path=header.path,
        format=fmt,
        family=fam,
        family_source=source,
        base_model_version=version,
        modules=modules,
        target_modules=sorted({leaf_name(m.stem) for m in modules}),
        components=components,
        has_text_encoder=any(c.startswith("text_encoder") for c in components),
        dora=any(m.dora for m in modules),
        metadata=dict(header.metadata),
        top_tags=top_tags(header.metadata, top),
        other_tensors=sorted(other),
        notes=notes,
    )


def _component_order(name: str) -> tuple[int, str]:
    return (0 if name == "denoiser" else 1, name)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def adapter_metadata(metadata: Mapping[str, str]) -> dict[str, Any]:
    """diffusers' ``lora_adapter_metadata`` JSON (peft config per component), or ``{}``."""
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def diffusers_alpha(adapter_meta: Mapping[str, Any], stem: str, rank: int) -> float:
    """The alpha diffusers applies to a peft-format module: ``lora_adapter_metadata``'s
    ``alpha_pattern`` / ``lora_alpha`` for the stem's component, else the rank."""
    head, _, module = stem.partition(".")
    pattern = adapter_meta.get(f"{head}.alpha_pattern") or {}
    if isinstance(pattern, dict):
        for key, value in pattern.items():
            if module == key or module.endswith("." + key):
                return float(value)
    alpha = adapter_meta.get(f"{head}.lora_alpha")
    return float(alpha) if alpha is not None else float(rank)


#: leaf module names, longest first, for naming the targets of kohya keys.
_LEAVES = (
    "q_proj",
    "k_proj",
    "v_proj",
    "out_proj",
    "ff_context_net_0_proj",
    "ff_context_net_2",
    "norm1_context_linear",
    "ff_net_0_proj",
    "ff_net_2",
    "norm1_linear",
    "norm_linear",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
    "to_out_0",
    "proj_mlp",
    "proj_in",
    "proj_out",
    "mlp_fc1",
    "mlp_fc2",
    "img_attn_qkv",
    "img_attn_proj",
    "txt_attn_qkv",
    "txt_attn_proj",
    "img_mlp_0",
    "img_mlp_2",
    "txt_mlp_0",
    "txt_mlp_2",
    "img_mod_lin",
    "txt_mod_lin",
    "modulation_lin",
    "attn_qkv",
    "attn_proj",
    "attn2_qkv",
    "attn2_proj",
    "mlp_fc1",
    "time_emb_proj",
    "conv_shortcut",
    "skip_connection",
    "in_layers_2",
    "out_layers_3",
    "emb_layers_1",
    "to_q",
    "to_k",
    "to_v",
    "linear1",
    "linear2",
    "conv1",
    "conv2",
)


def leaf_name(stem: str) -> str:
    """The target-module name of a stem: ``to_q``, ``to_out.0``, ``img_attn.qkv``..."""
    body = stem
    for prefix in KOHYA_PREFIXES:
        if body.startswith(prefix):
            for leaf in _LEAVES:
                if body.endswith("_" + leaf):
                    return leaf
            return body.rsplit("_", 1)[-1]
    parts = body.split(".")
    if len(parts) >= 2 and parts[-1].isdigit():
        return ".".join(parts[-2:])
    if len(parts) >= 2 and (
        parts[-2] in ("img_attn", "txt_attn", "img_mod", "txt_mod", "modulation")
        or (parts[-1] in ("qkv", "proj") and parts[-2] in ("attn", "attn2"))
    ):
        return ".".join(parts[-2:])
    return parts[-1]


# ---- family ---------------------------------------------------------------------------------


def family_from_metadata(metadata: Mapping[str, str]) -> str | None:
    """The family the metadata names (kohya's ``ss_base_model_version``, model-spec
    ``modelspec.architecture``, LoRA Studio's own config), or ``None``."""
    version = metadata.get("ss_base_model_version", "").lower()
    if version:
        if version.startswith(("sd_v1", "sd_v2", "v1", "v2")):
            return "sd15"
        if version.startswith("sdxl"):
            return "sdxl"
        if version.startswith("sd3"):
            return "sd3"
        if version.startswith("flux"):
            return "flux"
    arch = metadata.get("modelspec.architecture", "").lower()
    for marker, fam in (
        ("stable-diffusion-xl", "sdxl"),
        ("stable-diffusion-v1", "sd15"),
        ("stable-diffusion-v2", "sd15"),
        ("stable-diffusion-3", "sd3"),
        ("flux", "flux"),
    ):
        if marker in arch:
            return fam
    raw = metadata.get("lora_studio.config")
    if raw:
        try:
            fam = json.loads(raw).get("family")
        except (ValueError, AttributeError):
            fam = None
        if fam in FAMILIES:
            return str(fam)
    return None


def detect_family(
    header: SafetensorsHeader, modules: list[ModuleInfo], given: str | None = None
) -> tuple[str, str]:
    """``(family, how it was told)``: ``given``, the metadata, or the layer names and sizes;
    ``("unknown", ...)`` when nothing tells."""
    if given:
        if given not in FAMILIES:
            raise LoraFileError(f"Unknown family {given!r}; use one of {', '.join(FAMILIES)}.")
        return given, "given"
    from_meta = family_from_metadata(header.metadata)
    if from_meta:
        return from_meta, "metadata"
    fam = family_from_names(
        {m.stem: header.tensors[_down_key(header, m.stem)].shape for m in modules}
    )
    return (fam, "layer names") if fam else ("unknown", "nothing tells")


def _down_key(header: SafetensorsHeader, stem: str) -> str:
    for suffix, part in SUFFIXES:
        if part == "down" and stem + suffix in header.tensors:
            return stem + suffix
    raise KeyError(stem)


#: cross-attention width (the in-features of attn2.to_k) -> family
_CONTEXT_WIDTH = {768: "sd15", 1024: "sd15", 2048: "sdxl"}


def family_from_names(down_shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """The family that the module names (and the down-weight shapes) point to."""
    norm = {stem.replace(".", "_"): shape for stem, shape in down_shapes.items()}
    names = list(norm)

    def has(*markers: str) -> bool:
        return any(marker in name for name in names for marker in markers)

    if has("double_blocks_", "single_blocks_", "single_transformer_blocks_", "guidance_embedder"):
        return "flux"
    dit_markers = ("joint_blocks_", "_x_block_", "_context_block_", "pos_embed_proj", "_attn2_to_")
    if has(*dit_markers) and not has(
        "down_blocks_", "up_blocks_", "input_blocks_", "output_blocks_"
    ):
        return "sd3"
    unet = has("down_blocks_", "up_blocks_", "mid_block_", "input_blocks_", "output_blocks_")
    if unet:
        for name, shape in norm.items():
            if name.endswith("attn2_to_k") and len(shape) >= 2:
                found = _CONTEXT_WIDTH.get(int(shape[1]))
                if found:
                    return found
        if has("lora_te2_", "text_encoder_2", "clip_g", "label_emb", "add_embedding"):
            return "sdxl"
        if has("transformer_blocks_1_"):
            return "sdxl"  # several transformer layers in one block: only SDXL has them
        if has("down_blocks_0_attentions", "input_blocks_1_1_", "input_blocks_2_1_"):
            return "sd15"  # SD 1.x has attention in its first level; SDXL does not
        return "sd15" if has("down_blocks_3", "input_blocks_10", "input_blocks_11") else "sdxl"
    if has("transformer_"):
        # A diffusers DiT LoRA: SD 3's last block has no context output (to_add_out).
        add_q = {_block(n) for n in names if "_attn_add_q_proj" in n}
        add_out = {_block(n) for n in names if "_attn_to_add_out" in n}
        if add_out and add_q and max(add_q) not in add_out:
            return "sd3"
        widths = {int(s[1]) for n, s in norm.items() if n.endswith("_attn_to_q") and len(s) > 1}
        if 3072 in widths:
            return "flux"
        if widths & {1536, 2432}:
            return "sd3"
        if has("text_encoder_2"):
            return "sd3"
        if add_out:
            return "flux"
    if has("lora_te_") and not has("lora_te2_"):
        return "sd15"
    return None


def _block(name: str) -> int:
    marker = "transformer_blocks_"
    rest = name[name.index(marker) + len(marker) :]
    digits = rest.split("_", 1)[0]
    return int(digits) if digits.isdigit() else -1


def _base_model_version(header: SafetensorsHeader, family: str, modules: list[ModuleInfo]) -> str:
    version = header.metadata.get("ss_base_model_version")
    if version:
        return version
    if family == "sd15":
        # SD 2.x cross-attends to OpenCLIP-H's 1024-wide states, SD 1.x to CLIP-L's 768.
        for module in modules:
            if module.stem.replace(".", "_").endswith("attn2_to_k"):
                shape = header.tensors[_down_key(header, module.stem)].shape
                if len(shape) == 2 and shape[1] == 1024:
                    return "sd_v2"
                break
    return DEFAULT_VERSIONS.get(family, "unknown")


def top_tags(metadata: Mapping[str, str], count: int = 20) -> list[tuple[str, int]]:
    """The ``count`` most frequent tags of ``ss_tag_frequency`` (summed over folders)."""
    raw = metadata.get("ss_tag_frequency")
    if not raw:
        return []
    try:
        data = json.loads(raw)
    except ValueError:
        return []
    totals: collections.Counter[str] = collections.Counter()
    if isinstance(data, dict):
        for tags in data.values():
            if isinstance(tags, dict):
                for tag, n in tags.items():
                    try:
                        totals[str(tag).strip()] += int(n)
                    except (TypeError, ValueError):
                        continue
    return sorted(totals.items(), key=lambda item: (-item[1], item[0]))[:count]


def format_report(info: LoraInfo) -> str:
    """A human-readable summary of :func:`inspect_lora`'s result."""
    lines = [
        f"{info.path}",
        f"  format:         {info.format}",
        f"  family:         {info.family} (from {info.family_source})",
        f"  base model:     {info.base_model_version}",
        f"  modules:        {len(info.modules)}"
        + (
            f" ({sum(m.conv for m in info.modules)} convolutions)"
            if any(m.conv for m in info.modules)
            else ""
        ),
        "  ranks:          " + ", ".join(f"{r} x{n}" for r, n in info.ranks.items()),
        "  alphas:         " + ", ".join(f"{_num(a)} x{n}" for a, n in info.alphas.items()),
        "  targets:        " + ", ".join(info.target_modules),
        "  parts:          " + ", ".join(info.components),
        f"  text encoder:   {'yes' if info.has_text_encoder else 'no'}",
        f"  DoRA:           {'yes' if info.dora else 'no'}",
    ]
    if info.other_tensors:
        lines.append(f"  other tensors:  {len(info.other_tensors)} (e.g. {info.other_tensors[0]})")
    if info.top_tags:
        lines.append("  top tags:       " + ", ".join(f"{t} ({n})" for t, n in info.top_tags))
    if info.metadata:
        lines.append("  metadata:")
        for key in sorted(info.metadata):
            if key == "ss_tag_frequency":
                continue
            value = info.metadata[key]
            if len(value) > 120:
                value = value[:117] + "..."
            lines.append(f"    {key} = {value}")
    for note in info.notes:
        lines.append(f"  note: {note}")
    return "\n".join(lines)
