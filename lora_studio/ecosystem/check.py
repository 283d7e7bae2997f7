"""Will a LoRA load everywhere? The compatibility check.

The most common complaint about LoRAs is "lora key not loaded": one tool writes names
another does not read, and the LoRA silently does less than it should. :func:`check_lora`
says it before the user finds out:

* **diffusers**: the file is loaded with ``load_lora_weights`` into the pipeline of its
  family (built from the given base model, or the family's built-in tiny model), and every
  layer the file holds must come out of it as a LoRA layer on the right module, applying the
  same update ``up @ down * alpha / rank``.
* **ComfyUI**, **Automatic1111** and **Forge**: the key names are checked against each
  loader's naming rules, written down below with the place in each project's source they
  come from. They are name rules: whether a module exists in the model is what the
  diffusers load checks.

For the trainer and the window: call :func:`check_lora` after a run (``load=False`` skips the
model load and takes milliseconds) and show :func:`format_check` or ``report.targets``.

Naming rules
------------
ComfyUI (``comfy/lora.py``: ``model_lora_keys_unet``, ``model_lora_keys_clip`` and
``load_lora``, as of commit 41444b5 of comfyanonymous/ComfyUI):

* every weight of the diffusion model is reachable as ``diffusion_model.<name>`` ("generic
  lora format") and ``lora_unet_<name with _>``, ``<name>`` being ComfyUI's own module name
  (the LDM/SGM UNet; BFL's Flux; SAI's MMDiT);
* SD 1.x/SDXL UNets also as ``lora_unet_<diffusers name with _>`` (``unet_to_diffusers``),
  but diffusers-format keys only in the old attention-processor form
  (``unet.<...>.attn1.processor.to_q``): a peft ``unet.<...>.attn1.to_q.lora_A`` key is not
  mapped;
* SD 3 and Flux transformers also as ``transformer.<diffusers name>`` (``mmdit_to_diffusers``,
  ``flux_to_diffusers``) and ``lora_transformer_<diffusers name with _>`` (OneTrainer);
* CLIP: ``text_encoders.<clip_l|clip_g>.transformer.<name>`` (generic),
  ``lora_te_``/``lora_te1_`` (CLIP-L, or SD 1.x's only CLIP), ``lora_te2_`` (CLIP-G beside a
  CLIP-L), ``text_encoder[_2].text_model.encoder.layers.N.<part>`` - the kohya and diffusers
  forms only for the encoder layers' ``self_attn.{q,k,v,out}_proj`` and ``mlp.fc1/fc2``;
* tensors: ``.lora_up/.lora_down.weight``, ``.lora_B/.lora_A.weight``, ``.lora.up/.down``,
  ``.alpha``, ``.dora_scale`` (DoRA), ``.lora_mid.weight``, ``.diff``, ``.diff_b``; peft's
  ``.lora_magnitude_vector`` is not read (a DoRA file in diffusers format loses its
  magnitudes there).

Forge (lllyasviel/stable-diffusion-webui-forge, ``backend/patcher/lora.py``) builds its key
maps with ComfyUI's functions, so the ComfyUI rules apply; it also loads Flux.

Automatic1111 (``extensions-builtin/Lora/networks.py``, ``load_network`` and
``convert_diffusers_name_to_compvis``):

* a key is split at its first ``.``: the part before must be the whole module name, so
  dotted (diffusers/peft, ComfyUI) keys are never matched;
* ``lora_unet_<diffusers name>`` is converted to the LDM name with SD 1.x's layout (input
  block ``1 + 3 x level + index``...), which is right for SD 1.x and for SDXL's attention
  and resnets, not for SDXL's first up-sampler; otherwise ``lora_unet_`` -> ``diffusion_model_``
  must name a module directly (kohya's SGM names for SDXL);
* ``lora_te_text_model_encoder_layers_N_*`` (SD 1.x), ``lora_te1_text_model_*`` (SDXL's CLIP-L,
  or SD 1.x), ``lora_te2_text_model_encoder_layers_N_*`` (SDXL's OpenCLIP);
* tensors ``.lora_up.weight``, ``.lora_down.weight``, ``.alpha`` (``.dora_scale`` from
  v1.9); Automatic1111 runs no Flux and (before v1.10) no SD 3.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_studio.core.errors import LoraStudioError
from lora_studio.core.model_lock import MODEL_BUILD_LOCK
from lora_studio.ecosystem import naming
from lora_studio.ecosystem.lora_file import LoraFileError, inspect_lora, key_format, read_header

log = logging.getLogger(__name__)

TARGETS = ("diffusers", "ComfyUI", "Automatic1111", "Forge")
#: target statuses: every key loads; some do not; none do; the target cannot run the family;
#: not checked.
OK, PARTIAL, FAIL, UNSUPPORTED, SKIPPED = "ok", "partial", "fail", "unsupported", "skipped"
_BUILTIN = {"sd15": "tiny-sd15", "sdxl": "tiny-sdxl", "sd3": "tiny-sd3", "flux": "tiny-flux"}
_ADAPTER = "lora_studio_check"

#: ComfyUI's ``LORA_CLIP_MAP``: the CLIP layers its kohya and diffusers text-encoder keys reach.
_CLIP_PARTS = ("mlp.fc1", "mlp.fc2", "self_attn.k_proj", "self_attn.q_proj", "self_attn.v_proj",
               "self_attn.out_proj")  # fmt: skip
_COMFY_SUFFIXES = (
    ".lora_up.weight", ".lora_down.weight", ".lora_B.weight", ".lora_A.weight",
    "_lora.up.weight", "_lora.down.weight", ".lora.up.weight", ".lora.down.weight",
    ".alpha", ".dora_scale", ".lora_mid.weight", ".diff", ".diff_b", ".reshape_weight",
)  # fmt: skip
_A1111_SUFFIXES = (".lora_up.weight", ".lora_down.weight", ".alpha", ".dora_scale",
                   ".lora_mid.weight")  # fmt: skip


@dataclass
class TargetResult:
    """How one tool takes the file.

    Attributes:
        target: ``diffusers``, ``ComfyUI``, ``Automatic1111``, ``Forge``.
        status: ``ok``, ``partial``, ``fail``, ``unsupported`` or ``skipped``.
        loaded: keys (tensors) the tool uses.
        total: keys in the file.
        not_loaded: the keys it leaves out (first ones), with the reason.
        message: one line for the user.
    """

    target: str
    status: str
    loaded: int
    total: int
    not_loaded: list[str] = field(default_factory=list)
    message: str = ""


@dataclass
class CheckReport:
    path: Path
    family: str
    format: str
    targets: list[TargetResult]

    @property
    def ok(self) -> bool:
        """No target that can run the family leaves a key out."""
        return all(t.status in (OK, UNSUPPORTED, SKIPPED) for t in self.targets)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "family": self.family,
            "format": self.format,
            "ok": self.ok,
            "targets": [
                {
                    "target": t.target,
                    "status": t.status,
                    "loaded": t.loaded,
                    "total": t.total,
                    "not_loaded": t.not_loaded,
                    "message": t.message,
                }
                for t in self.targets
            ],
        }


def check_lora(
    path: str | Path,
    *,
    base_model: str | None = None,
    family: str | None = None,
    load: bool = True,
) -> CheckReport:
    """Check that the LoRA at ``path`` loads in diffusers, ComfyUI, Automatic1111 and Forge.

    Args:
        base_model: a base-model reference (``builtin:...``, a diffusers folder, a single
            file, an HF cache id) to load into; default: the family's built-in tiny model.
        family: the family, when the file does not tell.
        load: also load the file into the diffusers pipeline (seconds on the tiny model);
            ``False`` checks the names only.

    Raises:
        LoraFileError: the file is not a LoRA.
    """
    info = inspect_lora(path, family=family)
    if info.family == "unknown":
        raise LoraFileError(
            f"Cannot tell which model family {info.path.name} is for; give it with --family."
        )
    keys = list(read_header(path).tensors)
    results = []
    if load:
        results.append(_diffusers_result(Path(path), info.family, base_model, len(keys)))
    else:
        results.append(
            TargetResult("diffusers", SKIPPED, 0, len(keys), [], "not loaded (--no-load)")
        )
    comfy = _rule_result("ComfyUI", keys, lambda k: _comfy_key(k, info.family))
    results.append(comfy)
    if info.family in ("flux", "sd3"):
        message = (
            "Automatic1111 does not run Flux"
            if info.family == "flux"
            else "not checked: Automatic1111 runs SD 3 only from v1.10, whose SD 3 LoRA "
            "names these rules do not cover (Forge and ComfyUI are checked)"
        )
        results.append(TargetResult("Automatic1111", UNSUPPORTED, 0, len(keys), [], message))
    else:
        results.append(_rule_result("Automatic1111", keys, lambda k: _a1111_key(k, info.family)))
    forge = _rule_result("Forge", keys, lambda k: _comfy_key(k, info.family))
    forge.message = forge.message.replace("ComfyUI", "Forge")
    results.append(forge)
    return CheckReport(info.path, info.family, info.format, results)


def format_check(report: CheckReport) -> str:
    """One line per target, then the keys left out."""
    marks = {OK: "OK  ", PARTIAL: "PART", FAIL: "FAIL", UNSUPPORTED: "n/a ", SKIPPED: "skip"}
    lines = [f"{report.path} ({report.family}, {report.format} keys)"]
    for t in report.targets:
        lines.append(f"  [{marks[t.status]}] {t.target:<14} {t.message}")
        for key in t.not_loaded[:5]:
            lines.append(f"           not loaded: {key}")
        if len(t.not_loaded) > 5:
            lines.append(f"           ... and {len(t.not_loaded) - 5} more")
    return "\n".join(lines)


# ---- rules -------------------------------------------------------------------------------------


def _rule_result(target: str, keys: list[str], rule: Any) -> TargetResult:
    rejected = []
    for key in keys:
        reason = rule(key)
        if reason:
            rejected.append(f"{key} ({reason})")
    loaded = len(keys) - len(rejected)
    if not rejected:
        return TargetResult(target, OK, loaded, len(keys), [], f"all {len(keys)} keys load")
    status = FAIL if loaded == 0 else PARTIAL
    return TargetResult(
        target,
        status,
        loaded,
        len(keys),
        rejected,
        f"{len(rejected)} of {len(keys)} keys would not load in {target}",
    )


def _split_suffix(key: str, suffixes: tuple[str, ...]) -> tuple[str, str] | None:
    for suffix in suffixes:
        if key.endswith(suffix):
            return key[: -len(suffix)], suffix
    return None


def _comfy_key(key: str, family: str) -> str:
    """Why ComfyUI would not load ``key`` (``""`` when it would); rules in the module
    docstring."""
    split = _split_suffix(key, _COMFY_SUFFIXES)
    if split is None:
        if key.endswith((".lora_magnitude_vector", ".lora_magnitude_vector.weight")):
            return "peft's DoRA magnitude is not read; ComfyUI reads .dora_scale"
        return "not a tensor type ComfyUI reads"
    stem, suffix = split
    fmt = key_format(stem)
    if fmt == "comfyui":
        if stem.startswith("diffusion_model."):
            return _native_module_problem(stem[len("diffusion_model.") :], family)
        _, clip, rest = (stem.split(".", 2) + ["", ""])[:3]
        if clip not in naming.COMFY_CLIP[family].values() or not rest.startswith("transformer."):
            return f"{family} has no text encoder {clip} in ComfyUI"
        return ""
    if fmt == "kohya":
        prefix = next(
            p for p in ("lora_unet_", "lora_te1_", "lora_te2_", "lora_te_") if stem.startswith(p)
        )
        flat = stem[len(prefix) :]
        if prefix == "lora_unet_":
            path = naming.dotted(flat)
            if family in ("sd15", "sdxl") and not naming.is_sgm_path(path):
                return _diffusers_unet_problem(path, family)
            return _native_module_problem(path, family)
        return _clip_problem(prefix, naming.dotted(flat), family, kohya=True)
    if fmt == "diffusers":
        head, _, path = stem.partition(".")
        if head == "unet":
            if ".processor." in path:
                return ""
            return "ComfyUI maps diffusers UNet keys only in the attention-processor form"
        if head == "transformer":
            if family not in ("sd3", "flux"):
                return f"a {family} model has no transformer"
            try:
                naming.native_dit_name(path, family)
            except ValueError as exc:
                return str(exc)
            return ""
        return _clip_problem(head, path, family, kohya=False)
    return "an unknown key format"


def _clip_problem(prefix: str, path: str, family: str, *, kohya: bool) -> str:
    component = (
        naming.kohya_te_component(prefix, family)
        if kohya
        else (prefix if prefix in naming.TEXT_ENCODERS[family] else None)
    )
    if kohya and prefix == "lora_te_":
        component = "text_encoder"
    if component is None:
        return f"{prefix} is no text encoder of a {family} model"
    parts = path.split(".")
    # text_model.encoder.layers.N.<part>, literally: a path without the text_model level
    # (what peft gives with transformers 5) is not matched.
    if len(parts) < 6 or parts[:3] != ["text_model", "encoder", "layers"] or not parts[3].isdigit():
        return "ComfyUI maps text_model.encoder.layers.N.<layer> only"
    if ".".join(parts[4:]) not in _CLIP_PARTS:
        return f"{'.'.join(parts[4:])} is not one of the CLIP layers ComfyUI maps"
    return ""


def _native_module_problem(path: str, family: str) -> str:
    if family in ("sd15", "sdxl"):
        if not naming.is_sgm_path(path):
            return f"{path} is not an LDM/SGM UNet module name"
        try:
            naming.diffusers_unet_path(path, naming.UNET_LAYOUTS[family])
        except ValueError:
            return f"{path} is not a module of the {family} UNet"
        return ""
    try:
        naming.diffusers_dit_members(path, family)
    except ValueError as exc:
        return str(exc)
    return ""


def _diffusers_unet_problem(path: str, family: str) -> str:
    try:
        naming.native_unet_path(path, family)
    except ValueError:
        return f"{path} is not a module of the {family} UNet"
    return ""


def _a1111_key(key: str, family: str) -> str:
    """Why Automatic1111 would not load ``key`` (``""`` when it would)."""
    module, _, part = key.partition(".")
    if not module.startswith("lora_"):
        return "dotted module names are not matched (the key is split at its first '.')"
    if "." + part not in _A1111_SUFFIXES:
        return f"{part} is not a tensor type Automatic1111 reads (lora_up/lora_down/alpha)"
    if module.startswith("lora_unet_"):
        path = naming.dotted(module[len("lora_unet_") :])
        if naming.is_sgm_path(path):
            return _native_module_problem(path, family)
        try:
            want = naming.native_unet_path(path, family)
        except ValueError:
            return f"{path} is not a module of the {family} UNet"
        got = _a1111_compvis(path)
        if got != want:
            return f"converted with SD 1.x's layout to {got or 'nothing'}, not {want}"
        return ""
    for prefix, fams in (("lora_te_", ("sd15",)), ("lora_te1_", ("sd15", "sdxl")),
                         ("lora_te2_", ("sdxl",))):  # fmt: skip
        if module.startswith(prefix):
            if family not in fams:
                return f"{prefix} is no text encoder of a {family} model in Automatic1111"
            path = naming.dotted(module[len(prefix) :])
            if not path.startswith("text_model.encoder.layers."):
                return "only the CLIP encoder layers are matched"
            return ""
    return "no lora_unet_/lora_te_ name"


_A1111_RESNET = {"conv1": "in_layers.2", "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
                 "conv_shortcut": "skip_connection"}  # fmt: skip


def _a1111_compvis(path: str) -> str:
    """The LDM name Automatic1111's ``convert_diffusers_name_to_compvis`` gives a diffusers
    UNet path (its fixed SD 1.x arithmetic), or ``""``."""
    parts = path.split(".")
    if path.startswith("conv_in"):
        return "input_blocks.0.0" + path[len("conv_in") :]
    if path.startswith("conv_out"):
        return "out.2" + path[len("conv_out") :]
    if path.startswith("time_embedding.linear_"):
        n = int(parts[1][-1])
        return f"time_embed.{n * 2 - 2}" + path[len("time_embedding.linear_1") :]
    try:
        if parts[0] in ("down_blocks", "up_blocks") and parts[2] in ("attentions", "resnets"):
            level, index = int(parts[1]), int(parts[3])
            rest = ".".join(parts[4:])
            if parts[2] == "resnets":
                rest = _A1111_RESNET.get(parts[4], parts[4]) + "".join("." + p for p in parts[5:])
            slot = 1 if parts[2] == "attentions" else 0
            if parts[0] == "down_blocks":
                return f"input_blocks.{1 + level * 3 + index}.{slot}.{rest}"
            return f"output_blocks.{level * 3 + index}.{slot}.{rest}"
        if parts[0] == "mid_block":
            kind, index = parts[1], int(parts[2])
            rest = ".".join(parts[3:])
            if kind == "resnets":
                rest = _A1111_RESNET.get(parts[3], parts[3]) + "".join("." + p for p in parts[4:])
            block = 1 if kind == "attentions" else index * 2
            return f"middle_block.{block}.{rest}"
        if parts[0] == "down_blocks" and parts[2] == "downsamplers":
            return f"input_blocks.{3 + int(parts[1]) * 3}.0.op"
        if parts[0] == "up_blocks" and parts[2] == "upsamplers":
            level = int(parts[1])
            return f"output_blocks.{2 + level * 3}.{2 if level > 0 else 1}.conv"
    except (IndexError, ValueError):
        return ""
    return ""


# ---- diffusers ---------------------------------------------------------------------------------


def _diffusers_result(path: Path, family: str, base_model: str | None, total: int) -> TargetResult:
    try:
        return diffusers_load_check(path, family, base_model)
    except LoraStudioError as exc:
        return TargetResult("diffusers", FAIL, 0, total, [], str(exc))


def build_pipeline(family: str, base_model: str | None = None) -> Any:
    """The family's diffusers pipeline from ``base_model`` (default: the built-in tiny
    model), offline, with the project's own loading code."""
    from lora_studio.core.base_model import resolve_base_model
    from lora_studio.core.config import ModelFamily
    from lora_studio.core.errors import ModelError
    from lora_studio.training.families import get_family
    from lora_studio.training.tiny import ensure_builtin_model

    ref = resolve_base_model(base_model or f"builtin:{_BUILTIN[family]}")
    if ref.family is not None and ref.family.value != family:
        raise ModelError(
            f"The LoRA is for {family} but {ref.display_name} is a {ref.family.value} model."
        )
    local = ensure_builtin_model(ref.path.name) if ref.kind.value == "builtin" else ref.path
    fam = get_family(ModelFamily(family))
    with MODEL_BUILD_LOCK:  # core/model_lock.py: another thread may be building a model
        comps = fam.load(ref, local)
    return fam.pipeline(comps, comps.denoiser, comps.text_encoders)


