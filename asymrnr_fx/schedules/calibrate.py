"""Fit a reduction schedule to a model: measure what each cut costs, then allocate.

1. **Measure** (:func:`measure`) a :class:`~asymrnr_fx.schedules.damage.DamageTable`: the
   damage of cutting each unit (component, step group, attention site) to each of a few
   ratio levels, on the baseline model over every calibration clip.

   * ``"sensitivity"`` (default; :mod:`asymrnr_fx.schedules.sensitivity`): the predicted
     error of the *final output*, from the attention error each cut makes (reduced exactly as
     the backend reduces) and the gradient of the output through the rest of the sampling
     chain. Needs a :class:`~asymrnr_fx.schedules.trajectory.Trajectory` (a sampler whose
     steps can be replayed). Costs about ``3 + 2 x probes`` baseline-length runs of the
     calibration clips (11 with the default 4 probes).
   * ``"redundancy"`` (:mod:`asymrnr_fx.schedules.redundancy`): nearest-dst distances with
     the paper's priors, from one plain run of any sampling callable (a diffusers pipeline).
     A proxy: it holds worse on prompts it was not measured on.

2. **Allocate** (:func:`fit`, :mod:`asymrnr_fx.schedules.allocate`): the ratios that remove
   ``target_flops_cut`` of the attention FLOPs at the least total damage; a measurement can be
   saved (``DamageTable.to_dict``) and refitted at other targets for free.

Calibrate on several prompts and seeds (the CLI's default prompt sets): a unit that is
cheap on one clip can be costly on another, and the table averages the damage over all clips.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..defaults import DEFAULT_CACHE_INTERVAL, DEFAULT_METRIC, DEFAULT_SEED, DEFAULT_STRIDE
from .allocate import allocate
from .damage import DamageTable, Reduction
from .joint import allocate_joint, to_schedule
from .ratios import attention_flops_cut as _flops_cut
from .redundancy import measure_redundancy
from .schedule import Schedule
from .sensitivity import DEFAULT_LEVELS, DEFAULT_PROBES, measure_sensitivity
from .trajectory import EulerTrajectory, Trajectory, run_trajectory

__all__ = [
    "METHODS",
    "CalibrationResult",
    "calibrate",
    "fit_to_psnr",
    "fit_to_speedup",
    "measure",
    "fit",
    "attention_flops_cut",
    "simple_sampler",
]

METHODS = ("sensitivity", "redundancy")


@dataclass(frozen=True)
class CalibrationResult:
    """The fitted schedule and JSON-ready statistics about it."""

    schedule: Schedule
    stats: dict[str, Any] = field(repr=False)


def attention_flops_cut(schedule: Schedule, num_video: int, num_dst: int, text_tokens: int,
                        num_steps: int | None = None) -> float:
    """Share of the video self-attention FLOPs a schedule removes over one generation."""
    steps = schedule.num_steps if num_steps is None else num_steps
    return _flops_cut([schedule.ratios_at(s, steps) for s in range(steps)], num_video=num_video,
                      num_dst=num_dst, text_tokens=text_tokens)


def _as_list(runs: Any) -> list[Any]:
    return list(runs) if isinstance(runs, (list, tuple)) else [runs]


def _as_sample(run: Trajectory | Callable) -> Callable:
    """A whole-generation ``sample(set_step)`` callable for ``run``."""
    if isinstance(run, Trajectory):
        return lambda set_step: run_trajectory(run, set_step)
    return run


def measure(
    model: torch.nn.Module,
    runs: Trajectory | Callable | Sequence[Trajectory | Callable],
    reduction: Reduction,
    *,
    method: str = "sensitivity",
    steps: int | None = None,
    text_tokens: int | None = None,
    text_side: str | None = None,
    step_groups: int | None = None,
    priors: bool = True,
    probes: int = DEFAULT_PROBES,
    levels: Mapping[str, Sequence[float]] | None = None,
    progress: bool = False,
    reuse_periods: Sequence[int] = (),
) -> DamageTable:
    """The damage table of ``model`` over ``runs`` (one or several batches of clips);
    ``progress`` shows a bar with the time left. ``reuse_periods`` (sensitivity only) also
    prices reusing each transformer block with each period (e.g. ``(2, 3)``), for
    :func:`fit_to_psnr` and :func:`fit_to_speedup` to choose block reuse with the token cuts.

    ``runs`` are :class:`Trajectory` objects for ``"sensitivity"``; for ``"redundancy"``
    also plain ``sample(set_step)`` callables running a whole generation of ``steps`` steps.
    ``text_tokens`` (None: whatever is not video) and ``text_side`` (``"before"`` or
    ``"after"`` the video) locate the video in the attention sequence; ``step_groups``
    merges refresh windows into that many groups (None: one group per window). The table's
    ``meta`` records the seconds taken and those of one plain run (the cost in runs).
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is invalid: choose one of {METHODS}")
    runs = _as_list(runs)
    start = time.perf_counter()
    if method == "sensitivity":
        bad = [type(r).__name__ for r in runs if not isinstance(r, Trajectory)]
        if bad:
            raise ValueError(
                f"method='sensitivity' replays sampling steps: runs must be Trajectory objects "
                f"(start/step/finish), got {bad}; use method='redundancy' for a sampling callable")
        table = measure_sensitivity(model, runs, reduction, text_tokens=text_tokens,
                                    text_side=text_side, levels=levels or DEFAULT_LEVELS,
                                    groups=step_groups, probes=probes, progress=progress,
                                    reuse_periods=reuse_periods)
    else:
        if reuse_periods:
            raise ValueError("reuse_periods needs method='sensitivity' (block reuse is priced by its output error)")
        if steps is None:
            steps = runs[0].num_steps if isinstance(runs[0], Trajectory) else None
        if steps is None:
            raise ValueError("steps is required with method='redundancy' and a sampling callable")
        samples = [_as_sample(r) for r in runs]
        table = measure_redundancy(model, samples, reduction, steps=steps, text_tokens=text_tokens,
                                   text_side=text_side, groups=step_groups, priors=priors, levels=levels,
                                   progress=progress)
    return replace(table, meta={**(table.meta or {}), "seconds": time.perf_counter() - start})


