"""``asymrnr demo``: the same prompts and seeds with plain Inductor and with AsymRnR.

Offline and on CPU in a few minutes: it samples the small trained video transformer
shipped with the package (see :mod:`asymrnr_fx.small.sampling`) once compiled with
``backend="inductor"`` and once with ``backend=asymrnr_fx.backend(config)``, then prints
per clip the sampling time, the speedup, the attention FLOPs removed, and PSNR / SSIM of
the AsymRnR clip against the Inductor clip, and writes a side-by-side GIF
(Inductor | AsymRnR | 4x amplified difference, one row per prompt).

    asymrnr demo                       # default prompts and schedule
    python -m asymrnr_fx.small.demo --steps 30 --prompts "red circle right" "blue square orbit"
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..arguments import non_negative_int, positive_int, ratio
from ..defaults import DEFAULT_CACHE_INTERVAL
from ..files import check_writable, write_text_atomic
from .protocol import CALIBRATION, HELD_OUT

__all__ = ["DEFAULT_PROMPTS", "demo_config", "demo_table", "add_arguments", "main", "run_method"]

DEFAULT_PROMPTS = CALIBRATION.prompts[:4]
"""The demo's prompts (seeds 0-3): the calibration set's, on which the demo schedule was probed."""

# The small model's sites: 6 layers, one joint text+video SDPA each. Measured on it (K/V cut
# 0.8 in one layer at a time, 20 steps, 4 prompts, PSNR vs the full model): layer 0 is by far
# the most sensitive (18.8 dB), then layer 2 (23.8), layers 1, 3, 4 near 29-30, and layer 5
# the least (40.5); K/V 0.5 everywhere costs 23.4 dB over the first half of the steps but 29.8
# over the second; Q 0.5 in the deepest layers over the second half is nearly free (57.9). So:
# never touch layer 0; cut the deepest layer hard all the way; over the second half cut K/V
# moderately in layers 1-4 and Q in layers 2-5. Two phases, served by the one compiled rewrite.
DEMO_RULES: tuple[dict[str, Any], ...] = (
    {"layers": [5, 6], "kv": 0.8},
    {"layers": [1, 5], "steps": [0.5, 1.0], "kv": 0.4},
    {"layers": [2, 6], "steps": [0.5, 1.0], "q": 0.5},
)


def demo_config(num_layers: int, num_steps: int, **overrides: Any):
    """The demo's default AsymRnR config: a layer/step schedule for the small model."""
    from ..config import AsymRnRConfig
    from ..schedules.schedule import Schedule

    schedule = Schedule.from_ranges(num_layers, num_steps, list(DEMO_RULES), name="demo")
    fields = dict(schedule=schedule, num_steps=num_steps)
    return AsymRnRConfig(**{**fields, **overrides})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the demo's options to ``parser`` (used by ``asymrnr demo`` and ``-m``)."""
    parser.add_argument("--prompts", nargs="+", default=list(DEFAULT_PROMPTS),
                        help="prompts: a shape, a colour and a motion, optionally a background and a pan")
    parser.add_argument("--seeds", nargs="+", type=non_negative_int, default=None,
                        help="one seed per prompt (default 0, 1, 2, ...)")
    parser.add_argument("--held-out", type=non_negative_int, default=4,
                        help="with the default prompts, also sample this many clips of the held-out "
                        "set (prompts no schedule was fitted on) and report them apart (default 4)")
    parser.add_argument("--steps", type=positive_int, default=20, help="denoising steps (default 20)")
    parser.add_argument("--kv-ratio", type=ratio, default=None,
                        help="uniform K/V ratio instead of the default schedule")
    parser.add_argument("--q-ratio", type=ratio, default=None,
                        help="uniform Q ratio instead of the default schedule")
    parser.add_argument("--schedule", default=None,
                        help="a schedule preset name or JSON file instead of the default schedule")
    parser.add_argument("--cache-interval", type=positive_int, default=DEFAULT_CACHE_INTERVAL,
                        help=f"re-match every k steps (default {DEFAULT_CACHE_INTERVAL})")
    parser.add_argument("--weights", default=None, help="model folder (default: the shipped weights)")
    parser.add_argument("--out", default="asymrnr_demo", help="output folder for the GIF and JSON")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    parser.add_argument("--inner", default="inductor", choices=("inductor", "eager"),
                        help="compiler for the baseline and behind AsymRnR (default inductor)")


