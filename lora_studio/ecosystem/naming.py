"""Module names of each family in each LoRA format, and the mapping between them.

The common ground is diffusers' module path (``down_blocks.1.attentions.0...attn1.to_q``,
``transformer_blocks.0.attn.to_q``, ``text_model.encoder.layers.0.self_attn.q_proj``).
The "native" names are those of the original model code, which kohya's sd-scripts (for
SDXL, SD 3, Flux) and ComfyUI (always) use:

* SD 1.x/2.x and SDXL: the LDM/SGM UNet, ``input_blocks.4.1.transformer_blocks.0...``
  (:func:`lora_studio.training.families.sdxl.sgm_module_path` and its inverse here).
  kohya names SD 1.x modules with diffusers paths, SDXL ones with SGM paths.
* Flux: Black Forest Labs' ``double_blocks.N.img_attn.qkv``..., where q, k, v (and, in
  single blocks, the MLP input) are one fused linear (:data:`FLUX_DOUBLE`...).
* SD 3: SAI's MMDiT, ``joint_blocks.N.x_block.attn.qkv``..., q/k/v fused likewise
  (the table ComfyUI's ``comfy/utils.py`` ``mmdit_to_diffusers`` builds).

Everything here is string work; no torch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from lora_studio.training.families.sdxl import SDXL_LAYOUT, UNetLayout, sgm_module_path

#: the diffusers component name of the denoiser, per family.
DENOISER = {"sd15": "unet", "sdxl": "unet", "sd3": "transformer", "flux": "transformer"}
#: the trainable text encoders, per family (diffusers component names).
TEXT_ENCODERS: dict[str, tuple[str, ...]] = {
    "sd15": ("text_encoder",),
    "sdxl": ("text_encoder", "text_encoder_2"),
    "sd3": ("text_encoder", "text_encoder_2"),
    "flux": ("text_encoder",),
}
#: kohya's text-encoder prefixes per family (sd-scripts: ``lora_te_`` for SD 1.x,
#: ``lora_te1_``/``lora_te2_`` for SDXL and SD 3, ``lora_te1_`` for Flux's CLIP-L).
KOHYA_TE_PREFIX: dict[str, dict[str, str]] = {
    "sd15": {"text_encoder": "lora_te_"},
    "sdxl": {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"},
    "sd3": {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"},
    "flux": {"text_encoder": "lora_te1_"},
}
#: ComfyUI's CLIP names (``text_encoders.<clip>.transformer.<module>``).
COMFY_CLIP: dict[str, dict[str, str]] = {
    "sd15": {"text_encoder": "clip_l"},
    "sdxl": {"text_encoder": "clip_l", "text_encoder_2": "clip_g"},
    "sd3": {"text_encoder": "clip_l", "text_encoder_2": "clip_g"},
    "flux": {"text_encoder": "clip_l"},
}

#: SD 1.5's UNet layout (four levels of two resnets, attention in the first three).
SD15_LAYOUT = UNetLayout((2, 2, 2, 2), (False, True, True, True))
UNET_LAYOUTS = {"sd15": SD15_LAYOUT, "sdxl": SDXL_LAYOUT}

# ---- underscores back to dots -----------------------------------------------------------------

#: module-name parts that contain an underscore, so that ``a_b_c`` can be split back into the
#: dotted path kohya flattened (kohya: ``path.replace(".", "_")``).
_WORDS = frozenset(
    {
        # diffusers UNet
        "down_blocks", "up_blocks", "mid_block", "transformer_blocks", "to_q", "to_k", "to_v",
        "to_out", "proj_in", "proj_out", "time_emb_proj", "conv_shortcut", "conv_in",
        "conv_out", "conv_norm_out", "time_embedding", "linear_1", "linear_2", "add_embedding",
        # diffusers DiT
        "single_transformer_blocks", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
        "norm1_context", "ff_context", "proj_mlp", "context_embedder", "x_embedder",
        "time_text_embed", "timestep_embedder", "guidance_embedder", "text_embedder",
        "norm_out", "pos_embed",
        # CLIP
        "text_model", "self_attn", "q_proj", "k_proj", "v_proj", "out_proj", "final_layer_norm",
        "layer_norm1", "layer_norm2", "text_projection",
        # SGM UNet
        "input_blocks", "middle_block", "output_blocks", "in_layers", "out_layers",
        "emb_layers", "skip_connection", "label_emb", "time_embed",
        # Flux (BFL) and SD 3 (MMDiT)
        "double_blocks", "single_blocks", "img_attn", "txt_attn", "img_mlp", "txt_mlp",
        "img_mod", "txt_mod", "img_in", "txt_in", "time_in", "vector_in", "guidance_in",
        "in_layer", "out_layer", "final_layer", "joint_blocks", "x_block", "context_block",
        "t_embedder", "y_embedder", "adaLN_modulation",
    }
)  # fmt: skip
_LONGEST = max(w.count("_") + 1 for w in _WORDS)


def dotted(flat: str) -> str:
    """``down_blocks_0_attentions_0_proj_in`` -> ``down_blocks.0.attentions.0.proj_in``:
    kohya's flattened module name split back at the right underscores."""
    tokens = flat.split("_")
    out: list[str] = []
    i = 0
    while i < len(tokens):
        for size in range(min(_LONGEST, len(tokens) - i), 1, -1):
            word = "_".join(tokens[i : i + size])
            if word in _WORDS:
                out.append(word)
                i += size
                break
        else:
            out.append(tokens[i])
            i += 1
    return ".".join(out)


