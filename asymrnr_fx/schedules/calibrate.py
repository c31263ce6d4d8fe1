"""Fit a reduction schedule to a model from its own token redundancy.

Two stages:

1. :func:`measure_redundancy` runs the *baseline* model eagerly through a whole sampling
   run and intercepts every video self-attention call (``F.scaled_dot_product_attention``
   where Q and K have the same length, at least the video token count). For each
   (step, attention site) it matches, exactly as the backend would, every src token to its
   nearest dst, on Q (for the Q ratio) and on V (for the K/V ratio), and keeps the sorted
   nearest-dst distances relative to the mean squared token norm. Removing the ``n`` most
   redundant tokens then costs ``damage(n)`` = sum of their relative distances / ``N``.
2. :func:`allocate` turns that into ratios that remove a target share of the attention
   FLOPs at the least damage. Attention cost per site and step is taken as
   ``(text + Nq_kept) * (text + Nk_kept)``. Allocation units are (step group, site,
   component); each climbs a ladder of ratio levels. A greedy pass always takes the
   increment with the least (prior-weighted) damage per FLOP saved. Its order does not
   depend on the target, and the last increment is trimmed to the token, so:

   * the target is met, with at most one token too many removed at one site;
   * a higher target never lowers any ratio (a longer prefix of the same sequence);
   * the result is deterministic given the seed (partition draw and sampling noise).

Priors (``priors=True``, the default) weight the damage with the paper's observations:
Q damage counts ``Q_WEIGHT`` times K/V damage, shallow sites up to twice, early steps up to
twice. Steps are split into ``step_groups`` equal groups (default 5) that share ratios, so
the schedule has at most that many distinct phases (each phase is one compiled graph).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..ops import kept_count, partition
from .schedule import Schedule

__all__ = [
    "CalibrationResult",
    "Redundancy",
    "calibrate",
    "measure_redundancy",
    "allocate",
    "attention_flops_cut",
    "simple_sampler",
    "Q_LEVELS",
    "KV_LEVELS",
]

Q_LEVELS = (0.2, 0.4, 0.6, 0.8, 0.9)
KV_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
Q_WEIGHT = 4.0
_CURVE_POINTS = 200  # damage curve resolution: removal fractions j / 200 of the video tokens

SetStep = Callable[[int], None]


@dataclass(frozen=True)
class Redundancy:
    """Measured redundancy of a baseline model over one sampling run.

    ``curves[c]`` is a float64 tensor ``(steps, layers, _CURVE_POINTS + 1)`` (``c`` in
    ``"q"``, ``"kv"``): damage after removing ``j / _CURVE_POINTS`` of the video tokens
    (``inf`` past the src count: dst tokens are never removed).
    ``median[c]`` is the median relative nearest-dst distance per (step, layer).
    """

    num_layers: int
    num_steps: int
    num_video: int
    num_dst: int
    text_tokens: int
    curves: Mapping[str, torch.Tensor]
    median: Mapping[str, torch.Tensor]
    grid: tuple[int, int, int]
    stride: tuple[int, int, int]
    seed: int
    metric: str

    def damage(self, comp: str, step: int, layer: int, ratio: float) -> float:
        """Damage proxy of cutting ``comp`` by ``ratio`` at (step, layer)."""
        removed = self.num_video - kept_count(self.num_video, ratio, self.num_dst)
        pos = removed / self.num_video * _CURVE_POINTS
        lo = min(int(pos), _CURVE_POINTS)
        hi = min(lo + 1, _CURVE_POINTS)
        curve = self.curves[comp][step, layer]
        a, b = float(curve[lo]), float(curve[hi])
        if math.isinf(b):  # at the src-count edge: no interpolation into the forbidden part
            return a
        return a + (b - a) * (pos - lo)


@dataclass(frozen=True)
class CalibrationResult:
    """The fitted schedule and JSON-ready statistics about it."""

    schedule: Schedule
    stats: dict[str, Any] = field(repr=False)


def attention_flops_cut(schedule: Schedule, num_video: int, num_dst: int, text_tokens: int,
                        num_steps: int | None = None) -> float:
    """Share of the video self-attention FLOPs a schedule removes over one generation."""
    from .ratios import attention_flops_cut as flops_cut

    steps = schedule.num_steps if num_steps is None else num_steps
    return flops_cut([schedule.ratios_at(s, steps) for s in range(steps)], num_video=num_video,
                     num_dst=num_dst, text_tokens=text_tokens)


# ------------------------------------------------------------------------ measuring
def _sdpa_qkv(args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    names = ("query", "key", "value")
    vals = list(args[:3]) + [kwargs.get(n) for n in names[len(args[:3]):]]
    return vals[0], vals[1], vals[2]


class _Recorder(TorchFunctionMode):
    """Intercepts SDPA calls and accumulates per (step, layer) damage curves."""

    def __init__(self, meas: _Measure) -> None:
        super().__init__()
        self.meas = meas

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q, k, v = _sdpa_qkv(args, kwargs)
            self.meas.record(q, k, v)
        return func(*args, **kwargs)


class _Measure:
    def __init__(self, grid, stride, seed, metric, text_tokens, text_side):
        self.grid, self.stride, self.seed, self.metric = grid, stride, seed, metric
        self.num_video = grid[0] * grid[1] * grid[2]
        self.text_tokens, self.text_side = text_tokens, text_side
        self.part = None
        self.explicit = False
        self.step = -1
        self.last_t: float | None = None
        self.forwards = 0
        self.layer = 0
        self.layers_seen: set[int] = set()
        # (step, layer, comp) -> [sum of curves, sum of medians, count]
        self.acc: dict[tuple[int, int, str], list] = {}
        self.text_seen: int | None = None

    # step tracking -----------------------------------------------------------
    def set_step(self, step: int) -> None:
        self.explicit = True
        self.step = int(step)

    def pre_forward(self, module, args, kwargs) -> None:
        if self.forwards:
            self.layers_seen.add(self.layer)
        self.forwards += 1
        self.layer = 0
        if self.explicit:
            return
        t = kwargs.get("timestep")
        if isinstance(t, torch.Tensor) and t.numel():
            value = float(t.flatten()[0])
            # A new distinct timestep is the next step; CFG as a second call with the same
            # timestep stays in the same step.
            if value != self.last_t:
                self.step += 1
                self.last_t = value
        else:
            self.step = self.forwards - 1

    # recording ---------------------------------------------------------------
    def _video(self, x: torch.Tensor) -> torch.Tensor | None:
        n = x.shape[-2]
        text = n - self.num_video
        if self.text_tokens is not None and text != self.text_tokens:
            return None
        if text > 0 and self.text_side is None:
            raise ValueError(
                f"attention has {n} tokens, {text} more than the {self.num_video} video tokens: "
                "pass text_side='before' or 'after' (where the text segment sits)"
            )
        self.text_seen = text
        start = text if self.text_side == "before" else 0
        return x[..., start:start + self.num_video, :]

    def _curve(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        from ..kernels.nearest import nearest_dst

        part = self.part
        x = x.float()
        dist, _ = nearest_dst(x[..., part.src_idx, :], x[..., part.dst_idx, :], self.metric)
        if self.metric == "l2":
            # Relative to the tokens' scale, so sites with large activations are comparable.
            scale = x.pow(2).sum(-1).mean(-1, keepdim=True).clamp_min(1e-12)
            dist = dist / scale
        dist = dist.clamp_min(0).reshape(-1, dist.shape[-1]).double()
        median = float(dist.median(dim=-1).values.mean())
        sorted_d = dist.sort(dim=-1).values.mean(0)
        cum = torch.cat([sorted_d.new_zeros(1), sorted_d.cumsum(0)]) / self.num_video
        removed = torch.arange(_CURVE_POINTS + 1, dtype=torch.float64) * self.num_video / _CURVE_POINTS
        lo = removed.floor().long()
        frac = removed - lo
        ns = sorted_d.numel()
        ok = removed <= ns
        lo_c = lo.clamp(max=ns)
        hi_c = (lo + 1).clamp(max=ns)
        curve = cum[lo_c] + (cum[hi_c] - cum[lo_c]) * frac
        curve = torch.where(ok, curve, torch.full_like(curve, math.inf))
        return curve, median

    def record(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        if q.dim() != 4 or k.shape[-2] != q.shape[-2] or q.shape[-2] < self.num_video:
            return  # cross-attention or not over the video: not a site
        qv, vv = self._video(q), self._video(v)
        if qv is None:
            return
        layer = self.layer
        self.layer += 1
        if self.step < 0:
            raise ValueError("attention ran before the first step: call set_step(0) first")
        if self.part is None:
            self.part = partition(self.grid, self.stride, self.seed, q.device)
        with torch.no_grad():
            for comp, x in (("q", qv), ("kv", vv)):
                curve, median = self._curve(x)
                slot = self.acc.setdefault((self.step, layer, comp), [0.0, 0.0, 0])
                slot[0] = slot[0] + curve
                slot[1] += median
                slot[2] += 1


def measure_redundancy(
    model: torch.nn.Module,
    sample: Callable[[SetStep], Any],
    *,
    grid: tuple[int, int, int],
    steps: int,
    text_tokens: int | None = None,
    text_side: str | None = None,
    stride: tuple[int, int, int] = (2, 2, 2),
    seed: int = 0,
    metric: str = "l2",
) -> Redundancy:
    """Run ``sample(set_step)`` once on the baseline ``model`` and measure redundancy.

    ``sample`` runs a whole generation of ``steps`` denoising steps, calling ``model``.
    It may call ``set_step(i)`` before step ``i``; if it never does, a new distinct value
    of the model's ``timestep`` argument starts the next step (so CFG as two calls counts
    once), and without a ``timestep`` every forward is a step.
    ``text_tokens`` (None: whatever is not video) and ``text_side`` (``"before"`` or
    ``"after"`` the video tokens) locate the video inside the attention sequence.
    """
    if steps < 1:
        raise ValueError(f"steps={steps!r} is invalid: a positive int")
    if text_side not in (None, "before", "after"):
        raise ValueError(f"text_side={text_side!r} is invalid: None, 'before' or 'after'")
    if metric not in ("l2", "cosine"):
        raise ValueError(f"metric={metric!r} is invalid: 'l2' or 'cosine'")
    meas = _Measure(tuple(grid), tuple(stride), seed, metric, text_tokens, text_side)
    handle = model.register_forward_pre_hook(meas.pre_forward, with_kwargs=True)
    torch.manual_seed(seed)
    try:
        with torch.no_grad(), _Recorder(meas):
            sample(meas.set_step)
    finally:
        handle.remove()
    meas.layers_seen.add(meas.layer)
    if not meas.acc:
        raise ValueError(
            f"no video self-attention with {meas.num_video} video tokens (grid {tuple(grid)}) "
            "was seen: check grid (in tokens, after patching) and text_tokens"
        )
    num_layers = max(layer for _, layer, _ in meas.acc) + 1
    seen_steps = max(step for step, _, _ in meas.acc) + 1
    if seen_steps != steps or len({s for s, _, _ in meas.acc}) != steps:
        raise ValueError(
            f"the sampling run covered {len({s for s, _, _ in meas.acc})} step(s) "
            f"(last index {seen_steps - 1}) but steps={steps}: pass the run's step count, "
            "or call set_step(i) in the sampling loop"
        )
    if len(meas.acc) != steps * num_layers * 2:
        raise ValueError(
            f"attention site counts differ between forwards ({sorted(meas.layers_seen)}): "
            "calibration needs the same sites in every step"
        )
    curves, medians = {}, {}
    for comp in ("q", "kv"):
        c = torch.empty(steps, num_layers, _CURVE_POINTS + 1, dtype=torch.float64)
        m = torch.empty(steps, num_layers, dtype=torch.float64)
        for s in range(steps):
            for i in range(num_layers):
                total, med, count = meas.acc[(s, i, comp)]
                c[s, i] = total / count
                m[s, i] = med / count
        curves[comp], medians[comp] = c, m
    return Redundancy(
        num_layers=num_layers, num_steps=steps, num_video=meas.num_video,
        num_dst=int(meas.part.dst_idx.numel()), text_tokens=int(meas.text_seen or 0),
        curves=curves, median=medians, grid=tuple(grid), stride=tuple(stride), seed=seed,
        metric=metric,
    )


# ----------------------------------------------------------------------- allocating
def _groups(steps: int, groups: int) -> list[range]:
    groups = max(1, min(groups, steps))
    bounds = [g * steps // groups for g in range(groups + 1)]
    return [range(bounds[g], bounds[g + 1]) for g in range(groups)]


def _ladder(levels: Sequence[float], num_video: int, num_dst: int) -> list[float]:
    """Ratio levels that each remove at least one more token (dst tokens always stay)."""
    out, prev = [], kept_count(num_video, 0.0, num_dst)
    for r in sorted(levels):
        k = kept_count(num_video, r, num_dst)
        if k < prev:
            out.append(float(r))
            prev = k
    return out


def _weight(priors: bool, comp: str, layer: int, layers: int, step: int, steps: int) -> float:
    if not priors:
        return 1.0
    depth = layer / (layers - 1) if layers > 1 else 1.0
    pos = step / (steps - 1) if steps > 1 else 1.0
    # Shallow sites and early steps count up to twice as much damage; Q Q_WEIGHT times.
    return (Q_WEIGHT if comp == "q" else 1.0) * (2.0 - depth) * (2.0 - pos)


def allocate(
    red: Redundancy,
    target_flops_cut: float,
    *,
    priors: bool = True,
    step_groups: int | None = None,
    q_levels: Sequence[float] = Q_LEVELS,
    kv_levels: Sequence[float] = KV_LEVELS,
    name: str | None = None,
) -> CalibrationResult:
    """Ratios that remove ``target_flops_cut`` of the attention FLOPs at least damage."""
    if isinstance(target_flops_cut, bool) or not 0.0 <= float(target_flops_cut) < 1.0:
        raise ValueError(f"target_flops_cut={target_flops_cut!r} is out of range [0, 1)")
    target = float(target_flops_cut)
    L, S, N, T = red.num_layers, red.num_steps, red.num_video, red.text_tokens
    groups = _groups(S, 5 if step_groups is None else step_groups)
    ladders = {"q": _ladder(q_levels, N, red.num_dst), "kv": _ladder(kv_levels, N, red.num_dst)}
    full_total = (T + N) ** 2 * S * L
    # Integer FLOP bookkeeping; "met" is decided exactly as attention_flops_cut reports it.
    def met(tot: int) -> bool:
        return 1.0 - tot / full_total >= target

    kept = {c: [[N] * L for _ in groups] for c in ("q", "kv")}
    level = {c: [[0] * L for _ in groups] for c in ("q", "kv")}
    ratio = {c: [[0.0] * L for _ in groups] for c in ("q", "kv")}
    total = full_total
    other = {"q": "kv", "kv": "q"}

    damage_cache: dict[tuple[str, int, int, int], float] = {}

    def group_damage(c: str, g: int, i: int, lvl: int) -> float:
        key = (c, g, i, lvl)
        if key not in damage_cache:
            r = ladders[c][lvl - 1] if lvl else 0.0
            damage_cache[key] = sum(
                red.damage(c, s, i, r) * _weight(priors, c, i, L, s, S) for s in groups[g]
            )
        return damage_cache[key]

    def candidate(c: str, g: int, i: int) -> tuple | None:
        lvl = level[c][g][i]
        if lvl >= len(ladders[c]):
            return None
        k_new = kept_count(N, ladders[c][lvl], red.num_dst)
        saved = len(groups[g]) * (T + kept[other[c]][g][i]) * (kept[c][g][i] - k_new)
        dmg = group_damage(c, g, i, lvl + 1) - group_damage(c, g, i, lvl)
        # (score, fixed tie-break order, unit, the other component's kept count it assumed)
        return (max(dmg, 0.0) / saved, 0 if c == "kv" else 1, g, i, c, kept[other[c]][g][i])

    heap = [cand for c in ("kv", "q") for g in range(len(groups)) for i in range(L)
            if (cand := candidate(c, g, i)) is not None]
    heapq.heapify(heap)
    increments = 0
    while not met(total):
        if not heap:
            best = 1.0 - total / full_total
            raise ValueError(
                f"target_flops_cut={target} is not reachable: the ratio levels allow at most "
                f"{best:.4f} (Q levels {ladders['q']}, K/V levels {ladders['kv']})"
            )
        cand = heapq.heappop(heap)
        _, _, g, i, c, assumed = cand
        if assumed != kept[other[c]][g][i]:  # stale: the other component moved since
            fresh = candidate(c, g, i)
            if fresh is not None:
                heapq.heappush(heap, fresh)
            continue
        lvl = level[c][g][i]
        k_old = kept[c][g][i]
        k_new = kept_count(N, ladders[c][lvl], red.num_dst)
        per_token = len(groups[g]) * (T + kept[other[c]][g][i])
        new_total = total - per_token * (k_old - k_new)
        if met(new_total):
            # Last increment: trim it to the largest kept count that still meets the target.
            k = k_old - math.ceil((total - (1.0 - target) * full_total) / per_token)
            k = max(k_new, min(k, k_old - 1))
            while k < k_old - 1 and met(total - per_token * (k_old - k - 1)):
                k += 1  # float rounding of the estimate: keep one more token
            while not met(total - per_token * (k_old - k)):
                k -= 1
            kept[c][g][i] = k
            ratio[c][g][i] = ladders[c][lvl] if k == k_new else 1.0 - (k + 0.5) / N
            total -= per_token * (k_old - k)
            increments += 1
            break
        level[c][g][i] = lvl + 1
        kept[c][g][i] = k_new
        ratio[c][g][i] = ladders[c][lvl]
        total = new_total
        increments += 1
        nxt = candidate(c, g, i)
        if nxt is not None:
            heapq.heappush(heap, nxt)

    tables = {c: [[0.0] * L for _ in range(S)] for c in ("q", "kv")}
    for c in ("q", "kv"):
        for g, rng in enumerate(groups):
            for s in rng:
                tables[c][s] = list(ratio[c][g])
    meta = {
        "calibrated": True,
        "target_flops_cut": target,
        "stride": list(red.stride),
        "grid": list(red.grid),
        "seed": red.seed,
        "metric": red.metric,
        "priors": priors,
        "step_groups": len(groups),
    }
    schedule = Schedule(L, S, tables["q"], tables["kv"], name=name, meta=meta)
    achieved = 1.0 - total / full_total
    check = attention_flops_cut(schedule, N, red.num_dst, T)
    if abs(check - achieved) > 1e-9:  # the bookkeeping must describe the schedule exactly
        raise RuntimeError(f"calibration bookkeeping mismatch: {achieved} != {check}")
    stats = {
        "target_flops_cut": target,
        "achieved_flops_cut": achieved,
        "increments": increments,
        "num_layers": L,
        "num_steps": S,
        "video_tokens": N,
        "dst_tokens": red.num_dst,
        "text_tokens": T,
        "grid": list(red.grid),
        "stride": list(red.stride),
        "seed": red.seed,
        "metric": red.metric,
        "priors": priors,
        "step_groups": [[r.start, r.stop] for r in groups],
        "ladders": ladders,
        "damage_proxy": sum(
            red.damage(c, s, i, tables[c][s][i])
            for c in ("q", "kv") for s in range(S) for i in range(L)
        ) / (S * L),
        "median_relative_distance": {
            c: [[round(float(v), 6) for v in row] for row in red.median[c]] for c in ("q", "kv")
        },
        "coverage": schedule.coverage(),
    }
    return CalibrationResult(schedule, stats)


def calibrate(
    model: torch.nn.Module,
    sample: Callable[[SetStep], Any],
    *,
    target_flops_cut: float,
    grid: tuple[int, int, int],
    steps: int,
    text_tokens: int | None = None,
    text_side: str | None = None,
    stride: tuple[int, int, int] = (2, 2, 2),
    seed: int = 0,
    priors: bool = True,
    metric: str = "l2",
    step_groups: int | None = None,
    name: str | None = None,
) -> CalibrationResult:
    """Measure ``model``'s redundancy over one run of ``sample`` and fit a schedule.

    See :func:`measure_redundancy` for ``sample`` and the token layout arguments and
    :func:`allocate` for the allocation. ``target_flops_cut`` is the share of the video
    self-attention FLOPs to remove (e.g. 0.3).
    """
    red = measure_redundancy(
        model, sample, grid=grid, steps=steps, text_tokens=text_tokens, text_side=text_side,
        stride=stride, seed=seed, metric=metric,
    )
    return allocate(red, target_flops_cut, priors=priors, step_groups=step_groups, name=name)


def simple_sampler(
    model: torch.nn.Module,
    inputs: Mapping[str, Any],
    steps: int,
    *,
    latent_key: str = "hidden_states",
    max_timestep: int = 999,
) -> Callable[[SetStep], torch.Tensor]:
    """A plain Euler loop over decreasing timesteps, for models without a pipeline.

    Starts from ``inputs[latent_key]`` and each step moves it by ``-output / steps``; the
    model's output must have the latent's shape (diffusers video transformers do).
    """
    def run(set_step: SetStep) -> torch.Tensor:
        kwargs = dict(inputs)
        x = kwargs.pop(latent_key)
        batch = x.shape[0]
        for i in range(steps):
            set_step(i)
            t = round(max_timestep * (1 - i / steps))
            out = model(**{latent_key: x}, timestep=torch.full((batch,), t, dtype=torch.long),
                        **{k: v for k, v in kwargs.items() if k != "timestep"})
            out = out[0] if isinstance(out, (tuple, list)) else getattr(out, "sample", out)
            x = x - out / steps
        return x

    return run
