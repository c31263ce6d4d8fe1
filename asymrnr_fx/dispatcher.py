"""Runtime state of the backend, in one place: the step counter and the matching cache.

Compiled graphs carry no step state: a Dynamo-guarded step int would recompile per value and
fall back to eager after 8. Instead every compiled graph asks the dispatcher, on each call,
which denoising step it is and which attention layers it covers, and the dispatcher keeps
the match indices that are reused between refresh steps.

Step tracking, automatic by default:

* a graph with a ``timestep`` input starts a forward; a new distinct timestep value is the
  next step, a value above the previous one starts a new generation, the same value again is
  another forward of the same step (classifier-free guidance in two calls);
* graphs of repeated blocks (regional compilation) see ``temb`` instead: a new ``temb``
  tensor object starts a forward, new values start a step;
* other graphs (pieces after a graph break) continue the current forward.

``set_step`` (or the :func:`step` context manager, or :class:`StepCallback` as a diffusers
``callback_on_step_end``) overrides the automatic count; ``reset`` forgets everything.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Dispatcher", "DISPATCHER", "CacheEntry", "step", "StepCallback"]

logger = logging.getLogger("asymrnr_fx")


@dataclass
class CacheEntry:
    """Match indices of one (layer, component), computed at ``step``."""

    key: Any
    keep: torch.Tensor
    restore: torch.Tensor
    step: int


class Dispatcher:
    """Step tracking and the matching cache shared by every compiled graph."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the step count, the matching cache and the statistics."""
        self.step = -1
        self.generation = 0
        self.num_steps: int | None = None
        self.layer_cursor = 0
        self.sites_per_forward: int | None = None
        # (layer, component, branch): branch tells apart the forwards of one step (CFG in two
        # calls), so each keeps the indices matched on its own activations.
        self.cache: dict[tuple[int, str, int], CacheEntry] = {}
        self.stats: Counter[str] = Counter()
        self.refresh_steps: list[int] = []
        self.compile_log: list[tuple[str, float]] = []  # (variant, seconds) per phase compile
        # Video token grid of the running forward, set by `apply`'s pre-hook; the pass uses it
        # only where the graph itself shows none.
        self.grid_hint: tuple[int, int, int] | None = None
        self._manual = False
        self._last_timestep: float | None = None
        self._temb_ref: weakref.ref | None = None
        self._temb_value: torch.Tensor | None = None
        self._forwards_in_step = 0

    # -- generations and steps -------------------------------------------------------------

    def begin_generation(self, num_steps: int | None = None) -> None:
        """Start a new generation of ``num_steps`` steps: the cache is dropped."""
        self.cache.clear()
        self.step = -1
        self.generation += 1
        self.num_steps = num_steps
        self._last_timestep = None
        self._temb_value = None
        self.stats["generations"] += 1

    def set_step(self, step: int, num_steps: int | None = None) -> None:
        """Pin the step explicitly (turns automatic tracking off until :meth:`reset`)."""
        if not isinstance(step, int) or step < 0:
            raise ValueError(f"step={step!r} is invalid: a non-negative int")
        if num_steps is not None:
            self.num_steps = num_steps
        if step < self.step:
            self.begin_generation(self.num_steps)
        self._manual = True
        self.step = step
        self.layer_cursor = 0
        self._forwards_in_step = 0

    def _advance(self) -> None:
        self.step += 1
        if self.num_steps is not None and self.step >= self.num_steps:
            # More steps than announced: a new generation whose start we did not see.
            self.begin_generation(self.num_steps)
            self.step = 0
        self._forwards_in_step = 0
        self.stats["steps"] += 1

    def _start_forward(self) -> None:
        if self.layer_cursor and self.sites_per_forward is None:
            self.sites_per_forward = self.layer_cursor
        self.layer_cursor = 0
        self._forwards_in_step += 1
        self.stats["forwards"] += 1

    def on_timestep(self, timestep: torch.Tensor) -> None:
        """A forward with this ``timestep`` input starts."""
        if not self._manual:
            value = float(timestep.reshape(-1)[0]) if timestep.numel() else 0.0
            last = self._last_timestep
            if last is not None and value > last:
                self.begin_generation(self.num_steps)
            if last is None or value != last:
                self._advance()
            self._last_timestep = value
        self._start_forward()

    def on_temb(self, temb: torch.Tensor) -> None:
        """A repeated block receives ``temb``; a new tensor object is a new forward."""
        if self._temb_ref is not None and self._temb_ref() is temb:
            return
        self._temb_ref = weakref.ref(temb)
        if not self._manual:
            previous = self._temb_value
            if previous is None or previous.shape != temb.shape or not torch.equal(previous, temb):
                self._advance()
            self._temb_value = temb.detach().clone()
        self._start_forward()

    def claim_layers(self, count: int) -> tuple[int, int]:
        """Reserve ``count`` consecutive layer indices of this forward: ``(step, first)``."""
        if self.step < 0:
            self._advance()
        first = self.layer_cursor
        self.layer_cursor += count
        return self.step, first

    @property
    def branch(self) -> int:
        """Which forward of the current step this is (0, or 1 for the second CFG call)."""
        return max(self._forwards_in_step - 1, 0)

    def is_refresh_step(self, step: int, interval: int) -> bool:
        return step % interval == 0

    # -- the matching cache ---------------------------------------------------------------

    def lookup(self, layer: int, component: str, key: Any) -> CacheEntry | None:
        """Cached indices of (layer, component) if computed for exactly ``key``."""
        entry = self.cache.get((layer, component, self.branch))
        if entry is None or entry.key != key:
            return None
        return entry

    def store(self, layer: int, component: str, key: Any, keep: torch.Tensor, restore: torch.Tensor) -> None:
        self.cache[(layer, component, self.branch)] = CacheEntry(key, keep, restore, self.step)


DISPATCHER = Dispatcher()


@contextlib.contextmanager
def step(index: int, num_steps: int | None = None) -> Iterator[None]:
    """Run the enclosed forward(s) as denoising step ``index`` (explicit override)."""
    DISPATCHER.set_step(index, num_steps)
    yield


class StepCallback:
    """A diffusers ``callback_on_step_end`` that tells the dispatcher the next step.

    ``pipe(..., callback_on_step_end=StepCallback(num_steps))``: steps then follow the
    pipeline's own loop instead of the timestep values.
    """

    def __init__(self, num_steps: int | None = None) -> None:
        self.num_steps = num_steps
        DISPATCHER.set_step(0, num_steps)

    def __call__(self, pipe: Any, step_index: int, timestep: Any, callback_kwargs: dict) -> dict:
        DISPATCHER.set_step(step_index + 1, self.num_steps)
        return callback_kwargs
