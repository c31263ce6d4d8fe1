"""``asymrnr demo``: the same prompts and seeds with plain Inductor and with AsymRnR.

Offline and on CPU in a few minutes: it samples the small trained video transformer
shipped with the package (see :mod:`asymrnr_fx.small.sampling`) once compiled with
``backend="inductor"`` and once through ``asymrnr_fx.apply(model, config)`` (a second copy of the
weights, so a schedule's block reuse runs too), then prints
per clip the sampling time, the speedup, the attention FLOPs removed, and PSNR / SSIM of
the AsymRnR clip against the Inductor clip, and writes a side-by-side GIF
(Inductor | AsymRnR | 4x amplified difference, one row per prompt).

    asymrnr demo                       # default prompts and schedule
    python -m asymrnr_fx.small.demo --steps 30 --prompts "red circle right" "blue square orbit"
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..arguments import non_negative_int, positive_int, ratio
from ..defaults import DEFAULT_CACHE_INTERVAL
from ..files import check_writable, write_text_atomic
from .protocol import CALIBRATION, HELD_OUT

__all__ = ["DEFAULT_PROMPTS", "demo_config", "demo_table", "add_arguments", "main", "run_interleaved",
           "timing_verdict", "warm_up"]

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
    parser.add_argument("--rounds", type=positive_int, default=3,
                        help="timed rounds, interleaved between the two settings; each clip's time is "
                        "its median (default 3)")
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


def warm_up(name: str, compiled: Callable[..., Any], prompt: str, seed: int, steps: int,
            geometry: tuple[int, int, int, int], before_each: Callable[[], None] | None = None) -> float:
    """One first (compiling) generation; returns its seconds. It compiles every phase a
    generation visits, so nothing compiles while timed."""
    from .sampling import generate

    if before_each is not None:
        before_each()
    start = time.perf_counter()
    generate(compiled, [prompt], [seed], steps=steps, geometry=geometry, progress=True,
             desc=f"{name}: compile + warm-up")
    return time.perf_counter() - start


def run_interleaved(
    methods: Sequence[tuple[str, Callable[..., Any], Callable[[], None] | None]],
    prompts: Sequence[str],
    seeds: Sequence[int],
    steps: int,
    geometry: tuple[int, int, int, int],
    rounds: int,
) -> dict[str, dict[str, Any]]:
    """Time every method on every clip in ``rounds`` interleaved rounds (the methods' order
    alternates from round to round), so load that drifts during the run lands on every method
    alike. Per method: the clips ``(P, F, C, H, W)`` (the first round's; every round computes
    the same), the median seconds per clip, and the seconds of every round per clip."""
    from tqdm import tqdm

    from .sampling import generate

    per_round = {name: [[0.0] * len(prompts) for _ in range(rounds)] for name, _, _ in methods}
    clips: dict[str, list[torch.Tensor]] = {name: [] for name, _, _ in methods}
    with tqdm(total=rounds * len(prompts) * len(methods), desc="timing (interleaved)", unit="clip") as bar:
        for r in range(rounds):
            order = list(methods) if r % 2 == 0 else list(reversed(methods))
            for i, (prompt, seed) in enumerate(zip(prompts, seeds, strict=True)):
                for name, compiled, before_each in order:
                    if before_each is not None:
                        before_each()
                    start = time.perf_counter()
                    clip = generate(compiled, [prompt], [seed], steps=steps, geometry=geometry)[0]
                    per_round[name][r][i] = time.perf_counter() - start
                    if r == 0:
                        clips[name].append(clip)
                    bar.update()
    return {name: {"clips": torch.stack(clips[name]), "rounds": per_round[name],
                   "seconds": [statistics.median(rs[i] for rs in per_round[name]) for i in range(len(prompts))]}
            for name, _, _ in methods}


def set_timing(result: dict[str, Any], idx: Sequence[int]) -> tuple[float, float, float, tuple[float, float] | None]:
    """Seconds of these clips with each setting, the speedup and its range over the rounds: the
    medians over the rounds of each round's totals (a round times both settings on every clip),
    or the per-clip seconds alone when the result has no rounds."""
    base_rounds, asym_rounds = result.get("baseline_seconds_per_round"), result.get("asymrnr_seconds_per_round")
    if not base_rounds:
        tb = sum(result["baseline_seconds"][i] for i in idx)
        ta = sum(result["asymrnr_seconds"][i] for i in idx)
        return tb, ta, tb / ta, None
    totals_b = [sum(r[i] for i in idx) for r in base_rounds]
    totals_a = [sum(r[i] for i in idx) for r in asym_rounds]
    ratios = [b / a for b, a in zip(totals_b, totals_a, strict=True)]
    return statistics.median(totals_b), statistics.median(totals_a), statistics.median(ratios), (min(ratios), max(ratios))


UNRELIABLE_SPREAD = 0.15
"""A speedup whose rounds differ by more than this share of it is called unreliable."""


def timing_verdict(result: dict[str, Any]) -> str:
    """One plain sentence on whether the measured speedup can be trusted."""
    _, _, total, spread = set_timing(result, range(len(result["prompts"])))
    rounds = len(result["baseline_seconds_per_round"])
    low, high = spread
    if rounds < 2:
        return f"speedup {total:.2f}x from one round: no spread to judge it by (use --rounds 3)"
    if (high - low) / total > UNRELIABLE_SPREAD or (low < 1.0 < high):
        return (f"speedup {total:.2f}x, but it ranged {low:.2f}x-{high:.2f}x over {rounds} rounds: the "
                "machine's load changed while timing, so this number is unreliable; rerun on a quieter "
                "machine or with more --rounds")
    return f"speedup {total:.2f}x (median of {rounds} interleaved rounds, which ranged {low:.2f}x-{high:.2f}x)"


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
        tb, ta, ratio, spread = set_timing(result, idx)
        mean_p, worst = sum(p[i] for i in idx) / len(idx), min(p[i] for i in idx)
        speedup = f"{ratio:.2f}x" + ("" if spread is None else f" ({spread[0]:.2f}-{spread[1]:.2f})")
        rows.append([f"all ({len(idx)} clips)", "", label, f"{tb:.2f}", f"{ta:.2f}", speedup,
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

    from ..state import stats_summary
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
    baseline = torch.compile(model, backend=args.inner)
    # AsymRnR on a second copy of the weights, through apply() (which also runs a schedule's
    # block reuse): the baseline stays plain Inductor.
    reduced = asymrnr_fx.apply(load_small_model(args.weights), config, inner=args.inner)
    (state,) = asymrnr_fx.states_of(reduced)
    first = {args.inner: warm_up(args.inner, baseline, prompts[0], seeds[0], args.steps, geometry),
             "asymrnr": warm_up("asymrnr", reduced, prompts[0], seeds[0], args.steps, geometry, state.reset)}
    # Each clip starts from a fresh state (steps read from its timesteps, no cached matches);
    # the statistics of every clip add up.
    totals: Counter[str] = Counter()

    def fresh_state() -> None:
        totals.update(state.stats)
        state.reset()

    timed = run_interleaved([(args.inner, baseline, None), ("asymrnr", reduced, fresh_state)],
                            prompts, seeds, args.steps, geometry, args.rounds)
    totals.update(state.stats)
    base = {**timed[args.inner], "first_run_seconds": first[args.inner]}
    asym = {**timed["asymrnr"], "first_run_seconds": first["asymrnr"]}
    stats = dict(totals)
    p = psnr(asym["clips"], base["clips"]).tolist()
    s = ssim(asym["clips"], base["clips"]).tolist()
    result = {
        "prompts": prompts, "seeds": seeds, "sets": labels, "steps": args.steps, "config": repr(config),
        "baseline": args.inner, "baseline_seconds": base["seconds"], "asymrnr_seconds": asym["seconds"],
        "baseline_seconds_per_round": base["rounds"], "asymrnr_seconds_per_round": asym["rounds"],
        "baseline_first_run_seconds": base["first_run_seconds"],
        "asymrnr_first_run_seconds": asym["first_run_seconds"],
        "attention_flops_saved": 1 - cost, "psnr_db": p, "ssim": s, "stats": stats,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    print()
    print(demo_table(result))
    print(f"\n{timing_verdict(result)}")
    print(f"first run (compile + warm-up): {args.inner} {base['first_run_seconds']:.1f} s, "
          f"asymrnr {asym['first_run_seconds']:.1f} s\n{stats_summary(totals)}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_gif = [[b, a, ((a - b) * 4).clamp(-1, 1)] for b, a in zip(base["clips"], asym["clips"], strict=True)]
    gif = save_gif(rows_gif, out / "demo.gif", columns=(args.inner, "asymrnr", "4x difference"),
                   captions=[f"{prompt} (seed {seed}, {label})" for prompt, seed, label in zip(prompts, seeds, labels, strict=True)])
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
