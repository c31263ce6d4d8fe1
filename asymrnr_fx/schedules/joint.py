"""Token cuts and block reuse chosen together, to a PSNR or a speed target.

Reads a sensitivity :class:`~asymrnr_fx.schedules.damage.DamageTable` with its costs (and, when
measured, its block-reuse damage). A *unit* is one (step group, block); block ``b`` holds
attention site ``b``. Each unit takes exactly one *option*:

* a token cut: one Q ratio and one K/V ratio (0 included) at every step of the group; damage is the sum of the two components' measured damage, cost the block's work plus
  its attention at the kept counts (attention cost scales with ``(text + kept_q) x (text +
  kept_kv)``);
* reuse or predict with a measured period ``p``: the block computes, uncut, at the refresh
  window's steps ``0, p, 2p, ...`` and adds its last residual (reuse) or that residual
  extrapolated from its last two computed steps (predict) at the others; damage is the
  measured damage of that choice, cost the block's full work at the computed steps only. A reused block has no attention
  to cut at the steps it skips, so the two never combine in one unit: they are priced apart.

Units are taken as independent (their damages add, as in the token-only allocation). For a
price ``lam`` every unit takes the option with the least ``damage + lam x cost``; a larger price
never chooses a costlier option in any unit, so total cost falls and predicted damage rises
monotonically with it. A PSNR target is met by the largest price whose predicted error stays
within it, a speed target by the smallest price whose predicted cost meets it (bisection on the
log of the price); then greedy moves of one unit at a time use what the target leaves (most cost
saved per damage added, or most damage removed per cost added). Token cuts may take any ratio
on a :data:`TOKEN_STEP` grid up to the largest measured level (damage linear between levels).

Cost is the measurement's timing table on its machine (``cost="seconds"``, default) or its FLOPs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .damage import COMPONENTS, DamageTable, reuse_computes, reuse_pattern
from .schedule import PREDICT, REUSE, Schedule

__all__ = ["COSTS", "Options", "JointChoice", "options", "choose", "allocate_joint", "to_schedule"]

COSTS = ("seconds", "flops")


@dataclass(frozen=True)
class Options:
    """Every unit's options: ``damage`` and ``cost`` are ``(units, options)``; option ``j`` is
    ``kind[j]``: ``("tokens", q_ratio, kv_ratio)``, ``("reuse", period)`` or ``("predict", period)``.
    Unit ``u`` is group ``u // blocks``, block ``u % blocks``. ``fixed`` is the cost outside the
    blocks over the generation; ``full`` the cost of the generation with nothing saved."""

    damage: torch.Tensor
    cost: torch.Tensor
    kind: tuple[tuple, ...]
    blocks: int
    fixed: float
    full: float


def _step_costs(table: DamageTable, cost: str) -> dict[str, Any]:
    if cost not in COSTS:
        raise ValueError(f"cost={cost!r} is invalid: choose one of {COSTS}")
    costs = (table.costs or {}).get(cost)
    if costs is None:
        raise ValueError("this measurement has no cost table (it predates costs, or is a redundancy proxy): "
                         "measure again with `asymrnr calibrate` to fit a speed or joint target")
    if len(costs["block"]) != table.num_layers or len(costs["attention"]) != table.num_layers:
        raise ValueError(f"the cost table has {len(costs['block'])} blocks and {len(costs['attention'])} sites "
                         f"for {table.num_layers} sites: a speed target needs one attention site per block")
    return costs


TOKEN_STEP = 0.05
"""Spacing of the token-cut ratios a unit may take between 0 and its largest measured level
(damage between measured levels is linear in the tokens removed, as the allocation takes it)."""


def token_ratios(table: DamageTable, comp: str) -> list[float]:
    """The ratios a unit's ``comp`` may take: 0, every :data:`TOKEN_STEP`, and the measured levels."""
    top = max(table.levels[comp])
    grid = {round(k * TOKEN_STEP, 6) for k in range(1, int(top / TOKEN_STEP) + 1)}
    kept_seen: dict[int, float] = {}
    for ratio in sorted(grid | set(table.levels[comp])):
        kept_seen.setdefault(table.reduction.kept(ratio), ratio)  # one ratio per kept count
    return [0.0] + sorted(kept_seen.values())


