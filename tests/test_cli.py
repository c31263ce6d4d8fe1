"""The ``asymrnr`` command line: show, calibrate, error handling."""

from __future__ import annotations

import json
import socket

import pytest
from PIL import Image

from asymrnr_fx.cli import main
from asymrnr_fx.schedules.presets import get_preset
from asymrnr_fx.schedules.schedule import Schedule


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("asymrnr: error: ") and "\n" not in err, err
    assert "Traceback" not in err
    return err


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test: lookups must stay local."""
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_show_schedule_file(tmp_path, capsys) -> None:
    path = tmp_path / "sched.json"
    get_preset("mochi", 8, 12).save(path)
    assert main(["show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "8 attention sites x 12 steps" in out and "cells are Q/K-V ratios" in out
    png = tmp_path / "sched.png"  # default: beside the JSON
    assert png.stat().st_size > 500 and Image.open(png).size[0] > 300
    other = tmp_path / "x" / "h.png"
    other.parent.mkdir()
    assert main(["show", str(path), "--png", str(other)]) == 0
    assert other.stat().st_size > 500


def test_show_preset(tmp_path, capsys) -> None:
    assert main(["show", "cogvideox-2b", "--layers", "30", "--steps", "50", "--no-png"]) == 0
    assert "'cogvideox-2b': 30 attention sites x 50 steps" in capsys.readouterr().out
    # Without --layers a preset shows at its native size, and says where it comes from.
    assert main(["show", "cogvideox-2b", "--no-png"]) == 0
    out = capsys.readouterr().out
    assert "30 attention sites x 50 steps" in out and "authors' base table" in out
    assert main(["show", "wan2.1", "--layers", "4", "--no-png"]) == 0
    assert "prior written here" in capsys.readouterr().out


def test_show_bad_files(tmp_path, capsys) -> None:
    assert main(["show", str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in _one_line_error(capsys)
    bad = tmp_path / "bad.json"
    data = Schedule.uniform(2, 2, kv=0.3).to_dict()
    data["kv"][1][0] = 1.2
    bad.write_text(json.dumps(data))
    assert main(["show", str(bad)]) == 1
    err = _one_line_error(capsys)
    assert "bad.json" in err and "kv[1][0]=1.2 is out of range" in err
    (tmp_path / "garbage.json").write_text("{")
    assert main(["show", str(tmp_path / "garbage.json")]) == 1
    assert "not valid JSON" in _one_line_error(capsys)


@pytest.mark.parametrize("argv,needle", [
    ([], "COMMAND"),
    (["frobnicate"], "frobnicate"),
    (["generate"], "--model"),
    (["generate", "--model", "small", "--steps", "ten"], "--steps"),
    (["show", "s.json", "--bogus"], "--bogus"),
    (["calibrate", "--model", "tiny:cogvideox", "--target", "1.5", "--steps", "2", "--out", "s.json"],
     "argument --target: 1.5"),
    (["calibrate", "--model", "tiny:nope", "--target", "0.3", "--steps", "2", "--out", "s.json"],
     "nope"),
    (["calibrate", "--model", "tiny:cogvideox", "--target", "0.3", "--steps", "2",
      "--out", "s.json", "--stride", "2,2"], "2,2"),
    (["calibrate", "--model", "tiny:cogvideox", "--target", "0.3", "--steps", "2",
      "--out", "s.json", "--seeds", "0"], "argument --seeds: 0"),
    (["calibrate", "--model", "tiny:cogvideox", "--target", "0.3", "--out", "s.json"], "--steps"),
    (["calibrate", "--model", "small", "--target", "0.3", "--out", "s.json",
      "--measurement", "missing.json"], "missing.json"),
    (["generate", "--model", "small", "--schedule", "nope.json"], "nope.json"),
])
def test_bad_usage(argv, needle, capsys) -> None:
    assert main(argv) == 2
    assert needle in _one_line_error(capsys)


def test_generate_missing_model_fails_offline(capsys, no_network) -> None:
    model = "nonexistent-org/nonexistent-model"
    assert main(["generate", "--model", model, "--prompt", "a cat"]) == 1
    err = _one_line_error(capsys)
    assert model in err and f"hf download {model}" in err
    assert main(["generate", "--model", "not/a/valid/id", "--prompt", "a cat"]) == 1
    assert "not/a/valid/id" in _one_line_error(capsys)
    assert main(["calibrate", "--model", model, "--target", "0.3", "--steps", "4",
                 "--out", "s.json", "--prompt", "a cat", "--height", "64", "--width", "64",
                 "--frames", "9"]) == 1
    assert model in _one_line_error(capsys)


def test_calibrate_then_show(tmp_path, capsys) -> None:
    out = tmp_path / "cal" / "schedule.json"
    argv = ["calibrate", "--model", "tiny:cogvideox", "--target", "0.25", "--steps", "4",
            "--out", str(out), "--cache-interval", "2", "--probes", "1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "attention FLOPs removed" in printed
    assert "calibration cost:" in printed and "baseline-length runs" in printed
    sched = Schedule.load(out)
    assert (sched.num_layers, sched.num_steps) == (2, 4)
    assert len(sched.distinct_phases()) <= 2  # one per refresh window
    assert sched.meta["method"] == "sensitivity" and sched.meta["cache_interval"] == 2
    stats = json.loads(out.with_suffix(".stats.json").read_text())
    assert stats["achieved_flops_cut"] >= 0.25 and stats["model"] == "tiny:cogvideox"
    assert main(["show", str(out)]) == 0
    assert out.with_suffix(".png").stat().st_size > 500
    # A saved measurement refits at another target without running the model.
    capsys.readouterr()
    refit = tmp_path / "refit.json"
    assert main(["calibrate", "--model", "tiny:cogvideox", "--target", "0.5", "--out", str(refit),
                 "--measurement", str(out.with_suffix(".measurement.json"))]) == 0
    assert "calibration cost:" in capsys.readouterr().out
    higher = Schedule.load(refit)
    for comp in ("q", "kv"):  # a higher target never lowers a ratio
        assert all(a <= b for ra, rb in zip(getattr(sched, comp), getattr(higher, comp), strict=True)
                   for a, b in zip(ra, rb, strict=True))
    # A quality target instead of a FLOPs share: the most cut whose predicted PSNR meets it. A
    # random tiny model's output has no known range, so PSNR means nothing there: refused.
    by_psnr = tmp_path / "psnr.json"
    measurement = out.with_suffix(".measurement.json")
    assert main(["calibrate", "--model", "tiny:cogvideox", "--target-psnr", "40", "--out", str(by_psnr),
                 "--measurement", str(measurement)]) == 2
    assert "output range is known" in _one_line_error(capsys)
    ranged = json.loads(measurement.read_text())
    ranged["meta"]["data_range"] = 2.0  # as the small model's measurement records it
    measurement.write_text(json.dumps(ranged))
    assert main(["calibrate", "--model", "tiny:cogvideox", "--target-psnr", "40", "--out", str(by_psnr),
                 "--measurement", str(measurement)]) == 0
    printed = capsys.readouterr().out
    assert "predicted PSNR stays >= 40 dB" in printed and "none in this run" in printed
    stats = json.loads(by_psnr.with_suffix(".stats.json").read_text())
    assert stats["predicted_psnr"] >= 40 and Schedule.load(by_psnr).meta["target_psnr"] == 40
    assert main(["calibrate", "--model", "small", "--target", "0.5", "--target-psnr", "33", "--out",
                 str(by_psnr), "--steps", "4"]) == 2  # one target or the other


def test_calibrate_small_model_prompts(tmp_path, capsys) -> None:
    out = tmp_path / "small.json"
    assert main(["calibrate", "--model", "small", "--target", "0.4", "--steps", "2", "--out", str(out),
                 "--prompt", "red circle right", "blue square orbit", "--threads", "1",
                 "--probes", "1"]) == 0
    printed = capsys.readouterr().out
    assert "predicted PSNR" in printed and "measuring 2 clip(s) (sensitivity)" in printed
    stats = json.loads(out.with_suffix(".stats.json").read_text())
    assert stats["measurement"]["clips"] == [["red circle right", 0], ["blue square orbit", 1]]
    assert main(["calibrate", "--model", "small", "--target", "0.4", "--steps", "2", "--out", str(out),
                 "--prompt", "a cat"]) == 2
    assert "names no shape" in _one_line_error(capsys)


def test_calibrate_small_model_with_block_reuse_and_generate_with_it(tmp_path, capsys) -> None:
    out = tmp_path / "fast.json"
    assert main(["calibrate", "--model", "small", "--reuse", "--target-speedup", "1.4", "--steps", "4",
                 "--cache-interval", "2", "--out", str(out), "--prompt", "red circle right", "blue square orbit",
                 "--threads", "1", "--probes", "1"]) == 0
    printed = capsys.readouterr().out
    assert "predicted speedup" in printed and "block steps reused" in printed
    stats = json.loads(out.with_suffix(".stats.json").read_text())
    assert stats["predicted_speedup"] >= 1.4 and stats["reuse_periods"] == [2]
    schedule = Schedule.load(out)
    assert schedule.reuse is not None and schedule.meta["target_speedup"] == 1.4
    # The same measurement refitted to a quality target: block reuse comes with it.
    assert main(["calibrate", "--model", "small", "--target-psnr", "30", "--out", str(tmp_path / "q.json"),
                 "--measurement", str(out.with_suffix(".measurement.json"))]) == 0
    assert "predicted speedup" in capsys.readouterr().out
    # generate runs the reuse table (through apply).
    assert main(["generate", "--model", "small", "--schedule", str(out), "--steps", "4", "--out",
                 str(tmp_path / "clip.gif"), "--threads", "1", "--inner", "eager"]) == 0
    assert "reused their last residual" in capsys.readouterr().out
    assert main(["calibrate", "--model", "small", "--reuse", "--target", "0.5", "--steps", "4", "--out",
                 str(out)]) == 2
    assert "--reuse prices block reuse" in _one_line_error(capsys)


def test_demo_options_are_the_demos(capsys) -> None:
    assert main(["demo", "-h"]) == 0
    assert "--prompts" in capsys.readouterr().out


@pytest.mark.parametrize("names,patch,patch_t,frames,hw,grid", [
    # token counts of the DESIGN anchors: CogVideoX-2B 49f 480x720, HunyuanVideo 129f 720p,
    # Wan2.1 81f 720p (patch given as a (t, h, w) tuple)
    (("vae_scale_factor_spatial", "vae_scale_factor_temporal"), 2, None, 49, (480, 720), (13, 30, 45)),
    (("vae_scale_factor_spatial", "vae_scale_factor_temporal"), 2, 1, 129, (720, 1280), (33, 45, 80)),
    (("vae_scale_factor_spatial", "vae_scale_factor_temporal"), (1, 2, 2), None, 81, (720, 1280),
     (21, 45, 80)),
    (("vae_spatial_scale_factor", "vae_temporal_scale_factor"), 2, None, 85, (480, 848), (15, 30, 53)),
])
def test_latent_grid(names, patch, patch_t, frames, hw, grid) -> None:
    from types import SimpleNamespace

    from asymrnr_fx.models import pipeline_grid

    temporal = 6 if "scale_factor" in names[1] and names[1].startswith("vae_temporal") else 4
    pipe = SimpleNamespace(**{names[0]: 8, names[1]: temporal},
                           transformer=SimpleNamespace(config={"patch_size": patch,
                                                               "patch_size_t": patch_t}))
    assert pipeline_grid(pipe, hw[0], hw[1], frames) == grid


def _tiny_pipeline_folder(path) -> None:
    """A randomly initialised CogVideoX pipeline saved to ``path`` (a local model folder)."""
    import torch
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    from asymrnr_fx.tiny_models import build_tiny

    words = "a red cat on the blue moon".split()
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>",
                                        eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(0)
    text_encoder = T5EncoderModel(T5Config(vocab_size=16, d_model=32, d_kv=8, d_ff=64,
                                           num_layers=1, num_heads=2)).eval()
    vae = AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 2,
        up_block_types=("CogVideoXUpBlock3D",) * 2, block_out_channels=(8, 8), latent_channels=4,
        layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4)
    CogVideoXPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                      transformer=build_tiny("cogvideox").model,
                      scheduler=CogVideoXDDIMScheduler()).save_pretrained(path)


def test_pipeline_folder_calibrate_then_generate(tmp_path, capsys, no_network) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    folder = tmp_path / "pipe"
    _tiny_pipeline_folder(folder)
    size = ["--height", "16", "--width", "16", "--frames", "5", "--arg", "max_sequence_length=8",
            "--arg", "guidance_scale=1.0", "--steps", "4", "--cpu"]
    sched = tmp_path / "s.json"
    assert main(["calibrate", "--model", str(folder), "--prompt", "a red cat", "--target", "0.3",
                 "--out", str(sched), *size]) == 0
    assert Schedule.load(sched).num_layers == 2  # the tiny transformer's two sites
    assert Schedule.load(sched).meta["method"] == "redundancy"  # a pipeline cannot replay steps
    capsys.readouterr()
    assert main(["calibrate", "--model", str(folder), "--prompt", "a red cat", "--target", "0.3",
                 "--out", str(sched), "--method", "sensitivity", *size]) == 2
    assert "--method redundancy" in _one_line_error(capsys)
    capsys.readouterr()
    gif = tmp_path / "v.gif"
    assert main(["generate", "--model", str(folder), "--prompt", "a red cat", "--schedule",
                 str(sched), "--inner", "eager", "--out", str(gif), *size]) == 0
    out = capsys.readouterr().out
    assert "asymrnr: 4 steps" in out and "attention call(s) reduced" in out
    frames = Image.open(gif)
    assert frames.n_frames > 1
