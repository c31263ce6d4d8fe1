"""Output-sensitivity calibration: how far each reduction unit moves the final output.

For every unit (component, step group, attention site) and ratio level this predicts the
mean squared error that cutting it adds to the *final* output of the generation, to first
order, from two things measured on the baseline model:

* the error ``e`` the cut makes in the site's attention output, computed exactly as the
  backend would reduce (fresh dst partition per site, component and refresh window;
  matching at the window's first step, reused for the rest of it);
* how an error at that site and step reaches the final output: ``g = J^T u``, the gradient
  of ``u . output`` with respect to the site's attention output, for a random Gaussian
  ``u`` per clip (a *probe*). ``E[(g . e)^2] = |J e|^2`` (Hutchinson), so one backward sweep
  through the sampling chain prices every unit and level at once; the mean over clips and
  probes is the estimate.

Errors of one unit add up over the steps of its group before squaring (the same indices cut
every step of a window, so their errors are correlated); units are taken as independent.

**Block reuse** (``reuse_periods``) is priced the same way: reusing a block with period ``p``
inside a refresh window computes it at the window's steps ``0, p, 2p, ...`` and, at every other
step, adds the residual (output minus input, per stream) of its last computed step instead, or
that residual extrapolated linearly from the computed step before (*predict*: ``p`` earlier in
the window; for the window's first step, the step before it, taken as computed). The error is
that residual minus the step's own, at the block's outputs; ``g`` is the gradient of
``u . output`` with respect to those outputs. One unit is (step group, block, period, reuse or
predict).

**Costs** (:attr:`DamageTable.costs`): what one step of the calibration batch costs, per block
(attention excluded), per attention site and outside the blocks, in FLOPs (``torch.utils.flop_counter``;
attention as torch counts SDPA, ``4 x batch x heads x head_dim`` per query-key pair) and in
seconds on this machine (eager replays of step 0, the median of :data:`TIMING_REPEATS`): what a
schedule's predicted speedup is computed from (:mod:`asymrnr_fx.schedules.joint`).

Cost, in baseline-length runs of the calibration batch: one plain run (which also does the
matching), one replay of every step with gradients (a forward), one backward pass per probe
(about 2 runs each) and the reduced attention of every K/V level at every site and step (Q
errors are gathers of the full output). Memory: one step's forward with gradients; with block
reuse also every block's residual at the steps some period computes (on the CPU).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm import tqdm

from ..ops import match, reduced_sdpa
from .attention_calls import AttentionCalls, SiteCall, VideoSpan
from .block_calls import BlockCall, BlockCalls
from .damage import COMPONENTS, DamageTable, Reduction, distinct_levels, reuse_computes, step_groups
from .trajectory import Trajectory, run_trajectory

__all__ = ["DEFAULT_LEVELS", "DEFAULT_PROBES", "measure_sensitivity"]

DEFAULT_LEVELS: Mapping[str, tuple[float, ...]] = {"q": (0.25, 0.5, 0.75, 0.9),
                                                   "kv": (0.25, 0.5, 0.75, 0.9)}
"""Ratio levels measured per component (above the partition's limit they are capped)."""

DEFAULT_PROBES = 4
"""Random output directions per clip. The estimate of a unit's damage is a mean of
``clips x probes`` squared projections (relative noise ``sqrt(2 / (clips x probes))``), and
allocation favours the units whose noise came out low: on the small model, four clips with
one probe gave schedules 3 dB apart between two probe draws. Each probe costs one backward
pass per step, about two baseline-length runs."""


@dataclass
class _MatchIndices:
    """``(keep, restore)`` per level for every (site, component, window, branch), made at the
    window's first step in the plain run, as the backend makes them."""

    reduction: Reduction
    levels: Mapping[str, tuple[float, ...]]
    store: dict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=dict)

    def record(self, call: SiteCall, attend: object = None) -> None:
        if call.step % self.reduction.cache_interval:
            return
        window = self.reduction.window(call.step)
        for comp in COMPONENTS:
            x = call.query if comp == "q" else call.value
            video = x[:, :, call.video_start:call.video_start + call.num_video].float()
            part = self.reduction.partition(call.site, comp, window, x.device)
            self.store[(call.site, comp, window, call.branch)] = [
                match(video, part, self.reduction.kept(r), self.reduction.metric)
                for r in self.levels[comp]]

    def get(self, call: SiteCall, comp: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return self.store[(call.site, comp, self.reduction.window(call.step), call.branch)]


@dataclass
class _Sweep:
    """Per probe, clip and unit, the summed ``g . e`` (see the module docs)."""

    reduction: Reduction
    indices: _MatchIndices
    group_of: list[int]
    clips: int
    num_layers: int
    probes: int = 1
    sums: dict[str, torch.Tensor] = field(init=False)

    def __post_init__(self) -> None:
        groups = max(self.group_of) + 1
        self.sums = {c: torch.zeros(self.probes, self.clips, groups, self.num_layers,
                                    len(self.indices.levels[c]), dtype=torch.float64)
                     for c in COMPONENTS}

    def add(self, call: SiteCall, out: torch.Tensor, grads: list[torch.Tensor]) -> None:
        """Add every level's ``g . e`` at this site and step, for every probe's ``g``."""
        group = self.group_of[call.step]
        for comp in COMPONENTS:
            for level, (keep, restore) in enumerate(self.indices.get(call, comp)):
                error = self._reduced(call, comp, keep, restore, out).float() - out.float()
                for probe, grad in enumerate(grads):
                    dot = (error * grad.float()).flatten(1).sum(1).double()
                    # Rows of a batch with CFG inside ([cond; uncond]) belong to clip row % clips.
                    self.sums[comp][probe, :, group, call.site, level] += dot.view(-1, self.clips).sum(0)

    def _reduced(self, call: SiteCall, comp: str, keep: torch.Tensor, restore: torch.Tensor,
                 out: torch.Tensor) -> torch.Tensor:
        """The site's attention output with ``comp`` cut by ``(keep, restore)``."""
        if comp == "q" and self.reduction.merge == "drop":
            # A kept query's output row is its full-attention row: restoring copies rows of
            # ``out`` (no attention to run).
            start, n = call.video_start, call.num_video
            video = out[:, :, start:start + n]
            token = keep.expand(*video.shape[:2], -1).gather(-1, restore.expand(*video.shape[:2], -1))
            restored = video.gather(2, token.unsqueeze(-1).expand_as(video))
            return torch.cat([out[:, :, :start], restored, out[:, :, start + n:]], dim=2)
        indices = {f"{comp}_keep": keep, f"{comp}_restore": restore}
        return reduced_sdpa(call.query, call.key, call.value, call.attn_mask, 0.0, call.scale,
                            video_start=call.video_start, video_len=call.num_video,
                            merge=self.reduction.merge, **indices)


@dataclass
class _BlockResiduals:
    """Every block's residual at the steps some reuse period computes (and at each window's last
    step) from the plain run, and per probe, clip and (group, block, period) the summed ``g . e``
    of reusing it (``sums``) and of predicting it (``predict_sums``; see the module docs)."""

    reduction: Reduction
    periods: tuple[int, ...]
    group_of: list[int]
    store: dict[tuple, tuple[torch.Tensor, ...]] = field(default_factory=dict)
    sums: torch.Tensor | None = None
    predict_sums: torch.Tensor | None = None

    def record(self, call: BlockCall) -> None:
        interval = self.reduction.cache_interval
        if call.step % interval == interval - 1 or any(reuse_computes(call.step, interval, p) for p in self.periods):
            self.store[(call.block, call.step, call.branch)] = tuple(r.cpu() for r in call.residual())

    def _previous(self, computed: int, period: int) -> int | None:
        """The computed step before ``computed`` under ``period``: ``period`` earlier in the
        window; the step before for a window's first step (taken as computed); none at step 0."""
        if computed % self.reduction.cache_interval:
            return computed - period
        return computed - 1 if computed else None

    def add(self, call: BlockCall, grads: list[list[torch.Tensor]], clips: int) -> None:
        """Add ``g . e`` of every period at this block and step; ``grads[probe][stream]``."""
        offset = call.step % self.reduction.cache_interval
        now = call.residual()
        for k, period in enumerate(self.periods):
            if reuse_computes(call.step, self.reduction.cache_interval, period):
                continue  # computed at this step under this period: no error
            last_step = call.step - offset % period
            last = [r.to(now[0].device) for r in self.store[(call.block, last_step, call.branch)]]
            before = self._previous(last_step, period)
            guess = last
            if before is not None:
                older = [r.to(now[0].device) for r in self.store[(call.block, before, call.branch)]]
                slope = (call.step - last_step) / (last_step - before)
                guess = [a + (a - b) * slope for a, b in zip(last, older, strict=True)]
            group = self.group_of[call.step]
            for probe, grad in enumerate(grads):
                for sums, value in ((self.sums, last), (self.predict_sums, guess)):
                    dot = sum((v - r).mul(g.float()).flatten(1).sum(1).double()
                              for v, r, g in zip(value, now, grad, strict=True))
                    sums[probe, :, group, call.block, k] += dot.view(-1, clips).sum(0)


def _plain_run(trajectory: Trajectory, calls: AttentionCalls, indices: _MatchIndices,
               blocks: BlockCalls | None = None, residuals: _BlockResiduals | None = None) -> list[torch.Tensor]:
    """The baseline run: every step's input latent (and the last), matching (and block
    residuals) recorded."""
    latents: list[torch.Tensor] = []
    calls.handler = indices.record
    if blocks is not None:
        blocks.handler = residuals.record
    with torch.no_grad(), calls:
        run_trajectory(trajectory, calls.set_step, latents)
    return latents


_ATTENTION_OPS = ("scaled_dot_product", "flash_attention", "efficient_attention", "cudnn_attention")
TIMING_REPEATS = 3
"""Timed replays of step 0 for the timing table (the median of each entry is kept)."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _forward_costs(model: torch.nn.Module, trajectory: Trajectory, calls: AttentionCalls,
                   latent: torch.Tensor, blocks: list[torch.nn.Module]) -> dict:
    """What one step (step 0, every forward of it) of the batch costs, as FLOPs and as seconds
    on this machine: per block and outside the blocks without attention, and per attention
    site its full attention (see the module docs)."""
    from torch.utils.flop_counter import FlopCounterMode

    pair: dict[int, int] = {}

    def shape(call: SiteCall, attend: object) -> None:
        b, h, n, d = call.query.shape
        pair[call.site] = pair.get(call.site, 0) + 4 * b * h * d * n * call.key.shape[-2]

    calls.handler = shape
    with torch.no_grad(), calls, FlopCounterMode(display=False, depth=None) as counter:
        calls.replay_step(0)
        trajectory.step(0, latent)
    counts = counter.get_flop_counts()

    def flops(key: str) -> int:
        return sum(n for op, n in counts.get(key, {}).items() if not any(a in str(op) for a in _ATTENTION_OPS))

    names = {id(m): name for name, m in model.named_modules()}
    root = type(model).__name__
    per_block = [flops(f"{root}.{names[id(b)]}") for b in blocks]
    costs = {"flops": {"other": flops("Global") - sum(per_block), "block": per_block,
                       "attention": [pair[i] for i in sorted(pair)]}}
    costs["seconds"] = _timed_step(trajectory, calls, latent, blocks)
    return costs


def _timed_step(trajectory: Trajectory, calls: AttentionCalls, latent: torch.Tensor,
                blocks: list[torch.nn.Module]) -> dict:
    """Seconds of step 0 (median of :data:`TIMING_REPEATS` eager replays): outside the blocks,
    per block without its attention, and per attention site."""
    runs = [_time_once(trajectory, calls, latent, blocks) for _ in range(TIMING_REPEATS)]
    return {key: _median([run[key] for run in runs]) for key in ("other", "block", "attention")}


def _time_once(trajectory: Trajectory, calls: AttentionCalls, latent: torch.Tensor,
               blocks: list[torch.nn.Module]) -> dict:
    device = latent.device
    attention: dict[int, float] = {}
    in_block: dict[int, float] = {}
    started: dict[int, float] = {}

    def attend_timed(call: SiteCall, attend) -> torch.Tensor:  # noqa: ANN001
        _sync(device)
        start = time.perf_counter()
        out = attend()
        _sync(device)
        attention[call.site] = attention.get(call.site, 0.0) + time.perf_counter() - start
        return out

    def enter(index: int) -> None:
        _sync(device)
        started[index] = time.perf_counter()

    def leave(index: int) -> None:
        _sync(device)
        in_block[index] = in_block.get(index, 0.0) + time.perf_counter() - started[index]

    hooks = [h for i, b in enumerate(blocks) for h in (
        b.register_forward_pre_hook(lambda *a, _i=i: enter(_i)),
        b.register_forward_hook(lambda *a, _i=i: leave(_i)))]
    calls.handler = attend_timed
    try:
        with torch.no_grad(), calls:
            calls.replay_step(0)
            _sync(device)
            start = time.perf_counter()
            trajectory.step(0, latent)
            _sync(device)
            total = time.perf_counter() - start
    finally:
        for h in hooks:
            h.remove()
    sites = [attention[i] for i in sorted(attention)]
    # One site per block where reuse is calibrated; elsewhere the blocks keep their attention.
    per_block = [in_block.get(i, 0.0) - (sites[i] if len(sites) == len(blocks) else 0.0)
                 for i in range(len(blocks))]
    return {"other": total - sum(in_block.values()), "block": per_block, "attention": sites}


def _median(values: list) -> Any:
    if isinstance(values[0], list):
        return [_median([v[i] for v in values]) for i in range(len(values[0]))]
    return sorted(values)[len(values) // 2]


def _output_adjoints(trajectory: Trajectory, last: torch.Tensor, generator: torch.Generator,
                     probes: int) -> list[torch.Tensor]:
    """Per probe, the gradient of ``u . finish(last)`` with respect to ``last`` (Gaussian ``u``)."""
    latent = last.detach().requires_grad_(True)
    adjoints = []
    with torch.enable_grad():
        output = trajectory.finish(latent)
        for probe in range(probes):
            u = torch.randn(output.shape, generator=generator, dtype=output.dtype).to(output.device)
            adjoints += torch.autograd.grad(output, latent, u, retain_graph=probe < probes - 1)
    return adjoints


def _replay_step(trajectory: Trajectory, calls: AttentionCalls, index: int, latent: torch.Tensor,
                 adjoints: list[torch.Tensor], blocks: BlockCalls | None = None) -> tuple[list[torch.Tensor], list, list]:
    """Run step ``index`` once with gradients and pull every probe's adjoint back through it;
    returns the adjoints of its input latent, per site call ``(call, attention output, gradient
    of the output per probe)`` and per block call ``(call, gradients per probe and stream)``."""
    captured: list[tuple[SiteCall, torch.Tensor]] = []
    block_calls: list[BlockCall] = []

    def keep_output(call: SiteCall, attend) -> torch.Tensor:  # noqa: ANN001
        out = attend()
        captured.append((call, out))
        return out

    calls.handler = keep_output
    if blocks is not None:
        blocks.handler = block_calls.append
    x = latent.detach().requires_grad_(True)
    with torch.enable_grad(), calls:
        calls.replay_step(index)
        nxt = trajectory.step(index, x)
        outs = [out for _, out in captured] + [o for call in block_calls for o in call.outputs]
        per_probe = [torch.autograd.grad(nxt, [x, *outs], adjoint, allow_unused=True,
                                         retain_graph=probe < len(adjoints) - 1)
                     for probe, adjoint in enumerate(adjoints)]
    grads = [[g[1 + i] if g[1 + i] is not None else torch.zeros_like(out) for i, out in enumerate(outs)]
             for g in per_probe]
    sites = [(call, out.detach(), [g[i] for g in grads]) for i, (call, out) in enumerate(captured)]
    at, per_block = len(captured), []
    for call in block_calls:
        n = len(call.outputs)
        per_block.append((call, [g[at:at + n] for g in grads]))
        at += n
    return [g[0] for g in per_probe], sites, per_block


def _sweep(trajectory: Trajectory, calls: AttentionCalls, latents: list[torch.Tensor], sweep: _Sweep,
           generator: torch.Generator, tick: Callable[[int], None] = lambda n: None,
           blocks: BlockCalls | None = None, residuals: _BlockResiduals | None = None) -> None:
    """Backward through the whole chain, step by step (one step in memory), every probe at
    once: the step's forward and its attention errors are shared by the probes."""
    adjoints = _output_adjoints(trajectory, latents[-1], generator, sweep.probes)
    for index in reversed(range(trajectory.num_steps)):
        adjoints, sites, block_grads = _replay_step(trajectory, calls, index, latents[index], adjoints, blocks)
        with torch.no_grad():
            for call, out, grads in sites:
                sweep.add(call, out, grads)
            for call, grads in block_grads:
                residuals.add(call, grads, sweep.clips)
        tick(1)


@dataclass
class _Totals:
    """Squared sums over every clip and probe so far, and what the runs showed."""

    squares: dict[str, torch.Tensor] | None = None
    reuse_squares: torch.Tensor | None = None
    predict_squares: torch.Tensor | None = None
    costs: dict | None = None
    clips: int = 0
    numel: int = 0
    num_layers: int | None = None
    text_tokens: int = 0
    plain_seconds: float = 0.0


def _measure_batch(model: torch.nn.Module, trajectory: Trajectory, span: VideoSpan, indices: _MatchIndices,
                   group_of: list[int], generator: torch.Generator, probes: int, totals: _Totals,
                   tick: Callable[[int], None] = lambda n: None, reuse_periods: tuple[int, ...] = ()) -> None:
    """The plain run and every probe's sweep of one batch, added to ``totals``; ``tick(n)``
    says that ``n`` more steps (plain or backward) are done."""
    calls = AttentionCalls(model, span, lambda call, attend: None)
    blocks = BlockCalls(model, calls) if reuse_periods else None
    residuals = _BlockResiduals(indices.reduction, reuse_periods, group_of) if reuse_periods else None
    try:
        start = time.perf_counter()
        latents = _plain_run(trajectory, calls, indices, blocks, residuals)
        totals.plain_seconds += time.perf_counter() - start
        tick(trajectory.num_steps)
        totals.num_layers = _site_count(calls, totals.num_layers, indices.reduction)
        totals.text_tokens = int(calls.text_seen or 0)
        batch = latents[-1].shape[0]
        if totals.costs is None:
            from ..block_reuse import reuse_blocks

            totals.costs = _forward_costs(model, trajectory, calls, latents[0], reuse_blocks(model))
        if blocks is not None:
            if len(blocks.blocks) != totals.num_layers:
                raise ValueError(f"{type(model).__name__} runs {totals.num_layers} attention sites in "
                                 f"{len(blocks.blocks)} blocks: block reuse is calibrated for one site per "
                                 "block; calibrate token cuts only (no reuse)")
            shape = (probes, batch, max(group_of) + 1, len(blocks.blocks), len(reuse_periods))
            residuals.sums = torch.zeros(shape, dtype=torch.float64)
            residuals.predict_sums = torch.zeros(shape, dtype=torch.float64)
        sweep = _Sweep(indices.reduction, indices, group_of, batch, totals.num_layers, probes)
        _sweep(trajectory, calls, latents, sweep, generator, tick, blocks, residuals)
        squares = {c: sweep.sums[c].pow(2).sum((0, 1)) for c in COMPONENTS}
        totals.squares = squares if totals.squares is None else {
            c: totals.squares[c] + squares[c] for c in COMPONENTS}
        if residuals is not None:
            reuse = residuals.sums.pow(2).sum((0, 1))
            predict = residuals.predict_sums.pow(2).sum((0, 1))
            totals.reuse_squares = reuse if totals.reuse_squares is None else totals.reuse_squares + reuse
            totals.predict_squares = predict if totals.predict_squares is None else totals.predict_squares + predict
    finally:
        calls.close()
        if blocks is not None:
            blocks.close()
    totals.clips += batch
    totals.numel = latents[-1][0].numel()


def measure_sensitivity(
    model: torch.nn.Module,
    trajectories: Sequence[Trajectory],
    reduction: Reduction,
    *,
    text_tokens: int | None = None,
    text_side: str | None = None,
    levels: Mapping[str, Sequence[float]] = DEFAULT_LEVELS,
    groups: int | None = None,
    probes: int = DEFAULT_PROBES,
    probe_seed: int | None = None,
    progress: bool = False,
    reuse_periods: Sequence[int] = (),
) -> DamageTable:
    """Predicted output error of every unit and level, over every clip of ``trajectories``.

    ``reuse_periods`` also prices reusing each block with each period (see the module docs;
    e.g. ``(2, cache_interval)``): each must be in ``[2, cache_interval]``.

    ``progress`` shows a bar over the steps of every batch (its plain run, then its backward
    sweep), with the time left.

    ``groups`` merges refresh windows into that many step groups (None: one per window).
    ``probes`` random output directions per clip (each one more backward pass per step; the
    forward and the attention errors are shared) lower the estimate's noise (see
    :data:`DEFAULT_PROBES`); ``probe_seed`` seeds them (default: the reduction's seed).
    ``meta["plain_run_seconds"]`` is the time of the plain runs alone (the unit of the cost).
    """
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
        raise ValueError(f"probes={probes!r} is invalid: a positive int")
    if not trajectories:
        raise ValueError("trajectories is empty: give at least one batch to calibrate on")
    periods = tuple(sorted({int(p) for p in reuse_periods}))
    bad = [p for p in periods if not 2 <= p <= reduction.cache_interval]
    if bad:
        raise ValueError(f"reuse_periods {bad} are invalid: each in [2, cache_interval={reduction.cache_interval}] "
                         "(a block is computed at the first step of every refresh window)")
    num_steps = trajectories[0].num_steps
    steps_groups = step_groups(num_steps, reduction.cache_interval, groups)
    group_of = [g for g, rng in enumerate(steps_groups) for _ in rng]
    measured = {c: distinct_levels(levels[c], reduction) for c in COMPONENTS}
    span = VideoSpan(reduction.num_video, text_tokens, text_side)
    generator = torch.Generator().manual_seed(reduction.seed if probe_seed is None else probe_seed)
    totals = _Totals()
    bar = tqdm(total=2 * num_steps * len(trajectories), unit="step", disable=not progress,
               desc="calibrating")
    with bar:
        for i, trajectory in enumerate(trajectories):
            if trajectory.num_steps != num_steps:
                raise ValueError(f"trajectories have {trajectory.num_steps} and {num_steps} steps: "
                                 "calibrate on runs of one step count")
            bar.set_description(f"batch {i + 1}/{len(trajectories)}: plain run, then backward sweep "
                                f"with {probes} probe(s)")
            _measure_batch(model, trajectory, span, _MatchIndices(reduction, measured), group_of,
                           generator, probes, totals, bar.update, periods)
    scale = totals.clips * probes * totals.numel
    damage = {c: totals.squares[c] / scale for c in COMPONENTS}
    meta = {"probes": probes, "output_elements_per_clip": totals.numel,
            "plain_run_seconds": totals.plain_seconds}
    reuse = None if totals.reuse_squares is None else totals.reuse_squares / scale
    predict = None if totals.predict_squares is None else totals.predict_squares / scale
    return DamageTable("sensitivity", reduction, totals.num_layers, num_steps, totals.text_tokens,
                       steps_groups, measured, damage, totals.clips, meta, reuse_periods=periods,
                       reuse=reuse, predict=predict, costs=totals.costs)


def _site_count(calls: AttentionCalls, known: int | None, reduction: Reduction) -> int:
    counts = calls.sites_per_forward
    if not counts or max(counts) == 0:
        raise ValueError(
            f"no video self-attention with {reduction.num_video} video tokens (grid "
            f"{reduction.grid}) was seen: check grid (in tokens, after patching) and text_tokens")
    if len(counts) != 1 or (known is not None and known != max(counts)):
        raise ValueError(f"attention site counts differ between forwards ({sorted(counts)}): "
                         "calibration needs the same sites in every step")
    return max(counts)
