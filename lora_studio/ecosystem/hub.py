"""Publishing a LoRA on the Hugging Face Hub: the file, a model card, sample images.

The token comes from ``HF_TOKEN`` or the OS keyring (``lora-studio caption set-token`` stores
it; :mod:`lora_studio.core.secrets`), never from a file or the command line history. The
model card is written from the file's own metadata (trigger word, base model, family,
rank/alpha, the training settings kohya's ``ss_*`` fields record) with the front matter the
Hub uses to list LoRAs (``base_model``, ``instance_prompt``, ``tags``, ``widget`` samples).

Offline (no network, or ``HF_HUB_OFFLINE=1``) the upload stops with one clear sentence
and nothing half-written: the repository is only created once the Hub answered.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_studio.core.errors import LoraStudioError
from lora_studio.core.secrets import HUGGINGFACE, get_token
from lora_studio.ecosystem.lora_file import LoraInfo, inspect_lora

#: the Hub's base-model ids of the families' reference models, when the file names none.
_BASE_MODELS = {
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
    "sd3": "stabilityai/stable-diffusion-3.5-medium",
    "flux": "black-forest-labs/FLUX.1-dev",
}
_PIPELINES = {
    "sd15": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "sd3": "StableDiffusion3Pipeline",
    "flux": "FluxPipeline",
}


class HubError(LoraStudioError):
    """The upload to the Hugging Face Hub failed (offline, no token, refused)."""


@dataclass
class Upload:
    repo_id: str
    url: str
    files: list[str]


def base_model_id(info: LoraInfo) -> str:
    """The Hub id of the LoRA's base model: ``ss_sd_model_name`` when it looks like a Hub id,
    else the family's reference model."""
    name = info.metadata.get("ss_sd_model_name", "")
    if name.count("/") == 1 and not name.startswith((".", "/", "builtin:")) and " " not in name:
        return name
    return _BASE_MODELS.get(info.family, "")


def model_card(info: LoraInfo, repo_id: str, samples: Sequence[str] = ()) -> str:
    """The README.md of the LoRA's Hub repository."""
    meta = info.metadata
    trigger = meta.get("modelspec.trigger_phrase", "")
    base = base_model_id(info)
    title = meta.get("modelspec.title") or meta.get("ss_output_name") or info.path.stem
    front: list[str] = ["---"]
    if base:
        front.append(f"base_model: {base}")
    front.append("library_name: diffusers")
    front.append("tags:")
    for tag in ("lora", "text-to-image", "diffusers", "lora-studio", info.family):
        front.append(f"  - {tag}")
    if trigger:
        front.append(f"instance_prompt: {json.dumps(trigger, ensure_ascii=False)}")
    if samples:
        front.append("widget:")
        for sample in samples:
            front.append(f"  - text: {json.dumps(trigger or title, ensure_ascii=False)}")
            front.append("    output:")
            front.append(f"      url: {sample}")
    front.append("---")
    rows = [
        ("Base model", f"`{base}`" if base else "unknown"),
        ("Family", f"{info.family} (`{info.base_model_version}`)"),
        ("Trigger word", f"`{trigger}`" if trigger else "none"),
        (
            "Rank / alpha",
            ", ".join(f"{r}" for r in info.ranks)
            + " / "
            + ", ".join(f"{a:g}" for a in info.alphas),
        ),  # fmt: skip
        ("Layers", f"{len(info.modules)} ({', '.join(info.target_modules)})"),
        ("Text encoder", "trained" if info.has_text_encoder else "not trained"),
    ]
    for key, label in (
        ("ss_max_train_steps", "Steps"),
        ("ss_num_epochs", "Epochs"),
        ("ss_learning_rate", "Learning rate"),
        ("ss_resolution", "Resolution"),
        ("ss_num_train_images", "Training images"),
        ("ss_optimizer", "Optimizer"),
        ("ss_mixed_precision", "Precision"),
    ):
        if meta.get(key):
            rows.append((label, meta[key]))
    body = [
        "",
        f"# {title}",
        "",
        "A LoRA made with LoRA Studio "
        f"({'kohya' if info.format == 'kohya' else info.format} key format: it loads in "
        "diffusers, ComfyUI and Automatic1111/Forge).",
        "",
        "| | |",
        "|---|---|",
        *[f"| {label} | {value} |" for label, value in rows],
        "",
    ]
    if samples:
        body += ["## Samples", ""] + [f"![sample]({s})" for s in samples] + [""]
    prompt = f"{trigger}, " if trigger else ""
    body += [
        "## Use it",
        "",
        "```python",
        "import torch",
        f"from diffusers import {_PIPELINES.get(info.family, 'DiffusionPipeline')}",
        "",
        f"pipe = {_PIPELINES.get(info.family, 'DiffusionPipeline')}.from_pretrained("
        f"{json.dumps(base or '<base model>')}, torch_dtype=torch.float16).to('cuda')",
        f"pipe.load_lora_weights({json.dumps(repo_id)}, weight_name={json.dumps(info.path.name)})",
        f"image = pipe({json.dumps(prompt + 'a lighthouse at dusk')}).images[0]",
        "```",
        "",
        f"In ComfyUI or Automatic1111/Forge, put `{info.path.name}` in the LoRA folder"
        + (f" and use the trigger word `{trigger}` in the prompt." if trigger else "."),
        "",
    ]
    if info.top_tags:
        body += [
            "## Training tags",
            "",
            ", ".join(f"{tag} ({count})" for tag, count in info.top_tags[:15]),
            "",
        ]
    return "\n".join(front + body)


