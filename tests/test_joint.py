"""Token cuts and block reuse chosen together: the reuse measurement is the first-order output
error of what ``apply`` runs, and the allocation meets its target, is monotone in it and prices
options that exclude each other apart."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import asymrnr_fx
from asymrnr_fx.schedules.calibrate import fit_to_psnr, fit_to_speedup, measure, simple_sampler
from asymrnr_fx.schedules.damage import DamageTable, Reduction, reuse_pattern, step_groups
from asymrnr_fx.schedules.joint import allocate_joint, options, to_schedule
from asymrnr_fx.schedules.schedule import Schedule
from asymrnr_fx.schedules.trajectory import run_trajectory
from asymrnr_fx.tiny_models import build_tiny

STEPS = 6
CACHE = 3  # refresh windows [0, 3), [3, 6): two step groups
PERIODS = (2, 3)


@pytest.fixture(scope="module")
def tiny():
    return build_tiny("cogvideox", batch=2, seed=0)


@pytest.fixture(scope="module")
def table(tiny) -> DamageTable:
    reduction = Reduction(tiny.grid, (2, 2, 2), seed=3, cache_interval=CACHE)
    return measure(tiny.model, simple_sampler(tiny.model, tiny.inputs, STEPS), reduction, text_side="before",
                   probes=2)


def test_the_measurement_prices_reuse_and_carries_costs(table: DamageTable) -> None:
    assert table.reuse is None  # not asked for
    for cost in ("flops", "seconds"):
        costs = table.costs[cost]
        assert len(costs["block"]) == len(costs["attention"]) == table.num_layers
        assert all(v > 0 for v in (*costs["block"], *costs["attention"]))
    assert DamageTable.from_dict(table.to_dict()).costs == table.costs


def _sweep_with_reuse(tiny, periods: tuple[int, ...]):  # noqa: ANN202
    """The measurement's per-probe sums of ``g . e`` for reuse, and the probes' directions."""
    from asymrnr_fx.schedules import sensitivity as sens
    from asymrnr_fx.schedules.attention_calls import AttentionCalls, VideoSpan
    from asymrnr_fx.schedules.block_calls import BlockCalls

    traj = simple_sampler(tiny.model, tiny.inputs, STEPS)
    reduction = Reduction(tiny.grid, (2, 2, 2), seed=3, cache_interval=CACHE)
    group_of = [g for g, steps in enumerate(step_groups(STEPS, CACHE)) for _ in steps]
    indices = sens._MatchIndices(reduction, {"q": (0.5,), "kv": (0.5,)})
    calls = AttentionCalls(tiny.model, VideoSpan(64, None, "before"), lambda call, attend: None)
    blocks = BlockCalls(tiny.model, calls)
    residuals = sens._BlockResiduals(reduction, periods, group_of)
    try:
        latents = sens._plain_run(traj, calls, indices, blocks, residuals)
        residuals.sums = torch.zeros(2, 2, 2, 2, len(periods), dtype=torch.float64)
        residuals.predict_sums = torch.zeros_like(residuals.sums)
        sweep = sens._Sweep(reduction, indices, group_of, clips=2, num_layers=2, probes=2)
        sens._sweep(traj, calls, latents, sweep, torch.Generator().manual_seed(7), blocks=blocks,
                    residuals=residuals)
    finally:
        calls.close()
        blocks.close()
    draw = torch.Generator().manual_seed(7)
    sums = {1: residuals.sums, 2: residuals.predict_sums}
    return sums, [torch.randn(latents[-1].shape, generator=draw) for _ in range(2)], latents[-1]


def _applied_run(tiny, schedule: Schedule) -> torch.Tensor:
    torch._dynamo.reset()
    model = build_tiny("cogvideox", batch=2, seed=0).model
    asymrnr_fx.apply(model, schedule=schedule, inner="eager")
    with torch.no_grad():
        return run_trajectory(simple_sampler(model, tiny.inputs, STEPS))


@pytest.mark.parametrize("mode", [1, 2], ids=["reuse", "predict"])
def test_reuse_damage_is_the_first_order_output_error_of_what_apply_runs(tiny, mode: int) -> None:
    sums, directions, base = _sweep_with_reuse(tiny, PERIODS)
    zero = [[0.0, 0.0]] * STEPS
    torch.testing.assert_close(_applied_run(tiny, Schedule(2, STEPS, zero, zero)), base)
    groups = step_groups(STEPS, CACHE)
    checked = 0
    for group, block, k in ((1, 1, 1), (0, 0, 0), (1, 0, 0)):
        reuse = [[0, 0] for _ in range(STEPS)]
        for s, reused in zip(groups[group], reuse_pattern(groups[group], CACHE, PERIODS[k]), strict=True):
            reuse[s][block] = mode if reused else 0
        change = _applied_run(tiny, Schedule(2, STEPS, zero, zero, reuse=reuse)) - base
        for probe, u in enumerate(directions):
            actual = (u * change).flatten(1).sum(1).double()
            predicted = sums[mode][probe, :, group, block, k]
            scale = float(actual.abs().max())
            assert scale > 0
            torch.testing.assert_close(predicted, actual, rtol=0.15, atol=0.05 * scale)
            checked += 1
    assert checked == 6


def _synthetic(draw_damage: list[float], periods: tuple[int, ...] = PERIODS) -> DamageTable:
    """A table with the given damages (cycled over every cell) and a fixed cost table."""
    groups = step_groups(STEPS, CACHE)
    levels = {"q": (0.5, 0.75), "kv": (0.5, 0.75)}
    values = iter(draw_damage * 100)
    damage = {c: torch.tensor([[[next(values) for _ in levels[c]] for _ in range(3)] for _ in groups],
                              dtype=torch.float64).cumsum(-1) for c in ("q", "kv")}
    reuse = torch.tensor([[[next(values) * 3 for _ in periods] for _ in range(3)] for _ in groups], dtype=torch.float64)
    costs = {"seconds": {"other": 0.1, "block": [1.0, 1.5, 1.0], "attention": [2.0, 2.0, 3.0]}}
    reduction = Reduction((4, 8, 8), (2, 2, 2), cache_interval=CACHE)
    return DamageTable("sensitivity", reduction, 3, STEPS, 8, groups, levels, damage, 2, {},
                       reuse_periods=periods, reuse=reuse, costs=costs)


def test_options_are_priced_apart() -> None:
    table = _synthetic([1e-3])
    opts = options(table)
    full = STEPS * (0.1 + 1.0 + 2.0 + 1.5 + 2.0 + 1.0 + 3.0)
    assert math.isclose(opts.full, full)
    kinds = list(opts.kind)
    unit = 1 * 3 + 2  # group 1 (steps 3-5), block 2
    nothing = kinds.index(("tokens", 0.0, 0.0))
    assert float(opts.cost[unit, nothing]) == pytest.approx(3 * (1.0 + 3.0)) and opts.damage[unit, nothing] == 0
    # Reuse with period 3 computes only step 3 of the window, uncut: the block's full work once.
    every_third = kinds.index(("reuse", 3))
    assert float(opts.cost[unit, every_third]) == pytest.approx(1 * (1.0 + 3.0))
    assert float(opts.damage[unit, every_third]) == pytest.approx(float(table.reuse[1, 2, 1]))
    # K/V cut to 0.5 at every step of the group: attention scales with the kept pairs.
    n, t = 256, 8
    kept = table.reduction.kept(0.5)
    half = kinds.index(("tokens", 0.0, 0.5))
    assert float(opts.cost[unit, half]) == pytest.approx(3 * (1.0 + 3.0 * (t + n) * (t + kept) / (t + n) ** 2))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(1e-6, 1e-2), min_size=3, max_size=12), st.floats(20.0, 45.0), st.floats(20.0, 45.0))
def test_a_psnr_target_is_met_and_a_higher_one_never_saves_more(damages: list[float], a: float, b: float) -> None:
    table = _synthetic(damages)
    low, high = sorted((a, b))
    fit_low, fit_high = fit_to_psnr(table, low), fit_to_psnr(table, high)
    for fit, target in ((fit_low, low), (fit_high, high)):
        assert fit.stats["predicted_psnr"] >= target - 1e-9
        # The schedule says what the allocation chose: its predicted error is the table's sum.
        assert table.predicted_mse(fit.schedule) == pytest.approx(fit.stats["predicted_output_mse"], rel=1e-9, abs=1e-15)
        # A reused block never also has its tokens cut in that group (the options exclude each other).
        sched = fit.schedule
        for steps in table.groups:
            for blk in range(3):
                if sched.reuse is not None and any(sched.reuse[s][blk] for s in steps):
                    assert all(sched.q[s][blk] == sched.kv[s][blk] == 0.0 for s in steps)
    assert fit_high.stats["predicted_speedup"] <= fit_low.stats["predicted_speedup"] + 1e-12


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(1e-6, 1e-2), min_size=3, max_size=12), st.floats(1.0, 4.0), st.floats(1.0, 4.0))
def test_a_speed_target_is_met_and_a_higher_one_never_costs_less_quality(damages: list[float], a: float,
                                                                          b: float) -> None:
    table = _synthetic(damages)
    slow, fast = sorted((a, b))
    reach = allocate_joint(table, max_cost=0.0).speedup  # the fastest the options allow
    fit_slow, fit_fast = fit_to_speedup(table, slow), fit_to_speedup(table, fast)
    for fit, target in ((fit_slow, slow), (fit_fast, fast)):
        assert fit.stats["predicted_speedup"] >= min(target, reach) - 1e-9
    assert fit_fast.stats["predicted_output_mse"] >= fit_slow.stats["predicted_output_mse"] - 1e-15


def test_the_choice_is_no_worse_than_any_single_price() -> None:
    table = _synthetic([3e-4, 1e-3, 2e-5, 8e-4, 5e-3])
    opts = options(table)
    budget = 4 / 10 ** 3.3  # 33 dB at data range 2
    fit = allocate_joint(table, max_mse=budget)
    from asymrnr_fx.schedules.joint import choose

    for lam in torch.logspace(-8, 2, 200).tolist():
        c = choose(opts, lam)
        if c.damage <= budget:
            assert fit.cost <= c.cost + 1e-12


def test_without_reuse_only_tokens_are_chosen_and_token_only_tables_still_fit() -> None:
    table = _synthetic([1e-3, 2e-4])
    fit = fit_to_speedup(table, 1.6, reuse=False)
    assert fit.schedule.reuse is None and fit.stats["reused_block_steps"] == 0.0
    plain = DamageTable(table.method, table.reduction, table.num_layers, table.num_steps, table.text_tokens,
                        table.groups, table.levels, table.damage, 2, {}, costs=table.costs)
    assert fit_to_psnr(plain, 30).schedule.reuse is None  # no reuse measured: the token-only fit
    with pytest.raises(ValueError, match="did not price block reuse"):
        fit_to_psnr(plain, 30, reuse=True)
    with pytest.raises(ValueError, match="no cost table"):
        fit_to_speedup(DamageTable(table.method, table.reduction, 3, STEPS, 8, table.groups, table.levels,
                                   table.damage), 2.0)
    with pytest.raises(ValueError, match="target_speedup=0.5 is invalid"):
        fit_to_speedup(table, 0.5)


def test_to_schedule_writes_reuse_cells_by_period() -> None:
    table = _synthetic([1e-3])
    opts = options(table)
    choice = torch.full((len(table.groups) * 3,), opts.kind.index(("tokens", 0.0, 0.0)))
    choice[0] = opts.kind.index(("reuse", 2))  # group 0, block 0: steps 0-2, computed at 0 and 2
    from asymrnr_fx.schedules.joint import JointChoice

    schedule = to_schedule(table, JointChoice(opts, choice))
    assert [row[0] for row in schedule.reuse] == [0, 1, 0, 0, 0, 0]
    assert table.predicted_mse(schedule) == pytest.approx(float(table.reuse[0, 0, 0]))


def test_targets_from_python_on_a_trajectory_run_under_apply(tiny) -> None:
    """measure(..., reuse_periods) on a Trajectory, fit to a speed and a PSNR target, and the
    schedule runs under apply: it reuses blocks, cuts tokens and recompiles nothing."""
    reduction = Reduction(tiny.grid, (2, 2, 2), seed=3, cache_interval=CACHE)
    table = measure(tiny.model, simple_sampler(tiny.model, tiny.inputs, STEPS), reduction, text_side="before",
                    probes=1, reuse_periods=PERIODS)
    assert table.reuse is not None and tuple(table.reuse.shape) == (2, 2, 2)
    assert DamageTable.from_dict(table.to_dict()).reuse_periods == PERIODS
    fast = fit_to_speedup(table, 1.5)
    assert fast.stats["predicted_speedup"] >= 1.5 and fast.schedule.reuse is not None
    with torch.no_grad():
        scale = float(run_trajectory(simple_sampler(tiny.model, tiny.inputs, STEPS)).abs().max())
    by_psnr = fit_to_psnr(table, 25.0, data_range=2 * scale)
    assert by_psnr.stats["predicted_psnr"] >= 25.0
    torch._dynamo.reset()
    model = build_tiny("cogvideox", batch=2, seed=0).model
    asymrnr_fx.apply(model, schedule=fast.schedule, inner="eager")
    (state,) = asymrnr_fx.states_of(model)
    with torch.no_grad():
        run_trajectory(simple_sampler(model, tiny.inputs, STEPS))
        state.reset()
        with torch._dynamo.config.patch(error_on_recompile=True):
            run_trajectory(simple_sampler(model, tiny.inputs, STEPS))
    assert state.stats["blocks_reused"] > 0
