"""The training script: a few steps on a tiny config write a loadable, documented checkpoint."""

from __future__ import annotations

import json
import math

import torch

from asymrnr_fx.small.sampling import load_small_model
from asymrnr_fx.small.train import heldout_loss, main

TINY = ["--threads", "1", "--batch", "2", "--frames", "2", "--save-every", "2", "--warmup", "1"]


def _tiny_overrides(monkeypatch) -> None:
    # The CLI builds the shipped config; shrink it so a step takes milliseconds.
    import asymrnr_fx.small.train as train

    tiny = dict(num_layers=1, num_attention_heads=1, attention_head_dim=16, time_embed_dim=8)
    monkeypatch.setattr(train, "MODEL_CONFIG", {**train.MODEL_CONFIG, **tiny})


def test_short_run_writes_ema_raw_and_log(tmp_path, monkeypatch) -> None:
    _tiny_overrides(monkeypatch)
    out = tmp_path / "run"
    assert main(["--out", str(out), "--steps", "3", *TINY]) == 0
    summary = json.loads((out / "training.json").read_text())
    assert summary["steps"] == 3 and set(summary["heldout_loss"]) == {"ema", "raw"}
    assert summary["command"].startswith("python -m asymrnr_fx.small.train --out")
    assert len((out / "loss.csv").read_text().splitlines()) == 1 + 3
    ema, raw = load_small_model(out), load_small_model(out / "raw")
    assert ema.config.num_layers == 1
    # The EMA lags the raw weights: after 3 steps they differ, and both are finite.
    assert any(not torch.equal(a, b) for a, b in zip(ema.parameters(), raw.parameters(), strict=True))
    loss = heldout_loss(ema, frames=2)
    assert summary["heldout_loss"]["ema"] == round(loss, 5) and math.isfinite(loss)


def test_continuing_from_weights_starts_where_they_are(tmp_path, monkeypatch) -> None:
    _tiny_overrides(monkeypatch)
    first, second = tmp_path / "a", tmp_path / "b"
    main(["--out", str(first), "--steps", "2", *TINY])
    main(["--out", str(second), "--init", str(first / "raw"), "--steps", "2", "--lr", "0", *TINY])
    # lr 0: the raw weights do not move, so the continued run's raw weights are the input's.
    for a, b in zip(load_small_model(first / "raw").parameters(), load_small_model(second / "raw").parameters(),
                    strict=True):
        torch.testing.assert_close(a, b)