def upload_lora(
    path: str | Path,
    repo_id: str,
    *,
    samples: Sequence[str | Path] = (),
    private: bool = True,
    token: str | None = None,
    api: Any = None,
) -> Upload:
    """Create (or reuse) the model repository ``repo_id`` and upload the LoRA, a model card
    and the sample images in one commit.

    Args:
        api: an ``huggingface_hub.HfApi`` (tests pass a stand-in).

    Raises:
        HubError: no token, offline, the Hub refused (the message says which).
    """
    lora = Path(path)
    info = inspect_lora(lora)
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise HubError(f"{repo_id!r} is not a repository id; use owner/name.")
    images = [Path(s) for s in samples]
    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        raise HubError(f"Sample image {missing[0]} does not exist.")
    hub_token = get_token(HUGGINGFACE, token)
    if not hub_token:
        raise HubError(
            "No Hugging Face token: set HF_TOKEN, or store one in the keyring with "
            "`lora-studio caption set-token --provider hf-api`."
        )
    sample_names = [f"samples/{i:02d}_{p.name}" for i, p in enumerate(images)]
    card = model_card(info, repo_id, sample_names)
    try:
        from huggingface_hub import CommitOperationAdd, HfApi
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
    except ImportError:
        raise HubError("Uploading needs the huggingface_hub package.") from None
    hub = api if api is not None else HfApi(token=hub_token)
    operations = [
        CommitOperationAdd(path_in_repo=lora.name, path_or_fileobj=str(lora)),
        CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode("utf-8")),
        *[
            CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(image))
            for name, image in zip(sample_names, images, strict=True)
        ],
    ]
    try:
        url = hub.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        hub.create_commit(
            repo_id,
            operations,
            commit_message=f"Upload {lora.name} from LoRA Studio",
            repo_type="model",
        )
    except OfflineModeIsEnabled:
        raise HubError(
            "The Hugging Face Hub cannot be reached: offline mode is on (HF_HUB_OFFLINE). "
            "Nothing was uploaded."
        ) from None
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise HubError(
                f"The Hugging Face Hub refused the token for {repo_id} ({status}): check that "
                f"it has write access."
            ) from None
        raise HubError(f"The Hugging Face Hub refused the upload: {_first_line(exc)}") from None
    except (OSError, ConnectionError) as exc:
        raise HubError(
            f"The Hugging Face Hub cannot be reached (offline?): {_first_line(exc)}. Nothing "
            f"was uploaded."
        ) from None
    except Exception as exc:  # httpx/requests transport errors differ by version
        if type(exc).__name__ in ("ConnectError", "ConnectTimeout", "ReadTimeout"):
            raise HubError(
                f"The Hugging Face Hub cannot be reached (offline?): {_first_line(exc)}."
            ) from None
        raise
    return Upload(repo_id, str(url), [op.path_in_repo for op in operations])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