def fit(table: DamageTable, target_flops_cut: float, *, name: str | None = None) -> CalibrationResult:
    """The schedule removing ``target_flops_cut`` of the attention FLOPs at least damage."""
    groups = [[g.start, g.stop] for g in table.groups]
    meta = {"calibrated": True, "method": table.method, "target_flops_cut": float(target_flops_cut),
            **table.reduction.meta(), "step_groups": groups, "clips": table.clips}
    schedule, state = allocate(table, target_flops_cut, name=name, meta=meta)
    stats: dict[str, Any] = {
        "method": table.method,
        "target_flops_cut": float(target_flops_cut),
        "achieved_flops_cut": 1.0 - state.spent / state.full,
        "increments": state.increments,
        "num_layers": table.num_layers,
        "num_steps": table.num_steps,
        "video_tokens": table.reduction.num_video,
        "dst_tokens": table.reduction.num_dst,
        "text_tokens": table.text_tokens,
        **table.reduction.meta(),
        "step_groups": groups,
        "levels": {c: list(v) for c, v in table.levels.items()},
        "clips": table.clips,
        "measurement": dict(table.meta or {}),
        "coverage": schedule.coverage(),
    }
    if table.method == "sensitivity":
        stats["predicted_output_mse"] = table.predicted_mse(schedule)
    else:
        stats["damage_proxy"] = table.predicted_mse(schedule)
    return CalibrationResult(schedule, stats)


