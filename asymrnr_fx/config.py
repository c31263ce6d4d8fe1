"""User-facing configuration of the AsymRnR backend.

One frozen dataclass, validated on construction: every error names the field and the
valid range, so a typo never turns into a silently different model.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .schedules.schedule import check_ratio

if TYPE_CHECKING:
    from .schedules.ratios import ScheduleSource
    from .schedules.schedule import Schedule

__all__ = ["AsymRnRConfig", "DEFAULT_KV_RATIO", "RATIO_FIELDS"]

# Conservative default for a bare `backend="asymrnr"`: K/V only, a moderate cut, Q untouched.
# The paper's tables cut K/V by 0.3 where they cut at all; perturbing Q hurts far more.
DEFAULT_KV_RATIO = 0.3

# Fields that say which ratios to use: given none, apply(pipe) and the bare backend use the
# authors' calibrated table on the models they calibrated (see schedules.presets.default_preset).
RATIO_FIELDS = frozenset({"kv_ratio", "q_ratio", "layer_ratios", "schedule"})

_CHOICES = {
    "match_on": ("v", "k"),
    "metric": ("l2", "cosine"),
    "merge": ("drop", "mean"),
    "match_mode": ("similarity", "random", "strided"),
    "match_kernel": ("auto", "triton", "chunked"),
    "text_side": (None, "before", "after"),
    "chunk_offset": ("start", "random"),
}


def _int_triple(name: str, value: Any, example: str) -> tuple[int, int, int]:
    """Three positive ints, else a ValueError naming the field."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 3 or any(
            isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
        raise ValueError(f"{name}={value!r} is invalid: give three positive ints {example}")
    return tuple(value)  # type: ignore[return-value]


