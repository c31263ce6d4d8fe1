"""The denoising step and the forward within it, told or guessed: :class:`StepTracker`.

Shared by the runtime state of an application (:mod:`asymrnr_fx.state`) and by calibration
(:mod:`asymrnr_fx.schedules.attention_calls`), which counts steps the same way. Told steps come
from a scheduler, a pipeline context or the user (:meth:`StepTracker.tell_step`); guessed ones
from the noise level a forward sees (:meth:`StepTracker.observe`): the largest value, the first
two distinct values set the direction and a move against it starts a new generation, a repeated
value is another forward of the same step.
"""

from __future__ import annotations

import torch

__all__ = ["StepTracker"]


class StepTracker:
    """The denoising step and the forward within it, told or guessed (see module docs)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.step = -1
        self.num_steps: int | None = None
        self.generations = 0
        self.told = False  # a scheduler, a pipeline context or the user tells the steps
        self.forwards_in_step = 0
        self.branch_name: str | None = None
        self._last_value: float | None = None
        self._direction = 0
        self._temb_value: torch.Tensor | None = None

    # -- told ------------------------------------------------------------------------------
    def begin_generation(self, num_steps: int | None = None, *, told: bool = True) -> None:
        """A new generation of ``num_steps`` steps starts (its first forward is step 0)."""
        self.generations += 1
        self.num_steps = num_steps
        self.step = 0 if told else -1
        self.told = self.told or told
        self.forwards_in_step = 0
        self._last_value = None
        self._direction = 0
        self._temb_value = None

    def tell_step(self, step: int, num_steps: int | None = None, *, finished: bool = False) -> None:
        """Step ``step`` runs next (an earlier step than the current one: a new generation);
        ``finished`` allows ``step == num_steps``: the generation is done."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step={step!r} is invalid: a non-negative int")
        if num_steps is not None:
            if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
                raise ValueError(f"num_steps={num_steps!r} is invalid: a positive int")
        total = num_steps if num_steps is not None else self.num_steps
        if total is not None and step >= total + finished:
            raise ValueError(f"step={step} is beyond the generation's num_steps={total}: steps count "
                             f"0 .. {total - 1}; pass the generation's real step count as num_steps")
        if num_steps is not None:
            self.num_steps = num_steps
        if step < self.step or self.generations == 0:
            self.begin_generation(self.num_steps)
        if step != self.step:
            self.forwards_in_step = 0
        self.step = step
        self.told = True

    # -- guessed -----------------------------------------------------------------------------
    def advance(self) -> None:
        """The next step (more steps than the generation has: a new generation)."""
        if self.generations == 0 or (self.num_steps is not None and self.step + 1 >= self.num_steps):
            self.begin_generation(self.num_steps, told=False)
            self.step = 0
            return
        self.step += 1
        self.forwards_in_step = 0

    def observe_timestep(self, timestep: torch.Tensor) -> None:
        """A forward with this ``timestep`` input starts (the guessing fallback)."""
        value = float(timestep.max()) if timestep.numel() else 0.0
        last = self._last_value
        if last is None:
            if self.step < 0 or self.generations == 0:
                self.advance()
        elif value != last:  # (an equal value is another forward of the same step)
            direction = 1 if value > last else -1
            if self._direction and direction != self._direction:
                self.begin_generation(self.num_steps, told=False)
                self.step = 0
            else:
                self._direction = direction
                self.advance()
        self._last_value = value

    def observe(self, kind: str, value: torch.Tensor) -> None:
        """The running forward's noise level: a ``timestep`` (see :meth:`observe_timestep`)
        or, for repeated blocks compiled alone, the ``temb`` they share (a new value is a
        new step)."""
        if kind == "timestep":
            self.observe_timestep(value)
            return
        previous = self._temb_value
        if previous is None:
            if self.step < 0 or self.generations == 0:
                self.advance()
        elif previous.shape != value.shape or not torch.equal(previous, value):
            self.advance()
        self._temb_value = value.detach().clone()

    # -- forwards ------------------------------------------------------------------------------
    def start_forward(self) -> None:
        if self.step < 0:
            self.advance()
        self.forwards_in_step += 1

    @property
    def branch(self) -> str | int:
        """Which forward of the step this is: the pipeline's name for it ("cond",
        "uncond"), else its index within the step (0, or 1 for the second CFG call)."""
        if self.branch_name is not None:
            return self.branch_name
        return max(self.forwards_in_step - 1, 0)
