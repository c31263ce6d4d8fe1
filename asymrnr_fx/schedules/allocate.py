"""Allocation: the ratios that remove a target share of attention FLOPs at the least damage.

Reads a :class:`~asymrnr_fx.schedules.damage.DamageTable` (one damage curve per unit:
component, step group, attention site). Attention cost per site and step is
``(text + kept_q) * (text + kept_kv)`` (:func:`asymrnr_fx.schedules.ratios.attention_flops_cut`).
Each unit climbs its *rungs*: the measured levels on the lower convex hull of its
(tokens removed, damage) curve. A greedy pass always takes the rung with the least damage
per FLOP saved. Its order does not depend on the target, and the last rung is trimmed to the
token, so:

* the target is met, with at most one token too many removed at one site;
* a higher target never lowers any ratio (a longer prefix of the same sequence);
* the result is deterministic given the table.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

from .damage import COMPONENTS, DamageTable
from .ratios import attention_flops_cut
from .schedule import Schedule

__all__ = ["Allocation", "allocate"]

OTHER = {"q": "kv", "kv": "q"}


def hull_rungs(table: DamageTable, comp: str, group: int, layer: int) -> list[tuple[int, float]]:
    """``(kept tokens, damage)`` of the levels on the lower convex hull of the unit's curve
    (from ratio 0), in order of removal; damage never decreases along them."""
    points = list(zip(table.kept_points(comp), [0.0] + [max(0.0, float(v)) for v in
                                                         table.damage[comp][group, layer]], strict=True))
    rungs = [points[0]]
    for kept, dmg in points[1:]:
        dmg = max(dmg, rungs[-1][1])
        while len(rungs) >= 2 and _slope(rungs[-2], (kept, dmg)) <= _slope(rungs[-2], rungs[-1]):
            rungs.pop()  # the previous rung lies above the chord: never worth stopping at
        rungs.append((kept, dmg))
    return rungs[1:]


def _slope(a: tuple[int, float], b: tuple[int, float]) -> float:
    return (b[1] - a[1]) / (a[0] - b[0])


@dataclass
class Allocation:
    """Greedy state: kept tokens and rung reached per unit, attention FLOPs spent."""

    table: DamageTable
    target: float
    kept: dict[str, list[list[int]]] = field(init=False)
    rung: dict[str, list[list[int]]] = field(init=False)
    rungs: dict[tuple[str, int, int], list[tuple[int, float]]] = field(init=False)
    spent: int = field(init=False)
    full: int = field(init=False)
    increments: int = 0

    def __post_init__(self) -> None:
        t, n = self.table.text_tokens, self.table.reduction.num_video
        groups, layers = len(self.table.groups), self.table.num_layers
        self.kept = {c: [[n] * layers for _ in range(groups)] for c in COMPONENTS}
        self.rung = {c: [[0] * layers for _ in range(groups)] for c in COMPONENTS}
        self.rungs = {(c, g, i): hull_rungs(self.table, c, g, i)
                      for c in COMPONENTS for g in range(groups) for i in range(layers)}
        self.full = self.spent = (t + n) ** 2 * self.table.num_steps * layers

    def met(self, spent: int) -> bool:
        """Decided exactly as :func:`attention_flops_cut` reports the schedule."""
        return 1.0 - spent / self.full >= self.target

    def per_token(self, comp: str, group: int, layer: int) -> int:
        """FLOPs one more removed token of ``comp`` saves in this unit."""
        other = self.kept[OTHER[comp]][group][layer]
        return len(self.table.groups[group]) * (self.table.text_tokens + other)

    def candidate(self, comp: str, group: int, layer: int) -> tuple | None:
        """The unit's next rung as a heap entry: (damage per FLOP, tie-break, unit, what the
        other component's kept count was when it was scored)."""
        rung = self.rung[comp][group][layer]
        rungs = self.rungs[(comp, group, layer)]
        if rung >= len(rungs):
            return None
        kept_now = self.kept[comp][group][layer]
        damage_now = rungs[rung - 1][1] if rung else 0.0
        saved = self.per_token(comp, group, layer) * (kept_now - rungs[rung][0])
        score = max(rungs[rung][1] - damage_now, 0.0) / saved
        return (score, 0 if comp == "kv" else 1, group, layer, comp, self.kept[OTHER[comp]][group][layer])

    def climb(self, comp: str, group: int, layer: int) -> bool:
        """Take the unit's next rung, trimmed to the token if it meets the target; returns
        True when the target is met."""
        per_token = self.per_token(comp, group, layer)
        old = self.kept[comp][group][layer]
        new = self.rungs[(comp, group, layer)][self.rung[comp][group][layer]][0]
        self.increments += 1
        if not self.met(self.spent - per_token * (old - new)):
            self.kept[comp][group][layer] = new
            self.rung[comp][group][layer] += 1
            self.spent -= per_token * (old - new)
            return False
        # The last rung: the largest kept count that still meets the target.
        kept = old - math.ceil((self.spent - (1.0 - self.target) * self.full) / per_token)
        kept = max(new, min(kept, old - 1))
        while kept < old - 1 and self.met(self.spent - per_token * (old - kept - 1)):
            kept += 1  # float rounding of the estimate: keep one more token
        while not self.met(self.spent - per_token * (old - kept)):
            kept -= 1
        self.kept[comp][group][layer] = kept
        self.spent -= per_token * (old - kept)
        return True

    def run(self) -> None:
        """Climb rungs, cheapest damage per FLOP first, until the target is met."""
        heap = [cand for c in ("kv", "q") for g in range(len(self.table.groups))
                for i in range(self.table.num_layers) if (cand := self.candidate(c, g, i))]
        heapq.heapify(heap)
        while not self.met(self.spent):
            if not heap:
                raise ValueError(
                    f"target_flops_cut={self.target} is not reachable: the measured levels allow "
                    f"at most {1.0 - self.spent / self.full:.4f} (levels {dict(self.table.levels)})")
            _, _, g, i, c, assumed = heapq.heappop(heap)
            if assumed == self.kept[OTHER[c]][g][i] and self.climb(c, g, i):
                return
            if (fresh := self.candidate(c, g, i)) is not None:  # the next rung, or re-scored
                heapq.heappush(heap, fresh)

    def ratio(self, comp: str, group: int, layer: int) -> float:
        """The ratio whose kept count is the unit's: a measured level when it is one."""
        kept = self.kept[comp][group][layer]
        n = self.table.reduction.num_video
        if kept == n:
            return 0.0
        levels = [r for r in self.table.levels[comp] if self.table.reduction.kept(r) == kept]
        return levels[0] if levels else 1.0 - (kept + 0.5) / n

    def schedule(self, name: str | None = None, meta: dict | None = None) -> Schedule:
        table = self.table
        rows = {c: [[0.0] * table.num_layers for _ in range(table.num_steps)] for c in COMPONENTS}
        for c in COMPONENTS:
            for g, steps in enumerate(table.groups):
                for s in steps:
                    rows[c][s] = [self.ratio(c, g, i) for i in range(table.num_layers)]
        return Schedule(table.num_layers, table.num_steps, rows["q"], rows["kv"], name=name,
                        meta=meta or {})


def allocate(table: DamageTable, target_flops_cut: float, *, name: str | None = None,
             meta: dict | None = None) -> tuple[Schedule, Allocation]:
    """The schedule that removes ``target_flops_cut`` of the attention FLOPs at the least
    damage, and the allocation's state (FLOPs spent, increments)."""
    if isinstance(target_flops_cut, bool) or not 0.0 <= float(target_flops_cut) < 1.0:
        raise ValueError(f"target_flops_cut={target_flops_cut!r} is out of range [0, 1)")
    state = Allocation(table, float(target_flops_cut))
    state.run()
    schedule = state.schedule(name, meta)
    achieved = 1.0 - state.spent / state.full
    check = attention_flops_cut([schedule.ratios_at(s) for s in range(schedule.num_steps)],
                                num_video=table.reduction.num_video, num_dst=table.reduction.num_dst,
                                text_tokens=table.text_tokens)
    if abs(check - achieved) > 1e-9:  # the bookkeeping must describe the schedule exactly
        raise RuntimeError(f"calibration bookkeeping mismatch: {achieved} != {check}")
    return schedule, state
