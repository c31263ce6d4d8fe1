"""User-facing configuration of the AsymRnR backend.

One frozen dataclass, validated on construction: every error names the field and the
valid range, so a typo never turns into a silently different model.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .schedule import check_ratio

if TYPE_CHECKING:
    from .schedule import Schedule

__all__ = ["AsymRnRConfig", "DEFAULT_KV_RATIO"]

# Conservative default for a bare `backend="asymrnr"`: K/V only, a moderate cut, Q untouched.
# The paper's tables cut K/V by 0.3 where they cut at all; perturbing Q hurts far more.
DEFAULT_KV_RATIO = 0.3

_CHOICES = {
    "match_on": ("v", "k"),
    "metric": ("l2", "cosine"),
    "merge": ("drop", "mean"),
    "match_mode": ("similarity", "random", "strided"),
    "text_side": (None, "before", "after"),
}


@dataclass(frozen=True)
class AsymRnRConfig:
    """How the backend reduces attention.

    Ratios are the fraction of *video* tokens removed (text tokens are never reduced).

    Attributes:
        kv_ratio: K/V ratio for every rewritten site when neither ``layer_ratios`` nor
            ``schedule`` is given.
        q_ratio: Q ratio likewise (0 leaves Q untouched).
        layer_ratios: per attention site (in call order within one forward), ``(q, kv)``.
        schedule: a :class:`~asymrnr_fx.schedule.Schedule`, a preset name, or a JSON path;
            ratios per (layer, step, component). Wins over the fields above.
        stride: partition chunk (t, h, w); one dst token per chunk.
        match_on: K/V matching computed on ``"v"`` (paper) or ``"k"``.
        metric: ``"l2"`` (squared L2, paper default) or ``"cosine"``.
        merge: ``"drop"`` (dst keeps its own value, paper default) or ``"mean"``.
        match_mode: ``"similarity"`` (the method), ``"random"`` (drop random src tokens:
            an ablation) or ``"strided"`` (fixed strided cut, no matching: the speed bound).
        symmetric: ToMe-style baseline: one matching computed on K cuts Q, K and V alike.
        cache_interval: recompute matching every this many steps (aligned to step 0);
            1 recomputes every step.
        grid: the video token grid (T, H, W); inferred from the graph when None.
        text_tokens / text_side: the text segment; inferred when None.
        seed: seed of the dst draw in each chunk.
        num_steps: denoising steps per generation, for schedules (default: the schedule's).
    """

    kv_ratio: float = DEFAULT_KV_RATIO
    q_ratio: float = 0.0
    layer_ratios: Sequence[tuple[float, float]] | None = None
    schedule: Schedule | str | os.PathLike | None = None
    stride: tuple[int, int, int] = (2, 2, 2)
    match_on: str = "v"
    metric: str = "l2"
    merge: str = "drop"
    match_mode: str = "similarity"
    symmetric: bool = False
    cache_interval: int = 5
    grid: tuple[int, int, int] | None = None
    text_tokens: int | None = None
    text_side: str | None = None
    seed: int = 0
    num_steps: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_ratio("kv_ratio", self.kv_ratio)
        check_ratio("q_ratio", self.q_ratio)
        if self.layer_ratios is not None:
            ratios = tuple((float(q), float(kv)) for q, kv in self.layer_ratios)
            for i, (q, kv) in enumerate(ratios):
                check_ratio(f"layer_ratios[{i}].q", q)
                check_ratio(f"layer_ratios[{i}].kv", kv)
            object.__setattr__(self, "layer_ratios", ratios)
        stride = tuple(self.stride)
        if len(stride) != 3 or any(not isinstance(s, int) or s < 1 for s in stride):
            raise ValueError(
                f"stride={self.stride!r} is invalid: give three positive ints (t, h, w), e.g. (2, 2, 2)"
            )
        object.__setattr__(self, "stride", stride)
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"{name}={getattr(self, name)!r} is invalid: choose one of {choices}")
        if not isinstance(self.cache_interval, int) or self.cache_interval < 1:
            raise ValueError(
                f"cache_interval={self.cache_interval!r} is invalid: a positive int (1 = match every step)"
            )
        if self.grid is not None:
            grid = tuple(self.grid)
            if len(grid) != 3 or any(not isinstance(g, int) or g < 1 for g in grid):
                raise ValueError(f"grid={self.grid!r} is invalid: give three positive ints (T, H, W)")
            object.__setattr__(self, "grid", grid)
        if self.text_tokens is not None and (not isinstance(self.text_tokens, int) or self.text_tokens < 0):
            raise ValueError(f"text_tokens={self.text_tokens!r} is invalid: a non-negative int")
        if self.num_steps is not None and (not isinstance(self.num_steps, int) or self.num_steps < 1):
            raise ValueError(f"num_steps={self.num_steps!r} is invalid: a positive int")
        if self.schedule is not None and not isinstance(self.schedule, (str, os.PathLike)):
            from .schedule import Schedule

            if not isinstance(self.schedule, Schedule):
                raise ValueError(
                    f"schedule={self.schedule!r} is invalid: give a Schedule, a preset name or a JSON path"
                )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> AsymRnRConfig:
        """Build from a mapping; an unknown key is an error that lists the known ones."""
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown AsymRnR option(s) {unknown}; known options: {sorted(known)}")
        return cls(**dict(values))

    def replace(self, **changes: Any) -> AsymRnRConfig:
        """A copy with ``changes`` applied (validated like the constructor)."""
        return self.from_dict({**{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}, **changes})

    @property
    def is_identity(self) -> bool:
        """True when no ratio anywhere is above zero (the graph must stay untouched)."""
        if self.schedule is not None:
            return False
        if self.layer_ratios is not None:
            return all(q == 0 and kv == 0 for q, kv in self.layer_ratios)
        return self.q_ratio == 0 and self.kv_ratio == 0
