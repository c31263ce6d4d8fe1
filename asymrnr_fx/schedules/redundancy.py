"""Redundancy calibration: how close each token is to its nearest dst, with the paper's priors.

The cheaper, model-agnostic measurement (one baseline run through any sampling callable,
such as a diffusers pipeline): for each (step, attention site) it matches every src token to
its nearest dst, as the backend would (on Q for the Q ratio, on V for K/V; the dst partition
of that site, component and refresh window), and keeps the nearest-dst distances relative to
the tokens' mean squared norm. Cutting ``n`` tokens then costs the sum of the ``n`` smallest
relative distances over the video length: a proxy, not a prediction of the output error.

Priors (``priors=True``) weight that proxy with the paper's observations: Q damage counts
``Q_WEIGHT`` times K/V damage, shallow sites up to twice, early steps up to twice. On the
shipped small model these priors point the wrong way (its Q is *less* sensitive than K/V)
and redundancy schedules hold worse on held-out prompts than output-sensitivity ones (see the
docs/schedules.md, calibration results); prefer :mod:`asymrnr_fx.schedules.sensitivity` where the
sampler can replay steps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from tqdm import tqdm

from ..kernels.nearest import nearest_dst
from .attention_calls import AttentionCalls, SiteCall, VideoSpan
from .damage import COMPONENTS, DamageTable, Reduction, distinct_levels, step_groups

__all__ = ["Q_LEVELS", "KV_LEVELS", "Q_WEIGHT", "measure_redundancy"]

Q_LEVELS = (0.2, 0.4, 0.6, 0.8, 0.9)
KV_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
Q_WEIGHT = 4.0

SetStep = Callable[[int], None]


class _Distances:
    """Per (step, site, component): the summed cost of removing each level's tokens."""

    def __init__(self, reduction: Reduction, levels: Mapping[str, tuple[float, ...]]) -> None:
        self.reduction = reduction
        self.levels = levels
        self.sums: dict[tuple[int, int, str], list] = {}  # -> [cost per level, count]
        self.rows = 0  # batch rows of the runs' attention (clips; CFG in one batch: twice)
        self._rows_this_run = 0

    def record(self, call: SiteCall, attend: object = None) -> None:
        self._rows_this_run = max(self._rows_this_run, call.query.shape[0])
        window = self.reduction.window(call.step)
        for comp in COMPONENTS:
            x = call.query if comp == "q" else call.value
            video = x[:, :, call.video_start:call.video_start + call.num_video].float()
            part = self.reduction.partition(call.site, comp, window, x.device)
            dist, _ = nearest_dst(video[:, :, part.src_idx], video[:, :, part.dst_idx],
                                  self.reduction.metric)
            if self.reduction.metric == "l2":
                # Relative to the tokens' scale, so sites with large activations compare.
                dist = dist / video.pow(2).sum(-1).mean(-1, keepdim=True).clamp_min(1e-12)
            ordered = dist.clamp_min(0).flatten(0, -2).double().sort(dim=-1).values.mean(0)
            cumulative = torch.cat([ordered.new_zeros(1), ordered.cumsum(0)]) / call.num_video
            removed = [self.reduction.num_video - self.reduction.kept(r) for r in self.levels[comp]]
            slot = self.sums.setdefault((call.step, call.site, comp), [0.0, 0])
            slot[0] = slot[0] + cumulative[removed]
            slot[1] += 1

    def end_run(self) -> None:
        self.rows += self._rows_this_run
        self._rows_this_run = 0

    def cost(self, step: int, site: int, comp: str) -> torch.Tensor:
        total, count = self.sums[(step, site, comp)]
        return total / count


def _prior(priors: bool, comp: str, layer: int, layers: int, step: int, steps: int) -> float:
    if not priors:
        return 1.0
    depth = layer / (layers - 1) if layers > 1 else 1.0
    position = step / (steps - 1) if steps > 1 else 1.0
    # Shallow sites and early steps count up to twice as much damage; Q Q_WEIGHT times.
    return (Q_WEIGHT if comp == "q" else 1.0) * (2.0 - depth) * (2.0 - position)


def _record_runs(model: torch.nn.Module, samples: Sequence[Callable[[SetStep], Any]], span: VideoSpan,
                 distances: _Distances, progress: bool = False) -> tuple[int, int]:
    """Run every sampling callable once under observation; returns (sites per forward, text)."""
    calls = AttentionCalls(model, span, distances.record)
    try:
        for sample in tqdm(samples, desc="calibrating: observed runs", unit="run", disable=not progress):
            with torch.no_grad(), calls:
                sample(calls.set_step)
            calls.tracker.reset()
            distances.end_run()
    finally:
        calls.close()
    counts = calls.sites_per_forward
    if not distances.sums:
        raise ValueError(
            f"no video self-attention with {span.num_video} video tokens was seen: check grid "
            "(in tokens, after patching) and text_tokens")
    if len(counts) != 1:
        raise ValueError(f"attention site counts differ between forwards ({sorted(counts)}): "
                         "calibration needs the same sites in every step")
    return max(counts), int(calls.text_seen or 0)


def measure_redundancy(
    model: torch.nn.Module,
    samples: Sequence[Callable[[SetStep], Any]],
    reduction: Reduction,
    *,
    steps: int,
    text_tokens: int | None = None,
    text_side: str | None = None,
    groups: int | None = None,
    priors: bool = True,
    levels: Mapping[str, Sequence[float]] | None = None,
    progress: bool = False,
) -> DamageTable:
    """Run each ``sample(set_step)`` (a whole generation of ``steps`` steps) once on the
    baseline ``model`` and tabulate the redundancy proxy per unit and level (``progress``: a
    bar over the runs).

    ``sample`` may call ``set_step(i)`` before step ``i``; otherwise steps are guessed from
    the model's ``timestep`` input (CFG as two calls counts once; without a ``timestep``
    every forward is a step). ``text_tokens`` / ``text_side`` locate the video tokens.
    """
    if steps < 1:
        raise ValueError(f"steps={steps!r} is invalid: a positive int")
    levels = levels or {"q": Q_LEVELS, "kv": KV_LEVELS}
    measured = {c: distinct_levels(levels[c], reduction) for c in COMPONENTS}
    distances = _Distances(reduction, measured)
    num_layers, text = _record_runs(model, samples, VideoSpan(reduction.num_video, text_tokens, text_side),
                                    distances, progress)
    seen = sorted({step for step, _, _ in distances.sums})
    if seen != list(range(steps)):
        raise ValueError(
            f"the sampling run covered {len(seen)} step(s) (last index {seen[-1]}) but "
            f"steps={steps}: pass the run's step count, or call set_step(i) in the sampling loop")
    step_sets = step_groups(steps, reduction.cache_interval, groups)
    damage = {c: torch.zeros(len(step_sets), num_layers, len(measured[c]), dtype=torch.float64)
              for c in COMPONENTS}
    for c in COMPONENTS:
        for g, step_set in enumerate(step_sets):
            for layer in range(num_layers):
                for s in step_set:
                    weight = _prior(priors, c, layer, num_layers, s, steps)
                    damage[c][g, layer] += weight * distances.cost(s, layer, c)
    return DamageTable("redundancy", reduction, num_layers, steps, text, step_sets, measured, damage,
                       distances.rows, {"priors": priors, "runs": len(samples)})