def _config_from_args(args: argparse.Namespace, num_layers: int):
    from ..config import AsymRnRConfig

    if args.schedule is not None:
        return AsymRnRConfig(schedule=args.schedule, cache_interval=args.cache_interval,
                             num_steps=args.steps)
    if args.kv_ratio is not None or args.q_ratio is not None:
        return AsymRnRConfig(kv_ratio=args.kv_ratio or 0.0, q_ratio=args.q_ratio or 0.0,
                             cache_interval=args.cache_interval)
    return demo_config(num_layers, args.steps, cache_interval=args.cache_interval)


def _describe(config: Any, num_layers: int, num_steps: int) -> str:
    """One readable line: the schedule as ``(q, kv)`` per layer for each run of steps."""
    from ..schedules.ratios import per_step_ratios
    from ..schedules.viz import step_runs

    if config.schedule is None:
        return repr(config)
    per_step = per_step_ratios(config, num_layers, num_steps)
    spans = [f"steps {start}-{stop - 1}: " + " ".join(f"{q:g}/{kv:g}" for q, kv in per_step[start])
             for start, stop in step_runs(per_step)]
    source = config.schedule_source
    name = source.schedule.name if source.schedule is not None else source.preset.name
    return (f"schedule {name or ''} (Q/KV ratio per layer) {'; '.join(spans)}; "
            f"stride={config.stride}, cache_interval={config.cache_interval}, "
            f"metric={config.metric}, match_on={config.match_on}, merge={config.merge}")


