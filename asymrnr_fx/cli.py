"""The ``asymrnr`` command: ``demo``, ``generate``, ``calibrate`` and ``show``.

Expected problems (a missing model, an unreadable schedule, a bad option value) end with
one line on stderr and exit code 2 (bad usage) or 1 (runtime failure), never a traceback;
set ``ASYMRNR_DEBUG=1`` to see the traceback anyway.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

from .arguments import non_negative_float, non_negative_int, positive_int, ratio
from .calibration import TINY_PREFIX, calibration_setup
from .hub import SMALL_MODEL_NAMES as SMALL_NAMES
from .hub import default_device, load_pipeline
from .video import write_video

__all__ = ["main", "build_parser", "CLIError"]

PROG = "asymrnr"


class CLIError(Exception):
    """An expected failure: printed as one line, exit ``code`` (2 usage, 1 runtime)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise CLIError(f"{message} (see '{self.prog} -h')", code=2)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _library_call(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call the library; its ValueErrors become one-line CLI errors: a request that cannot work
    (:class:`~asymrnr_fx.calibration.SetupError`) is a usage error (exit 2), a model that
    cannot be found or loaded a runtime one (exit 1)."""
    from .calibration import SetupError

    try:
        return function(*args, **kwargs)
    except SetupError as exc:
        raise CLIError(_one_line(exc), 2) from None
    except ValueError as exc:
        raise CLIError(_one_line(exc)) from None


def _load_small_model(args: argparse.Namespace) -> tuple[Any, tuple[int, int, int, int]]:
    """The shipped small model (or ``--weights``) and its clip geometry; one-line errors."""
    import torch

    from .small import sampling

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        model = sampling.load_small_model(args.weights)
    except (OSError, ValueError) as exc:
        raise CLIError(f"cannot load the small model: {_one_line(exc)}") from None
    return model, sampling.clip_geometry(model)


# ------------------------------------------------------------------------------ show
def _check_schedule_spec(spec: str, flag: str) -> None:
    """A schedule argument names a preset or an existing file (else a usage error)."""
    from .schedules.presets import PRESETS

    if spec not in PRESETS and not os.path.exists(spec):
        raise CLIError(f"{flag} {spec!r} is neither a preset ({', '.join(PRESETS)}) nor an "
                       f"existing schedule JSON file{_did_you_mean(spec, PRESETS)}", 2)


def _did_you_mean(name: str, known: Sequence[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    return f"; did you mean {close[0]!r}?" if close else ""


def _check_model_name(model: str) -> None:
    """A near miss of a built-in model name ('smal', 'tiny:wann') is a usage error that names
    the right one, before any lookup: it is no Hub id and no folder."""
    from .tiny_models import TINY_MODELS

    known = [*SMALL_NAMES, *(TINY_PREFIX + name for name in TINY_MODELS)]
    if model in known:
        return
    hint = _did_you_mean(model, known)
    if model.startswith(TINY_PREFIX) or (hint and "/" not in model and not os.path.exists(model)):
        raise CLIError(f"--model {model!r} is not a built-in model{hint} (built in: {SMALL_NAMES[0]!r} "
                       "and 'tiny:NAME'; anything else is a Hugging Face id or a folder)", 2)


def _load_schedule_arg(spec: str, layers: int | None, steps: int | None):
    from .schedules.ratios import load_schedule_source

    _check_schedule_spec(spec, "schedule")
    source = load_schedule_source(spec)
    if source.schedule is not None:
        return source.schedule
    from .schedules.presets import get_preset

    return get_preset(spec, layers, steps)  # at its native size unless --layers / --steps say


def cmd_show(args: argparse.Namespace) -> int:
    from .schedules.viz import format_schedule, heatmap

    schedule = _load_schedule_arg(args.schedule, args.layers, args.steps)
    print(format_schedule(schedule, max_columns=args.max_columns))
    png = args.png
    if png is None and not args.no_png and os.path.exists(args.schedule):
        png = str(Path(args.schedule).with_suffix(".png"))
    if png and not args.no_png:
        heatmap(schedule, png)
        print(f"\nwrote heat map {png}")
    return 0


# ---------------------------------------------------------------------- model lookup
# -------------------------------------------------------------------------- generate
def _schedule_config(spec: str | None, steps: int):
    """An AsymRnRConfig for ``--schedule`` (validated before any model is loaded); a preset or a
    calibrated file brings its own stride, cache interval, metric and seed."""
    from .config import AsymRnRConfig

    if spec is not None:
        _check_schedule_spec(spec, "--schedule")
    return AsymRnRConfig(schedule=spec, num_steps=steps)


def _generate_small(args: argparse.Namespace, config) -> int:
    import torch

    import asymrnr_fx

    from .small import sampling

    model, geometry = _load_small_model(args)
    if any(v is not None for v in (args.height, args.width, args.frames)):
        raise CLIError("the small model has a fixed clip size: drop --height/--width/--frames", 2)
    prompt = args.prompt
    if prompt is None:
        prompt = "red circle right stripes still"
        print(f"no --prompt given: sampling {prompt!r} (a shape, a colour and a motion; optionally a "
              "background and a pan, e.g. 'blue square orbit checker pan-left')")
    # The baseline is plain Inductor: the speed AsymRnR is measured against. apply() runs a
    # schedule's block reuse too (a backend alone sees graphs, not blocks).
    state = None
    if config is None:
        runner = torch.compile(model, backend=args.inner)
    else:
        runner = asymrnr_fx.apply(model, config, inner=args.inner)
        (state,) = asymrnr_fx.states_of(model)

    def run():  # noqa: ANN202
        if state is not None:
            state.reset()
        return sampling.generate(runner, [prompt], [args.seed], steps=args.steps,
                                 geometry=geometry, progress=True)[0]

    clip, seconds = _timed_runs(run, args.warmup)
    out = Path(args.out)
    frames = sampling.to_uint8(clip).repeat(4, axis=1).repeat(4, axis=2)
    out = write_video(list(frames), out, fps=args.fps)
    what = f"baseline ({args.inner})" if config is None else "asymrnr"
    print(f"{what}: {args.steps} steps in {seconds:.2f} s; wrote {out}")
    if state is not None:
        print(state.summary())
    return 0


def _timed_runs(run: Callable[[], Any], warmup: bool) -> tuple[Any, float]:
    """Run once (or a warm-up run, then a timed one); prints the warm-up time."""
    if warmup:
        start = time.perf_counter()
        run()
        print(f"warm-up run (includes compilation): {time.perf_counter() - start:.2f} s")
    else:
        print("note: the timed run includes compilation (add --warmup to time it apart)")
    start = time.perf_counter()
    result = run()
    return result, time.perf_counter() - start


def _check_out(path: str, flag: str) -> None:
    from .files import check_writable

    try:
        check_writable(path, flag)
    except ValueError as exc:
        raise CLIError(str(exc), 2) from None


def cmd_generate(args: argparse.Namespace) -> int:
    _check_model_name(args.model)
    default_out = "asymrnr_video.gif" if args.model in SMALL_NAMES else "asymrnr_video.mp4"
    args.out = default_out if args.out is None else args.out
    _check_out(args.out, "--out")
    config = None if args.schedule == "off" else _schedule_config(args.schedule, args.steps)
    if args.model in SMALL_NAMES:
        return _generate_small(args, config)
    if not args.prompt:
        raise CLIError("--prompt is required for a diffusers pipeline", 2)

    import torch

    import asymrnr_fx

    device, dtype = default_device(args.cpu)
    start = time.perf_counter()
    pipe = _library_call(load_pipeline, args.model, allow_download=args.download, device=device, dtype=dtype)
    loaded = time.perf_counter() - start
    if config is None:
        pipe.transformer = torch.compile(pipe.transformer, backend=args.inner)
    elif args.schedule is None:  # apply's default: the authors' table where they calibrated the family
        asymrnr_fx.apply(pipe, inner=args.inner, num_steps=args.steps)
    else:  # compiles in place and takes step counts from the pipeline's scheduler
        asymrnr_fx.apply(pipe, config, inner=args.inner)
    kwargs: dict[str, Any] = {"prompt": args.prompt, "num_inference_steps": args.steps}
    for key, name in (("height", "height"), ("width", "width"), ("frames", "num_frames"),
                      ("guidance", "guidance_scale")):
        if getattr(args, key) is not None:
            kwargs[name] = getattr(args, key)
    kwargs.update(dict(args.arg))

    def run():  # noqa: ANN202
        # A fresh generator per run: the warm-up and the timed run sample the same noise.
        return pipe(**kwargs, generator=torch.Generator(device).manual_seed(args.seed))

    result, seconds = _timed_runs(run, args.warmup)
    frames = result.frames[0]
    out = write_video(frames, Path(args.out), fps=args.fps)
    what = f"baseline ({args.inner})" if config is None else "asymrnr"
    print(f"loaded {args.model} in {loaded:.1f} s on {device}; {what}: {args.steps} steps in "
          f"{seconds:.1f} s; wrote {out}")
    if config is not None:
        for state in asymrnr_fx.states_of(pipe):
            print(state.summary())
    return 0


# ------------------------------------------------------------------------- calibrate
def _parse_stride(text: str) -> tuple[int, int, int]:
    try:
        stride = tuple(int(v) for v in text.split(","))
    except ValueError:
        stride = ()
    if len(stride) != 3 or min(stride) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not three positive ints like 2,2,2")
    return stride  # type: ignore[return-value]


def _check_calibrate_args(args: argparse.Namespace) -> None:
    """What argparse cannot check alone, before any model runs (numbers are checked by their
    types, :mod:`asymrnr_fx.arguments`)."""
    if args.measurement is None and args.steps is None:
        raise CLIError("--steps is required (the denoising steps of the calibration runs)", 2)
    if args.measurement is None:
        _check_model_name(args.model)
    if args.reuse and args.target is not None:
        raise CLIError("--reuse prices block reuse for --target-psnr or --target-speedup; --target is a share of "
                       "attention FLOPs, which only token cuts remove: give one of those instead", 2)
    if args.reuse and args.measurement is not None:
        raise CLIError("--reuse decides what is measured, and --measurement reuses a measurement: a measurement "
                       "made with --reuse is refitted with block reuse by itself", 2)
    _check_out(args.out, "--out")


def _measure(args: argparse.Namespace):  # noqa: ANN202
    """Run the model on the calibration clips: the damage table (and the setup's extras)."""
    from .schedules.calibrate import measure
    from .schedules.damage import Reduction
    from .schedules.sensitivity import DEFAULT_PROBES

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    setup = _library_call(calibration_setup, args.model, steps=args.steps, prompts=args.prompt, seeds=args.seeds,
                          seed=args.seed, method=args.method, batch=args.batch, weights=args.weights,
                          height=args.height, width=args.width, frames=args.frames,
                          pipeline_args=dict(args.arg), allow_download=args.download, cpu=args.cpu)
    method = args.method or ("sensitivity" if setup.replayable else "redundancy")
    reduction = Reduction(tuple(setup.grid), setup.stride if args.stride is None else args.stride, args.seed,
                          "l2", setup.cache_interval if args.cache_interval is None else args.cache_interval)
    table = measure(setup.model, setup.runs, reduction, method=method, steps=args.steps,
                    text_tokens=setup.text_tokens, text_side=setup.text_side,
                    step_groups=args.step_groups, priors=not args.no_priors,
                    probes=DEFAULT_PROBES if args.probes is None else args.probes, progress=True,
                    reuse_periods=tuple(range(2, reduction.cache_interval + 1)) if args.reuse else ())
    meta = dict(table.meta or {})
    meta.update({"model": args.model, "clips": [list(c) for c in setup.clips],
                 "data_range": setup.data_range, "name": setup.name})
    return replace(table, meta=meta)


def _load_measurement(path: str):  # noqa: ANN202
    from .schedules.damage import DamageTable

    try:
        with open(path, encoding="utf-8") as f:
            return DamageTable.from_dict(json.load(f))
    except OSError as exc:
        raise CLIError(f"cannot read --measurement {path!r}: {exc.strerror or exc}", 2) from None
    except (json.JSONDecodeError, ValueError) as exc:
        raise CLIError(f"--measurement {path!r}: {_one_line(exc)}", 2) from None


def _calibration_cost(table: Any, reused: bool = False) -> str:
    """One line: what the measurement cost, in seconds and in plain runs of its clips; for a
    refit of a saved measurement, that this run measured nothing and what the reused one cost."""
    meta = table.meta or {}
    seconds, plain = meta.get("seconds"), meta.get("plain_run_seconds")
    if seconds is None:
        cost = "not recorded"
    else:
        cost = f"{seconds:.1f} s measuring {table.clips} clip(s) ({table.method})"
        if plain:
            cost += (f" = {seconds / plain:.1f} baseline-length runs (one plain run of those clips "
                     f"took {plain:.1f} s)")
    if reused:
        return f"calibration cost: none in this run (a refit; no model ran); the reused measurement cost {cost}"
    return f"calibration cost: {cost}"


def _fit_line(args: argparse.Namespace, stats: dict, data_range: float | None) -> str:
    """What the fit achieved, in one line."""
    from .schedules.calibrate import predicted_psnr

    if "predicted_speedup" in stats:  # token cuts and block reuse chosen together
        target = (f"the fastest whose predicted PSNR stays >= {args.target_psnr:g} dB" if args.target_psnr is not None
                  else f"the least error at a predicted {args.target_speedup:g}x")
        return (f"predicted speedup {stats['predicted_speedup']:.2f}x ({stats['cost']} on the measuring machine) "
                f"and PSNR {stats['predicted_psnr']:.1f} dB on the calibration clips ({target}); block steps "
                f"reused: {100 * stats['reused_block_steps']:.1f}%, attention FLOPs removed: "
                f"{100 * stats['attention_flops_cut']:.1f}%. Predictions are first order: measure the "
                "schedule (docs/composition.md, the frontier)")
    flops = stats.get("achieved_flops_cut", stats.get("attention_flops_cut"))
    line = f"attention FLOPs removed: {100 * flops:.2f}% "
    line += (f"(the most whose predicted PSNR stays >= {args.target_psnr:g} dB)" if args.target_psnr is not None
             else f"(target {100 * args.target:.2f}%)")
    if "predicted_output_mse" in stats and data_range:
        line += (f"; predicted PSNR {predicted_psnr(stats['predicted_output_mse'], data_range):.1f} dB "
                 "on the calibration clips (first order: on the small model measured PSNR came within 1.2 dB "
                 "of it, mostly above; see docs/schedules.md)")
    return line


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .files import write_text_atomic
    from .schedules.calibrate import fit, fit_to_psnr, fit_to_speedup
    from .schedules.viz import format_schedule

    _check_calibrate_args(args)
    out = Path(args.out)
    stats_path, table_path = out.with_suffix(".stats.json"), out.with_suffix(".measurement.json")
    table = _load_measurement(args.measurement) if args.measurement else _measure(args)
    if not args.measurement:  # the expensive part is kept first, whatever happens next
        write_text_atomic(table_path, json.dumps(table.to_dict()) + "\n")
    name = (table.meta or {}).get("name") or "calibrated"
    data_range = (table.meta or {}).get("data_range")
    if args.target_psnr is not None or args.target_speedup is not None:
        if table.method != "sensitivity" or not data_range:
            flag = "--target-psnr" if args.target_psnr is not None else "--target-speedup"
            raise CLIError(f"{flag} needs a sensitivity measurement of a model whose output range is "
                           "known (the small model: its clips lie in [-1, 1]); give --target (a FLOPs share) "
                           "instead", 2)
        if args.target_psnr is not None:
            result = _library_call(fit_to_psnr, table, args.target_psnr, data_range=data_range,
                                   name=f"{name}-psnr{args.target_psnr:g}", cost=args.cost)
        else:
            result = _library_call(fit_to_speedup, table, args.target_speedup, data_range=data_range,
                                   name=f"{name}-speedup{args.target_speedup:g}", cost=args.cost)
    else:
        result = fit(table, args.target, name=f"{name}-cut{args.target:g}")
    result.schedule.save(out)
    write_text_atomic(stats_path, json.dumps({**result.stats, "model": (table.meta or {}).get("model")},
                                             indent=1) + "\n")
    print(format_schedule(result.schedule))
    print("\n" + _fit_line(args, result.stats, data_range))
    print(_calibration_cost(table, reused=bool(args.measurement)))
    print(f"wrote {out} and {stats_path}" + ("" if args.measurement else
          f"; refit other targets without running the model: --measurement {table_path}"))
    return 0


# ------------------------------------------------------------------------------ demo
def cmd_demo(args: argparse.Namespace) -> int:
    from .small import demo

    return int(demo.main(args) or 0)


# ---------------------------------------------------------------------------- parser
def _first_positional(argv: Sequence[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The argument parser; the demo's options are added only when ``argv`` runs the demo."""
    from .schedules.presets import PRESETS  # plain data: keeps --help fast

    presets = ", ".join(PRESETS)
    parser = _Parser(prog=PROG, description="AsymRnR for video diffusion transformers: token reduction "
                     "as a torch.compile backend.", epilog=f"Run '{PROG} COMMAND -h' for a command's "
                     f"options and an example. Schedule presets: {presets}.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def command(name: str, summary: str, description: str, examples: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=summary, description=textwrap.fill(description, 88),
                              epilog="examples:\n" + examples, formatter_class=argparse.RawDescriptionHelpFormatter)

    p = command("demo", "Inductor vs AsymRnR on the shipped small model (CPU, offline)",
                "Sample the demo prompts (and held-out clips) with plain Inductor and with AsymRnR, "
                "timed in interleaved rounds; print time, speedup (with its spread), attention FLOPs "
                "saved, PSNR and SSIM per clip, and write a labelled side-by-side GIF and a JSON.",
                f"  {PROG} demo\n  {PROG} demo --schedule small.json --rounds 5\n"
                f"  {PROG} demo --prompts 'red circle right' 'blue square zoom checker' --held-out 0")
    if _first_positional(argv) == "demo":
        from .small import demo

        demo.add_arguments(p)  # imported only when the demo runs
    p.set_defaults(func=cmd_demo)
    _add_generate(command(
        "generate", "generate a video with AsymRnR (the small model or a diffusers pipeline)",
        "Generate one video with AsymRnR (or the plain Inductor baseline with --schedule off) and "
        f"report the time. Without --schedule: on the small model K/V 0.3 at every site; on a "
        f"pipeline apply()'s default (the authors' table for CogVideoX, HunyuanVideo and Mochi). "
        f"Presets: {presets}.",
        f"  {PROG} generate --model small --prompt 'blue square orbit checker still' --out clip.gif\n"
        f"  {PROG} generate --model THUDM/CogVideoX-2b --prompt 'a cat surfing' --schedule cogvideox-2b-fast "
        "--warmup --out cat.mp4"))
    _add_calibrate(command(
        "calibrate", "fit a schedule to a model at a quality, speed or attention-FLOPs target",
        "Measure how much each (site, step window, Q or K/V) cut changes the final output (the default "
        "where the sampler replays steps: the small and tiny models) or each site's token redundancy "
        "(diffusers pipelines), then fit the cheapest-error schedule that removes --target of the "
        "attention FLOPs, or the fastest one at --target-psnr, or the best one at --target-speedup. "
        "With --reuse, reusing each block's residual is priced too and chosen with the token cuts. "
        "--measurement refits a saved measurement without running the model.",
        f"  {PROG} calibrate --model small --target 0.5 --steps 20 --out small.json\n"
        f"  {PROG} calibrate --model small --reuse --target-psnr 33 --steps 20 --out small33.json\n"
        f"  {PROG} calibrate --model small --target 0.6 --out small60.json --measurement small.measurement.json"))
    _add_show(command(
        "show", "print a schedule (file or preset) and draw its heat map",
        f"Print a schedule's coverage, its source and its table, and draw Q and K/V as layers x steps "
        f"heat maps. A preset shows at its native size unless --layers/--steps say. Presets: {presets}.",
        f"  {PROG} show small.json\n  {PROG} show cogvideox-2b --no-png\n  {PROG} show wan2.1 --layers 30 --steps 50"))
    return parser


def _add_generate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="'small' (the shipped model), a Hugging Face id or a local pipeline folder")
    p.add_argument("--prompt", help="text prompt")
    p.add_argument("--schedule", help="preset name, schedule JSON file, or 'off' for the plain Inductor "
                   "baseline (default: see above)")
    p.add_argument("--steps", type=positive_int, default=50, help="denoising steps (default 50)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the starting noise (default 0)")
    p.add_argument("--out", help="output video (.mp4 needs imageio; else a .gif is written)")
    p.add_argument("--height", type=positive_int, help="video height in pixels (pipeline default if unset)")
    p.add_argument("--width", type=positive_int, help="video width in pixels (pipeline default if unset)")
    p.add_argument("--frames", type=positive_int, help="number of frames (pipeline default if unset)")
    p.add_argument("--guidance", type=non_negative_float, help="guidance scale (pipeline default if unset)")
    p.add_argument("--fps", type=positive_int, default=8, help="frames per second of the written video (default 8)")
    p.add_argument("--warmup", action="store_true",
                   help="run once untimed first, so the reported time excludes compilation")
    p.add_argument("--inner", default="inductor", choices=("inductor", "eager"),
                   help="compiler behind AsymRnR and for the baseline (default inductor)")
    _common_model_flags(p)
    p.set_defaults(func=cmd_generate)


def _speedup(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 1.0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a speedup: a number >= 1, e.g. 2.0")
    return value


def _add_calibrate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="'small', 'tiny:NAME' (random tiny config), a Hugging Face id or folder")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--target", type=ratio, help="share of attention FLOPs to remove, e.g. 0.5")
    target.add_argument("--target-psnr", type=float, metavar="DB",
                        help="instead: remove the most attention FLOPs whose predicted output PSNR stays at "
                        "or above DB on the calibration clips (sensitivity measurements only; the prediction "
                        "is first order: on the small model measured PSNR came within 1.2 dB of it); with "
                        "a --reuse measurement, token cuts and block reuse are chosen together for the "
                        "fastest predicted schedule")
    target.add_argument("--target-speedup", type=_speedup, metavar="X",
                        help="instead: the least predicted output error at a predicted speedup of X over the "
                        "plain model (sensitivity only; from the measurement's timing table, see --cost), "
                        "token cuts and, with a --reuse measurement, block reuse chosen together")
    p.add_argument("--reuse", action="store_true",
                   help="also price skipping each transformer block, computed at every p-th step of a refresh "
                   "window (p from 2 to the cache interval) and in between reusing its last residual or "
                   "predicting it from its last two, for --target-psnr/--target-speedup; the schedule then "
                   "carries a reuse table, run by apply(), generate and demo")
    p.add_argument("--cost", choices=("seconds", "flops"), default="seconds",
                   help="what a speed or joint target saves: the measurement's seconds on this machine "
                   "(default) or its FLOPs")
    p.add_argument("--steps", type=positive_int, help="denoising steps of the runs (required unless --measurement)")
    p.add_argument("--out", required=True,
                   help="schedule JSON to write (stats and the measurement go beside it)")
    p.add_argument("--method", choices=("sensitivity", "redundancy"), default=None,
                   help="what to measure: the final output's sensitivity to each cut (default "
                   "where the sampler replays steps: the small and tiny models) or token "
                   "redundancy with priors (default for diffusers pipelines)")
    p.add_argument("--prompt", nargs="+", action="extend",
                   help="calibration prompt(s) (default: the small model's calibration set, or "
                   "8 varied prompts for a text-to-video pipeline; see docs/schedules.md)")
    p.add_argument("--seeds", type=positive_int, default=1, help="seeds per prompt (default 1)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="first seed (clips count up from it) and the partition seed")
    p.add_argument("--measurement", default=None,
                   help="refit a saved measurement (OUT.measurement.json) at --target: no model run")
    p.add_argument("--probes", type=positive_int, default=None,
                   help="random output directions per clip for sensitivity (default 4; each adds "
                   "about 2 baseline-length runs, fewer make noisier schedules)")
    p.add_argument("--batch", type=positive_int, default=8, help="clips per run of the small model (default 8)")
    p.add_argument("--stride", type=_parse_stride, default=None,
                   help="partition t,h,w (default: the model family's, e.g. 6,2,2 for HunyuanVideo)")
    p.add_argument("--cache-interval", type=positive_int, default=None,
                   help="re-match every k steps (default: the model family's, e.g. 5 for CogVideoX)")
    p.add_argument("--step-groups", type=positive_int, default=None,
                   help="merge refresh windows into this many groups that share ratios "
                   "(default: one group per window)")
    p.add_argument("--no-priors", action="store_true",
                   help="redundancy only: no Q / shallow-layer / early-step weighting")
    p.add_argument("--height", type=positive_int, help="video height of the runs (pipeline default if unset)")
    p.add_argument("--width", type=positive_int, help="video width of the runs (pipeline default if unset)")
    p.add_argument("--frames", type=positive_int, help="frames of the runs (pipeline default if unset)")
    _common_model_flags(p)
    p.set_defaults(func=cmd_calibrate)


def _add_show(p: argparse.ArgumentParser) -> None:
    p.add_argument("schedule", help="schedule JSON file or preset name")
    p.add_argument("--png", help="heat map path (default: the JSON path with .png)")
    p.add_argument("--no-png", action="store_true", help="print only")
    p.add_argument("--layers", type=positive_int, help="attention sites to lay a preset out on (default: its native size)")
    p.add_argument("--steps", type=positive_int, help="steps to lay a preset out on (default: its native count)")
    p.add_argument("--max-columns", type=positive_int, default=16,
                   help="above this many step groups print per-layer means")
    p.set_defaults(func=cmd_show)


def _pipeline_arg(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value  # a plain string, e.g. negative_prompt=blurry


def _common_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arg", type=_pipeline_arg, action="append", default=[], metavar="KEY=VALUE",
                   help="extra pipeline call argument (JSON value or string), repeatable, "
                   "e.g. --arg max_sequence_length=226")
    p.add_argument("--download", action="store_true",
                   help="allow downloading a Hub model that is not cached (default: offline)")
    p.add_argument("--cpu", action="store_true", help="run on CPU even when CUDA is present")
    p.add_argument("--weights", help="folder of the small model's weights (default: shipped)")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``asymrnr`` command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("ASYMRNR_DEBUG") == "1"
    try:
        args = build_parser(argv).parse_args(argv)
        return int(args.func(args) or 0)
    except SystemExit as exc:  # -h / --version
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    except CLIError as exc:
        if debug:
            raise
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return exc.code
    except BrokenPipeError:  # output piped into e.g. `head`: not an error
        # Point stdout at devnull so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ValueError, OSError) as exc:  # the package's validation errors name the fix
        if debug:
            raise
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
