"""Calibration: measuring a tiny CogVideoX (output sensitivity and redundancy), allocating."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import asymrnr_fx
from asymrnr_fx.config import AsymRnRConfig
from asymrnr_fx.schedules.allocate import allocate
from asymrnr_fx.schedules.calibrate import (
    attention_flops_cut,
    calibrate,
    fit,
    measure,
    simple_sampler,
)
from asymrnr_fx.schedules.damage import DamageTable, Reduction, step_groups
from asymrnr_fx.schedules.schedule import Schedule
from asymrnr_fx.schedules.trajectory import run_trajectory
from asymrnr_fx.tiny_models import build_tiny

STEPS = 5
CACHE = 2  # refresh windows [0, 2), [2, 4), [4, 5): three step groups


@pytest.fixture(scope="module")
def tiny():
    return build_tiny("cogvideox", batch=2, seed=0)


def _reduction(tiny) -> Reduction:
    return Reduction(tiny.grid, (2, 2, 2), seed=3, cache_interval=CACHE)


@pytest.fixture(scope="module")
def sensitivity(tiny) -> DamageTable:
    return measure(tiny.model, simple_sampler(tiny.model, tiny.inputs, STEPS), _reduction(tiny),
                   text_side="before", probes=2)


@pytest.fixture(scope="module")
def redundancy(tiny) -> DamageTable:
    return measure(tiny.model, simple_sampler(tiny.model, tiny.inputs, STEPS), _reduction(tiny),
                   method="redundancy", text_side="before")


@pytest.mark.parametrize("which", ["sensitivity", "redundancy"])
def test_measure(which, request, tiny) -> None:
    table: DamageTable = request.getfixturevalue(which)
    assert table.method == which
    assert (table.num_layers, table.num_steps, table.text_tokens, table.clips) == (2, STEPS, 8, 2)
    assert [list(g) for g in table.groups] == [[0, 1], [2, 3], [4]]
    for c in ("q", "kv"):
        levels = table.levels[c]
        assert list(levels) == sorted(levels) and max(levels) <= table.reduction.max_ratio
        kept = table.kept_points(c)
        assert all(a > b for a, b in zip(kept, kept[1:], strict=False))  # each level removes more
        assert kept[-1] >= table.reduction.num_dst  # dst tokens are never removed
        damage = table.damage[c]
        assert damage.shape == (3, 2, len(levels))
        assert torch.isfinite(damage).all() and (damage >= 0).all() and damage.sum() > 0
    assert table.meta["seconds"] > 0


def _one_unit(table: DamageTable, comp: str, group: int, layer: int, level: int) -> Schedule:
    """A schedule that cuts one unit to one measured level."""
    rows = {c: [[0.0] * table.num_layers for _ in range(table.num_steps)] for c in ("q", "kv")}
    for s in table.groups[group]:
        rows[comp][s][layer] = table.levels[comp][level]
    return Schedule(table.num_layers, table.num_steps, rows["q"], rows["kv"],
                    meta=table.reduction.meta())


def _backend_run(tiny, schedule: Schedule) -> torch.Tensor:
    """The tiny model's output under the compiled backend with ``schedule``."""
    torch._dynamo.reset()
    compiled = torch.compile(tiny.model, backend=asymrnr_fx.backend(
        AsymRnRConfig(schedule=schedule), inner="eager"))
    with torch.no_grad():
        return run_trajectory(simple_sampler(compiled, tiny.inputs, STEPS))


def test_sensitivity_is_the_first_order_output_error(tiny) -> None:
    """What the measurement adds up per clip and probe, ``g . e`` summed over a unit's steps,
    is the first-order change of ``u . output`` when the compiled backend cuts that unit: the
    attention errors are the backend's (same partitions, matching and reuse) and the
    gradient carries them through the rest of the sampling chain."""
    from asymrnr_fx.schedules import sensitivity as sens
    from asymrnr_fx.schedules.attention_calls import AttentionCalls, VideoSpan
    from asymrnr_fx.schedules.damage import distinct_levels

    traj = simple_sampler(tiny.model, tiny.inputs, STEPS)
    reduction = _reduction(tiny)
    levels = {c: distinct_levels(sens.DEFAULT_LEVELS[c], reduction) for c in ("q", "kv")}
    group_of = [g for g, steps in enumerate(step_groups(STEPS, CACHE)) for _ in steps]
    indices = sens._MatchIndices(reduction, levels)
    calls = AttentionCalls(tiny.model, VideoSpan(64, None, "before"), lambda call, attend: None)
    try:
        latents = sens._plain_run(traj, calls, indices)
        sweep = sens._Sweep(reduction, indices, group_of, clips=2, num_layers=2, probes=2)
        sens._sweep(traj, calls, latents, sweep, torch.Generator().manual_seed(7))
    finally:
        calls.close()
    draw = torch.Generator().manual_seed(7)  # the probes' output directions, in order
    directions = [torch.randn(latents[-1].shape, generator=draw) for _ in range(2)]
    base = _backend_run(tiny, Schedule.uniform(2, STEPS))
    torch.testing.assert_close(base, latents[-1])  # the plain run is the baseline
    table = DamageTable("sensitivity", reduction, 2, STEPS, 8, step_groups(STEPS, CACHE), levels,
                        {c: torch.zeros(3, 2, len(levels[c])) for c in ("q", "kv")})
    for comp, group, layer in (("kv", 2, 1), ("q", 1, 0), ("kv", 0, 0)):
        change = _backend_run(tiny, _one_unit(table, comp, group, layer, 1)) - base
        for probe, u in enumerate(directions):  # every probe's backward pass shares one forward
            actual = (u * change).flatten(1).sum(1)
            predicted = sweep.sums[comp][probe, :, group, layer, 1].float()
            scale = float(actual.abs().max())  # a projection can land near zero
            assert scale > 0
            torch.testing.assert_close(predicted, actual, rtol=0.05, atol=0.02 * scale)