def options(table: DamageTable, *, reuse: bool = True, cost: str = "seconds") -> Options:
    """The options of every unit of ``table`` (block reuse only where measured and ``reuse``)."""
    if table.method != "sensitivity":
        raise ValueError(f"a PSNR or speed target needs a sensitivity measurement (this one is {table.method!r})")
    costs = _step_costs(table, cost)
    red, t, n = table.reduction, table.text_tokens, table.reduction.num_video
    ratios = {c: token_ratios(table, c) for c in COMPONENTS}
    kinds: list[tuple] = [("tokens", rq, rkv) for rq in ratios["q"] for rkv in ratios["kv"]]
    periods = table.reuse_periods if reuse and table.reuse is not None else ()
    kinds += [(mode, p) for mode in ("reuse", "predict") for p in periods
              if getattr(table, mode) is not None]
    damage, price = [], []
    for g, steps in enumerate(table.groups):
        for b in range(table.num_layers):
            block, attention = float(costs["block"][b]), float(costs["attention"][b])
            d_row, c_row = [], []
            for kind in kinds:
                if kind[0] == "tokens":
                    _, rq, rkv = kind
                    kq, kkv = red.kept(rq), red.kept(rkv)
                    dmg = sum(max(0.0, table.at(c, g, b, k)) for c, r, k in (("q", rq, kq), ("kv", rkv, kkv)) if r > 0)
                    share = (t + kq) * (t + kkv) / (t + n) ** 2
                    d_row.append(dmg)
                    c_row.append(len(steps) * (block + attention * share))
                else:
                    k = table.reuse_periods.index(kind[1])
                    computed = sum(reuse_computes(s, red.cache_interval, kind[1]) for s in steps)
                    d_row.append(max(0.0, float(getattr(table, kind[0])[g, b, k])))
                    c_row.append(computed * (block + attention))
            damage.append(d_row)
            price.append(c_row)
    fixed = table.num_steps * float(costs["other"])
    full = fixed + table.num_steps * sum(float(costs["block"][b]) + float(costs["attention"][b])
                                         for b in range(table.num_layers))
    return Options(torch.tensor(damage, dtype=torch.float64), torch.tensor(price, dtype=torch.float64),
                   tuple(kinds), table.num_layers, fixed, full)


@dataclass(frozen=True)
class JointChoice:
    """One option per unit, with its predicted damage (output MSE) and cost."""

    options: Options
    choice: torch.Tensor  # (units,) option index

    @property
    def damage(self) -> float:
        return float(self.options.damage.gather(1, self.choice[:, None]).sum())

    @property
    def cost(self) -> float:
        return self.options.fixed + float(self.options.cost.gather(1, self.choice[:, None]).sum())

    @property
    def speedup(self) -> float:
        """Predicted speedup: the generation's full cost over this choice's."""
        return self.options.full / self.cost


def choose(opts: Options, lam: float) -> JointChoice:
    """Every unit's option with the least ``damage + lam x cost`` (ties: the cheaper)."""
    score = opts.damage + lam * opts.cost
    best = score.min(dim=1, keepdim=True).values
    tied = score <= best + 1e-15 * best.abs().clamp_min(1e-300)
    cheapest = torch.where(tied, opts.cost, torch.full_like(opts.cost, math.inf)).argmin(dim=1)
    return JointChoice(opts, cheapest)


def _bisect(opts: Options, ok: Any, want_large: bool, iterations: int = 200) -> JointChoice:
    """The choice at the bracketing price where ``ok(choice)`` holds (if any does):
    ``want_large`` seeks the largest such price, else the smallest."""
    lo, hi = -40.0, 40.0  # log10 of the price: far beyond any damage / cost scale
    if want_large:
        if not ok(choose(opts, 10 ** lo)):
            return choose(opts, 0.0)
        if ok(choose(opts, 10 ** hi)):
            return choose(opts, 10 ** hi)
    elif ok(choose(opts, 10 ** lo)):
        return choose(opts, 10 ** lo)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if ok(choose(opts, 10 ** mid)) == want_large:
            lo = mid
        else:
            hi = mid
    return choose(opts, 10 ** (lo if want_large else hi))