def run_method(
    name: str,
    compiled: Callable[..., Any],
    prompts: Sequence[str],
    seeds: Sequence[int],
    steps: int,
    geometry: tuple[int, int, int, int],
    before_each: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Sample every prompt once with ``compiled``: a first (compiling) run, then timed runs.

    Returns the clips ``(P, F, C, H, W)``, per-clip seconds and the first-run seconds.
    """
    from tqdm import tqdm

    from .sampling import generate

    if before_each is not None:
        before_each()
    start = time.perf_counter()
    # Warm-up on the first prompt compiles every phase a generation visits.
    generate(compiled, [prompts[0]], [seeds[0]], steps=steps, geometry=geometry,
             progress=True, desc=f"{name}: compile + warm-up")
    first = time.perf_counter() - start
    clips, seconds = [], []
    for prompt, seed in tqdm(list(zip(prompts, seeds, strict=True)), desc=f"{name}: sampling", unit="clip"):
        if before_each is not None:
            before_each()
        start = time.perf_counter()
        clips.append(generate(compiled, [prompt], [seed], steps=steps, geometry=geometry)[0])
        seconds.append(time.perf_counter() - start)
    return {"clips": torch.stack(clips), "seconds": seconds, "first_run_seconds": first}


def _check_prompts(args: argparse.Namespace) -> tuple[list[str], list[int], list[str]] | str:
    """The prompts, one seed each and which set each clip belongs to, or what is wrong."""
    from .data import parse_prompt

    prompts = list(args.prompts)
    seeds = list(args.seeds) if args.seeds else list(range(len(prompts)))
    if len(seeds) != len(prompts):
        return f"{len(prompts)} prompts but {len(seeds)} seeds"
    if not 0 <= args.held_out <= len(HELD_OUT):
        return f"--held-out {args.held_out} is out of range [0, {len(HELD_OUT)}]"
    try:
        for prompt in prompts:
            parse_prompt(prompt)
    except ValueError as exc:
        return str(exc)
    if prompts != list(DEFAULT_PROMPTS) or args.seeds:
        return prompts, seeds, ["yours"] * len(prompts)
    # The default prompts are in-sample for the default schedule: held-out clips beside them.
    extra = args.held_out
    return (prompts + list(HELD_OUT.prompts[:extra]), seeds + list(HELD_OUT.seeds[:extra]),
            ["in-sample"] * len(prompts) + ["held-out"] * extra)


def _summary_rows(result: dict[str, Any]) -> list[list[str]]:
    """One "all" row per set of clips: total times, mean PSNR and SSIM, the worst clip."""
    rows, labels, p, s = [], result["sets"], result["psnr_db"], result["ssim"]
    for label in dict.fromkeys(labels):
        idx = [i for i, lab in enumerate(labels) if lab == label]
        tb = sum(result["baseline_seconds"][i] for i in idx)
        ta = sum(result["asymrnr_seconds"][i] for i in idx)
        mean_p, worst = sum(p[i] for i in idx) / len(idx), min(p[i] for i in idx)
        rows.append([f"all ({len(idx)} clips)", "", label, f"{tb:.2f}", f"{ta:.2f}", f"{tb / ta:.2f}x",
                     f"{100 * result['attention_flops_saved']:.1f}%", f"{mean_p:.2f} (worst {worst:.2f})",
                     f"{sum(s[i] for i in idx) / len(idx):.4f}"])
    return rows


def demo_table(result: dict[str, Any]) -> str:
    """The per-clip table (set, time, speedup, FLOPs saved, PSNR, SSIM) and one summary row per
    set (Markdown), from the result the demo writes to ``demo.json``."""
    from tabulate import tabulate

    rows = []
    for i, prompt in enumerate(result["prompts"]):
        tb, ta = result["baseline_seconds"][i], result["asymrnr_seconds"][i]
        rows.append([prompt, result["seeds"][i], result["sets"][i], f"{tb:.2f}", f"{ta:.2f}", f"{tb / ta:.2f}x",
                     f"{100 * result['attention_flops_saved']:.1f}%", f"{result['psnr_db'][i]:.2f}",
                     f"{result['ssim'][i]:.4f}"])
    rows += _summary_rows(result)
    headers = ["prompt", "seed", "set", f"{result['baseline']} s", "asymrnr s", "speedup", "attn FLOPs saved",
               "PSNR dB", "SSIM"]
    return tabulate(rows, headers=headers, tablefmt="github")


def main(args: argparse.Namespace) -> int:
    """Run the demo; returns the process exit code."""
    import asymrnr_fx

    from .data import TEXT_TOKENS
    from .metrics import attention_cost, psnr, ssim
    from .sampling import clip_geometry, load_small_model, save_gif, token_grid

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    checked = _check_prompts(args)
    if isinstance(checked, str):
        print(f"error: {checked}", file=sys.stderr)
        return 2
    try:  # before minutes of sampling, not after
        check_writable(Path(args.out) / "demo.json", "--out")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    prompts, seeds, labels = checked
    model = load_small_model(args.weights)
    geometry, grid, num_layers = clip_geometry(model), token_grid(model), model.config.num_layers
    config = _config_from_args(args, num_layers)
    cost = attention_cost(config, num_layers=num_layers, num_steps=args.steps, grid=grid,
                          text_tokens=TEXT_TOKENS)
    print(f"model: CogVideoXTransformer3DModel, {num_layers} layers, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, clips "
          f"{geometry[0]}x{geometry[2]}x{geometry[3]} = {grid[0] * grid[1] * grid[2]} video tokens; "
          f"{args.steps} steps, {torch.get_num_threads()} threads")
    print(f"AsymRnR config: {_describe(config, num_layers, args.steps)}")

    torch._dynamo.reset()
    base = run_method(args.inner, torch.compile(model, backend=args.inner), prompts, seeds,
                      args.steps, geometry)
    torch._dynamo.reset()
    compiler = asymrnr_fx.backend(config, inner=args.inner)
    asym = run_method("asymrnr", torch.compile(model, backend=compiler), prompts, seeds,
                      args.steps, geometry, before_each=compiler.state.reset)
    stats = dict(compiler.state.stats)
    p = psnr(asym["clips"], base["clips"]).tolist()
    s = ssim(asym["clips"], base["clips"]).tolist()
    result = {
        "prompts": prompts, "seeds": seeds, "sets": labels, "steps": args.steps, "config": repr(config),
        "baseline": args.inner, "baseline_seconds": base["seconds"], "asymrnr_seconds": asym["seconds"],
        "baseline_first_run_seconds": base["first_run_seconds"],
        "asymrnr_first_run_seconds": asym["first_run_seconds"],
        "attention_flops_saved": 1 - cost, "psnr_db": p, "ssim": s, "stats": stats,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    print()
    print(demo_table(result))
    print(f"\nfirst run (compile + warm-up): {args.inner} {base['first_run_seconds']:.1f} s, "
          f"asymrnr {asym['first_run_seconds']:.1f} s; asymrnr stats: {stats}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_gif = [[b, a, ((a - b) * 4).clamp(-1, 1)] for b, a in zip(base["clips"], asym["clips"], strict=True)]
    gif = save_gif(rows_gif, out / "demo.gif")
    write_text_atomic(out / "demo.json", json.dumps(result, indent=2) + "\n")
    print(f"wrote {gif} (columns: {args.inner} | asymrnr | 4x difference; one row per prompt) "
          f"and {out / 'demo.json'}")
    return 0


def _cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m asymrnr_fx.small.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return main(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(_cli())