def diffusers_load_check(
    path: Path, family: str, base_model: str | None = None, pipeline: Any = None
) -> TargetResult:
    """Load ``path`` with ``load_lora_weights`` and compare every LoRA layer the pipeline
    got with the file's (module and update)."""
    import torch

    from lora_studio.ecosystem.convert import load_lora, read_canonical

    tensors, metadata = load_lora(path)
    total = len(tensors)
    pipe = pipeline if pipeline is not None else build_pipeline(family, base_model)
    with _captured("diffusers") as warnings:
        try:
            with MODEL_BUILD_LOCK:  # new LoRA parameters: see core/model_lock.py
                pipe.load_lora_weights(str(path), adapter_name=_ADAPTER)
        except Exception as exc:  # diffusers raises ValueError, KeyError, RuntimeError...
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return TargetResult(
                "diffusers", FAIL, 0, total, [], f"load_lora_weights failed: {first}"
            )
    try:
        loaded = _loaded_layers(pipe, family)
    finally:
        with contextlib.suppress(Exception):
            pipe.delete_adapters(_ADAPTER)
    try:
        expected = read_canonical(tensors, metadata, family=family).modules
    except LoraFileError as exc:
        return TargetResult(
            "diffusers", PARTIAL, 0, total, [], f"loaded {len(loaded)} layers; {exc}"
        )
    missing, different = [], []
    for key, module in expected.items():
        got = loaded.get(key)
        if got is None:
            missing.append(f"{key[0]} {key[1]} (no LoRA layer on it after loading)")
        elif not torch.allclose(got, module.delta(), atol=1e-4, rtol=1e-3):
            different.append(f"{key[0]} {key[1]} (loaded with a different scale or weights)")
    problems = missing + different
    notes = [w for w in warnings if "unexpected" in w.lower() or "not" in w.lower()]
    if not problems:
        message = f"load_lora_weights: all {len(expected)} layers load with the right update"
        return TargetResult("diffusers", OK, total, total, [], message)
    status = FAIL if len(problems) == len(expected) else PARTIAL
    message = f"{len(problems)} of {len(expected)} layers did not load as in the file"
    if notes:
        message += f" (diffusers: {notes[0][:200]})"
    return TargetResult("diffusers", status, total - len(problems), total, problems, message)


def _loaded_layers(pipe: Any, family: str) -> dict[tuple[str, str], Any]:
    """``{(component, path): update}`` of every LoRA layer the check's adapter put on the
    pipeline."""
    out = {}
    components = [("denoiser", naming.DENOISER[family])] + [
        (name, name) for name in naming.TEXT_ENCODERS[family]
    ]
    for component, attribute in components:
        model = getattr(pipe, attribute, None)
        if model is None:
            continue
        for name, module in model.named_modules():
            lora_a = getattr(module, "lora_A", None)
            if lora_a is None or _ADAPTER not in lora_a:
                continue
            down = lora_a[_ADAPTER].weight.detach().float()
            up = module.lora_B[_ADAPTER].weight.detach().float()
            scale = float(module.scaling[_ADAPTER])
            path = name if component == "denoiser" else naming.text_encoder_path(name)
            out[(component, path)] = (up.flatten(1) @ down.flatten(1)) * scale
    return out


@contextlib.contextmanager
def _captured(logger_name: str) -> Iterator[list[str]]:
    """Warnings a library logs while the block runs."""
    messages: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = _Collect(level=logging.WARNING)
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