# ---- SD 1.x / SDXL: diffusers <-> LDM/SGM ---------------------------------------------------

_RESNET_PARTS = ("norm1", "conv1", "time_emb_proj", "norm2", "conv2", "conv_shortcut")
_UNET_TOP = (
    "conv_in",
    "time_embedding.linear_1",
    "time_embedding.linear_2",
    "add_embedding.linear_1",
    "add_embedding.linear_2",
    "conv_norm_out",
    "conv_out",
)
_SGM_TABLES: dict[UNetLayout, list[tuple[str, str]]] = {}


def _sgm_table(layout: UNetLayout) -> list[tuple[str, str]]:
    """``(SGM prefix, diffusers prefix)`` for every block of ``layout``, longest first."""
    if layout in _SGM_TABLES:
        return _SGM_TABLES[layout]
    pairs: dict[str, str] = {}

    def add(path: str, block: bool = False) -> None:
        probe = path + ".x" if block else path
        try:
            sgm = sgm_module_path(probe, layout)
        except ValueError:
            return
        pairs[sgm[:-2] if block else sgm] = path

    for name in _UNET_TOP:
        add(name)
    levels = len(layout.layers_per_block)
    for level in range(levels):
        for index in range(layout.layers_per_block[level]):
            for part in _RESNET_PARTS:
                add(f"down_blocks.{level}.resnets.{index}.{part}")
            add(f"down_blocks.{level}.attentions.{index}", block=True)
        add(f"down_blocks.{level}.downsamplers.0.conv")
        for index in range(layout.layers_per_block[::-1][level] + 1):
            for part in _RESNET_PARTS:
                add(f"up_blocks.{level}.resnets.{index}.{part}")
            add(f"up_blocks.{level}.attentions.{index}", block=True)
        add(f"up_blocks.{level}.upsamplers.0.conv")
    for index in (0, 1):
        for part in _RESNET_PARTS:
            add(f"mid_block.resnets.{index}.{part}")
    add("mid_block.attentions.0", block=True)
    table = sorted(pairs.items(), key=lambda kv: -len(kv[0]))
    _SGM_TABLES[layout] = table
    return table


def diffusers_unet_path(sgm: str, layout: UNetLayout) -> str:
    """The diffusers module path of an SGM/LDM UNet module path (inverse of
    :func:`sgm_module_path`).

    Raises:
        ValueError: no UNet block of ``layout`` has that name.
    """
    for prefix, path in _sgm_table(layout):
        if sgm == prefix:
            return path
        if sgm.startswith(prefix + "."):
            return path + sgm[len(prefix) :]
    raise ValueError(f"{sgm!r} is not a module of a UNet with {layout}")


def is_sgm_path(path: str) -> bool:
    return path.split(".", 1)[0] in (
        "input_blocks",
        "middle_block",
        "output_blocks",
        "time_embed",
        "label_emb",
        "out",
    )


