"""Calibrated schedules in sample and held out, on the small trained video transformer.

The protocol (``asymrnr_fx/small/protocol.py``): the *calibration* set (the demo's four
prompts, seeds 0-3) and the *held-out* set (four other prompts, two seeds each, 10-17) are
fixed and disjoint. Each calibration method measures once on a set and fits schedules at
every target share of attention FLOPs removed; every schedule is then scored on both sets
(PSNR / SSIM against the unreduced model, same prompts, seeds and steps; mean, standard
deviation and worst clip), so a figure is in-sample only on the set the schedule was
calibrated on.

* ``sensitivity`` (the default of ``asymrnr calibrate``): output sensitivity.
* ``redundancy``: the previous default, token redundancy with the paper's priors.
* the demo schedule (a hand-made schedule from a sensitivity probe on the calibration set).

Transfer: the schedule calibrated on the calibration set against the one calibrated on the
held-out set itself, both scored on the held-out set. Cost: seconds of each measurement and
the same in plain baseline-length runs of its clips.

    python -m benchmarks.calibration --threads 1   # tables, JSON, the calibration tables in docs/schedules.md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tabulate import tabulate

from asymrnr_fx.config import AsymRnRConfig
from asymrnr_fx.schedules.calibrate import fit, measure, predicted_psnr
from asymrnr_fx.schedules.damage import DamageTable, Reduction
from asymrnr_fx.schedules.sensitivity import DEFAULT_PROBES
from asymrnr_fx.small.data import TEXT_TOKENS
from asymrnr_fx.small.demo import demo_config
from asymrnr_fx.small.evaluate import baseline_clips, score
from asymrnr_fx.small.protocol import CALIBRATION, HELD_OUT, ClipSet
from asymrnr_fx.small.sampling import FlowTrajectory, load_small_model, token_grid
from benchmarks.readme import write_section

SECTION = "calibration"

SETS = (CALIBRATION, HELD_OUT)
# (method, the set it calibrates on): A on the calibration set, and the held-out set's own
# calibration, the reference of the transfer check.
CALIBRATIONS = (("sensitivity", CALIBRATION), ("redundancy", CALIBRATION), ("sensitivity", HELD_OUT))


def measure_on(model: torch.nn.Module, clips: ClipSet, method: str, steps: int, probes: int) -> DamageTable:
    """One measurement of ``method`` over every clip of ``clips`` (one batch)."""
    trajectory = FlowTrajectory(model, list(clips.prompts), list(clips.seeds), steps=steps)
    return measure(model, [trajectory], Reduction(token_grid(model)), method=method,
                   text_tokens=TEXT_TOKENS, text_side="before", probes=probes)


def cost_row(method: str, clips: ClipSet, table: DamageTable, baseline_seconds: float) -> dict[str, Any]:
    """Seconds of a measurement and the same in baseline-length runs of its clips."""
    meta = table.meta or {}
    plain = meta.get("plain_run_seconds") or baseline_seconds
    return {"method": method, "clip_set": clips.name, "clips": len(clips),
            "seconds": meta["seconds"], "baseline_runs": meta["seconds"] / plain}


def score_row(model: torch.nn.Module, label: str, calibrated_on: str, config: AsymRnRConfig,
              baselines: dict[str, torch.Tensor], steps: int, extra: dict[str, Any]) -> dict[str, Any]:
    """One schedule scored on both sets."""
    scores = {clips.name: score(model, config, clips, baselines[clips.name], steps).to_dict()
              for clips in SETS}
    return {"schedule": label, "calibrated_on": calibrated_on, **extra, "scores": scores}


def calibrated_rows(model: torch.nn.Module, tables: dict, targets: list[float],
                    baselines: dict[str, torch.Tensor], steps: int, out_dir: Path) -> list[dict[str, Any]]:
    """Every (method, set) calibration fitted at every target, scored on both sets."""
    rows = []
    for target in targets:
        for method, clips in CALIBRATIONS:
            result = fit(tables[(method, clips.name)], target, name=f"small-{method}-{clips.name}-cut{target:g}")
            if method == "sensitivity" and clips is CALIBRATION:  # what `asymrnr calibrate` writes
                result.schedule.save(out_dir / f"small-cut{target:g}.json")
            mse = result.stats.get("predicted_output_mse")
            extra = {"method": method, "target": target, "flops_removed": result.stats["achieved_flops_cut"],
                     "predicted_psnr": None if mse is None else predicted_psnr(mse),
                     "schedule_json": result.schedule.to_dict()}
            rows.append(score_row(model, f"calibrate {method} {target:.0%}", clips.name,
                                  AsymRnRConfig(schedule=result.schedule), baselines, steps, extra))
            print(f"  {method} on {clips.name} at {target:.0%}: "
                  f"{rows[-1]['scores'][HELD_OUT.name]['psnr']['mean']:.2f} dB held out", file=sys.stderr)
    return rows


def _cell(scores: dict[str, Any]) -> str:
    p = scores["psnr"]
    return f"{p['mean']:.2f} ± {p['std']:.2f} ({p['min']:.2f})"


def render(document: dict[str, Any]) -> str:
    """The in-sample vs held-out table, the transfer check and the calibration cost (Markdown)."""
    rows, costs = document["rows"], document["costs"]
    table = []
    for r in [*rows, document["demo"]]:
        pred = r.get("predicted_psnr")
        table.append([r["schedule"], r["calibrated_on"], f"{100 * r['flops_removed']:.1f}%",
                      "" if pred is None else f"{pred:.1f}", _cell(r["scores"][CALIBRATION.name]),
                      _cell(r["scores"][HELD_OUT.name]), f"{r['scores'][HELD_OUT.name]['ssim']['mean']:.4f}"])
    transfer = []
    for target in sorted({r["target"] for r in rows}):
        def held_out(on: str, t: float = target) -> float:
            return next(r["scores"][HELD_OUT.name]["psnr"]["mean"] for r in rows
                        if r["method"] == "sensitivity" and r["target"] == t and r["calibrated_on"] == on)
        a, b = held_out(CALIBRATION.name), held_out(HELD_OUT.name)
        transfer.append([f"{target:.0%}", f"{a:.2f}", f"{b:.2f}", f"{a - b:+.2f}"])
    return "\n\n".join([
        tabulate(table, headers=["schedule", "calibrated on", "attn FLOPs removed", "predicted PSNR",
                                 f"{CALIBRATION.name} set PSNR dB (worst)",
                                 f"{HELD_OUT.name} set PSNR dB (worst)", "held-out SSIM"], tablefmt="github"),
        tabulate(transfer, headers=["target", "calibrated on calibration set", "calibrated on held-out set",
                                    "difference dB"], tablefmt="github"),
        tabulate([[c["method"], c["clip_set"], c["clips"], f"{c['seconds']:.0f}", f"{c['baseline_runs']:.1f}"]
                  for c in costs],
                 headers=["measurement", "clip set", "clips", "seconds", "baseline-length runs"],
                 tablefmt="github"),
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.35, 0.5, 0.6])
    parser.add_argument("--probes", type=int, default=DEFAULT_PROBES,
                        help=f"sensitivity probes per clip (default {DEFAULT_PROBES}, as calibrate)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="benchmarks/results/calibration.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_small_model()
    out = Path(args.out)
    (out.parent / "schedules").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    baselines, baseline_seconds = {}, {}
    for clips in SETS:
        baselines[clips.name], baseline_seconds[clips.name] = baseline_clips(model, clips, args.steps)
    tables, costs = {}, []
    for method, clips in CALIBRATIONS:
        tables[(method, clips.name)] = table = measure_on(model, clips, method, args.steps, args.probes)
        costs.append(cost_row(method, clips, table, baseline_seconds[clips.name]))
        print(f"measured {method} on {clips.name}: {costs[-1]['seconds']:.0f} s", file=sys.stderr)
    rows = calibrated_rows(model, tables, args.targets, baselines, args.steps, out.parent / "schedules")
    config = demo_config(model.config.num_layers, args.steps)
    demo = score_row(model, "demo schedule (probe)", CALIBRATION.name, config, baselines, args.steps,
                     {"method": "probe", "target": None,
                      "flops_removed": _flops(config, model, args.steps)})
    document = {
        "model": "asymrnr_fx small CogVideoXTransformer3DModel", "steps": args.steps,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "clip_sets": {c.name: {"prompts": list(c.prompts), "seeds": list(c.seeds)} for c in SETS},
        "baseline_seconds": baseline_seconds, "costs": costs, "rows": rows, "demo": demo,
        "measurements": {f"{m}/{s}": t.to_dict() for (m, s), t in tables.items()},
        "seconds": time.perf_counter() - start,
    }
    print(render(document))
    out.write_text(json.dumps(document, indent=1) + "\n")
    write_section(SECTION, render(document))
    print(f"wrote {out} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


def _flops(config: AsymRnRConfig, model: torch.nn.Module, steps: int) -> float:
    from asymrnr_fx.small.metrics import attention_cost

    return 1.0 - attention_cost(config, num_layers=model.config.num_layers, num_steps=steps,
                                grid=token_grid(model), text_tokens=TEXT_TOKENS)


if __name__ == "__main__":
    raise SystemExit(main())
