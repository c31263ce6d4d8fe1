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

Cost, in baseline-length runs of the calibration batch: one plain run (which also does the
matching), one replay of every step with gradients (a forward), one backward pass per probe
(about 2 runs each) and the reduced attention of every K/V level at every site and step (Q
errors are gathers of the full output). Memory: one step's forward with gradients.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from ..ops import match, reduced_sdpa
from .attention_calls import AttentionCalls, SiteCall, VideoSpan
from .damage import COMPONENTS, DamageTable, Reduction, distinct_levels, step_groups
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


def _plain_run(trajectory: Trajectory, calls: AttentionCalls, indices: _MatchIndices) -> list[torch.Tensor]:
    """The baseline run: every step's input latent (and the last), matching recorded."""
    latents: list[torch.Tensor] = []
    calls.handler = indices.record
    with torch.no_grad(), calls:
        run_trajectory(trajectory, calls.set_step, latents)
    return latents


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
                 adjoints: list[torch.Tensor]) -> tuple[list[torch.Tensor], list]:
    """Run step ``index`` once with gradients and pull every probe's adjoint back through it;
    returns the adjoints of its input latent and, per site call, ``(call, attention output,
    gradient of the output per probe)``."""
    captured: list[tuple[SiteCall, torch.Tensor]] = []

    def keep_output(call: SiteCall, attend) -> torch.Tensor:  # noqa: ANN001
        out = attend()
        captured.append((call, out))
        return out

    calls.handler = keep_output
    x = latent.detach().requires_grad_(True)
    with torch.enable_grad(), calls:
        calls.replay_step(index)
        nxt = trajectory.step(index, x)
        outs = [out for _, out in captured]
        per_probe = [torch.autograd.grad(nxt, [x, *outs], adjoint, allow_unused=True,
                                         retain_graph=probe < len(adjoints) - 1)
                     for probe, adjoint in enumerate(adjoints)]
    sites = [(call, out.detach(), [g[1 + i] if g[1 + i] is not None else torch.zeros_like(out)
                                   for g in per_probe])
             for i, (call, out) in enumerate(captured)]
    return [g[0] for g in per_probe], sites


def _sweep(trajectory: Trajectory, calls: AttentionCalls, latents: list[torch.Tensor], sweep: _Sweep,
           generator: torch.Generator, tick: Callable[[int], None] = lambda n: None) -> None:
    """Backward through the whole chain, step by step (one step in memory), every probe at
    once: the step's forward and its attention errors are shared by the probes."""
    adjoints = _output_adjoints(trajectory, latents[-1], generator, sweep.probes)
    for index in reversed(range(trajectory.num_steps)):
        adjoints, sites = _replay_step(trajectory, calls, index, latents[index], adjoints)
        with torch.no_grad():
            for call, out, grads in sites:
                sweep.add(call, out, grads)
        tick(1)


@dataclass
class _Totals:
    """Squared sums over every clip and probe so far, and what the runs showed."""

    squares: dict[str, torch.Tensor] | None = None
    clips: int = 0
    numel: int = 0
    num_layers: int | None = None
    text_tokens: int = 0
    plain_seconds: float = 0.0


def _measure_batch(model: torch.nn.Module, trajectory: Trajectory, span: VideoSpan, indices: _MatchIndices,
                   group_of: list[int], generator: torch.Generator, probes: int, totals: _Totals,
                   tick: Callable[[int], None] = lambda n: None) -> None:
    """The plain run and every probe's sweep of one batch, added to ``totals``; ``tick(n)``
    says that ``n`` more steps (plain or backward) are done."""
    calls = AttentionCalls(model, span, lambda call, attend: None)
    try:
        start = time.perf_counter()
        latents = _plain_run(trajectory, calls, indices)
        totals.plain_seconds += time.perf_counter() - start
        tick(trajectory.num_steps)
        totals.num_layers = _site_count(calls, totals.num_layers, indices.reduction)
        totals.text_tokens = int(calls.text_seen or 0)
        batch = latents[-1].shape[0]
        sweep = _Sweep(indices.reduction, indices, group_of, batch, totals.num_layers, probes)
        _sweep(trajectory, calls, latents, sweep, generator, tick)
        squares = {c: sweep.sums[c].pow(2).sum((0, 1)) for c in COMPONENTS}
        totals.squares = squares if totals.squares is None else {
            c: totals.squares[c] + squares[c] for c in COMPONENTS}
    finally:
        calls.close()
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
) -> DamageTable:
    """Predicted output error of every unit and level, over every clip of ``trajectories``.

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
                           generator, probes, totals, bar.update)
    damage = {c: totals.squares[c] / (totals.clips * probes * totals.numel) for c in COMPONENTS}
    meta = {"probes": probes, "output_elements_per_clip": totals.numel,
            "plain_run_seconds": totals.plain_seconds}
    return DamageTable("sensitivity", reduction, totals.num_layers, num_steps, totals.text_tokens,
                       steps_groups, measured, damage, totals.clips, meta)


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