def _improve(choice: JointChoice, *, max_mse: float | None, max_cost: float | None) -> JointChoice:
    """Greedy moves from a feasible choice, one unit at a time: under a quality target, to a
    cheaper option with the most cost saved per damage added that still fits the target; under
    a speed target, to a less damaging option with the most damage removed per cost added that
    still fits. The price's choice lies on each unit's lower hull; these moves reach the options
    between hull corners that the target's exact value calls for."""
    opts, current = choice.options, choice.choice.clone()
    rows = torch.arange(len(current))
    while True:
        here = JointChoice(opts, current)
        d_now = opts.damage[rows, current][:, None]
        c_now = opts.cost[rows, current][:, None]
        if max_mse is not None:
            added, saved = opts.damage - d_now, c_now - opts.cost
            fits = (saved > 0) & (added <= max_mse - here.damage)
            score = saved / added.clamp_min(1e-300)
        else:
            removed, added = d_now - opts.damage, opts.cost - c_now
            fits = (removed > 0) & (added <= max_cost - here.cost)
            score = removed / added.clamp_min(1e-300)
        if not fits.any():
            return here
        score = torch.where(fits, score, torch.full_like(score, -math.inf))
        best = int(score.flatten().argmax())
        current[best // opts.damage.shape[1]] = best % opts.damage.shape[1]


def allocate_joint(table: DamageTable, *, max_mse: float | None = None, max_cost: float | None = None,
                   reuse: bool = True, cost: str = "seconds") -> JointChoice:
    """The choice with the least cost whose predicted output MSE is at most ``max_mse``, or the
    least predicted MSE whose cost is at most ``max_cost`` (exactly one of them). Beyond reach,
    the closest the options allow (check the choice's damage or cost)."""
    if (max_mse is None) == (max_cost is None):
        raise ValueError("give exactly one of max_mse (a quality target) and max_cost (a speed target)")
    opts = options(table, reuse=reuse, cost=cost)
    if max_mse is not None:
        def ok(c: JointChoice) -> bool:
            return c.damage <= max_mse
        feasible = _bisect(opts, ok, want_large=True)
    else:
        def ok(c: JointChoice) -> bool:
            return c.cost <= max_cost
        feasible = _bisect(opts, ok, want_large=False)
    return _improve(feasible, max_mse=max_mse, max_cost=max_cost) if ok(feasible) else feasible


def to_schedule(table: DamageTable, joint: JointChoice, *, name: str | None = None,
                meta: dict | None = None) -> Schedule:
    """The schedule of a choice: ratios per (step, site) and the reuse table per (step, block)."""
    opts, blocks = joint.options, joint.options.blocks
    steps = table.num_steps
    rows = {c: [[0.0] * blocks for _ in range(steps)] for c in COMPONENTS}
    reuse = [[0] * blocks for _ in range(steps)]
    for u, j in enumerate(joint.choice.tolist()):
        g, b = divmod(u, blocks)
        kind = opts.kind[j]
        group = table.groups[g]
        if kind[0] == "tokens":
            for comp, ratio in (("q", kind[1]), ("kv", kind[2])):
                for s in group:
                    rows[comp][s][b] = ratio
        else:
            cell = PREDICT if kind[0] == "predict" else REUSE
            for s, reused in zip(group, reuse_pattern(group, table.reduction.cache_interval, kind[1]), strict=True):
                reuse[s][b] = cell if reused else 0
    any_reuse = any(map(any, reuse))
    return Schedule(blocks, steps, rows["q"], rows["kv"], name=name, meta=meta or {},
                    reuse=reuse if any_reuse else None)
