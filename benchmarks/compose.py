"""Stacking measured: AsymRnR alone, each diffusers step cache alone, and the two combined.

On the shipped small model (CPU, offline), the same prompts and seeds under every setting, all
compiled with Inductor: per setting the sampling time (after compilation, best of the rounds;
each setting compiles and runs alone from fresh Dynamo caches), the speedup over plain
Inductor, and PSNR / SSIM of its clips against the plain Inductor clips (the unaccelerated
model), and how many attention calls of a timed round AsymRnR reduced (matched or reused; a cache
that runs the attention outside the compiled graph leaves nothing to reduce). Caches are applied with diffusers' ``enable_cache``; AsymRnR with
``asymrnr_fx.backend``; a combination is both on one model.

Cache settings were chosen by ``--sweep`` (each cache alone, eager, PSNR only): the most
aggressive setting that keeps the cache alone at or above 32 dB, leaving room for AsymRnR
within 30 dB. MagCache is not measured: diffusers runs its blocks under
``torch.compiler.disable``, so neither Inductor nor AsymRnR reaches them.

    python -m benchmarks.compose --threads 2          # the table, its JSON and the README's (a quarter of an hour on 2 cores)
    python -m benchmarks.compose --sweep --threads 2  # how the cache settings were chosen
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.readme import write_section

SECTION = "stacking"
PROMPTS = ("red circle right stripes still", "blue square orbit checker still",
           "yellow triangle down gradient pan-left", "green circle zoom stripes pan-right")
STEPS = 20


def cache_configs(clock: dict) -> dict[str, Callable[[], Any]]:
    """The caches at the settings ``--sweep`` chose (see the module docstring)."""
    from diffusers.hooks import (
        FasterCacheConfig,
        FirstBlockCacheConfig,
        PyramidAttentionBroadcastConfig,
        TaylorSeerCacheConfig,
    )

    def now() -> float:
        return clock["t"]

    return {
        "FirstBlockCache": lambda: FirstBlockCacheConfig(threshold=FBC_THRESHOLD),
        "TaylorSeer": lambda: TaylorSeerCacheConfig(cache_interval=TAYLOR_INTERVAL, disable_cache_before_step=4,
                                                    cache_identifiers=TAYLOR_MODULES),
        "PAB": lambda: PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=PAB_RANGE,
            current_timestep_callback=now),
        "FasterCache": lambda: FasterCacheConfig(
            spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=FASTER_RANGE,
            current_timestep_callback=now, attention_weight_callback=lambda _: 0.5,
            is_guidance_distilled=True, tensor_format="BFCHW"),
    }


# TaylorSeer's default patterns ("...blocks.*attn", full match) match no module of CogVideoX or
# Wan (their attention is attn1 / attn2): without explicit modules it caches nothing.
TAYLOR_MODULES = [r"transformer_blocks\.\d+"]
# Chosen by --sweep (the most aggressive setting keeping the cache alone >= 32 dB).
FBC_THRESHOLD = 0.3
TAYLOR_INTERVAL = 4
PAB_RANGE = (0, 1000)
FASTER_RANGE = (-1, 901)


def _model(cache: str | None, clock: dict) -> torch.nn.Module:
    from asymrnr_fx.small.sampling import load_small_model

    model = load_small_model()
    if cache is not None:
        model.enable_cache(cache_configs(clock)[cache]())
    return model


def _sample(model: Callable, geometry: tuple, clock: dict, prompts=PROMPTS) -> torch.Tensor:  # noqa: ANN001
    from asymrnr_fx.small.sampling import generate

    def tick(step: int, t: float) -> None:
        clock["t"] = t

    return generate(model, list(prompts), list(range(len(prompts))), steps=STEPS, geometry=geometry,
                    on_step=tick)


def settings() -> list[tuple[str, str | None, bool]]:
    """(name, cache, with AsymRnR)."""
    rows = [("Inductor (unaccelerated)", None, False), ("AsymRnR (demo schedule)", None, True)]
    for cache in ("FirstBlockCache", "TaylorSeer", "PAB", "FasterCache"):
        rows += [(cache, cache, False), (f"{cache} + AsymRnR", cache, True)]
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    import asymrnr_fx
    from asymrnr_fx.small.demo import demo_config
    from asymrnr_fx.small.metrics import psnr, ssim
    from asymrnr_fx.small.sampling import clip_geometry, load_small_model

    geometry = clip_geometry(load_small_model())
    runs = []
    chosen = [s for i, s in enumerate(settings()) if i == 0 or not args.only or args.only.lower() in s[0].lower()]
    for name, cache, with_asymrnr in chosen:
        # One setting at a time, from fresh Dynamo caches: every setting compiles the same
        # forward code, and a cache that recompiles each step (PAB, FasterCache) would push
        # that code past Dynamo's recompile limit, which then runs it eagerly for every model
        # in the process.
        torch._dynamo.reset()
        clock = {"t": 1000.0}
        model = _model(cache, clock)
        compiler = asymrnr_fx.backend(demo_config(model.config.num_layers, STEPS)) if with_asymrnr else "inductor"
        # Static shapes (a symbolic size would turn the rewrite off); the warm-up samples the
        # same batch as the timed rounds, so nothing compiles again after it.
        compiled = torch.compile(model, backend=compiler, dynamic=False)
        print(f"compile + warm-up: {name}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        _sample(compiled, geometry, clock)
        run_ = {"name": name, "first_s": time.perf_counter() - start, "seconds": [], "reduced": None}
        for round_ in range(args.rounds):
            print(f"round {round_ + 1}/{args.rounds}: {name}", file=sys.stderr, flush=True)
            if with_asymrnr:
                compiler.state.reset()
            start = time.perf_counter()
            run_["clips"] = _sample(compiled, geometry, clock)
            run_["seconds"].append(time.perf_counter() - start)
            if with_asymrnr:  # attention calls of the round that were reduced (a cache may bypass them)
                run_["reduced"] = compiler.state.stats["cache_refreshes"] + compiler.state.stats["cache_hits"]
        runs.append(run_)
    base = runs[0]
    rows = []
    for r in runs:
        p, s = psnr(r["clips"], base["clips"]), ssim(r["clips"], base["clips"])
        best, base_best = min(r["seconds"]), min(base["seconds"])
        rows.append({"setting": r["name"], "seconds": round(best, 3), "speedup": round(base_best / best, 3),
                     "psnr_mean": round(float(p.mean()), 2), "psnr_worst": round(float(p.min()), 2),
                     "ssim_mean": round(float(s.mean()), 4), "first_run_seconds": round(r["first_s"], 1),
                     "attention_calls_reduced": r["reduced"]})
    return {"prompts": PROMPTS, "seeds": list(range(len(PROMPTS))), "steps": STEPS, "rounds": args.rounds,
            "threads": torch.get_num_threads(), "torch": torch.__version__, "rows": rows,
            "settings": {"FirstBlockCache threshold": FBC_THRESHOLD, "TaylorSeer interval": TAYLOR_INTERVAL,
                         "PAB spatial timestep range": PAB_RANGE, "FasterCache spatial timestep range": FASTER_RANGE}}


def sweep() -> list[list[Any]]:
    """Each cache alone, eager, at a few settings: PSNR against the uncached model."""
    from diffusers.hooks import (
        FasterCacheConfig,
        FirstBlockCacheConfig,
        PyramidAttentionBroadcastConfig,
        TaylorSeerCacheConfig,
    )

    from asymrnr_fx.small.metrics import psnr
    from asymrnr_fx.small.sampling import clip_geometry

    clock = {"t": 1000.0}
    base_model = _model(None, clock)
    geometry = clip_geometry(base_model)
    base = _sample(base_model, geometry, clock)
    candidates = (
        [("FirstBlockCache", f"threshold {t}", lambda t=t: FirstBlockCacheConfig(threshold=t)) for t in (0.05, 0.1, 0.2, 0.3)]
        + [("TaylorSeer", f"interval {k}", lambda k=k: TaylorSeerCacheConfig(
            cache_interval=k, disable_cache_before_step=4, cache_identifiers=TAYLOR_MODULES)) for k in (2, 3, 4)]
        + [("PAB", f"range {r}", lambda r=r: PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=r,
            current_timestep_callback=lambda: clock["t"])) for r in ((100, 800), (0, 1000))]
        + [("FasterCache", f"range {r}", lambda r=r: FasterCacheConfig(
            spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=r,
            current_timestep_callback=lambda: clock["t"], attention_weight_callback=lambda _: 0.5,
            is_guidance_distilled=True, tensor_format="BFCHW")) for r in ((-1, 681), (-1, 901))]
    )
    table = []
    for cache, label, make in candidates:
        model = _model(None, clock)
        model.enable_cache(make())
        clips = _sample(model, geometry, clock)
        table.append([cache, label, round(float(psnr(clips, base).mean()), 2)])
        print(table[-1], file=sys.stderr, flush=True)
    return table


def render(result: dict[str, Any]) -> str:
    """The stacking table (Markdown) from a result document."""
    from tabulate import tabulate

    def reduced(row: dict[str, Any]) -> str:
        count = row.get("attention_calls_reduced")
        return "" if count is None else str(count)

    return tabulate([[r["setting"], f"{r['seconds']:.2f}", f"{r['speedup']:.2f}x", f"{r['psnr_mean']:.2f}",
                      f"{r['psnr_worst']:.2f}", f"{r['ssim_mean']:.4f}", f"{r['first_run_seconds']:.1f}",
                      reduced(r)]
                     for r in result["rows"]],
                    headers=["setting", f"{len(result['prompts'])} clips s", "speedup", "PSNR dB", "worst clip",
                             "SSIM", "first run s (compile)", "attention calls reduced"], tablefmt="github")


def main(argv: list[str] | None = None) -> int:
    from tabulate import tabulate

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds per setting (best is kept)")
    parser.add_argument("--sweep", action="store_true", help="choose the cache settings (eager, PSNR only)")
    parser.add_argument("--only", default=None,
                        help="only settings whose name contains this (and the baseline); JSON and README are not written")
    parser.add_argument("--out", default="benchmarks/results/compose.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.sweep:
        print(tabulate(sweep(), headers=["cache", "setting", "PSNR dB (alone, eager)"], tablefmt="github"))
        return 0
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="asymrnr-compose-"))
    result = run(args)
    print(render(result))
    if args.only:
        return 0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    write_section(SECTION, render(result))
    print(f"wrote the README's {SECTION} table", file=sys.stderr)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