def native_unet_path(path: str, family: str) -> str:
    """The LDM/SGM name (ComfyUI's, and kohya's for SDXL) of a diffusers UNet path."""
    return sgm_module_path(path, UNET_LAYOUTS[family])


# ---- Flux and SD 3: diffusers <-> fused native names -------------------------------------------

#: diffusers module inside a Flux double block -> (BFL module, member of a fused linear).
FLUX_DOUBLE: dict[str, tuple[str, int | None]] = {
    "attn.to_q": ("img_attn.qkv", 0),
    "attn.to_k": ("img_attn.qkv", 1),
    "attn.to_v": ("img_attn.qkv", 2),
    "attn.to_out.0": ("img_attn.proj", None),
    "attn.add_q_proj": ("txt_attn.qkv", 0),
    "attn.add_k_proj": ("txt_attn.qkv", 1),
    "attn.add_v_proj": ("txt_attn.qkv", 2),
    "attn.to_add_out": ("txt_attn.proj", None),
    "ff.net.0.proj": ("img_mlp.0", None),
    "ff.net.2": ("img_mlp.2", None),
    "ff_context.net.0.proj": ("txt_mlp.0", None),
    "ff_context.net.2": ("txt_mlp.2", None),
    "norm1.linear": ("img_mod.lin", None),
    "norm1_context.linear": ("txt_mod.lin", None),
}
#: ... inside a single block: linear1 = [q | k | v | mlp-in].
FLUX_SINGLE: dict[str, tuple[str, int | None]] = {
    "attn.to_q": ("linear1", 0),
    "attn.to_k": ("linear1", 1),
    "attn.to_v": ("linear1", 2),
    "proj_mlp": ("linear1", 3),
    "proj_out": ("linear2", None),
    "norm.linear": ("modulation.lin", None),
}
FLUX_TOP: dict[str, str] = {
    "x_embedder": "img_in",
    "context_embedder": "txt_in",
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "proj_out": "final_layer.linear",
    "norm_out.linear": "final_layer.adaLN_modulation.1",
}
#: diffusers module inside an SD 3 transformer block -> (MMDiT module, member).
SD3_BLOCK: dict[str, tuple[str, int | None]] = {
    "attn.to_q": ("x_block.attn.qkv", 0),
    "attn.to_k": ("x_block.attn.qkv", 1),
    "attn.to_v": ("x_block.attn.qkv", 2),
    "attn.to_out.0": ("x_block.attn.proj", None),
    "attn.add_q_proj": ("context_block.attn.qkv", 0),
    "attn.add_k_proj": ("context_block.attn.qkv", 1),
    "attn.add_v_proj": ("context_block.attn.qkv", 2),
    "attn.to_add_out": ("context_block.attn.proj", None),
    "attn2.to_q": ("x_block.attn2.qkv", 0),
    "attn2.to_k": ("x_block.attn2.qkv", 1),
    "attn2.to_v": ("x_block.attn2.qkv", 2),
    "attn2.to_out.0": ("x_block.attn2.proj", None),
    "ff.net.0.proj": ("x_block.mlp.fc1", None),
    "ff.net.2": ("x_block.mlp.fc2", None),
    "ff_context.net.0.proj": ("context_block.mlp.fc1", None),
    "ff_context.net.2": ("context_block.mlp.fc2", None),
    "norm1.linear": ("x_block.adaLN_modulation.1", None),
    "norm1_context.linear": ("context_block.adaLN_modulation.1", None),
}
SD3_TOP: dict[str, str] = {
    "pos_embed.proj": "x_embedder.proj",
    "context_embedder": "context_embedder",
    "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
    "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
    "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
    "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2",
    "proj_out": "final_layer.linear",
    "norm_out.linear": "final_layer.adaLN_modulation.1",
}
#: native modules whose halves (shift, scale) diffusers keeps the other way round.
SWAPPED = frozenset({"final_layer.adaLN_modulation.1"})

_DIT_BLOCK = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)$")
_NATIVE_BLOCK = re.compile(r"^(double_blocks|single_blocks|joint_blocks)\.(\d+)\.(.+)$")


