"""A denoising run cut into steps, so calibration can replay and differentiate each one.

A :class:`Trajectory` is what output-sensitivity calibration needs from a sampler: the
starting latent, one differentiable denoising step, and the final output. Running it start to
end is a plain generation (:func:`run_trajectory`); calibration replays single steps with
gradients to learn how much an error at one attention site and step moves the final output.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["Trajectory", "run_trajectory", "EulerTrajectory"]

SetStep = Callable[[int], None]


@runtime_checkable
class Trajectory(Protocol):
    """One batch of generations, step by step.

    ``step(index, latent)`` runs denoising step ``index`` (all forwards of the model it
    needs, CFG included) and returns the next latent; it must be differentiable in
    ``latent`` when gradients are enabled. ``finish`` maps the last latent to the output
    whose error counts (a clamp, or nothing; a VAE decode is optional and costly).
    """

    num_steps: int

    def start(self) -> torch.Tensor: ...

    def step(self, index: int, latent: torch.Tensor) -> torch.Tensor: ...

    def finish(self, latent: torch.Tensor) -> torch.Tensor: ...


def run_trajectory(trajectory: Trajectory, set_step: SetStep | None = None,
                   latents: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Run every step; ``set_step(i)`` is called before step ``i``; the latent before each
    step and the last one are appended to ``latents`` when given. Returns the output."""
    latent = trajectory.start()
    for index in range(trajectory.num_steps):
        if latents is not None:
            latents.append(latent)
        if set_step is not None:
            set_step(index)
        latent = trajectory.step(index, latent)
    if latents is not None:
        latents.append(latent)
    return trajectory.finish(latent)


class EulerTrajectory:
    """A plain Euler loop over decreasing timesteps, for models without a pipeline.

    Starts from ``inputs[latent_key]``; each step moves it by ``-output / steps``. The
    model's output must have the latent's shape (diffusers video transformers do). Calling
    it as ``run(set_step)`` is a whole generation (the ``sample`` form of redundancy
    calibration).
    """

    def __init__(self, model: torch.nn.Module, inputs: Mapping[str, Any], steps: int, *,
                 latent_key: str = "hidden_states", max_timestep: int = 999) -> None:
        if steps < 1:
            raise ValueError(f"steps={steps!r} is invalid: a positive int")
        self.model = model
        self.kwargs = {k: v for k, v in inputs.items() if k not in (latent_key, "timestep")}
        self.latent = inputs[latent_key]
        self.latent_key = latent_key
        self.max_timestep = max_timestep
        self.num_steps = steps

    def start(self) -> torch.Tensor:
        return self.latent

    def step(self, index: int, latent: torch.Tensor) -> torch.Tensor:
        t = round(self.max_timestep * (1 - index / self.num_steps))
        timestep = torch.full((latent.shape[0],), t, dtype=torch.long)
        out = self.model(**{self.latent_key: latent}, timestep=timestep, **self.kwargs)
        out = out[0] if isinstance(out, (tuple, list)) else getattr(out, "sample", out)
        return latent - out / self.num_steps

    def finish(self, latent: torch.Tensor) -> torch.Tensor:
        return latent

    def __call__(self, set_step: SetStep) -> torch.Tensor:
        return run_trajectory(self, set_step)
