"""The runtime state of one application of AsymRnR: which step, which site, which indices.

Compiled graphs carry no step state (a Dynamo-guarded step int would recompile per value and
fall back to eager after 8). Every graph a backend compiles asks its application's
:class:`AsymRnRState`, on each call, which denoising step is running and which attention
sites it holds; the state keeps the match indices reused between refresh steps.

One state per application: each :func:`asymrnr_fx.backend` call and each transformer that
:func:`asymrnr_fx.apply` compiles owns one, so two models (Wan 2.2's two experts, two
pipelines) never share steps or indices. ``torch.compiler.reset()`` resets it.

**Steps are told where possible** (:class:`~asymrnr_fx.steps.StepTracker`):

* ``apply(pipe)`` tells the generation and its step count from the pipeline's scheduler
  (``set_timesteps``; then one step per ``scheduler.step`` call), takes ``step_index`` and
  the CFG branch name from diffusers' ``cache_context(...)`` when the pipeline gives them,
  and marks each forward of the transformer;
* :meth:`AsymRnRState.set_step` (or :class:`asymrnr_fx.StepCallback`) pins steps by hand.

**Guessed last** (plain ``torch.compile`` without ``apply``), from what the graphs do, never
from what the model names its inputs:

* a site is identified by the query projection weight it was given (Dynamo lifts parameters to
  graph inputs, so this names the block even when one graph serves every block), else by its
  graph node; its layer index is the order in which its identity first ran
  (:meth:`AsymRnRState.site_indices`), so a block a cache skips never shifts another;
* a forward starts when a site of the running forward comes round again
  (:meth:`AsymRnRState.enter_graph`);
* the step is ticked by the first noise-level value of a forward (the graph input a sinusoidal
  embedding is computed from, :mod:`asymrnr_fx.passes.ticks`): the largest value (per-token
  timesteps); the first two distinct values set the direction (decreasing, or increasing as in
  Mochi) and a move against it starts a new generation; a repeated value is another forward of
  the same step (CFG in two calls, or a second-order scheduler's repeated timestep). Without any
  signal every forward runs as step 0, said once at WARNING.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from .ops import Partition, partition, site_partition
from .schedules.ratios import RatioResolver
from .steps import StepTracker

__all__ = ["AsymRnRState", "CacheEntry", "IndexKey", "Fallback", "stats_summary"]

logger = logging.getLogger("asymrnr_fx")


class Fallback(NamedTuple):
    """A rewritten graph that could not run as compiled, and what runs instead."""

    graph: str  # which graph (its rewritten sites)
    runs: str  # "rewrite without inductor" or "original graph"
    causes: tuple[str, ...]  # one line per failed attempt


class IndexKey(NamedTuple):
    """What match indices were made for: reused only for exactly the same."""

    layout: Any  # SequenceLayout: where the video sits, its grid
    batch: int
    heads: int
    kept: int


@dataclass
class CacheEntry:
    """Match indices of one (site, component, branch), made in refresh window ``window``
    for exactly ``key``."""

    key: IndexKey
    window: int
    keep: torch.Tensor
    restore: torch.Tensor


def stats_summary(stats: Mapping[str, int], fallbacks: int = 0) -> str:
    """One line for people from a state's statistics (or several states' added up)."""
    st = Counter(stats)
    reduced = st["cache_refreshes"] + st["cache_hits"]
    line = (f"asymrnr: {st['generations']} denoising loop(s), {st['forwards']} forward(s); {reduced} "
            f"attention call(s) reduced ({st['cache_refreshes']} matched afresh, {st['cache_hits']} "
            "reusing a cached match)")
    if st["blocks_reused"]:
        line += (f"; {st['blocks_reused']} of {st['blocks_reused'] + st['blocks_computed']} block call(s) "
                 "reused their last residual (or extrapolated it) instead of running")
    if fallbacks:
        line += f"; {fallbacks} graph(s) fell back (see the WARNING above)"
    return line


class AsymRnRState:
    """Step tracking, site counting, grid evidence and the matching cache of one application."""

    def __init__(self, config: Any) -> None:  # AsymRnRConfig
        self.config = config
        self.hooked = False  # apply() marks forwards; graphs then never tick
        self.clear()

    def use_config(self, config: Any) -> None:
        """Run under ``config`` from now on (the bare backend's family default, chosen before
        its first rewrite)."""
        self.config = config
        self.ratios = RatioResolver(config)
        self.tracker.num_steps = config.num_steps

    def clear(self) -> None:
        """Forget everything, what was learned about the compiled graphs too (their tick
        source, the grid evidence, the site count): Dynamo dropped them."""
        self.tick_kind: str | None = None  # the fallback's one tick source: "timestep" or "temb"
        # Video token grids seen in this model, by token count: from a graph's patch
        # embedding or from the model's input (apply's hook). Used where a graph shows none.
        self.grid_evidence: dict[int, tuple[int, int, int]] = {}
        self.sites_left_alone: list[tuple[str, str]] = []  # (site, reason), per compiled graph
        self.sites_rewritable = 0
        self.ratios = RatioResolver(self.config)
        # Index of every site by its identity (key, occurrence in the forward), in the order
        # the sites first ran: the layer a schedule addresses.
        self.site_order: dict[tuple[Hashable, int], int] = {}
        self._repeats: dict[Hashable, int] = {}  # identities run several times per forward
        self._provisional_count: int | None = None  # sites laid out before the first forward ended
        self.compile_log: list[tuple[str, float]] = []  # (variant, seconds) per compile
        self.fallbacks: list[Fallback] = []  # rewrites that could not run as compiled
        self._logged: set[str] = set()
        self.reset()

    def reset(self) -> None:
        """Start afresh: forget the steps, the matching cache and the statistics (what was
        learned about the compiled graphs stays)."""
        self.tracker = StepTracker()
        self.tracker.num_steps = self.config.num_steps
        self.cache: dict[tuple[int, str, str | int], CacheEntry] = {}
        # The last two computed (step, residuals) of the blocks a schedule reuses
        # (asymrnr_fx.block_reuse), per block, branch and input shapes: never outliving their generation.
        self.block_residuals: dict[tuple, list[tuple[int, tuple[torch.Tensor, ...]]]] = {}
        self.stats: Counter[str] = Counter()
        self.refresh_steps: list[int] = []
        # Sites run in this generation, how many calls reduced any, and the steps it ran.
        self._generation_sites = self._generation_reduced = self._generation_steps = 0
        self._forward_open = False
        self._pending_tick: tuple[str, torch.Tensor] | None = None
        self._forward_sites = 0
        self._forward_keys: set[Hashable] = set()
        self._occurrences: Counter[Hashable] = Counter()
        self._ticked = False

    def summary(self) -> str:
        """One line for people: the denoising loops and forwards seen, the attention calls
        reduced, and any fallback (the raw counts are in :attr:`stats`)."""
        return stats_summary(self.stats, len(self.fallbacks))

    def log_once(self, message: str, level: int = logging.INFO) -> None:
        """Log ``message`` once per application (a site left alone is said once, not per call)."""
        if message not in self._logged:
            self._logged.add(message)
            logger.log(level, message)

    # -- steps ----------------------------------------------------------------------------
    @property
    def step(self) -> int:
        return self.tracker.step

    @property
    def num_steps(self) -> int | None:
        return self.tracker.num_steps

    def begin_generation(self, num_steps: int | None = None) -> None:
        """A new generation of ``num_steps`` steps starts: the matching cache is dropped."""
        self.tracker.begin_generation(num_steps)
        self._follow_generation()

    def set_step(self, step: int, num_steps: int | None = None) -> None:
        """Pin the step of the next forward(s) (turns guessing off until :meth:`reset`); a
        step beyond the generation's ``num_steps`` is a ValueError.

        The running forward, if any, ends here: the next graph call starts a new one.
        """
        self.end_forward()
        self.tracker.tell_step(step, num_steps)
        self._follow_generation()

    def step_done(self, num_steps: int | None = None) -> None:
        """The running step ended (a scheduler's ``step``, a step-end callback): the next one
        runs next; after the last step the generation is done (``step == num_steps``)."""
        self.end_forward()
        self.tracker.tell_step(self.tracker.step + 1, num_steps, finished=True)
        self._follow_generation()

    def _follow_generation(self) -> None:
        """Indices never outlive their generation; a generation that ran rewritten sites and
        reduced none of them is said once at WARNING."""
        if self.stats["generations"] != self.tracker.generations:
            self._warn_if_nothing_reduced()
            self.stats["generations"] = self.tracker.generations
            self.cache.clear()
            self.block_residuals.clear()
            self._generation_sites = self._generation_reduced = self._generation_steps = 0

    def _warn_if_nothing_reduced(self) -> None:
        if not self._generation_sites or self._generation_reduced or self.ratios.uniform:
            return
        reuse = self.reuse_schedule
        if reuse is not None and all(v == 0.0 for t in (reuse.q, reuse.kv) for row in t for v in row):
            return  # a schedule that only reuses blocks cuts no tokens by design
        source = self.ratios.source
        label = source.label if source is not None else "layer_ratios"
        self.log_once(
            f"asymrnr: {label} reduced nothing in a generation of {self._generation_steps} step(s): the "
            f"steps it cuts fall outside the steps that ran (it was laid out for num_steps="
            f"{self.ratios.schedule_steps() if self.tracker.num_steps is None else self.tracker.num_steps}); "
            "tell the real step count (apply(pipe), num_steps=..., StepCallback) or choose another "
            "schedule", logging.WARNING)

    def set_branch(self, name: str | None) -> None:
        """The pipeline names the forwards to come (diffusers' ``cache_context``)."""
        self.tracker.branch_name = name

    # -- block reuse ----------------------------------------------------------------------
    @property
    def reuse_schedule(self) -> Any:  # Schedule | None
        """The schedule whose ``reuse`` table the block hooks follow (None: no reuse)."""
        return self.config.reuse_schedule

    def reuse_mode(self, block: int) -> int:
        """The reuse cell of ``block`` at the running step (0 compute, 1 reuse, 2 predict; the
        schedule's reuse table mapped to the generation's step count as ratios are)."""
        schedule = self.reuse_schedule
        step, num_steps = self.step, self.num_steps
        if schedule is None or step < 0 or (num_steps is None and step >= schedule.num_steps) \
                or (num_steps is not None and step >= num_steps):
            return 0
        return schedule.reuse_at(step, num_steps)[block]

    def reuses_later(self, block: int) -> bool:
        """Whether the schedule reuses ``block`` at any step (its residual is then kept)."""
        schedule = self.reuse_schedule
        return schedule is not None and any(row[block] for row in schedule.reuse)

    # -- forwards -------------------------------------------------------------------------
    def begin_forward(self, timestep: torch.Tensor | None = None) -> None:
        """A forward of the model starts (``apply``'s hook). Unless steps are told,
        ``timestep`` ticks them; without one, the first graph with a tick input does."""
        self.end_forward()
        self._pending_tick = None
        self._open_forward()
        if isinstance(timestep, torch.Tensor):
            self._observe("timestep", timestep)

    def end_forward(self) -> None:
        """The running forward ended: its site count is the model's (checked against the
        schedule once, when first learned)."""
        if not self._forward_open:
            return
        self._forward_open = False
        provisional, self._provisional_count = self._provisional_count, None
        if (self.ratios.sites_per_forward is None or provisional is not None) and self._forward_sites:
            if provisional is not None and provisional != len(self.site_order):
                self.log_once(
                    f"asymrnr: the schedule was laid out on the {provisional} attention sites of the "
                    f"first graph, but the forward ran {len(self.site_order)} (graph breaks split it): "
                    "the first forward's ratios belong to that layout, every later forward's to the "
                    "whole model's", logging.WARNING)
            self.ratios.set_sites_per_forward(len(self.site_order))
            self._repeats = {key: n for key, n in self._occurrences.items() if n > 1}
        elif any(self._occurrences.get(key, 0) not in (0, n) for key, n in self._repeats.items()):
            # One identity ran several times per forward (a graph node shared by blocks whose
            # weights are not graph inputs): only call order tells them apart, and this forward
            # ran a different number of them.
            self.log_once(
                "asymrnr: some attention calls are told apart only by their call order (one "
                "graph serves several blocks whose weights are not graph inputs), and this "
                "forward ran fewer or more of them than the first: which block was skipped "
                "cannot be told, so their ratios and cached indices may belong to another "
                "block; compile the whole model, or use apply(pipe)", logging.WARNING)
        num_steps = self.tracker.num_steps
        if num_steps is not None and self.tracker.step >= num_steps - 1:  # the generation's last step
            self._warn_if_nothing_reduced()
        if not self._ticked and not self.tracker.told:
            self.stats["forwards_without_step_signal"] += 1
            self.log_once(
                "asymrnr: no step signal: no graph input carries the noise level (a tensor "
                "input of at most one dimension that feeds a sinusoidal embedding, or one named "
                "timestep) and no scheduler or set_step tells the steps, so every forward runs "
                "as step 0 of its schedule: use asymrnr_fx.apply(pipe), StepCallback or "
                "state.set_step", logging.WARNING)
        if (self.stats["forwards"] == 1 and not self._forward_sites and not self.sites_left_alone
                and not self.config.is_identity):  # at ratio 0 nothing is rewritten, by request
            self.log_once(
                "asymrnr: no attention call of this forward reached a graph the backend compiled, "
                "so AsymRnR does nothing: something runs the attention outside torch.compile (a "
                "hook decorated with torch.compiler.disable, such as diffusers' MagCache under a plain "
                "torch.compile (asymrnr_fx.apply compiles what it guards), or a "
                "graph break Dynamo skips)", logging.WARNING)

    def enter_graph(self, site_keys: tuple[Hashable, ...], tick: tuple[str, torch.Tensor] | None) -> None:
        """A compiled graph is called with these sites (their identities, see
        :meth:`site_indices`) and this noise-level input (``(kind, tensor)``, or None).

        Without ``apply``'s hook, a site seen already in the running forward starts the next
        forward: the model came round again, whatever its inputs are named, however its graphs
        are split and whichever blocks a cache skips. The first tick of a forward ticks the
        steps unless they are told; a tick that comes while the forward has ticked already (a
        tick graph run before the first site of the next forward, or once per block) is kept
        for the next forward, so a graph that only ticks never needs to start one.
        """
        own_tick = tick is not None and tick[0] == self.tick_kind
        if not self._forward_open or (not self.hooked and not self._forward_keys.isdisjoint(site_keys)):
            self.end_forward()
            if own_tick:  # the call that starts the forward brings its own noise level
                self._pending_tick = None
            self._open_forward()
        self._forward_keys.update(site_keys)
        if (tick is not None and tick[0] == "timestep" and self.stats["forwards"] == 1
                and self.ratios.awaits_site_count and len(set(site_keys)) == len(site_keys) > 0):
            # The graph that takes the noise level itself (not a block's temb) holds the forward's
            # sites (a whole-model graph): lay the schedule out now, so the first step runs the
            # same ratios as every later generation's; end_forward checks the count against the
            # whole forward.
            self.ratios.set_sites_per_forward(len(site_keys))
            self._provisional_count = len(site_keys)
        if own_tick:
            if not self._ticked:
                self._observe(*tick)
            elif not self.hooked:
                self._pending_tick = tick
            # else: apply's hook marks forwards, and this one has ticked already (from the
            # model's timestep input; a block graph's temb is the same noise level again)

    def _observe(self, kind: str, value: torch.Tensor) -> None:
        """The forward's noise level: ticks the step (once per forward, unless told)."""
        self._ticked = True
        if self.tracker.told:
            return
        step, generations = self.tracker.step, self.tracker.generations
        self.tracker.observe(kind, value)
        if (step, generations) != (self.tracker.step, self.tracker.generations):
            self.tracker.forwards_in_step = 1  # this forward is the new step's first
            self._follow_generation()

    def _open_forward(self) -> None:
        if not self.tracker.told and self.stats["forwards_without_step_signal"] == self.stats["forwards"] > 0:
            self.tracker.forwards_in_step = 0  # no step signal at all: no branches either
        self.tracker.start_forward()
        self._follow_generation()
        self.stats["forwards"] += 1
        self._forward_sites = 0
        self._forward_keys = set()
        self._occurrences = Counter()
        self._ticked = False
        self._forward_open = True
        pending, self._pending_tick = self._pending_tick, None
        if pending is not None:
            self._observe(*pending)

    def register_tick_source(self, kind: str | None) -> None:
        """A graph with a ``timestep`` (or only a ``temb``) input was compiled."""
        if kind == "timestep" or (kind == "temb" and self.tick_kind is None):
            self.tick_kind = kind

    def site_indices(self, keys: Sequence[Hashable]) -> tuple[int, list[int]]:
        """``(step, index per site)`` for the sites with these identities in this forward.

        A site's index is its place in the model: the order in which its identity (the
        parameters it projects with, or its graph node) first ran. A cache that skips blocks
        never moves another block onto its index; a site that appears after the model's site
        count is known gets a new index past it (see :meth:`site_ratios`).
        """
        if not self._forward_open:
            self._open_forward()
        indices = []
        for key in keys:
            occurrence = self._occurrences[key]  # one identity run twice in a forward (hooked)
            self._occurrences[key] += 1
            identity = (key, occurrence)
            if identity not in self.site_order:
                self.site_order[identity] = len(self.site_order)
            indices.append(self.site_order[identity])
        self._forward_sites += len(keys)
        return self.tracker.step, indices

    def site_ratios(self, step: int, indices: Sequence[int]):  # noqa: ANN201
        """``(q, kv)`` per site, or None while a preset waits for the model's site count."""
        ratios = self.ratios.ratios(step, self.tracker.num_steps, indices)
        self._generation_sites += len(indices)
        self._generation_steps = max(self._generation_steps, step + 1)
        if ratios is not None and any(q > 0 or kv > 0 for q, kv in ratios):
            self._generation_reduced += 1
        return ratios

    # -- what the pass found ---------------------------------------------------------------
    def add_grid_evidence(self, grid: tuple[int, int, int] | None) -> None:
        if grid is not None:
            self.grid_evidence.setdefault(grid[0] * grid[1] * grid[2], tuple(grid))

    def record_sites(self, sites: list[Any]) -> None:
        """A compiled graph's classified sites (statistics: what was rewritten, and why not)."""
        for site in sites:
            if site.rewritable:
                self.sites_rewritable += 1
            else:
                self.sites_left_alone.append((site.node_name, site.reason))

    # -- the matching cache and the partitions ------------------------------------------------
    def window(self, step: int) -> int:
        """The refresh window of ``step``: matching is recomputed at its first step."""
        return step // self.config.cache_interval

    def is_refresh_step(self, step: int) -> bool:
        return step % self.config.cache_interval == 0

    def partition_for(self, site: int, component: str, window: int, grid: tuple[int, int, int],
                  stride: tuple[int, int, int], device: torch.device) -> Partition:
        """The dst/src split of (site, component, refresh window); see
        :func:`asymrnr_fx.ops.site_partition`."""
        if not self.config.resample_partition:
            return partition(grid, stride, self.config.seed, device, self.config.chunk_offset)
        return site_partition(grid, stride, seed=self.config.seed, site=site, component=component,
                              window=window, device=device, chunk_offset=self.config.chunk_offset)

    def lookup(self, site: int, component: str, key: IndexKey, window: int,
               device: torch.device) -> CacheEntry | None:
        """Cached indices of (site, component) for this forward's branch, if made in this
        refresh window for exactly ``key`` (the site plan) on ``device``."""
        entry = self.cache.get((site, component, self.tracker.branch))
        if entry is None or entry.key != key or entry.window != window or entry.keep.device != device:
            return None
        return entry

    def store(self, site: int, component: str, key: IndexKey, window: int, keep: torch.Tensor,
              restore: torch.Tensor) -> None:
        self.cache[(site, component, self.tracker.branch)] = CacheEntry(key, window, keep, restore)