def fit_to_psnr(table: DamageTable, target_psnr: float, *, data_range: float = 2.0,
                name: str | None = None, tolerance: float = 1e-3, reuse: bool | None = None,
                cost: str = "seconds") -> CalibrationResult:
    """The schedule that saves the most while the output PSNR the measurement predicts stays at
    or above ``target_psnr`` dB (``data_range``: the output's value range).

    With block reuse (``reuse``; None: where the table measured it) the saving is the predicted
    cost of the generation (``cost``: the table's ``"seconds"`` or ``"flops"``), token cuts and
    block reuse chosen together (:func:`fit_to_speedup`'s allocation,
    :mod:`asymrnr_fx.schedules.joint`). Without it, it is the share of attention FLOPs removed:

    Needs a ``"sensitivity"`` table, whose damage is the predicted output error (a redundancy
    proxy predicts no PSNR). The allocation is monotone in its target (a higher target never
    lowers a ratio), so the FLOPs share is found by bisection to ``tolerance``. The prediction
    is first order: on the small model, measured PSNR on the calibration clips came within 1.2 dB of
    it (docs/schedules.md, calibration results).
    """
    if table.method != "sensitivity":
        raise ValueError(f"a PSNR target needs a sensitivity measurement (this one is {table.method!r}, a "
                         "proxy that predicts no PSNR): measure with method='sensitivity', or give a FLOPs target")
    if isinstance(target_psnr, bool) or not isinstance(target_psnr, (int, float)) or not math.isfinite(target_psnr):
        raise ValueError(f"target_psnr={target_psnr!r} is invalid: a finite number of dB, e.g. 33")
    if reuse or (reuse is None and table.reuse is not None):
        return _fit_joint(table, target_psnr=float(target_psnr), data_range=data_range, name=name,
                          reuse=True, cost=cost)

    def meets(cut: float) -> tuple[bool, CalibrationResult | None]:
        try:
            result = fit(table, cut, name=name)
        except ValueError:  # beyond what the measured levels can remove
            return False, None
        return predicted_psnr(result.stats["predicted_output_mse"], data_range) >= target_psnr, result

    ok, best = meets(0.0)
    lo, hi = 0.0, 0.99
    if ok:
        while hi - lo > tolerance:
            mid = (lo + hi) / 2
            ok_mid, result = meets(mid)
            if ok_mid:
                lo, best = mid, result
            else:
                hi = mid
    psnr = predicted_psnr(best.stats["predicted_output_mse"], data_range)
    stats = {**best.stats, "target_psnr": float(target_psnr), "predicted_psnr": psnr, "data_range": data_range}
    meta = {**best.schedule.meta, "target_psnr": float(target_psnr)}
    return CalibrationResult(replace(best.schedule, meta=meta), stats)


def fit_to_speedup(table: DamageTable, target_speedup: float, *, data_range: float = 2.0,
                   name: str | None = None, reuse: bool | None = None, cost: str = "seconds") -> CalibrationResult:
    """The schedule with the least predicted output error whose predicted speedup over the plain
    model reaches ``target_speedup`` (e.g. 2.0): token cuts, and block reuse where the table
    measured it (``reuse``; None: where measured), chosen together
    (:mod:`asymrnr_fx.schedules.joint`). The speedup is predicted from the measurement's cost
    table (``cost``: ``"seconds"`` on the machine that measured, or ``"flops"``): it leaves out
    what the table does not see (matching, compilation's own gains), so measure the result.
    Beyond the options' reach it returns the fastest schedule they allow.
    """
    if isinstance(target_speedup, bool) or not isinstance(target_speedup, (int, float)) \
            or not math.isfinite(target_speedup) or target_speedup < 1.0:
        raise ValueError(f"target_speedup={target_speedup!r} is invalid: a number >= 1, e.g. 2.0")
    return _fit_joint(table, target_speedup=float(target_speedup), data_range=data_range, name=name,
                      reuse=reuse is not False and table.reuse is not None, cost=cost)