def test_calibrate_valid_deterministic_meets_target(tiny) -> None:
    def run():  # noqa: ANN202
        return calibrate(tiny.model, simple_sampler(tiny.model, tiny.inputs, STEPS),
                         target_flops_cut=0.3, grid=tiny.grid, text_side="before", seed=3,
                         cache_interval=CACHE, probes=1)

    a, b = run(), run()
    assert isinstance(a.schedule, Schedule) and a.schedule == b.schedule
    assert a.stats["predicted_output_mse"] == b.stats["predicted_output_mse"] > 0
    sched = a.schedule
    assert (sched.num_layers, sched.num_steps) == (2, STEPS)
    assert len(sched.distinct_phases()) <= 3  # one per refresh window at most
    cut = attention_flops_cut(sched, 64, 8, 8)
    assert cut == pytest.approx(a.stats["achieved_flops_cut"])
    assert 0.3 <= cut < 0.3 + 2 * (8 + 64) / ((8 + 64) ** 2 * STEPS * 2)  # one token, 2 steps
    assert Schedule.from_dict(sched.to_dict()) == sched  # saves as JSON
    # The schedule carries the settings it was measured with; the config reads them back.
    config = AsymRnRConfig(schedule=sched)
    assert (config.stride, config.seed, config.cache_interval) == ((2, 2, 2), 3, CACHE)


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(["sensitivity", "redundancy"]), st.floats(0.0, 0.75), st.floats(0.0, 0.75))
def test_monotone_and_meets_target(sensitivity: DamageTable, redundancy: DamageTable, which: str,
                                   t1: float, t2: float) -> None:
    """A higher target never lowers a ratio; each target is met within one token at one
    site over one step group (the longest group has two steps)."""
    table = sensitivity if which == "sensitivity" else redundancy
    lo, hi = sorted((t1, t2))
    a, _ = allocate(table, lo)
    b, _ = allocate(table, hi)
    for c in ("q", "kv"):
        for ra, rb in zip(getattr(a, c), getattr(b, c), strict=True):
            assert all(x <= y for x, y in zip(ra, rb, strict=True))
    full = (8 + 64) ** 2 * STEPS * 2
    for target, sched in ((lo, a), (hi, b)):
        cut = attention_flops_cut(sched, 64, 8, 8)
        assert target <= cut < target + 2 * (8 + 64) / full + 1e-12


def _table(damage_q: torch.Tensor, damage_kv: torch.Tensor) -> DamageTable:
    """A synthetic table on a (4, 4, 4) grid, 4 steps in 2 groups, levels 0.25 / 0.5 / 0.75."""
    reduction = Reduction((4, 4, 4), cache_interval=2)
    levels = {"q": (0.25, 0.5, 0.75), "kv": (0.25, 0.5, 0.75)}
    groups = step_groups(4, 2)
    return DamageTable("sensitivity", reduction, damage_q.shape[1], 4, 0, groups, levels,
                       {"q": damage_q.double(), "kv": damage_kv.double()})


def test_cheapest_units_are_cut_first() -> None:
    # Damage grows with the level everywhere; K/V at layer 2 in the second group is free.
    ramp = torch.tensor([1.0, 2.0, 3.0])
    expensive = ramp.repeat(2, 4, 1) * 10.0
    kv = expensive.clone()
    kv[1, 2] = 0.0
    sched, _ = allocate(_table(expensive, kv), 0.05)
    for s in range(4):
        cut = [q > 0 or r > 0 for q, r in sched.ratios_at(s)]
        assert cut == ([False, False, True, False] if s >= 2 else [False] * 4)


