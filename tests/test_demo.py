"""``asymrnr demo`` end to end at toy size (eager inner compiler, 2 steps, one prompt)."""

from __future__ import annotations

import argparse
import json

import pytest

from asymrnr_fx.small import demo


def _args(tmp_path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    return parser.parse_args(["--prompts", "red circle right", "--steps", "2", "--inner", "eager",
                              "--out", str(tmp_path), *extra])


def test_demo_runs_and_reports(tmp_path, capsys) -> None:
    assert demo.main(_args(tmp_path, "--kv-ratio", "0.5")) == 0
    out = capsys.readouterr().out
    assert "PSNR dB" in out and "speedup" in out and "red circle right" in out
    result = json.loads((tmp_path / "demo.json").read_text())
    assert 0.45 < result["attention_flops_saved"] < 0.55  # K/V halved everywhere
    assert result["psnr_db"][0] > 10 and 0 < result["ssim"][0] <= 1
    assert result["stats"]["cache_refreshes"] > 0  # the backend really rewrote attention
    assert (tmp_path / "demo.gif").stat().st_size > 0


def test_default_config_saves_a_third_of_attention() -> None:
    from asymrnr_fx.small.data import TEXT_TOKENS
    from asymrnr_fx.small.metrics import attention_cost

    for steps in (10, 20, 50):
        cost = attention_cost(demo.demo_config(6, steps), num_layers=6, num_steps=steps,
                              grid=(8, 16, 16), text_tokens=TEXT_TOKENS)
        assert 1 - cost >= 0.30


def test_bad_prompt_is_a_usage_error(tmp_path, capsys) -> None:
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    assert demo.main(parser.parse_args(["--prompts", "red circle", "--out", str(tmp_path)])) == 2
    assert "motion" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["--steps", "many"])


def test_default_prompts_are_reported_in_sample_and_held_out() -> None:
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    prompts, seeds, sets = demo._check_prompts(parser.parse_args([]))
    assert sets == ["in-sample"] * 4 + ["held-out"] * 4
    assert prompts[:4] == list(demo.DEFAULT_PROMPTS) and seeds[:4] == [0, 1, 2, 3]
    assert not set(prompts[4:]) & set(prompts[:4]) and min(seeds[4:]) >= 10
    assert demo._check_prompts(parser.parse_args(["--held-out", "0"]))[2] == ["in-sample"] * 4
    assert demo._check_prompts(parser.parse_args(["--prompts", "red circle right"]))[2] == ["yours"]
    assert "--held-out 9" in demo._check_prompts(parser.parse_args(["--held-out", "9"]))


def _result(baseline_rounds: list[list[float]], asymrnr_rounds: list[list[float]]) -> dict:
    import statistics

    clips = len(baseline_rounds[0])
    return {"prompts": ["p"] * clips,
            "baseline_seconds": [statistics.median(r[i] for r in baseline_rounds) for i in range(clips)],
            "asymrnr_seconds": [statistics.median(r[i] for r in asymrnr_rounds) for i in range(clips)],
            "baseline_seconds_per_round": baseline_rounds, "asymrnr_seconds_per_round": asymrnr_rounds}


def test_the_timing_verdict_says_when_load_made_the_speedup_unreliable() -> None:
    steady = _result([[3.0, 3.0]] * 3, [[2.0, 2.1]] * 3)
    assert "unreliable" not in demo.timing_verdict(steady) and "1.46x" in demo.timing_verdict(steady)
    # A busy second round: the baseline ran fast and AsymRnR slow.
    drifting = _result([[3.0, 3.0], [1.5, 1.5], [3.0, 3.0]], [[2.0, 2.0], [3.0, 3.0], [2.0, 2.0]])
    verdict = demo.timing_verdict(drifting)
    assert "unreliable" in verdict and "0.50x-1.50x" in verdict
    assert "one round" in demo.timing_verdict(_result([[3.0]], [[2.0]]))


def test_interleaved_rounds_alternate_the_order_and_keep_every_round(tmp_path) -> None:
    assert demo.main(_args(tmp_path, "--kv-ratio", "0.5", "--rounds", "2")) == 0
    result = json.loads((tmp_path / "demo.json").read_text())
    assert len(result["baseline_seconds_per_round"]) == len(result["asymrnr_seconds_per_round"]) == 2
