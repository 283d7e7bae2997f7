"""Training steps replayed from CUDA graphs.

On a GPU the eager LoRA step is bound by Python launching kernels, not by the GPU: SDXL's
step at 1024 px launches ~12,000 of them through peft's and diffusers' modules, and the
GPU is busy ~0.1 s of the ~0.5 s the step takes (docs/benchmarks.md, item 6). Captured
once as a CUDA graph — loss, backward, gradient clipping and the AdamW update — the whole
step is then replayed with one call.

A graph replays fixed kernels on fixed memory, so:

* Each batch's tensors (latents, text conditioning, SDXL's size numbers) and its random
  draws are copied into the graph's own input tensors before the replay. The draws are
  made outside the graph, from the run's CPU generator and in the order an eager step
  makes them (``Family.loss_draws``): a graphed run trains as the eager run does.
* One graph per batch shape (aspect-ratio buckets), all in one memory pool: they never
  run at once, and each step's activations, gradients included, live and die within its
  replay, so the pool is as large as the largest step, not the sum.
* The learning rate lives in a GPU tensor that the scheduler updates in place, and the
  optimizer is AdamW with its step count on the GPU (``capturable``).
* The first steps run eagerly on a side stream (lazy initialisation — optimizer state,
  cuBLAS workspaces — must not happen during a capture), then the cached memory is given
  back before the first capture, so the peak is the eager peak.

:func:`graph_blocker` says why a run cannot use graphs (fp16's loss scaler reads the GPU
every step; gradient accumulation, checkpointing, trained text encoders, other
optimizers, several processes, flow-matching families); such runs train eagerly, and a
capture that fails sends that batch shape back to eager steps with a log line.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lora_studio.core.config import LoraConfig

if TYPE_CHECKING:
    import torch

    from lora_studio.training.families.base import Family, LossInputs

log = logging.getLogger(__name__)

#: Eager steps before the first capture.
WARMUP_STEPS = 2


def graph_blocker(
    config: LoraConfig,
    family: Family,
    *,
    device: str,
    processes: int,
) -> str | None:
    """Why this run cannot replay its steps from CUDA graphs; ``None`` if it can.

    ``family`` is the base model's (its loss must take its draws from outside); what the
    settings decide is :attr:`LoraConfig.graph_blocker`.
    """
    if not config.cuda_graphs:
        return "turned off in the settings"
    if device != "cuda":
        return "not on a CUDA GPU"
    if family.loss_draws is None:
        return f"not available for {family.family.label} yet"
    if processes > 1:
        return "several processes"
    return config.replace(family=family.family).graph_blocker


@dataclasses.dataclass
class _Graph:
    graph: Any  # torch.cuda.CUDAGraph
    inputs: LossInputs  # the tensors the graph reads: each step is copied into them
    loss: torch.Tensor  # the tensor the graph writes the loss to


class GraphedSteps:
    """Runs training steps, replaying them from CUDA graphs once warmed up.

    ``eager_step(inputs) -> loss`` is the trainer's own step (loss, finite check,
    backward, clipping, optimizer step, zeroed gradients); it runs the warm-up steps and
    any batch shape that could not be captured.
    """

    def __init__(
        self,
        family: Family,
        trainable: list[torch.nn.Parameter],
        optimizer: Any,
        max_grad_norm: float,
        eager_step: Callable[[LossInputs], torch.Tensor],
        report: Callable[[str], None],
    ) -> None:
        import torch

        self._family = family
        self._trainable = trainable
        # accelerate's wrapper adds nothing a bf16/fp32 single-process step needs.
        self._optimizer = getattr(optimizer, "optimizer", optimizer)
        self._max_grad_norm = max_grad_norm
        self._eager_step = eager_step
        self._report = report
        self._graphs: dict[tuple[Any, ...], _Graph] = {}
        self._failed: set[tuple[Any, ...]] = set()
        self._pool: Any = None
        self._lrs: list[torch.Tensor] = []
        self._side = torch.cuda.Stream()
        self.eager_steps = 0
        self.replays = 0
        # The caching phase's freed blocks belong to the default stream; the side stream
        # of the warm-up could not reuse them and would add its own (19.3 GB reserved
        # instead of 13.8 for SDXL at 1024 px).
        torch.cuda.empty_cache()

    def step(self, inputs: LossInputs) -> torch.Tensor:
        """One training step on ``inputs`` (without draws); returns the loss tensor."""
        draws = self._family.loss_draws(inputs)  # type: ignore[misc]
        inputs = dataclasses.replace(inputs, draws=draws)
        key = _shape_key(inputs)
        graph = self._graphs.get(key)
        if graph is None and key not in self._failed and self.eager_steps >= WARMUP_STEPS:
            graph = self._capture(key, inputs)
        if graph is None:
            return self._eager(inputs)
        _copy_into(graph.inputs, inputs)
        self._update_lrs()
        graph.graph.replay()
        self.replays += 1
        return graph.loss

    def release(self) -> None:
        """Drop the graphs and their memory pool (at the end of the run)."""
        import torch

        self._graphs.clear()
        self._pool = None
        torch.cuda.empty_cache()

    # ---- inside ---------------------------------------------------------------------

    def _eager(self, inputs: LossInputs) -> torch.Tensor:
        import torch

        if self._graphs:  # the grads belong to the graphs' pool: start afresh
            self._optimizer.zero_grad(set_to_none=True)
        self.eager_steps += 1
        if self._pool is not None:
            return self._eager_step(inputs)
        # Warm-up steps on a side stream, as CUDA graph captures want.
        current = torch.cuda.current_stream()
        self._side.wait_stream(current)
        with torch.cuda.stream(self._side):
            loss = self._eager_step(inputs)
        current.wait_stream(self._side)
        return loss

    def _capture(self, key: tuple[Any, ...], inputs: LossInputs) -> _Graph | None:
        import torch

        torch.cuda.synchronize()
        if self._pool is None:
            # The warm-up's cached blocks back to the driver: the graph's pool takes their
            # place instead of adding to them.
            torch.cuda.empty_cache()
        if not self._lrs:  # (once: a first capture that failed has made them already)
            self._lrs_to_tensors()
        static = _clone_inputs(inputs)
        self._optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: other threads of the app may use CUDA meanwhile.
            with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                loss = self._family.loss(static)
                loss.backward()
                if self._max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(self._trainable, self._max_grad_norm)
                self._optimizer.step()
        except (RuntimeError, ValueError, TypeError) as exc:
            self._failed.add(key)
            self._optimizer.zero_grad(set_to_none=True)
            log.warning("CUDA graph capture failed", exc_info=True)
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self._report(f"CUDA graphs: could not capture the step, training eagerly ({first})")
            return None
        if self._pool is None:
            self._pool = graph.pool()
            self._report("CUDA graphs: each step now replays from a graph (one per batch shape)")
        made = _Graph(graph, static, loss.detach())
        self._graphs[key] = made
        return made

    def _lrs_to_tensors(self) -> None:
        """Learning rates as GPU tensors: the graph reads the rate of the step it replays."""
        import torch

        device = self._trainable[0].device
        for group in self._optimizer.param_groups:
            lr = group["lr"]
            if not isinstance(lr, torch.Tensor):
                lr = torch.tensor(float(lr), dtype=torch.float32, device=device)
                group["lr"] = lr
            self._lrs.append(lr)

    def _update_lrs(self) -> None:
        """Schedulers fill tensor rates in place (torch >= 2.2); older ones put a float
        back in the group, which is copied into the tensor the graph reads."""
        import torch

        for group, tensor in zip(self._optimizer.param_groups, self._lrs, strict=True):
            lr = group["lr"]
            if lr is not tensor:
                tensor.fill_(float(lr) if not isinstance(lr, torch.Tensor) else lr.item())
                group["lr"] = tensor


def _tensors(inputs: LossInputs) -> dict[str, torch.Tensor]:
    """The tensors of a batch that change from step to step, by name."""
    named = {"latents": inputs.latents, "image_meta": inputs.image_meta}
    named.update({f"cond.{k}": v for k, v in inputs.cond.items()})
    named.update({f"draws.{k}": v for k, v in (inputs.draws or {}).items()})
    return named


def _shape_key(inputs: LossInputs) -> tuple[Any, ...]:
    return tuple(
        (name, tuple(t.shape), t.dtype, str(t.device))
        for name, t in sorted(_tensors(inputs).items())
    )


def _clone_inputs(inputs: LossInputs) -> LossInputs:
    return dataclasses.replace(
        inputs,
        latents=inputs.latents.clone(),
        image_meta=inputs.image_meta.clone(),
        cond={k: v.clone() for k, v in inputs.cond.items()},
        draws={k: v.clone() for k, v in (inputs.draws or {}).items()},
    )


def _copy_into(static: LossInputs, inputs: LossInputs) -> None:
    targets = _tensors(static)
    for name, tensor in _tensors(inputs).items():
        targets[name].copy_(tensor, non_blocking=True)
