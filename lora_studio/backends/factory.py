"""The backend a :class:`~lora_studio.core.jobs.JobSpec` asks for.

``backend_options`` by backend (never tokens: those come from the keyring or the
environment):

* ``local``: ``num_processes`` (more than 1: ``accelerate launch`` on that many GPUs);
* ``comfyui``: ``url``, ``checkpoint``, ``poll_interval``;
* ``replicate``: ``url`` or ``api_url`` (API base), ``trainer`` (``owner/name``), ``trainer_version``,
  ``destination`` (``owner/name``), ``hardware``, ``poll_interval``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lora_studio.backends.base import BackendConfig, TrainingBackend
from lora_studio.core.errors import BackendError
from lora_studio.core.jobs import BackendType, JobSpec


def backend_for_spec(spec: JobSpec) -> TrainingBackend:
    """A new backend object for ``spec`` (remote ones re-attach by ``remote_id``)."""
    options = dict(spec.backend_options)
    url = options.get("url") or options.get("api_url")
    config = BackendConfig(spec.backend, Path(spec.output_dir), api_url=url)
    if spec.backend is BackendType.LOCAL:
        processes = int(options.get("num_processes", 1))
        if processes > 1:
            from lora_studio.backends.launch import LaunchBackend

            return LaunchBackend(config, num_processes=processes)
        from lora_studio.backends.local import LocalBackend

        return LocalBackend(config)
    if spec.backend is BackendType.COMFYUI:
        from lora_studio.backends.comfyui import ComfyUIBackend

        if not config.api_url:
            raise BackendError("A ComfyUI job needs the server's URL.")
        comfy_options: dict[str, Any] = {"checkpoint": options.get("checkpoint")}
        if options.get("poll_interval"):
            comfy_options["poll_interval_s"] = float(options["poll_interval"])
        return ComfyUIBackend(config, **comfy_options)
    if spec.backend is BackendType.REPLICATE:
        from lora_studio.backends.replicate import ReplicateBackend

        kwargs: dict[str, Any] = {
            key: options[key]
            for key in ("trainer", "trainer_version", "destination", "hardware")
            if options.get(key)
        }
        if options.get("poll_interval"):
            kwargs["poll_interval"] = float(options["poll_interval"])
        return ReplicateBackend(config, **kwargs)
    raise BackendError(f"Unknown backend {spec.backend}.")
