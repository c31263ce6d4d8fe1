"""Quality ablations of AsymRnR on the small trained video transformer, held out.

Every variant samples the clips of one fixed clip set (``asymrnr_fx/small/protocol.py``;
default: the *held-out* set, four prompts x two seeds that no schedule was fitted on) and is
scored by PSNR / SSIM against the unreduced model's clips (mean, standard deviation over the
clips and worst clip). Comparisons between methods are made at equal attention FLOPs:

* Q-only vs K/V-only at the same ratio;
* asymmetric (K/V only) vs symmetric ToMe-style (the same ratio on Q and K/V, chosen so
  that ``(1 - r)^2`` equals the asymmetric cost);
* random dropping and a fixed strided cut vs similarity matching;
* a uniform ratio vs a layer/step schedule at the schedule's cost: the demo's (from a probe)
  and the calibrated ones in ``benchmarks/results/schedules`` (``python -m benchmarks.calibration``
  writes them; rows are skipped when absent);
* matching cache k = 1, 3, 5; L2 vs cosine distance; matching K/V on V vs on K; merge by
  dropping vs by averaging;
* a fresh dst partition per (site, component, refresh window), as the reference draws it,
  vs one fixed partition everywhere.

Then the paper's claims, each as a paired comparison clip by clip: *held* when the mean
difference is above two standard errors, *not held* when it is below minus two (the
opposite holds), *inconclusive* in between.

    python -m benchmarks.quality --threads 1     # table, JSON, the quality tables in docs/quality.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from tabulate import tabulate
from tqdm import tqdm

from asymrnr_fx.config import AsymRnRConfig
from asymrnr_fx.small.data import TEXT_TOKENS
from asymrnr_fx.small.demo import demo_config
from asymrnr_fx.small.evaluate import Scores, baseline_clips, paired, score
from asymrnr_fx.small.metrics import attention_cost
from asymrnr_fx.small.protocol import CLIP_SETS, HELD_OUT
from asymrnr_fx.small.sampling import load_small_model, token_grid
from benchmarks.readme import write_section

SECTION = "quality"

SCHEDULES = Path(__file__).parent / "results" / "schedules"


def uniform_at_cost(target: float, cost_of, component: str) -> float:  # noqa: ANN001
    """The uniform ratio of ``component`` ("q" or "kv") whose attention cost equals ``target``
    (bisection)."""
    lo, hi = 0.0, 0.87
    for _ in range(40):
        mid = (lo + hi) / 2
        config = AsymRnRConfig(q_ratio=mid if component == "q" else 0.0,
                               kv_ratio=mid if component == "kv" else 0.0)
        if cost_of(config) > target:
            lo = mid
        else:
            hi = mid
    return round(hi, 4)


def schedule_rows(num_layers: int, steps: int, cost_of) -> list[tuple[str, str, AsymRnRConfig]]:  # noqa: ANN001
    """A layer/step schedule against uniform Q and uniform K/V ratios at its cost: the demo's,
    and each calibrated schedule found in ``SCHEDULES``."""
    schedules = [("demo schedule (probe)", demo_config(num_layers, steps))]
    for path in sorted(SCHEDULES.glob("small-cut*.json")):
        label = f"calibrated {path.stem.removeprefix('small-cut')} ({path.name})"
        # Relative to where it runs (the repository root), so results name no machine path.
        schedules.append((label, AsymRnRConfig(schedule=os.path.relpath(path))))
    rows = []
    for label, config in schedules:
        cost = cost_of(config)
        group = f"uniform vs schedule ({100 * (1 - cost):.0f}%)"
        q, kv = uniform_at_cost(cost, cost_of, "q"), uniform_at_cost(cost, cost_of, "kv")
        rows += [(group, f"uniform Q {q}", AsymRnRConfig(q_ratio=q, kv_ratio=0.0)),
                 (group, f"uniform K/V {kv}", AsymRnRConfig(q_ratio=0.0, kv_ratio=kv)),
                 (group, label, config)]
    return rows


def variants(num_layers: int, steps: int, ratio: float, cost_of) -> list[tuple[str, str, AsymRnRConfig]]:  # noqa: ANN001
    """``(group, name, config)`` for every ablation row."""
    kv = AsymRnRConfig(q_ratio=0.0, kv_ratio=ratio, cache_interval=5)
    sym_r = round(1 - (1 - ratio) ** 0.5, 4)  # (1 - r)^2 == 1 - ratio: equal attention FLOPs
    schedule = demo_config(num_layers, steps)
    return [
        ("Q vs K/V (same ratio)", f"Q only {ratio}", kv.replace(q_ratio=ratio, kv_ratio=0.0)),
        ("Q vs K/V (same ratio)", f"K/V only {ratio}", kv),
        ("asymmetric vs symmetric", f"asymmetric: K/V {ratio}", kv),
        ("asymmetric vs symmetric", f"symmetric ToMe-style: Q=K/V {sym_r}",
         kv.replace(q_ratio=sym_r, kv_ratio=sym_r, symmetric=True)),
        ("matching vs no matching", "similarity matching (K/V)", kv),
        ("matching vs no matching", "random dropping", kv.replace(match_mode="random")),
        ("matching vs no matching", "strided cut", kv.replace(match_mode="strided")),
        *schedule_rows(num_layers, steps, cost_of),
        ("matching cache", "k = 1 (match every step)", kv.replace(cache_interval=1)),
        ("matching cache", "k = 3", kv.replace(cache_interval=3)),
        ("matching cache", "k = 5", kv),
        ("distance", "L2", kv),
        ("distance", "cosine", kv.replace(metric="cosine")),
        ("match K/V on", "V (paper)", kv),
        ("match K/V on", "K", kv.replace(match_on="k")),
        ("merge (K/V only)", "drop (paper)", kv),
        ("merge (K/V only)", "mean", kv.replace(merge="mean")),
        ("dst partition (K/V only)", "fresh per (site, component, window) (reference)", kv),
        ("dst partition (K/V only)", "one fixed partition", kv.replace(resample_partition=False)),
        ("dst partition (demo schedule)", "fresh per (site, component, window) (reference)", schedule),
        ("dst partition (demo schedule)", "one fixed partition", schedule.replace(resample_partition=False)),
    ]


def _verdict(diff: dict[str, float]) -> str:
    if diff["mean"] > 2 * diff["stderr"]:
        return "held"
    if diff["mean"] < -2 * diff["stderr"]:
        return "not held (the opposite holds)"
    return "inconclusive"


def _per_clip(row: dict) -> Scores:
    return Scores(row["clip_set"], tuple(row["psnr_per_clip"]), tuple(row["ssim_per_clip"]), row["seconds"], {})


def claims(results: list[dict]) -> list[list[str]]:
    """The paper's claims as paired comparisons of rows (first minus second), clip by clip."""
    def row(group_part: str, name_part: str) -> dict | None:
        return next((r for r in results if group_part in r["group"] and r["variant"].startswith(name_part)),
                    None)

    pairs = [("Q is more sensitive than K/V (K/V-only beats Q-only)", row("Q vs K/V", "K/V only"), row("Q vs K/V", "Q only")),
             ("asymmetric beats symmetric", row("asymmetric", "asymmetric"), row("asymmetric", "symmetric")),
             ("similarity matching beats random dropping", row("matching vs", "similarity"),
              row("matching vs", "random"))]
    for group in dict.fromkeys(r["group"] for r in results if r["group"].startswith("uniform vs")):
        members = [r for r in results if r["group"] == group]
        # (uniform Q, uniform K/V, schedule) per schedule; schedules of equal cost share a group.
        for uniform_q, uniform_kv, schedule in zip(members[0::3], members[1::3], members[2::3], strict=True):
            best = max((uniform_q, uniform_kv), key=lambda r: r["psnr"]["mean"])  # the better uniform ratio
            pairs.append((f"scheduling beats uniform ({schedule['variant']})", schedule, best))
    table = []
    for claim, a, b in pairs:
        if a is None or b is None:
            continue
        diff = paired(_per_clip(a), _per_clip(b))
        table.append([claim, f"{a['variant']} - {b['variant']}",
                      f"{diff['mean']:+.2f} ± {diff['stderr']:.2f}", f"{diff['wins']}/{diff['clips']}",
                      _verdict(diff)])
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", default=HELD_OUT.name, choices=sorted(CLIP_SETS),
                        help="clip set to sample (default: held-out)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--ratio", type=float, default=0.5, help="ratio of the single-component rows")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only", default=None, help="run only groups whose name contains this")
    parser.add_argument("--out", default="benchmarks/results/quality.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_small_model(args.weights)
    clips = CLIP_SETS[args.set]

    def cost_of(config: AsymRnRConfig) -> float:
        return attention_cost(config, num_layers=model.config.num_layers, num_steps=args.steps,
                              grid=token_grid(model), text_tokens=TEXT_TOKENS)

    baseline, seconds = baseline_clips(model, clips, args.steps)
    print(f"baseline: {len(clips)} clips in {seconds:.1f} s", file=sys.stderr)
    rows = variants(model.config.num_layers, args.steps, args.ratio, cost_of)
    if args.only:
        rows = [r for r in rows if args.only.lower() in r[0].lower()]
    scores: dict[str, Scores] = {}
    results = []
    for group, name, config in tqdm(rows, desc="variants", unit="variant"):
        key = repr(config.replace(num_steps=args.steps))
        if key not in scores:  # rows shared between groups are sampled once
            scores[key] = score(model, config, clips, baseline, args.steps)
        results.append({"group": group, "variant": name, "key": key,
                        "attention_flops_saved": 1 - cost_of(config), **scores[key].to_dict()})
    document = {
        "model": "asymrnr_fx small CogVideoXTransformer3DModel", "steps": args.steps,
        "clip_set": args.set, "prompts": list(clips.prompts), "seeds": list(clips.seeds),
        "ratio": args.ratio, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "results": results, "claims": claims(results),
    }
    print(render(document))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2) + "\n")
    if not args.only and args.set == HELD_OUT.name and args.weights is None:
        write_section(SECTION, render(document))
        print(f"wrote the {SECTION} tables in docs/quality.md", file=sys.stderr)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def render(document: dict) -> str:
    """The ablation table and the claims table (Markdown) from a result document."""
    table = [[r["group"], r["variant"], f"{100 * r['attention_flops_saved']:.1f}%",
              f"{r['psnr']['mean']:.2f} ± {r['psnr']['std']:.2f}", f"{r['psnr']['min']:.2f}",
              f"{r['ssim']['mean']:.4f} ± {r['ssim']['std']:.4f}"] for r in document["results"]]
    return "\n\n".join([
        tabulate(table, headers=["comparison", "variant", "attn FLOPs saved", "PSNR dB (mean ± sd)",
                                 "PSNR worst", "SSIM (mean ± sd)"], tablefmt="github"),
        tabulate(document["claims"], headers=["claim", "paired difference (first - second)", "PSNR dB (± se)",
                                              "clips won", "verdict"], tablefmt="github"),
    ])


if __name__ == "__main__":
    raise SystemExit(main())