def test_hull_skips_a_level_that_is_not_worth_stopping_at() -> None:
    # A unit whose damage jumps at 0.25 and barely grows after: its first rung is 0.75.
    flat = torch.tensor([[[5.0, 5.1, 5.2]]]).repeat(2, 1, 1)
    steep = torch.tensor([[[1.0, 10.0, 100.0]]]).repeat(2, 1, 1)
    from asymrnr_fx.schedules.allocate import hull_rungs

    table = _table(steep, flat)
    assert [kept for kept, _ in hull_rungs(table, "kv", 0, 0)] == [16]
    assert [kept for kept, _ in hull_rungs(table, "q", 0, 0)] == [48, 32, 16]


def test_damage_table_json_roundtrip(sensitivity: DamageTable) -> None:
    again = DamageTable.from_dict(json.loads(json.dumps(sensitivity.to_dict())))
    for target in (0.2, 0.5):
        assert allocate(again, target)[0] == allocate(sensitivity, target)[0]
    assert fit(again, 0.4).stats["predicted_output_mse"] == pytest.approx(
        fit(sensitivity, 0.4).stats["predicted_output_mse"])
    bad = sensitivity.to_dict()
    bad["damage"]["kv"] = bad["damage"]["kv"][:1]
    with pytest.raises(ValueError, match=r"damage\['kv'\] has shape"):
        DamageTable.from_dict(bad)
    with pytest.raises(ValueError, match="not a calibration measurement"):
        DamageTable.from_dict({"method": "sensitivity"})


def test_errors(tiny, sensitivity: DamageTable) -> None:
    sample = simple_sampler(tiny.model, tiny.inputs, 2)
    with pytest.raises(ValueError, match="not reachable"):
        allocate(sensitivity, 0.99)
    with pytest.raises(ValueError, match=r"target_flops_cut=1.5 is out of range"):
        allocate(sensitivity, 1.5)
    with pytest.raises(ValueError, match="method='bogus' is invalid"):
        measure(tiny.model, sample, _reduction(tiny), method="bogus", text_side="before")
    with pytest.raises(ValueError, match="must be Trajectory objects"):
        measure(tiny.model, lambda set_step: None, _reduction(tiny), text_side="before")
    with pytest.raises(ValueError, match="steps=4"):
        measure(tiny.model, simple_sampler(tiny.model, tiny.inputs, 3), _reduction(tiny),
                method="redundancy", steps=4, text_side="before")
    with pytest.raises(ValueError, match="text_side"):
        measure(tiny.model, sample, _reduction(tiny))
    with pytest.raises(ValueError, match="no video self-attention"):
        measure(tiny.model, sample, Reduction((8, 8, 8)), text_side="before")
    with pytest.raises(ValueError, match="cache_interval=0 is invalid"):
        Reduction((4, 4, 4), cache_interval=0)


def test_redundancy_counts_cfg_once_from_timesteps(tiny) -> None:
    """Without set_step, steps come from the timestep input through the package's
    StepTracker: a repeated timestep (CFG as two calls) stays in the same step."""
    def sample(set_step) -> None:
        for t in (900, 600, 300):
            for _ in range(2):  # conditional and unconditional calls
                tiny.model(**{**tiny.inputs, "timestep": torch.full((2,), t)})

    table = measure(tiny.model, sample, _reduction(tiny), method="redundancy", steps=3,
                    text_side="before")
    assert table.num_steps == 3 and [list(g) for g in table.groups] == [[0, 1], [2]]


def test_a_psnr_target_gives_the_largest_cut_that_meets_it(sensitivity: DamageTable) -> None:
    from asymrnr_fx.schedules.calibrate import fit_to_psnr, predicted_psnr

    full = predicted_psnr(fit(sensitivity, 0.6).stats["predicted_output_mse"])
    light = predicted_psnr(fit(sensitivity, 0.1).stats["predicted_output_mse"])
    target = (full + light) / 2  # between a light and a heavy cut
    result = fit_to_psnr(sensitivity, target)
    cut = result.stats["achieved_flops_cut"]
    assert result.stats["predicted_psnr"] >= target and result.schedule.meta["target_psnr"] == target
    # The largest: a little more cut falls below the target.
    assert predicted_psnr(fit(sensitivity, cut + 0.02).stats["predicted_output_mse"]) < target
    # Monotone: asking for more quality never cuts more.
    assert fit_to_psnr(sensitivity, target + 3).stats["achieved_flops_cut"] <= cut
    assert fit_to_psnr(sensitivity, 1e6).stats["achieved_flops_cut"] == 0.0  # unreachable: nothing cut


def test_a_psnr_target_needs_a_sensitivity_measurement(redundancy: DamageTable, sensitivity: DamageTable) -> None:
    from asymrnr_fx.schedules.calibrate import fit_to_psnr

    with pytest.raises(ValueError, match="sensitivity measurement"):
        fit_to_psnr(redundancy, 30)
    with pytest.raises(ValueError, match="target_psnr=nan"):
        fit_to_psnr(sensitivity, float("nan"))
