"""The two training objectives the families share.

* DDPM noise prediction (SD 1.5, SDXL): epsilon or v-prediction targets, with noise offset
  and min-SNR-gamma weighting (diffusers' ``compute_snr``).
* Rectified flow / flow matching (SD 3.5, Flux): ``x_t = (1 - sigma) x0 + sigma noise``,
  target ``noise - x0``, timesteps drawn logit-normal (or uniform, or mode) with diffusers'
  ``compute_density_for_timestep_sampling``.

Every random draw uses the run's generator (on the CPU, then moved), so a seeded run is
reproducible and a resumed run continues the same random stream. The DDPM draws can be made
apart from the loss (:func:`ddpm_draws`, then ``ddpm_loss(..., draws=...)``): a training step
replayed from a CUDA graph (``graphs.py``) draws outside the graph, in the same order, and
the graph computes the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from lora_studio.core.config import LoraConfig

if TYPE_CHECKING:
    import torch


def _randn(shape: tuple[int, ...], generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.randn(shape, generator=generator).to(like.device, like.dtype)


def ddpm_draws(
    latents: torch.Tensor, scheduler: object, generator: torch.Generator, config: LoraConfig
) -> dict[str, torch.Tensor]:
    """A batch's random draws for :func:`ddpm_loss`, on ``latents``' device: the noise
    (with the offset noise added when ``noise_offset`` is set) and the timesteps."""
    import torch

    batch = latents.shape[0]
    noise = _randn(tuple(latents.shape), generator, latents)
    if config.noise_offset:
        # Offset noise (per sample and channel) lets the model shift overall brightness.
        noise = noise + config.noise_offset * _randn(
            (batch, latents.shape[1], 1, 1), generator, latents
        )
    steps = int(scheduler.config.num_train_timesteps)  # type: ignore[attr-defined]
    timesteps = torch.randint(0, steps, (batch,), generator=generator).to(latents.device)
    return {"noise": noise, "timesteps": timesteps}


def ddpm_loss(
    latents: torch.Tensor,
    scheduler: object,
    prediction_type: str,
    predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    generator: torch.Generator,
    config: LoraConfig,
    draws: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Noise-prediction loss of one batch under a DDPM scheduler.

    Args:
        latents: scaled clean latents ``(B, C, h, w)``.
        scheduler: a diffusers ``DDPMScheduler``.
        prediction_type: ``epsilon`` or ``v_prediction``.
        predict: ``predict(noisy_latents, timesteps) -> model output``.
        generator: the run's generator.
        config: for ``noise_offset`` and ``min_snr_gamma``.
        draws: the batch's noise and timesteps from :func:`ddpm_draws`, made beforehand;
            ``None`` draws them here.
    """
    import torch
    import torch.nn.functional as F
    from diffusers.training_utils import compute_snr

    if draws is None:
        draws = ddpm_draws(latents, scheduler, generator, config)
    noise, timesteps = draws["noise"], draws["timesteps"]
    noisy = scheduler.add_noise(latents, noise, timesteps)  # type: ignore[attr-defined]
    if prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)  # type: ignore[attr-defined]
    else:
        target = noise
    pred = predict(noisy, timesteps).float()
    if not config.min_snr_gamma:
        return F.mse_loss(pred, target.float())
    # Min-SNR weighting (Hang et al. 2023): weight = min(SNR, gamma) / SNR for epsilon,
    # min(SNR, gamma) / (SNR + 1) for v-prediction.
    snr = compute_snr(scheduler, timesteps)
    clipped = torch.minimum(snr, torch.full_like(snr, config.min_snr_gamma))
    weights = clipped / (snr + 1) if prediction_type == "v_prediction" else clipped / snr
    per_sample = F.mse_loss(pred, target.float(), reduction="none").mean(dim=(1, 2, 3))
    return (per_sample * weights).mean()


def flow_matching_sigmas(
    scheduler: object,
    batch: int,
    generator: torch.Generator,
    config: LoraConfig,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``(timesteps, sigmas)`` for a batch from a flow-matching Euler scheduler."""
    import torch
    from diffusers.training_utils import compute_density_for_timestep_sampling

    u = compute_density_for_timestep_sampling(
        weighting_scheme=config.timestep_sampling.value,
        batch_size=batch,
        logit_mean=config.logit_mean,
        logit_std=config.logit_std,
        mode_scale=1.29,
        generator=generator,
    )
    num = int(scheduler.config.num_train_timesteps)  # type: ignore[attr-defined]
    indices = (u * num).long().clamp(0, num - 1)
    schedule_timesteps = scheduler.timesteps  # type: ignore[attr-defined]
    schedule_sigmas = scheduler.sigmas  # type: ignore[attr-defined]
    timesteps = schedule_timesteps[indices].to(device)
    sigmas = schedule_sigmas[indices].to(device=device, dtype=torch.float32)
    return timesteps, sigmas


def flow_matching_loss(
    latents: torch.Tensor,
    scheduler: object,
    predict: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    generator: torch.Generator,
    config: LoraConfig,
) -> torch.Tensor:
    """Rectified-flow loss of one batch.

    Args:
        latents: scaled clean latents ``(B, C, h, w)``.
        scheduler: a diffusers ``FlowMatchEulerDiscreteScheduler`` (training copy).
        predict: ``predict(noisy_latents, timesteps, sigmas) -> velocity prediction``.
        generator: the run's generator.
        config: for timestep sampling and noise offset.
    """
    import torch.nn.functional as F

    noise = _randn(tuple(latents.shape), generator, latents)
    if config.noise_offset:
        noise = noise + config.noise_offset * _randn(
            (latents.shape[0], latents.shape[1], 1, 1), generator, latents
        )
    timesteps, sigmas = flow_matching_sigmas(
        scheduler, latents.shape[0], generator, config, latents.device
    )
    s = sigmas.view(-1, *([1] * (latents.ndim - 1)))
    noisy = (1.0 - s) * latents + s * noise
    pred = predict(noisy, timesteps, sigmas).float()
    target = (noise - latents).float()
    return F.mse_loss(pred, target)
