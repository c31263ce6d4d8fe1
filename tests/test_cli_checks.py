"""The command line checks every number and output path before any work, and writes its
files whole or not at all."""

from __future__ import annotations

import os

import pytest

from asymrnr_fx.cli import main
from asymrnr_fx.files import atomic_path, check_writable, write_text_atomic
from asymrnr_fx.schedules.schedule import Schedule


@pytest.mark.parametrize(("argv", "flag"), [
    (["generate", "--model", "small", "--steps", "0"], "--steps"),
    (["generate", "--model", "small", "--fps", "0"], "--fps"),
    (["generate", "--model", "small", "--seed", "-1"], "--seed"),
    (["generate", "--model", "small", "--guidance", "nan"], "--guidance"),
    (["calibrate", "--model", "small", "--target", "1.5", "--out", "x.json"], "--target"),
    (["calibrate", "--model", "small", "--target", "0.5", "--steps", "0", "--out", "x.json"], "--steps"),
    (["calibrate", "--model", "small", "--target", "0.5", "--steps", "4", "--probes", "0", "--out", "x.json"],
     "--probes"),
    (["calibrate", "--model", "small", "--target", "0.5", "--steps", "4", "--cache-interval", "0",
      "--out", "x.json"], "--cache-interval"),
    (["calibrate", "--model", "small", "--target", "0.5", "--steps", "4", "--step-groups", "0",
      "--out", "x.json"], "--step-groups"),
    (["show", "mochi", "--layers", "0", "--steps", "4"], "--layers"),
    (["demo", "--steps", "0"], "--steps"),
    (["demo", "--kv-ratio", "1"], "--kv-ratio"),
    (["demo", "--cache-interval", "0"], "--cache-interval"),
])
def test_a_bad_number_is_refused_with_its_flag(argv, flag, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert flag in err and "Traceback" not in err


def test_an_unwritable_output_is_refused_before_the_work(tmp_path, capsys, monkeypatch) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    out = blocked / "schedule.json"  # a folder that is a file: nothing can be created there

    def no_measuring(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the model ran before the output path was checked")

    monkeypatch.setattr("asymrnr_fx.cli._measure", no_measuring)
    assert main(["calibrate", "--model", "small", "--target", "0.5", "--steps", "4", "--out", str(out)]) == 2
    assert "--out" in capsys.readouterr().err
    monkeypatch.setattr("asymrnr_fx.cli._load_small_model", no_measuring)
    assert main(["generate", "--model", "small", "--out", str(blocked / "v.gif")]) == 2
    assert "--out" in capsys.readouterr().err
    with pytest.raises(ValueError, match="is a folder"):
        check_writable(tmp_path, "--out")


def test_an_interrupted_write_leaves_the_old_file_and_no_debris(tmp_path) -> None:
    path = tmp_path / "s.json"
    Schedule.uniform(2, 2, kv=0.3).save(path)
    before = path.read_text()
    with pytest.raises(KeyboardInterrupt), atomic_path(path) as temporary:
        temporary.write_text("{half")
        raise KeyboardInterrupt
    assert path.read_text() == before and os.listdir(tmp_path) == ["s.json"]
    write_text_atomic(path, "new")
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["s.json"]


def test_calibrate_keeps_the_measurement_when_the_fit_fails(tmp_path, monkeypatch) -> None:
    """The measurement (the expensive part) is written before the schedule is fitted."""
    from asymrnr_fx.schedules.damage import DamageTable  # noqa: F401 - the type measured

    class Measured:
        meta = {"name": "m"}

        def to_dict(self) -> dict:
            return {"measured": True}

    monkeypatch.setattr("asymrnr_fx.cli._measure", lambda args: Measured())

    def failing_fit(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise OSError("disk full")

    monkeypatch.setattr("asymrnr_fx.schedules.calibrate.fit", failing_fit)
    out = tmp_path / "sched.json"
    assert main(["calibrate", "--model", "small", "--target", "0.5", "--steps", "4", "--out", str(out)]) == 1
    assert (tmp_path / "sched.measurement.json").read_text().strip() == '{"measured": true}'
    assert not out.exists()


@pytest.mark.parametrize(("argv", "suggestion"), [
    (["generate", "--model", "smal"], "did you mean 'small'?"),
    (["calibrate", "--model", "tiny:wann", "--target", "0.5", "--steps", "2", "--out", "x.json"],
     "did you mean 'tiny:wan'?"),
    (["generate", "--model", "small", "--schedule", "cogvidex-2b"], "did you mean 'cogvideox-2b'?"),
])
def test_a_near_miss_names_the_right_one(argv, suggestion, capsys, monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert suggestion in err and "hf download" not in err