def native_dit_name(path: str, family: str) -> tuple[str, int | None]:
    """``(native module, member index in a fused linear or None)`` of a diffusers Flux or
    SD 3 transformer path.

    Raises:
        ValueError: the module has no native name.
    """
    match = _DIT_BLOCK.match(path)
    if match:
        kind, index, inner = match.groups()
        if family == "flux":
            table, block = (
                (FLUX_DOUBLE, "double_blocks")
                if kind == "transformer_blocks"
                else (FLUX_SINGLE, "single_blocks")
            )
        elif kind == "transformer_blocks":
            table, block = SD3_BLOCK, "joint_blocks"
        else:
            raise ValueError(f"SD 3 has no module {path!r}")
        if inner in table:
            name, member = table[inner]
            return f"{block}.{index}.{name}", member
    else:
        top = FLUX_TOP if family == "flux" else SD3_TOP
        if path in top:
            return top[path], None
    raise ValueError(f"{'Flux' if family == 'flux' else 'SD 3'} has no native name for {path!r}")


def diffusers_dit_members(native: str, family: str) -> list[str]:
    """The diffusers module(s) of a native Flux/SD 3 module, in member order.

    Raises:
        ValueError: an unknown native module.
    """
    match = _NATIVE_BLOCK.match(native)
    if match:
        kind, index, inner = match.groups()
        if family == "flux" and kind in ("double_blocks", "single_blocks"):
            table, block = (
                (FLUX_DOUBLE, "transformer_blocks")
                if kind == "double_blocks"
                else (FLUX_SINGLE, "single_transformer_blocks")
            )
        elif family == "sd3" and kind == "joint_blocks":
            table, block = SD3_BLOCK, "transformer_blocks"
        else:
            raise ValueError(f"{native!r} is not a module of a {family} model")
        members = sorted(
            ((member or 0, path) for path, (name, member) in table.items() if name == inner),
        )
        if members:
            return [f"{block}.{index}.{path}" for _, path in members]
    else:
        top = FLUX_TOP if family == "flux" else SD3_TOP
        for path, name in top.items():
            if name == native:
                return [path]
    raise ValueError(f"{native!r} is not a module of a {family} model")


def native_dit_path(flat: str, family: str) -> str:
    """A kohya-flattened Flux/SD 3 module name (``double_blocks_0_img_attn_qkv``) with its
    dots back (``double_blocks.0.img_attn.qkv``)."""
    return dotted(flat)


def fused_width(native: str, member: int, width: int) -> int:
    """Output rows of ``member`` in a fused linear of a model ``width`` wide: q, k, v have
    ``width`` each; Flux single blocks' MLP input (member 3) 4 x ``width``."""
    return 4 * width if native.endswith("linear1") and member == 3 else width


def fused_members(native: str) -> int:
    """How many diffusers modules a native module fuses (1 for a plain one)."""
    if native.endswith("linear1"):
        return 4
    if native.endswith("qkv"):
        return 3
    return 1


def text_encoder_path(path: str) -> str:
    """A CLIP module path from the CLIPTextModel root (``text_model.encoder...``), the
    form kohya, diffusers' files and ComfyUI use (transformers 5 drops ``text_model``)."""
    return path if path.startswith("text_model.") else "text_model." + path


def component_prefix(component: str, family: str) -> str:
    """The diffusers key prefix of a canonical component (``denoiser`` -> ``unet``)."""
    return DENOISER[family] if component == "denoiser" else component


def comfy_component(clip: str, family: str) -> str | None:
    for component, name in COMFY_CLIP[family].items():
        if name == clip:
            return component
    return None


def kohya_te_component(prefix: str, family: str) -> str | None:
    for component, name in KOHYA_TE_PREFIX[family].items():
        if name == prefix:
            return component
    # sd-scripts' SD 1.x files sometimes say lora_te1_ (and diffusers writes it); ComfyUI
    # reads lora_te_ as the CLIP-L of every family.
    if (family == "sd15" and prefix == "lora_te1_") or prefix == "lora_te_":
        return "text_encoder"
    return None


def invert(mapping: Mapping[str, str]) -> dict[str, str]:
    return {v: k for k, v in mapping.items()}
