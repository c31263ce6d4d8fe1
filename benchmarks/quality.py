"""Quality ablations of AsymRnR on the small trained video transformer.

Every variant samples the same (prompt, seed) clips as the unreduced model and is scored
by PSNR / SSIM against those baseline clips (mean, standard deviation and worst clip over
the seeds). Comparisons between methods are made at equal attention FLOPs:

* Q-only vs K/V-only at the same ratio;
* asymmetric (K/V only) vs symmetric ToMe-style (the same ratio on Q and K/V, chosen so
  that ``(1 - r)^2`` equals the asymmetric cost);
* random dropping and a fixed strided cut vs similarity matching;
* a uniform ratio vs the layer/step schedule of the demo, at the schedule's cost;
* matching cache k = 1, 3, 5; L2 vs cosine distance; matching K/V on V vs on K;
* a fresh dst partition per (site, component, refresh window), as the reference draws it,
  vs one fixed partition everywhere.

The rewritten graphs run eagerly (``inner="eager"``) because quality, not speed, is
measured here and Inductor would compile every variant for a minute on CPU.

    python benchmarks/quality.py --seeds 4 --steps 20 --out benchmarks/results/quality.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tabulate import tabulate
from tqdm import tqdm

import asymrnr_fx
from asymrnr_fx.config import AsymRnRConfig
from asymrnr_fx.small.data import TEXT_TOKENS
from asymrnr_fx.small.demo import DEFAULT_PROMPTS, demo_config
from asymrnr_fx.small.metrics import attention_cost, psnr, ssim
from asymrnr_fx.small.sampling import clip_geometry, generate, load_small_model, token_grid


def uniform_kv_at_cost(target: float, cost_of) -> float:  # noqa: ANN001
    """The uniform K/V ratio whose attention cost equals ``target`` (bisection)."""
    lo, hi = 0.0, 0.95
    for _ in range(40):
        mid = (lo + hi) / 2
        if cost_of(AsymRnRConfig(q_ratio=0.0, kv_ratio=mid)) > target:
            lo = mid
        else:
            hi = mid
    return round((lo + hi) / 2, 4)


def variants(num_layers: int, steps: int, ratio: float, cost_of) -> list[tuple[str, str, AsymRnRConfig]]:  # noqa: ANN001
    """``(group, name, config)`` for every ablation row."""
    kv = AsymRnRConfig(q_ratio=0.0, kv_ratio=ratio, cache_interval=5)
    sym_r = round(1 - (1 - ratio) ** 0.5, 4)  # (1 - r)^2 == 1 - ratio: equal attention FLOPs
    schedule = demo_config(num_layers, steps)
    r_uniform = uniform_kv_at_cost(cost_of(schedule), cost_of)
    rows = [
        ("Q vs K/V (same ratio)", f"Q only {ratio}", kv.replace(q_ratio=ratio, kv_ratio=0.0)),
        ("Q vs K/V (same ratio)", f"K/V only {ratio}", kv),
        ("asymmetric vs symmetric", f"asymmetric: K/V {ratio}", kv),
        ("asymmetric vs symmetric", f"symmetric ToMe-style: Q=K/V {sym_r}",
         kv.replace(q_ratio=sym_r, kv_ratio=sym_r, symmetric=True)),
        ("matching vs no matching", "similarity matching (K/V)", kv),
        ("matching vs no matching", "random dropping", kv.replace(match_mode="random")),
        ("matching vs no matching", "strided cut", kv.replace(match_mode="strided")),
        ("uniform vs schedule", f"uniform K/V {r_uniform}", kv.replace(kv_ratio=r_uniform)),
        ("uniform vs schedule", "layer/step schedule (demo default)", schedule),
        ("matching cache", "k = 1 (match every step)", kv.replace(cache_interval=1)),
        ("matching cache", "k = 3", kv.replace(cache_interval=3)),
        ("matching cache", "k = 5", kv),
        ("distance", "L2", kv),
        ("distance", "cosine", kv.replace(metric="cosine")),
        ("match K/V on", "V (paper)", kv),
        ("match K/V on", "K", kv.replace(match_on="k")),
        ("dst partition (K/V only)", "fresh per (site, component, window) (reference)", kv),
        ("dst partition (K/V only)", "one fixed partition", kv.replace(resample_partition=False)),
        ("dst partition (demo schedule)", "fresh per (site, component, window) (reference)", schedule),
        ("dst partition (demo schedule)", "one fixed partition", schedule.replace(resample_partition=False)),
    ]
    return rows


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=4, help="clips per variant (prompt i, seed i)")
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
    geometry = clip_geometry(model)
    num_layers = model.config.num_layers
    grid = token_grid(model)
    prompts = [DEFAULT_PROMPTS[i % len(DEFAULT_PROMPTS)] for i in range(args.seeds)]
    seeds = list(range(args.seeds))

    def cost_of(config: AsymRnRConfig) -> float:
        return attention_cost(config, num_layers=num_layers, num_steps=args.steps, grid=grid,
                              text_tokens=TEXT_TOKENS)

    start = time.perf_counter()
    baseline = generate(model, prompts, seeds, steps=args.steps, progress=True, desc="baseline")
    print(f"baseline: {len(seeds)} clips in {time.perf_counter() - start:.1f} s", file=sys.stderr)

    rows = variants(num_layers, args.steps, args.ratio, cost_of)
    if args.only:
        rows = [r for r in rows if args.only.lower() in r[0].lower()]
    done: dict[AsymRnRConfig, dict[str, Any]] = {}
    results = []
    for group, name, config in tqdm(rows, desc="variants", unit="variant"):
        config = config.replace(num_steps=args.steps)
        if config not in done:  # rows shared between groups are sampled once
            torch._dynamo.reset()
            compiler = asymrnr_fx.backend(config, inner="eager")
            compiled = torch.compile(model, backend=compiler)
            t0 = time.perf_counter()
            clips = generate(compiled, prompts, seeds, steps=args.steps, geometry=geometry)
            done[config] = {
                "psnr": psnr(clips, baseline).tolist(),
                "ssim": ssim(clips, baseline).tolist(),
                "seconds": time.perf_counter() - t0,
                "stats": dict(compiler.state.stats),
            }
        r = done[config]
        results.append({
            "group": group, "variant": name, "config": repr(config),
            "attention_flops_saved": 1 - cost_of(config),
            "psnr": _summary(r["psnr"]), "ssim": _summary(r["ssim"]),
            "psnr_per_clip": r["psnr"], "ssim_per_clip": r["ssim"], "stats": r["stats"],
        })

    table = [[
        r["group"], r["variant"], f"{100 * r['attention_flops_saved']:.1f}%",
        f"{r['psnr']['mean']:.2f} ± {r['psnr']['std']:.2f}", f"{r['psnr']['min']:.2f}",
        f"{r['ssim']['mean']:.4f} ± {r['ssim']['std']:.4f}",
    ] for r in results]
    print(tabulate(table, headers=["comparison", "variant", "attn FLOPs saved", "PSNR dB (mean ± sd)",
                                   "PSNR worst", "SSIM (mean ± sd)"], tablefmt="github"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "model": "asymrnr_fx small CogVideoXTransformer3DModel", "steps": args.steps,
        "prompts": prompts, "seeds": seeds, "ratio": args.ratio, "torch": torch.__version__,
        "results": results,
    }, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
