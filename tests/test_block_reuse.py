"""Block reuse (a schedule's ``reuse`` table) under ``apply``: the compiled run equals an
independent eager reference of reuse, with CFG batched and split; nothing recompiles from one
step or generation to the next; bad tables are refused before anything changes."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

import asymrnr_fx
from asymrnr_fx.block_reuse import reuse_blocks
from asymrnr_fx.schedules.schedule import Schedule
from asymrnr_fx.tiny_models import build_tiny

from . import test_step_caches as step_caches

STEPS = 8


def _pipe() -> tuple[SimpleNamespace, dict]:
    tiny = build_tiny("wan", batch=1)
    return SimpleNamespace(transformer=tiny.model, scheduler=FlowMatchEulerDiscreteScheduler()), tiny.inputs


def _generate(pipe: SimpleNamespace, inputs: dict, cfg: str, on_step=lambda i: None,  # noqa: ANN001
              on_branch=lambda b: None) -> torch.Tensor:  # noqa: ANN001
    """The step caches' pipeline-shaped generation (CFG batched or split), at this file's steps."""
    return step_caches._generate(pipe, inputs, {"t": 1000.0}, cfg, STEPS, on_step, on_branch)


def _reuse_table(num_blocks: int) -> list[list[int]]:
    # Block b skips the steps s with (s + b) % 3 != 0, from step 1 on: odd blocks reuse their
    # last residual (1), even blocks extrapolate it from their last two computed steps (2).
    return [[0] * num_blocks] + [[(2 if b % 2 == 0 else 1) * int((s + b) % 3 != 0) for b in range(num_blocks)]
                                 for s in range(1, STEPS)]


def _reference(pipe: SimpleNamespace, inputs: dict, cfg: str, table: list[list[int]]) -> torch.Tensor:
    """Reuse written out by hand on the eager model: a skipped block returns its input plus the
    residual of its last computed step in the same branch (cell 1), or that residual moved on
    along the line through its last two computed residuals (cell 2); Wan's blocks return hidden
    states."""
    where = {"step": 0, "branch": None}
    computed: dict[tuple[int, str], list[tuple[int, torch.Tensor]]] = {}
    for b, block in enumerate(reuse_blocks(pipe.transformer)):
        original = block.forward

        def forward(hidden_states, *args, _b=b, _original=original, **kwargs):  # noqa: ANN001, ANN202
            key, step = (_b, where["branch"]), where["step"]
            seen = computed.get(key, [])
            cell = table[step][_b]
            if cell and seen:
                (s1, r1) = seen[-1]
                if cell == 2 and len(seen) > 1:
                    (s0, r0) = seen[-2]
                    return hidden_states + r1 + (r1 - r0) / (s1 - s0) * (step - s1)
                return hidden_states + r1
            out = _original(hidden_states, *args, **kwargs)
            computed[key] = [*seen, (step, out - hidden_states)]
            return out

        block.forward = forward
    return _generate(pipe, inputs, cfg, on_step=lambda i: where.update(step=i),
                     on_branch=lambda name: where.update(branch=name))


@pytest.mark.parametrize("cfg", ["batched", "split"])
def test_compiled_reuse_is_the_reference_and_recompiles_nothing(cfg: str) -> None:
    pipe, inputs = _pipe()
    blocks = len(reuse_blocks(pipe.transformer))
    table = _reuse_table(blocks)
    expected = _reference(pipe, inputs, cfg, table)
    plain = _generate(_pipe()[0], inputs, cfg)
    assert float((expected - plain).abs().max()) > 1e-3  # reuse changes the output: the test can fail

    pipe, _ = _pipe()
    torch._dynamo.reset()
    layers = blocks  # tiny Wan: one video self-attention site per block
    schedule = Schedule(layers, STEPS, [[0.0] * layers] * STEPS, [[0.0] * layers] * STEPS, reuse=table)
    asymrnr_fx.apply(pipe, schedule=schedule)
    (state,) = asymrnr_fx.states_of(pipe)
    first = _generate(pipe, inputs, cfg)
    torch.testing.assert_close(first, expected, rtol=1e-4, atol=1e-5)
    forwards = STEPS * (1 if cfg == "batched" else 2)
    reused = sum(v != 0 for row in table for v in row) * forwards // STEPS
    assert state.stats["blocks_reused"] == reused
    assert state.stats["blocks_computed"] == blocks * forwards - reused
    with torch._dynamo.config.patch(error_on_recompile=True):
        second = _generate(pipe, inputs, cfg)  # residuals of the first generation are not reused
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    asymrnr_fx.remove(pipe)
    assert all(b._diffusers_hook.get_hook("asymrnr_block_reuse") is None for b in reuse_blocks(pipe.transformer))


def test_reuse_with_token_cuts_compiles_once_and_reduces() -> None:
    pipe, inputs = _pipe()
    blocks = len(reuse_blocks(pipe.transformer))
    schedule = Schedule(blocks, STEPS, [[0.0] * blocks] * STEPS, [[0.5] * blocks] * STEPS,
                        reuse=_reuse_table(blocks))
    torch._dynamo.reset()
    asymrnr_fx.apply(pipe, schedule=schedule, cache_interval=2, inner="eager")
    (state,) = asymrnr_fx.states_of(pipe)
    _generate(pipe, inputs, "split")
    assert state.stats["cache_refreshes"] + state.stats["cache_hits"] > 0
    assert state.stats["blocks_reused"] > 0
    with torch._dynamo.config.patch(error_on_recompile=True):
        _generate(pipe, inputs, "split")


def test_a_reuse_table_that_does_not_fit_is_refused_before_anything_changes() -> None:
    pipe, _ = _pipe()
    blocks = len(reuse_blocks(pipe.transformer))
    wrong = Schedule(blocks, STEPS, [[0.0] * blocks] * STEPS, [[0.0] * blocks] * STEPS,
                     reuse=_reuse_table(blocks + 1))
    with pytest.raises(ValueError, match=f"reuse table has {blocks + 1} blocks but WanTransformer3DModel has {blocks}"):
        asymrnr_fx.apply(pipe, schedule=wrong)
    assert getattr(pipe.transformer, "_diffusers_hook", None) is None
    with pytest.raises(ValueError, match="asymrnr_fx.apply"):
        asymrnr_fx.backend(schedule=wrong)


def test_reuse_and_another_step_cache_are_refused_together() -> None:
    from diffusers.hooks import FirstBlockCacheConfig

    pipe, _ = _pipe()
    blocks = len(reuse_blocks(pipe.transformer))
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.2))
    schedule = Schedule(blocks, STEPS, [[0.0] * blocks] * STEPS, [[0.0] * blocks] * STEPS,
                        reuse=_reuse_table(blocks))
    with pytest.raises(ValueError, match="already runs a step cache"):
        asymrnr_fx.apply(pipe, schedule=schedule)


def test_schema_2_round_trips_and_schema_1_still_loads(tmp_path) -> None:  # noqa: ANN001
    table = _reuse_table(3)
    schedule = Schedule(2, STEPS, [[0.1, 0.0]] * STEPS, [[0.3, 0.3]] * STEPS, reuse=table)
    path = tmp_path / "s.json"
    schedule.save(path)
    data = json.loads(path.read_text())
    assert data["schema_version"] == 2 and data["reuse"] == table
    assert Schedule.load(path) == schedule
    assert Schedule.load(path) != Schedule(2, STEPS, schedule.q, schedule.kv)  # reuse is part of equality
    plain = Schedule(2, STEPS, schedule.q, schedule.kv)
    assert plain.to_dict()["schema_version"] == 1  # older readers still read token-only files
    assert Schedule.from_dict(plain.to_dict()) == plain
    assert schedule.reuse_at(0) == (0,) * 3 and schedule.reuse_at(1) == tuple(table[1])
    assert schedule.mapped(num_steps=4).reuse_at(0) == (0,) * 3


@pytest.mark.parametrize(("reuse", "message"), [
    ([[1, 0]] + [[0, 0]] * (STEPS - 1), "reuse\\[0\\] marks a block reused at the first step"),
    ([[0, 0]] * (STEPS - 1), "reuse has 7 rows but num_steps=8"),
    ([[0, 0]] + [[0, 3]] * (STEPS - 1), "reuse\\[1\\]\\[1\\]=3 is invalid"),
    ([[0, 0]] + [[0]] * (STEPS - 1), "rows of equal length"),
])
def test_bad_reuse_tables_name_the_cell(reuse: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Schedule(1, STEPS, [[0.0]] * STEPS, [[0.0]] * STEPS, reuse=reuse)


def test_reuse_in_a_schema_1_file_says_which_version_it_needs() -> None:
    data = Schedule(1, 2, [[0.0]] * 2, [[0.0]] * 2, reuse=[[0], [1]]).to_dict()
    data["schema_version"] = 1
    with pytest.raises(ValueError, match="needs schema_version 2"):
        Schedule.from_dict(data)


def test_show_marks_reused_and_predicted_blocks() -> None:
    from asymrnr_fx.schedules.viz import PREDICTED, REUSED, format_schedule, heatmap

    reuse = [[0, 0], [1, 2], [0, 2], [0, 0]]
    schedule = Schedule(2, 4, [[0.5, 0.0]] * 4, [[0.0, 0.0]] * 4, reuse=reuse, name="r")
    text = format_schedule(schedule)
    assert "block reuse: 37.5% of (step, block) cells of 2 blocks skip the block (1 reuse" in text
    assert "2 predict it" in text
    rows = [line.split() for line in text.splitlines() if line.startswith(("0 ", "1 "))]
    assert rows[0][1:] == [".50/.", "R", ".50/.", ".50/."] and rows[1][1:] == [".", "P", "P", "."]
    colours = set(heatmap(schedule).getdata())
    assert REUSED in colours and PREDICTED in colours