def _fit_joint(table: DamageTable, *, target_psnr: float | None = None, target_speedup: float | None = None,
               data_range: float, name: str | None, reuse: bool, cost: str) -> CalibrationResult:
    if table.method == "sensitivity" and target_psnr is not None and table.reuse is None and reuse:
        raise ValueError("this measurement did not price block reuse: measure with reuse (asymrnr calibrate "
                         "--reuse, or reuse_periods=...) or fit token cuts only (reuse=False)")
    if target_psnr is not None:
        max_mse = data_range ** 2 / 10 ** (target_psnr / 10)
        joint = allocate_joint(table, max_mse=max_mse, reuse=reuse, cost=cost)
    else:
        from .joint import options

        full = options(table, reuse=reuse, cost=cost).full
        joint = allocate_joint(table, max_cost=full / target_speedup, reuse=reuse, cost=cost)
    groups = [[g.start, g.stop] for g in table.groups]
    target = {"target_psnr": target_psnr} if target_psnr is not None else {"target_speedup": target_speedup}
    meta = {"calibrated": True, "method": table.method + ("+reuse" if reuse else ""), **target,
            **table.reduction.meta(), "step_groups": groups, "clips": table.clips,
            "predicted_psnr": predicted_psnr(joint.damage, data_range), "predicted_speedup": joint.speedup,
            "cost": cost}
    schedule = to_schedule(table, joint, name=name, meta=meta)
    stats: dict[str, Any] = {
        "method": meta["method"], **target, "cost": cost,
        "predicted_output_mse": joint.damage, "predicted_psnr": meta["predicted_psnr"],
        "predicted_speedup": joint.speedup, "data_range": data_range,
        "reused_block_steps": schedule.reused_share(),
        "attention_flops_cut": attention_flops_cut(schedule, table.reduction.num_video, table.reduction.num_dst,
                                                   table.text_tokens),
        "num_layers": table.num_layers, "num_steps": table.num_steps,
        "video_tokens": table.reduction.num_video, "text_tokens": table.text_tokens,
        **table.reduction.meta(), "step_groups": groups,
        "levels": {c: list(v) for c, v in table.levels.items()},
        "reuse_periods": list(table.reuse_periods) if reuse else [],
        "clips": table.clips, "measurement": dict(table.meta or {}), "coverage": schedule.coverage(),
    }
    return CalibrationResult(schedule, stats)


def calibrate(
    model: torch.nn.Module,
    runs: Trajectory | Callable | Sequence[Trajectory | Callable],
    *,
    target_flops_cut: float,
    grid: tuple[int, int, int],
    steps: int | None = None,
    text_tokens: int | None = None,
    text_side: str | None = None,
    stride: tuple[int, int, int] = DEFAULT_STRIDE,
    seed: int = DEFAULT_SEED,
    metric: str = DEFAULT_METRIC,
    cache_interval: int = DEFAULT_CACHE_INTERVAL,
    method: str = "sensitivity",
    step_groups: int | None = None,
    priors: bool = True,
    probes: int = DEFAULT_PROBES,
    name: str | None = None,
) -> CalibrationResult:
    """:func:`measure` then :func:`fit`: a schedule for ``model`` removing
    ``target_flops_cut`` (e.g. 0.5) of the video self-attention FLOPs.

    ``grid`` is the video token grid (T, H, W) after patching; ``stride``, ``seed``,
    ``metric`` and ``cache_interval`` are the matching settings the schedule will run with
    (it carries them). ``priors`` applies to ``method="redundancy"`` only.
    """
    if isinstance(target_flops_cut, bool) or not 0.0 <= float(target_flops_cut) < 1.0:
        raise ValueError(f"target_flops_cut={target_flops_cut!r} is out of range [0, 1)")
    reduction = Reduction(tuple(grid), tuple(stride), seed, metric, cache_interval)
    table = measure(model, runs, reduction, method=method, steps=steps, text_tokens=text_tokens,
                    text_side=text_side, step_groups=step_groups, priors=priors, probes=probes)
    if steps is not None and table.num_steps != steps:
        raise ValueError(f"the runs have {table.num_steps} steps but steps={steps}")
    return fit(table, target_flops_cut, name=name)


def simple_sampler(model: torch.nn.Module, inputs: Mapping[str, Any], steps: int, *,
                   latent_key: str = "hidden_states", max_timestep: int = 999) -> EulerTrajectory:
    """A plain Euler loop over decreasing timesteps, for models without a pipeline (see
    :class:`~asymrnr_fx.schedules.trajectory.EulerTrajectory`): a Trajectory, and callable
    as ``sample(set_step)``."""
    return EulerTrajectory(model, inputs, steps, latent_key=latent_key, max_timestep=max_timestep)


def predicted_psnr(mse: float, data_range: float = 2.0) -> float:
    """PSNR in dB that a predicted mean squared error stands for (``inf`` at 0)."""
    return math.inf if mse <= 0 else 10.0 * math.log10(data_range ** 2 / mse)
