"""What calibration measures and allocation reads: the damage of each reduction unit.

A *unit* is one (component, step group, attention site): the ratio a schedule gives it holds
for every step of the group. A :class:`DamageTable` holds, per unit, the damage of cutting it
to each of a few ratio *levels*; between levels (and from 0 at ratio 0) damage is taken as
linear in the tokens removed. Output-sensitivity calibration fills it with a predicted error
of the final output (mean squared error per output element: lower is better, and the sum
over units predicts a schedule's error); redundancy calibration with its proxy.

:class:`Reduction` holds the matching settings a measurement used; a calibrated schedule
carries them so the backend reduces exactly as measured.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..defaults import DEFAULT_CACHE_INTERVAL, DEFAULT_METRIC, DEFAULT_SEED, DEFAULT_STRIDE
from ..ops import Partition, dst_count, kept_count, site_partition

__all__ = ["COMPONENTS", "Reduction", "DamageTable", "step_groups", "distinct_levels", "reuse_computes",
           "reuse_pattern"]

COMPONENTS = ("q", "kv")


@dataclass(frozen=True)
class Reduction:
    """How the backend will reduce: the video grid and the matching settings.

    The dst partition is drawn afresh per (site, component, refresh window), as the backend
    does by default (:func:`asymrnr_fx.ops.site_partition`). A schedule carries the stride,
    seed, metric and cache interval; ``merge`` is the config's (``AsymRnRConfig.merge``), so a
    schedule measured with ``merge="mean"`` must run with it.
    """

    grid: tuple[int, int, int]
    stride: tuple[int, int, int] = DEFAULT_STRIDE
    seed: int = DEFAULT_SEED
    metric: str = DEFAULT_METRIC
    cache_interval: int = DEFAULT_CACHE_INTERVAL
    merge: str = "drop"

    def __post_init__(self) -> None:
        if self.metric not in ("l2", "cosine"):
            raise ValueError(f"metric={self.metric!r} is invalid: 'l2' or 'cosine'")
        if self.merge not in ("drop", "mean"):
            raise ValueError(f"merge={self.merge!r} is invalid: 'drop' or 'mean'")
        if isinstance(self.cache_interval, bool) or not isinstance(self.cache_interval, int) \
                or self.cache_interval < 1:
            raise ValueError(f"cache_interval={self.cache_interval!r} is invalid: a positive int")

    @property
    def num_video(self) -> int:
        return math.prod(self.grid)

    @property
    def num_dst(self) -> int:
        return dst_count(self.grid, self.stride)

    @property
    def max_ratio(self) -> float:
        """The largest ratio that keeps every dst token (the partition's limit), written so
        that the backend keeps exactly the dst tokens."""
        return 1.0 - (self.num_dst + 0.5) / self.num_video

    def kept(self, ratio: float) -> int:
        """Video tokens kept at ``ratio`` (never fewer than the dst tokens)."""
        return kept_count(self.num_video, ratio, self.num_dst)

    def window(self, step: int) -> int:
        """The refresh window of ``step``: matching is recomputed at its first step."""
        return step // self.cache_interval

    def partition(self, site: int, component: str, window: int, device: torch.device) -> Partition:
        return site_partition(self.grid, self.stride, seed=self.seed, site=site,
                              component=component, window=window, device=device)

    def meta(self) -> dict[str, Any]:
        """The settings a schedule carries (read back by the backend's config)."""
        return {"grid": list(self.grid), "stride": list(self.stride), "seed": self.seed,
                "metric": self.metric, "cache_interval": self.cache_interval, "merge": self.merge}


def distinct_levels(levels: Sequence[float], reduction: Reduction) -> tuple[float, ...]:
    """Ascending levels that each remove at least one more token than the previous; a level
    past the partition's limit becomes the limit."""
    out, prev = [], reduction.num_video
    for ratio in sorted(float(r) for r in levels):
        if not 0.0 < ratio < 1.0:
            raise ValueError(f"level {ratio!r} is out of range: ratio levels are in (0, 1)")
        kept = reduction.kept(ratio)
        if kept < prev:
            out.append(ratio if kept > reduction.num_dst else reduction.max_ratio)
            prev = kept
    return tuple(out)


def step_groups(num_steps: int, cache_interval: int, groups: int | None = None) -> tuple[range, ...]:
    """Steps that share ratios: whole refresh windows (``groups`` None: one group per window),
    so a group's matching is the one the backend computes at the window's first step."""
    windows = -(-num_steps // cache_interval)
    count = windows if groups is None else max(1, min(int(groups), windows))
    bounds = [min(num_steps, (g * windows // count) * cache_interval) for g in range(count + 1)]
    return tuple(range(bounds[g], bounds[g + 1]) for g in range(count))


def reuse_computes(step: int, cache_interval: int, period: int) -> bool:
    """Whether a block reused with ``period`` computes at ``step``: at the refresh window's
    steps ``0, period, 2 x period, ...``."""
    return (step % cache_interval) % period == 0


def reuse_pattern(steps: range, cache_interval: int, period: int) -> list[bool]:
    """Per step of ``steps``, whether the block is reused (the schedule's reuse cells)."""
    return [not reuse_computes(s, cache_interval, period) for s in steps]


@dataclass(frozen=True)
class DamageTable:
    """Measured damage per unit and ratio level (see the module docs).

    ``damage[c]`` is a float64 tensor ``(groups, layers, levels[c])``; ``text_tokens`` is the
    text segment of the attention sequence (it counts in the FLOPs, never reduced).
    ``reuse`` (when block reuse was measured) is ``(groups, blocks, len(reuse_periods))``: the
    damage of reusing a block with each period (:func:`reuse_computes`) over a group, and
    ``predict`` the same with the residual extrapolated (schedule cell 2); block ``i`` holds
    attention site ``i``. ``costs`` are what one step of the calibration batch costs, under
    ``"flops"`` and ``"seconds"`` (on the machine that measured): ``other`` (outside the blocks),
    ``block`` (per block, attention excluded) and ``attention`` (per site, full attention).
    """

    method: str
    reduction: Reduction
    num_layers: int
    num_steps: int
    text_tokens: int
    groups: tuple[range, ...]
    levels: Mapping[str, tuple[float, ...]]
    damage: Mapping[str, torch.Tensor]
    clips: int = 1
    meta: Mapping[str, Any] | None = None
    reuse_periods: tuple[int, ...] = ()
    reuse: torch.Tensor | None = None
    costs: Mapping[str, Any] | None = None
    predict: torch.Tensor | None = None

    def kept_points(self, comp: str) -> list[int]:
        """Kept tokens at ratio 0 and at every level of ``comp``."""
        return [self.reduction.num_video] + [self.reduction.kept(r) for r in self.levels[comp]]

    def at(self, comp: str, group: int, layer: int, kept: int) -> float:
        """Damage of keeping ``kept`` tokens of ``comp`` in one unit (linear between levels)."""
        points = self.kept_points(comp)
        values = [0.0] + [float(v) for v in self.damage[comp][group, layer]]
        for j in range(len(points) - 1):
            hi, lo = points[j], points[j + 1]
            if lo <= kept <= hi:
                frac = 0.0 if hi == lo else (hi - kept) / (hi - lo)
                return values[j] + (values[j + 1] - values[j]) * frac
        raise ValueError(f"kept={kept} is outside the measured levels of {comp!r} "
                         f"({points[-1]}..{points[0]} tokens)")

    def predicted_mse(self, schedule: Any) -> float:
        """Sum of the units' damage under ``schedule``: for output sensitivity, the predicted
        mean squared error of the final output (first order, units taken as independent)."""
        total = 0.0
        for g, steps in enumerate(self.groups):
            ratios = schedule.ratios_at(steps.start, self.num_steps)
            for layer, (q, kv) in enumerate(ratios):
                for comp, ratio in (("q", q), ("kv", kv)):
                    if ratio > 0:
                        total += self.at(comp, g, layer, self.reduction.kept(ratio))
            for block in range(getattr(schedule, "num_blocks", 0)):
                cells = [schedule.reuse_at(s, self.num_steps)[block] for s in steps]
                if any(cells):
                    k = self._period_of([bool(c) for c in cells], steps)
                    modes = {c for c in cells if c}
                    table = self.predict if modes == {2} else self.reuse if modes == {1} else None
                    if table is None:
                        raise ValueError(f"the schedule mixes reuse and predict cells in one step group of block "
                                         f"{block} (steps {steps.start}-{steps.stop - 1}): not a priced option")
                    total += float(table[g, block, k])
        return total

    def _period_of(self, reused: list[bool], steps: range) -> int:
        """Index of the measured period whose pattern ``reused`` is (else a ValueError)."""
        for k, period in enumerate(self.reuse_periods if self.reuse is not None else ()):
            if reuse_pattern(steps, self.reduction.cache_interval, period) == reused:
                return k
        raise ValueError(f"the schedule reuses blocks at steps {[s for s, r in zip(steps, reused, strict=True) if r]}, "
                         f"a pattern this measurement did not price (periods {list(self.reuse_periods)})")

    # ------------------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (a measurement can be saved and refitted at other targets)."""
        return {
            "method": self.method, "reduction": self.reduction.meta(),
            "num_layers": self.num_layers, "num_steps": self.num_steps,
            "text_tokens": self.text_tokens,
            "groups": [[g.start, g.stop] for g in self.groups],
            "levels": {c: list(self.levels[c]) for c in COMPONENTS},
            "damage": {c: self.damage[c].tolist() for c in COMPONENTS},
            "clips": self.clips, "meta": dict(self.meta or {}),
            **({"reuse_periods": list(self.reuse_periods), "reuse": self.reuse.tolist()}
               if self.reuse is not None else {}),
            **({"predict": self.predict.tolist()} if self.predict is not None else {}),
            **({"costs": dict(self.costs)} if self.costs is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DamageTable:
        """Inverse of :meth:`to_dict`; a missing or malformed entry is a ValueError naming it."""
        try:
            red = dict(data["reduction"])
            reduction = Reduction(tuple(red["grid"]), tuple(red["stride"]), int(red["seed"]),
                                  red["metric"], int(red["cache_interval"]), red.get("merge", "drop"))
            table = cls(
                str(data["method"]), reduction, int(data["num_layers"]), int(data["num_steps"]),
                int(data["text_tokens"]), tuple(range(a, b) for a, b in data["groups"]),
                {c: tuple(float(v) for v in data["levels"][c]) for c in COMPONENTS},
                {c: torch.tensor(data["damage"][c], dtype=torch.float64) for c in COMPONENTS},
                int(data.get("clips", 1)), dict(data.get("meta") or {}),
                tuple(int(p) for p in data.get("reuse_periods", ())),
                torch.tensor(data["reuse"], dtype=torch.float64) if "reuse" in data else None,
                dict(data["costs"]) if "costs" in data else None,
                torch.tensor(data["predict"], dtype=torch.float64) if "predict" in data else None)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a calibration measurement ({type(exc).__name__}: {exc}): write "
                             "one with `asymrnr calibrate` or DamageTable.to_dict()") from None
        for c in COMPONENTS:
            want = (len(table.groups), table.num_layers, len(table.levels[c]))
            if tuple(table.damage[c].shape) != want:
                raise ValueError(f"damage[{c!r}] has shape {tuple(table.damage[c].shape)}, expected "
                                 f"{want} (groups, layers, levels)")
        for name in ("reuse", "predict"):
            value = getattr(table, name)
            if value is not None and tuple(value.shape) != (len(table.groups), table.num_layers,
                                                            len(table.reuse_periods)):
                raise ValueError(f"{name} has shape {tuple(value.shape)}, expected (groups, blocks, periods)")
        return table
