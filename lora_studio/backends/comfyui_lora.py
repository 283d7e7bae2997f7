"""ComfyUI's trained-LoRA files, converted to the kohya format other tools load.

ComfyUI's ``TrainLoraNode`` puts an adapter on every layer of the diffusion model and
``SaveLoRA`` writes them under ComfyUI's internal module names:

* ``diffusion_model.<module>.lora_down.weight``, ``.lora_up.weight`` and a scalar
  ``.alpha`` for every weight with two or more dimensions. A convolution's ``lora_down``
  is stored flattened, ``[rank, in_channels * kh * kw]``, and its ``lora_up`` as
  ``[out, rank]`` (ComfyUI reshapes the product to the weight's shape when it applies it);
* ``diffusion_model.<module>.diff``: a full delta of a one-dimensional weight (norms);
* ``diffusion_model.<module>.diff_b``: a full delta of a bias.

The module names are those of ComfyUI's own model classes: the original LDM/SGM UNet
(``input_blocks.1.1.transformer_blocks.0.attn1.to_q``) for SD 1.x, 2.x and SDXL, BFL's
names for Flux, SAI's MMDiT names for SD 3.x.

:func:`comfy_lora_to_kohya` writes what kohya's sd-scripts itself writes for the family,
behind ``lora_unet_``: diffusers module names for SD 1.x/2.x, the SGM names for SDXL, the
original names for Flux and SD 3. Convolutions get kohya's shapes back
(``[rank, in, kh, kw]`` and ``[out, rank, 1, 1]``); their kernel sizes are not in the file,
so they come from the architecture (3x3 resnet, sampler and in/out convolutions; 1x1
shortcuts, and SD 1.x's transformer projections). The kohya format has no place for the
full ``.diff``/``.diff_b`` deltas: they are left out, and the notes say how many there were
and how large the largest change was. The renaming and the per-module ``.alpha`` go
through :func:`lora_studio.training.export.kohya_lora_keys`, as for local runs.

torch is imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

PREFIX = "diffusion_model."

_LORA_DOWN = ".lora_down.weight"
_LORA_UP = ".lora_up.weight"
_ALPHA = ".alpha"
_DIFF = ".diff"
_DIFF_B = ".diff_b"
_KNOWN_OTHER = (".lora_mid.weight", ".dora_scale", ".reshape_weight")

#: SGM/LDM UNet layers that are 3x3 convolutions: conv_in, the resnets' two convolutions,
#: the downsamplers (``op``), the upsamplers (``output_blocks.N.1|2.conv``) and conv_out.
_UNET_3X3 = re.compile(
    r"^input_blocks\.0\.0$|\.in_layers\.2$|\.out_layers\.3$|\.op$"
    r"|^output_blocks\.\d+\.[12]\.conv$|^out\.2$"
)
#: 1x1 convolutions: the resnets' channel-changing shortcuts.
_UNET_1X1 = re.compile(r"\.skip_connection$")
#: The transformers' projections: 1x1 convolutions in SD 1.x, linear layers in SD 2.x/SDXL.
_UNET_PROJ = re.compile(r"\.proj_(in|out)$")
#: Patch embeddings of the MMDiT (SD 3.x): a 2x2 convolution.
_MMDIT_CONV = {"x_embedder.proj": (2, 2)}

_RESNET_PARTS = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
_UNET_TOP = {
    "input_blocks.0.0": "conv_in",
    "time_embed.0": "time_embedding.linear_1",
    "time_embed.2": "time_embedding.linear_2",
    "label_emb.0.0": "add_embedding.linear_1",
    "label_emb.0.2": "add_embedding.linear_2",
    "out.0": "conv_norm_out",
    "out.2": "conv_out",
}
_CONTEXT_VERSIONS = {768: "sd_v1", 1024: "sd_v2", 2048: "sdxl_base_v1-0"}
_UNET_VERSIONS = frozenset({"sd_v1", "sd_v2", "sdxl_base_v1-0"})


@dataclass
class KohyaConversion:
    """The result of :func:`comfy_lora_to_kohya`.

    Attributes:
        tensors: the kohya state dict (``lora_unet_...``).
        base_model_version: kohya's ``ss_base_model_version`` as told by the layer names
            and sizes (``sd_v1``, ``sd_v2``, ``sdxl_base_v1-0``, ``sd3``, ``flux1``), or the
            fallback given.
        rank: the LoRA rank (the most common one, should they differ).
        alpha: the LoRA alpha (scale = alpha / rank; ComfyUI trains with alpha 1).
        modules: how many layers carry a LoRA.
        conv_modules: how many of them are convolutions.
        notes: one line each, for the user: what was reshaped, what was left out.
    """

    tensors: dict[str, torch.Tensor]
    base_model_version: str
    rank: int
    alpha: float
    modules: int
    conv_modules: int
    notes: list[str] = field(default_factory=list)


@dataclass
class _Module:
    down: torch.Tensor | None = None
    up: torch.Tensor | None = None
    alpha: float | None = None


def comfy_lora_to_kohya(
    state: Mapping[str, torch.Tensor], *, fallback_version: str = ""
) -> KohyaConversion:
    """Convert a ComfyUI-trained LoRA state dict to kohya keys (see the module docstring).

    Args:
        state: the tensors of the file ``SaveLoRA`` wrote.
        fallback_version: ``ss_base_model_version`` to assume when the layers do not tell
            (e.g. a UNet whose cross-attention width is none of SD's).

    Raises:
        ValueError: the file holds no LoRA layers at all (the message says what it holds).
    """
    from lora_studio.training.export import kohya_lora_keys

    modules: dict[str, _Module] = {}
    diffs: list[torch.Tensor] = []
    bias_diffs: list[torch.Tensor] = []
    other: list[str] = []
    for key, tensor in state.items():
        if not key.startswith(PREFIX):
            other.append(key)
            continue
        body = key[len(PREFIX) :]
        if body.endswith(_LORA_DOWN):
            modules.setdefault(body[: -len(_LORA_DOWN)], _Module()).down = tensor
        elif body.endswith(_LORA_UP):
            modules.setdefault(body[: -len(_LORA_UP)], _Module()).up = tensor
        elif body.endswith(_ALPHA):
            modules.setdefault(body[: -len(_ALPHA)], _Module()).alpha = float(tensor.item())
        elif body.endswith(_DIFF_B):
            bias_diffs.append(tensor)
        elif body.endswith(_DIFF):
            diffs.append(tensor)
        else:
            other.append(key)
    complete = {name: m for name, m in modules.items() if m.down is not None and m.up is not None}
    other += [PREFIX + name for name in modules if name not in complete]
    if not complete:
        kinds = ", ".join(sorted({_kind(k) for k in state})) or "nothing"
        raise ValueError(f"the file has no LoRA layers (it holds {kinds})")

    arch, version = _architecture(complete, fallback_version)
    blocks = _layers_per_block(complete) if arch == "unet" else 0
    groups: dict[float, dict[str, torch.Tensor]] = collections.defaultdict(dict)
    ranks: collections.Counter[int] = collections.Counter()
    alphas: collections.Counter[float] = collections.Counter()
    conv_count = 0
    flat_kept: list[str] = []
    renamed_kept: list[str] = []
    for name, module in complete.items():
        assert module.down is not None and module.up is not None
        down, up = module.down, module.up
        rank = int(down.shape[0])
        alpha = module.alpha if module.alpha is not None else float(rank)
        kernel = _conv_kernel(name, arch, version)
        if kernel is not None and down.ndim == 2:
            kh, kw = kernel
            if down.shape[1] % (kh * kw) == 0:
                down = down.reshape(rank, down.shape[1] // (kh * kw), kh, kw)
                up = up.reshape(up.shape[0], rank, 1, 1)
                conv_count += 1
            else:
                flat_kept.append(name)
        elif down.ndim == 4:
            conv_count += 1
        target = name
        if arch == "unet" and version in ("sd_v1", "sd_v2"):
            mapped = _ldm_to_diffusers(name, blocks)
            if mapped is None:
                renamed_kept.append(name)
            else:
                target = mapped
        groups[alpha][f"{target}.lora_A.weight"] = down
        groups[alpha][f"{target}.lora_B.weight"] = up
        ranks[rank] += 1
        alphas[alpha] += 1

    tensors: dict[str, torch.Tensor] = {}
    for alpha, peft_state in groups.items():
        tensors.update(kohya_lora_keys(peft_state, "lora_unet_", alpha=alpha))

    notes = [
        f"Converted {len(complete)} LoRA layers from ComfyUI's names to kohya's "
        f"({_naming(arch, version)})."
    ]
    if conv_count:
        notes.append(
            f"Reshaped {conv_count} convolution LoRAs from ComfyUI's flattened "
            f"[rank, in x kh x kw] layout to kohya's [rank, in, kh, kw]."
        )
    if flat_kept:
        notes.append(
            f"{len(flat_kept)} convolution LoRAs did not fit their kernel size and stay "
            f"flattened (e.g. {flat_kept[0]}); other tools may not load those layers."
        )
    if renamed_kept:
        notes.append(
            f"{len(renamed_kept)} layers have no diffusers name and keep ComfyUI's "
            f"(e.g. {renamed_kept[0]})."
        )
    left_out = _left_out_note(diffs, bias_diffs)
    if left_out:
        notes.append(left_out)
    if other:
        notes.append(
            f"Left out {len(other)} tensors that are not LoRA layers the kohya format knows "
            f"(e.g. {other[0]})."
        )
    return KohyaConversion(
        tensors=tensors,
        base_model_version=version,
        rank=ranks.most_common(1)[0][0],
        alpha=alphas.most_common(1)[0][0],
        modules=len(complete),
        conv_modules=conv_count,
        notes=notes,
    )


def _left_out_note(diffs: list[torch.Tensor], bias_diffs: list[torch.Tensor]) -> str:
    count = len(diffs) + len(bias_diffs)
    if not count:
        return ""
    largest = max(
        float(t.detach().abs().max().float()) if t.numel() else 0.0 for t in diffs + bias_diffs
    )
    size = (
        "all of them zero, so nothing is lost"
        if largest == 0.0
        else f"the largest single change is {largest:.3g}; the LoRA works without them, "
        f"slightly weaker than inside ComfyUI"
    )
    return (
        f"Left out {count} full-weight deltas ComfyUI also trained ({len(diffs)} norm weights "
        f"'.diff', {len(bias_diffs)} biases '.diff_b'): the kohya LoRA format has no place "
        f"for them ({size})."
    )


def _kind(key: str) -> str:
    for suffix in (_LORA_DOWN, _LORA_UP, _ALPHA, _DIFF_B, _DIFF, *_KNOWN_OTHER):
        if key.endswith(suffix):
            return suffix.lstrip(".")
    return key.rsplit(".", 1)[-1]


def _architecture(modules: Mapping[str, _Module], fallback: str) -> tuple[str, str]:
    """``(arch, ss_base_model_version)`` from the layer names and sizes."""
    names = list(modules)
    if any(n.startswith(("double_blocks.", "single_blocks.")) for n in names):
        return "flux", "flux1"
    if any(n.startswith("joint_blocks.") for n in names):
        return "mmdit", "sd3"
    if not any(n.startswith(("input_blocks.", "middle_block.", "output_blocks.")) for n in names):
        return "other", fallback
    if any(n.startswith("label_emb.") for n in names):
        return "unet", "sdxl_base_v1-0"
    for name, module in modules.items():
        if name.endswith(".attn2.to_k") and module.down is not None:
            found = _CONTEXT_VERSIONS.get(int(module.down.shape[-1]))
            if found:
                return "unet", found
            break
    return "unet", fallback if fallback in _UNET_VERSIONS else "sd_v1"


def _conv_kernel(name: str, arch: str, version: str) -> tuple[int, int] | None:
    """The kernel size of layer ``name`` when it is a convolution, else ``None``."""
    if arch == "unet":
        if _UNET_3X3.search(name):
            return (3, 3)
        if _UNET_1X1.search(name):
            return (1, 1)
        if _UNET_PROJ.search(name) and version == "sd_v1":
            return (1, 1)
        return None
    if arch == "mmdit":
        return _MMDIT_CONV.get(name)
    return None


def _layers_per_block(modules: Mapping[str, _Module]) -> int:
    """Resnets per UNet level: the first downsampler sits right after them."""
    downsamplers = [
        int(m.group(1)) for n in modules if (m := re.match(r"^input_blocks\.(\d+)\.0\.op$", n))
    ]
    if downsamplers:
        return min(downsamplers) - 1
    upsamplers = [
        int(m.group(1))
        for n in modules
        if (m := re.match(r"^output_blocks\.(\d+)\.[12]\.conv$", n))
    ]
    return min(upsamplers) if upsamplers else 2


def _ldm_to_diffusers(name: str, layers_per_block: int) -> str | None:
    """The diffusers module name of an LDM/SGM UNet layer (``None`` when unknown)."""
    if name in _UNET_TOP:
        return _UNET_TOP[name]
    parts = name.split(".")
    per_level = layers_per_block + 1
    try:
        if parts[0] == "input_blocks" and len(parts) > 3:
            level, index = divmod(int(parts[1]) - 1, per_level)
            rest = ".".join(parts[3:])
            if parts[2] == "0" and rest == "op":
                return f"down_blocks.{level}.downsamplers.0.conv"
            if parts[2] == "0" and rest in _RESNET_PARTS:
                return f"down_blocks.{level}.resnets.{index}.{_RESNET_PARTS[rest]}"
            if parts[2] == "1":
                return f"down_blocks.{level}.attentions.{index}.{rest}"
        elif parts[0] == "middle_block" and len(parts) > 2:
            block, rest = int(parts[1]), ".".join(parts[2:])
            if block in (0, 2) and rest in _RESNET_PARTS:
                return f"mid_block.resnets.{block // 2}.{_RESNET_PARTS[rest]}"
            if block == 1:
                return f"mid_block.attentions.0.{rest}"
        elif parts[0] == "output_blocks" and len(parts) > 3:
            level, index = divmod(int(parts[1]), per_level)
            rest = ".".join(parts[3:])
            if parts[2] in ("1", "2") and rest == "conv":
                return f"up_blocks.{level}.upsamplers.0.conv"
            if parts[2] == "0" and rest in _RESNET_PARTS:
                return f"up_blocks.{level}.resnets.{index}.{_RESNET_PARTS[rest]}"
            if parts[2] == "1":
                return f"up_blocks.{level}.attentions.{index}.{rest}"
    except ValueError:
        return None
    return None


def _naming(arch: str, version: str) -> str:
    if arch == "unet":
        return "diffusers layer names" if version in ("sd_v1", "sd_v2") else "SGM layer names"
    if arch == "flux":
        return "Flux's original layer names"
    if arch == "mmdit":
        return "SD 3's original layer names"
    return "ComfyUI's layer names"


def version_for_family(family: str) -> str:
    """kohya's ``ss_base_model_version`` of a :class:`~lora_studio.core.config.ModelFamily`
    value (the fallback when a file's layers do not tell)."""
    return {"sd15": "sd_v1", "sdxl": "sdxl_base_v1-0", "sd3": "sd3", "flux": "flux1"}.get(
        family, ""
    )
