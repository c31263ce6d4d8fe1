"""The speed/quality frontier: AsymRnR, step caches, both stacked blind, and both chosen together.

On the shipped small model (CPU, offline), at 20, 8 and 4 denoising steps. Calibration measures
the calibration clip set (:data:`asymrnr_fx.small.protocol.CALIBRATION`, 8 clips) once per step
count, token cuts and block reuse priced together (``asymrnr calibrate --reuse``); every setting is
then scored on held-out clips no calibration saw (the first 4 of
:data:`~asymrnr_fx.small.protocol.HELD_OUT`), all compiled with Inductor:

* **Inductor**: the unaccelerated model (the reference of every PSNR and speedup);
* **AsymRnR @ T dB**: token cuts only, calibrated to a predicted T dB (``--target-psnr T``), for T
  in 27, 30, 33, 36 (27 too, since the predicted PSNR of block reuse proved conservative);
* **each step cache alone** (diffusers' FirstBlockCache, TaylorSeer, PAB, FasterCache) at the
  settings ``benchmarks/compose.py`` chose at 20 steps;
* **blind stacking**: each cache with AsymRnR @ 33 dB, tuned apart;
* **joint @ T dB**: token cuts and block reuse chosen together to a predicted T dB
  (``--reuse --target-psnr T``).

Per setting: the sampling time of the 4 clips (after compilation and one untimed round of every
setting; the timed rounds are interleaved across settings, best kept), the speedup over Inductor
with its range over the rounds, PSNR against the Inductor clips (mean and worst clip), the
prediction where there is one, and the graphs compiled while timed. The calibration cost is
reported in baseline-length runs.

    python -m benchmarks.frontier --threads 2     # JSON, the table in docs/composition.md, the plot
    python -m benchmarks.frontier --plot-only     # redraw the table and the plot from the JSON

Measurements are kept in ``benchmarks/results/frontier/`` and reused by later runs unless
``--remeasure`` (the timings are always taken afresh).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from benchmarks.readme import RESULTS, ROOT, write_section

SECTION = "frontier"
STEP_COUNTS = (20, 8, 4)
TARGETS = (27.0, 30.0, 33.0, 36.0)
BLIND_TARGET = 33.0
CACHES = ("FirstBlockCache", "TaylorSeer", "PAB", "FasterCache")
OUT_JSON = RESULTS / "frontier.json"
OUT_PNG = ROOT / "docs" / "frontier.png"
MEASUREMENTS = RESULTS / "frontier"


def held_out() -> tuple[list[str], list[int]]:
    """The held-out clips the frontier is scored on: one seed of each held-out prompt."""
    from asymrnr_fx.small.protocol import HELD_OUT

    prompts, seeds = list(HELD_OUT.prompts[:4]), list(HELD_OUT.seeds[:4])
    return prompts, seeds


def _measure(steps: int, remeasure: bool) -> Any:
    """The calibration measurement at ``steps`` (token cuts and block reuse), kept on disk."""
    from asymrnr_fx.calibration import calibration_setup
    from asymrnr_fx.schedules.calibrate import measure
    from asymrnr_fx.schedules.damage import DamageTable, Reduction

    path = MEASUREMENTS / f"small-{steps}steps.measurement.json"
    if path.exists() and not remeasure:
        return DamageTable.from_dict(json.loads(path.read_text()))
    setup = calibration_setup("small", steps=steps)
    reduction = Reduction(tuple(setup.grid), setup.stride, 0, "l2", setup.cache_interval)
    table = measure(setup.model, setup.runs, reduction, text_tokens=setup.text_tokens, text_side=setup.text_side,
                    progress=True, reuse_periods=tuple(range(2, reduction.cache_interval + 1)))
    table = replace(table, meta={**(table.meta or {}), "data_range": setup.data_range,
                                 "clips": [list(c) for c in setup.clips]})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(table.to_dict()) + "\n")
    return table


def _cache_config(cache: str, steps: int, clock: dict) -> Any:
    """compose.py's cache settings; TaylorSeer's warm-up scaled to the step count."""
    from diffusers.hooks import TaylorSeerCacheConfig

    from benchmarks.compose import TAYLOR_INTERVAL, TAYLOR_MODULES, cache_configs

    if cache == "TaylorSeer":
        return TaylorSeerCacheConfig(cache_interval=TAYLOR_INTERVAL, disable_cache_before_step=max(1, steps // 5),
                                     cache_identifiers=TAYLOR_MODULES)
    return cache_configs(clock)[cache]()


def settings(schedules: dict[str, Any]) -> list[dict[str, Any]]:
    """Every setting of one step count (``schedules``: its fits): name, kind, cache, schedule."""
    rows = [{"setting": "Inductor", "kind": "baseline", "cache": None, "schedule": None}]
    for target in TARGETS:
        rows.append({"setting": f"AsymRnR @ {target:g} dB", "kind": "asymrnr", "cache": None,
                     "schedule": schedules[("tokens", target)]})
    for cache in CACHES:
        rows.append({"setting": cache, "kind": "cache", "cache": cache, "schedule": None})
    for cache in CACHES:
        rows.append({"setting": f"{cache} + AsymRnR @ {BLIND_TARGET:g} dB", "kind": "blind", "cache": cache,
                     "schedule": schedules[("tokens", BLIND_TARGET)]})
    for target in TARGETS:
        rows.append({"setting": f"joint @ {target:g} dB", "kind": "joint", "cache": None,
                     "schedule": schedules[("joint", target)]})
    return rows


def _unique_graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def _sample(model: Callable, geometry: tuple, clock: dict, steps: int) -> torch.Tensor:
    from asymrnr_fx.small.sampling import generate

    def tick(step: int, t: float) -> None:
        clock["t"] = t

    prompts, seeds = held_out()
    return generate(model, prompts, seeds, steps=steps, geometry=geometry, on_step=tick)


def _reset(model: torch.nn.Module, row: dict[str, Any]) -> None:
    if row["cache"] is not None:
        model._reset_stateful_cache()
    if row.get("state") is not None:
        row["state"].reset()


def run_steps(steps: int, rounds: int, remeasure: bool) -> dict[str, Any]:
    """Calibrate at ``steps``, then time and score every setting."""
    import asymrnr_fx
    from asymrnr_fx.config import AsymRnRConfig
    from asymrnr_fx.schedules.calibrate import fit_to_psnr
    from asymrnr_fx.small.metrics import psnr
    from asymrnr_fx.small.sampling import clip_geometry, load_small_model

    table = _measure(steps, remeasure)
    data_range = (table.meta or {}).get("data_range", 2.0)
    schedules, predicted = {}, {}
    for target in TARGETS:
        for kind in ("tokens", "joint"):
            fit = fit_to_psnr(table, target, data_range=data_range, reuse=kind == "joint",
                              name=f"small-{steps}-{kind}-{target:g}")
            schedules[(kind, target)] = fit.schedule
            predicted[(kind, target)] = fit.stats
    rows = settings(schedules)
    geometry = clip_geometry(load_small_model())
    torch._dynamo.reset()
    torch._dynamo.config.recompile_limit = 64  # every setting keeps its own graphs of the block code
    for row in rows:
        clock = {"t": 1000.0}
        model = load_small_model()
        if row["cache"] is not None:
            model.enable_cache(_cache_config(row["cache"], steps, clock))
        if row["kind"] == "baseline":
            compiled, state = torch.compile(model, backend="inductor", dynamic=False), None
        else:
            config = AsymRnRConfig(kv_ratio=0.0) if row["schedule"] is None else AsymRnRConfig(schedule=row["schedule"])
            compiled = asymrnr_fx.apply(model, config)
            (state,) = asymrnr_fx.states_of(model)
        print(f"{steps} steps: compile + warm-up: {row['setting']}", file=sys.stderr, flush=True)
        row.update(model=model, compiled=compiled, state=state, clock=clock, seconds=[])
        graphs, start = _unique_graphs(), time.perf_counter()
        _reset(model, row)
        _sample(compiled, geometry, clock, steps)
        row["first_s"], row["graphs_warmup"], row["graphs_timed"] = time.perf_counter() - start, 0, 0
        row["graphs_warmup"] = _unique_graphs() - graphs
    for row in rows:  # one untimed round of every setting (see benchmarks/compose.py)
        graphs = _unique_graphs()
        _reset(row["model"], row)
        _sample(row["compiled"], geometry, row["clock"], steps)
        row["graphs_warmup"] += _unique_graphs() - graphs
    for r in range(rounds):
        for row in rows:
            print(f"{steps} steps: round {r + 1}/{rounds}: {row['setting']}", file=sys.stderr, flush=True)
            _reset(row["model"], row)
            graphs, start = _unique_graphs(), time.perf_counter()
            row["clips"] = _sample(row["compiled"], geometry, row["clock"], steps)
            row["seconds"].append(time.perf_counter() - start)
            row["graphs_timed"] += _unique_graphs() - graphs
    base = rows[0]
    out = []
    for row in rows:
        p = psnr(row["clips"], base["clips"])
        ratios = [b / x for b, x in zip(base["seconds"], row["seconds"], strict=True)]
        entry = {"setting": row["setting"], "kind": row["kind"], "seconds": round(min(row["seconds"]), 3),
                 "speedup": round(min(base["seconds"]) / min(row["seconds"]), 3),
                 "speedup_per_round": [round(min(ratios), 3), round(max(ratios), 3)],
                 "psnr_mean": round(float(p.mean()), 2) if row is not base else None,
                 "psnr_worst": round(float(p.min()), 2) if row is not base else None,
                 "graphs_warmup": row["graphs_warmup"], "graphs_timed": row["graphs_timed"]}
        for kind in ("tokens", "joint"):
            for target in TARGETS:
                if row["schedule"] is not None and row["schedule"] is schedules[(kind, target)] and row["cache"] is None:
                    stats = predicted[(kind, target)]
                    entry["predicted_psnr"] = round(stats["predicted_psnr"], 2)
                    entry["predicted_speedup"] = round(stats["predicted_speedup"], 3) \
                        if "predicted_speedup" in stats else None
                    entry["reused_block_steps"] = round(stats.get("reused_block_steps", 0.0), 3)
        out.append(entry)
    meta = table.meta or {}
    cost_runs = meta["seconds"] / meta["plain_run_seconds"] if meta.get("plain_run_seconds") else None
    return {"steps": steps, "rows": out, "calibration": {
        "clips": len(meta.get("clips", [])), "seconds": round(meta.get("seconds", 0.0), 1),
        "baseline_runs": None if cost_runs is None else round(cost_runs, 1),
        "reuse_periods": list(table.reuse_periods), "cache_interval": table.reduction.cache_interval}}


def render(result: dict[str, Any]) -> str:
    """The frontier tables (Markdown), one per step count, from a result document."""
    from tabulate import tabulate

    parts = []
    for block in result["runs"]:
        rows = []
        for r in block["rows"]:
            low, high = r["speedup_per_round"]
            psnr = "" if r["psnr_mean"] is None else f"{r['psnr_mean']:.2f}"
            worst = "" if r["psnr_worst"] is None else f"{r['psnr_worst']:.2f}"
            pred = "" if r.get("predicted_psnr") is None else f"{r['predicted_psnr']:.1f}"
            pred_speed = "" if r.get("predicted_speedup") is None else f"{r['predicted_speedup']:.2f}x"
            reused = "" if "reused_block_steps" not in r else f"{100 * r['reused_block_steps']:.0f}%"
            rows.append([r["setting"], f"{r['seconds']:.2f}", f"{r['speedup']:.2f}x", f"{low:.2f}-{high:.2f}x",
                         psnr, worst, pred, pred_speed, reused, r["graphs_timed"]])
        cal = block["calibration"]
        parts.append(
            f"**{block['steps']} steps** (calibration: {cal['clips']} clips, {cal['seconds']:.0f} s = "
            f"{cal['baseline_runs']} baseline-length runs; reuse periods {cal['reuse_periods']} in windows of "
            f"{cal['cache_interval']} steps)\n\n"
            + tabulate(rows, headers=["setting", "4 clips s", "speedup", "per round", "PSNR dB (held out)",
                                      "worst clip", "predicted dB (calibration clips)", "predicted speedup",
                                      "block steps reused", "compiled while timed"],
                       tablefmt="github", disable_numparse=True))
    return "\n\n".join(parts)


SUMMARY = "frontier-summary"
KINDS = (("asymrnr", "AsymRnR alone"), ("cache", "a step cache alone"), ("blind", "cache + AsymRnR, tuned apart"),
         ("joint", "joint (tokens + block reuse)"))


def summary(result: dict[str, Any], floor: float = BLIND_TARGET) -> str:
    """Per step count and kind, the fastest setting whose held-out PSNR is at least ``floor``
    (Markdown; the README's compact view of :func:`render`)."""
    from tabulate import tabulate

    rows = []
    for block in result["runs"]:
        row = [f"{block['steps']} steps"]
        for kind, _ in KINDS:
            ok = [r for r in block["rows"] if r["kind"] == kind and r["psnr_mean"] is not None
                  and r["psnr_mean"] >= floor]
            best = max(ok, key=lambda r: r["speedup"], default=None)
            row.append("none" if best is None else f"{best['speedup']:.2f}x at {best['psnr_mean']:.1f} dB")
        rows.append(row)
    return tabulate(rows, headers=[f"fastest at >= {floor:g} dB held out"] + [label for _, label in KINDS],
                    tablefmt="github", disable_numparse=True)


def _digest(result: dict[str, Any]) -> str:
    """What the plot is drawn from (written into the PNG, checked in CI)."""
    points = [[b["steps"], r["setting"], r["speedup"], r["psnr_mean"]] for b in result["runs"] for r in b["rows"]]
    return hashlib.sha256(json.dumps(points).encode()).hexdigest()


STYLE = {"asymrnr": ("AsymRnR (tokens)", "o", "tab:blue"), "cache": ("step cache alone", "s", "tab:gray"),
         "blind": ("cache + AsymRnR, tuned apart", "^", "tab:orange"), "joint": ("joint (tokens + reuse)", "*", "tab:red")}


def plot(result: dict[str, Any], path: Path = OUT_PNG) -> Path:
    """Speedup against held-out PSNR, one panel per step count (matplotlib, PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 4.2), squeeze=False)
    for ax, block in zip(axes[0], runs, strict=True):
        for kind, (label, marker, colour) in STYLE.items():
            pts = [(r["psnr_mean"], r["speedup"]) for r in block["rows"] if r["kind"] == kind]
            if pts:
                xs, ys = zip(*sorted(pts), strict=True)
                ax.plot(xs, ys, marker=marker, color=colour, label=label,
                        linestyle="-" if kind in ("asymrnr", "joint") else "none", markersize=9 if kind == "joint" else 6)
        ax.axhline(1.0, color="black", linewidth=0.6)
        ax.axvline(33.0, color="black", linewidth=0.6, linestyle=":")
        ax.set_title(f"{block['steps']} steps")
        ax.set_xlabel("PSNR vs Inductor, held-out clips (dB)")
        ax.set_ylabel("speedup over Inductor (compiled, CPU)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(loc="upper right", fontsize=8)
    fig.suptitle("small model: speed/quality frontier (up and right is better; dotted: 33 dB)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, metadata={"Description": f"benchmarks/frontier.py data sha256 {_digest(result)}"})
    plt.close(fig)
    return path


def plot_digest(path: Path = OUT_PNG) -> str | None:
    """The data digest a frontier PNG was drawn from (None if it has none)."""
    from PIL import Image

    text = Image.open(path).text.get("Description", "")
    return text.rsplit(" ", 1)[-1] if "sha256" in text else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds per setting (best is kept)")
    parser.add_argument("--steps", type=int, nargs="+", default=list(STEP_COUNTS), help="step counts (default 20 8 4)")
    parser.add_argument("--remeasure", action="store_true", help="measure again even where a measurement is kept")
    parser.add_argument("--plot-only", action="store_true", help="redraw the table and the plot from the JSON")
    parser.add_argument("--out", default=str(OUT_JSON))
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.plot_only:
        result = json.loads(out.read_text())
    else:
        if args.threads:
            torch.set_num_threads(args.threads)
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="asymrnr-frontier-"))
        result = {"runs": [run_steps(s, args.rounds, args.remeasure) for s in args.steps],
                  "held_out": [list(c) for c in zip(*held_out(), strict=True)], "rounds": args.rounds,
                  "threads": torch.get_num_threads(), "torch": torch.__version__}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    print(render(result))
    if out == OUT_JSON:
        write_section(SECTION, render(result))
        write_section(SUMMARY, summary(result))
        print(f"wrote the {SECTION} tables and {plot(result)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