def _layer_ratios(value: Any) -> tuple[tuple[float, float], ...]:
    """One ``(q, kv)`` pair of ratios per attention site, else a ValueError naming the entry."""
    fix = "give one (q, kv) pair per attention site, e.g. [(0.0, 0.5), (0.3, 0.5)]"
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence) or not value:
        raise ValueError(f"layer_ratios={value!r} is invalid: {fix}")
    pairs = []
    for i, pair in enumerate(value):
        if isinstance(pair, (str, bytes, Mapping)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise ValueError(f"layer_ratios[{i}]={pair!r} is invalid: {fix}")
        pairs.append((check_ratio(f"layer_ratios[{i}].q", pair[0]), check_ratio(f"layer_ratios[{i}].kv", pair[1])))
    return tuple(pairs)


@dataclass(frozen=True)
class AsymRnRConfig:
    """How the backend reduces attention.

    Ratios are the fraction of *video* tokens removed (text tokens are never reduced).

    Attributes:
        kv_ratio: K/V ratio for every rewritten site when neither ``layer_ratios`` nor
            ``schedule`` is given.
        q_ratio: Q ratio likewise (0 leaves Q untouched).
        layer_ratios: per attention site, ``(q, kv)``; sites are numbered in the order they
            first run in a forward (a site is its block, whichever blocks later run).
        schedule: a :class:`~asymrnr_fx.schedules.schedule.Schedule`, a preset name, or a JSON path;
            ratios per (layer, step, component). Wins over the fields above. Loaded and
            checked here; the stride, cache interval, metric and seed it carries (a
            preset's reference settings, a calibrated file's) apply unless given explicitly.
        stride: partition chunk (t, h, w); one dst token per chunk. Default: the
            schedule's, else (2, 2, 2).
        match_on: K/V matching computed on ``"v"`` (paper) or ``"k"``.
        metric: ``"l2"`` (squared L2, paper default) or ``"cosine"``. Default: the
            schedule's, else ``"l2"``.
        merge: ``"drop"`` (dst keeps its own value, paper default) or ``"mean"``.
        match_mode: ``"similarity"`` (the method), ``"random"`` (drop random src tokens:
            an ablation) or ``"strided"`` (fixed strided cut, no matching: the speed bound).
        symmetric: ToMe-style baseline: one matching computed on K cuts Q, K and V alike.
        cache_interval: recompute matching every this many steps (aligned to step 0);
            1 recomputes every step. Default: the schedule's, else 5.
        grid: the video token grid (T, H, W); inferred from the graph when None.
        text_tokens / text_side: the text segment; inferred when None.
        seed: seed of the dst draws. Default: the schedule's, else 0.
        resample_partition: draw a fresh dst/src partition per (site, component, refresh
            window), as the reference implementation does (see
            :func:`asymrnr_fx.ops.site_partition`); False uses one partition everywhere.
        allow_1d_partition: rewrite self-attention whose video grid the graph does not
            prove, partitioning its tokens in 1-D. Off by default: without grid evidence
            a site may not be video at all (a text encoder), so it is left alone.
        match_kernel: how matching runs on CUDA: ``"auto"`` (the fused Triton kernel after
            a first-call check against the chunked path, falling back with a WARNING),
            ``"triton"`` or ``"chunked"`` to force one (``auto`` also reads the
            ``ASYMRNR_MATCH_KERNEL`` environment variable).
        num_steps: denoising steps per generation, for schedules (default: the schedule's).
        chunk_offset: where the stride's complete chunks sit when the stride does not divide
            the grid: ``"start"`` (at the origin; the leftover frames, rows and columns are
            the last ones) or ``"random"`` (shifted by a fresh draw per partition, as the
            reference implementation does). See the leftover-token measurement in docs/schedules.md.
    """

    kv_ratio: float = DEFAULT_KV_RATIO
    q_ratio: float = 0.0
    layer_ratios: Sequence[tuple[float, float]] | None = None
    schedule: Schedule | str | os.PathLike | None = None
    stride: tuple[int, int, int] | None = None
    match_on: str = "v"
    metric: str | None = None
    merge: str = "drop"
    match_mode: str = "similarity"
    symmetric: bool = False
    cache_interval: int | None = None
    grid: tuple[int, int, int] | None = None
    text_tokens: int | None = None
    text_side: str | None = None
    seed: int | None = None
    resample_partition: bool = True
    allow_1d_partition: bool = False
    match_kernel: str = "auto"
    num_steps: int | None = None
    chunk_offset: str = "start"

    def __post_init__(self) -> None:
        from .schedules.ratios import SCHEDULE_SETTINGS, effective_settings, load_schedule_source

        # Fields the caller gave; the others come from the schedule or the defaults.
        explicit = {name: getattr(self, name) for name in SCHEDULE_SETTINGS
                    if getattr(self, name) is not None}
        source = None if self.schedule is None else load_schedule_source(self.schedule)
        object.__setattr__(self, "_explicit", explicit)
        object.__setattr__(self, "_source", source)
        for name, value in effective_settings(explicit, source).items():
            object.__setattr__(self, name, value)

        check_ratio("kv_ratio", self.kv_ratio)
        check_ratio("q_ratio", self.q_ratio)
        if self.layer_ratios is not None:
            object.__setattr__(self, "layer_ratios", _layer_ratios(self.layer_ratios))
        stride = _int_triple("stride", self.stride, "(t, h, w), e.g. (2, 2, 2)")
        object.__setattr__(self, "stride", stride)
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"{name}={getattr(self, name)!r} is invalid: choose one of {choices}")
        if isinstance(self.cache_interval, bool) or not isinstance(self.cache_interval, int) or self.cache_interval < 1:
            raise ValueError(
                f"cache_interval={self.cache_interval!r} is invalid: a positive int (1 = match every step)"
            )
        if self.grid is not None:
            object.__setattr__(self, "grid", _int_triple("grid", self.grid, "(T, H, W)"))
        if self.text_tokens is not None and (isinstance(self.text_tokens, bool) or not isinstance(self.text_tokens, int)
                                             or self.text_tokens < 0):
            raise ValueError(f"text_tokens={self.text_tokens!r} is invalid: a non-negative int")
        if self.num_steps is not None and (isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int)
                                           or self.num_steps < 1):
            raise ValueError(f"num_steps={self.num_steps!r} is invalid: a positive int")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed={self.seed!r} is invalid: an int")
        for name in ("symmetric", "resample_partition", "allow_1d_partition"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} is invalid: True or False")

    @property
    def schedule_source(self) -> ScheduleSource | None:
        """The loaded schedule (preset or fixed table) and the settings it carries."""
        return self._source  # type: ignore[attr-defined]

    @property
    def reuse_schedule(self) -> Schedule | None:
        """The fixed schedule when it carries a block-reuse table (run by ``apply``), else None."""
        source = self.schedule_source
        schedule = None if source is None else source.schedule
        return schedule if schedule is not None and schedule.reuse is not None else None

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> AsymRnRConfig:
        """Build from a mapping; an unknown key is an error that lists the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown AsymRnR option(s) {unknown}; known options: {sorted(known)}")
        return cls(**dict(values))

    def replace(self, **changes: Any) -> AsymRnRConfig:
        """A copy with ``changes`` applied (validated like the constructor).

        Settings that came from the schedule are not carried over as if given: replacing
        the schedule brings the new schedule's stride, cache interval, metric and seed.
        """
        from .schedules.ratios import SCHEDULE_SETTINGS

        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in SCHEDULE_SETTINGS:
            values[name] = self._explicit.get(name)  # type: ignore[attr-defined]
        return self.from_dict({**values, **changes})

    @property
    def is_identity(self) -> bool:
        """True when no ratio anywhere is above zero (the graph must stay untouched)."""
        if self.schedule is not None:
            fixed = self.schedule_source.schedule
            return fixed is not None and fixed.is_identity
        if self.layer_ratios is not None:
            return all(q == 0 and kv == 0 for q, kv in self.layer_ratios)
        return self.q_ratio == 0 and self.kv_ratio == 0
