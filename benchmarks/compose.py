"""Stacking measured: AsymRnR alone, each step cache alone, and the two combined, all compiled.

On the shipped small model (CPU, offline), the same prompts and seeds under every setting, every
setting compiled with Inductor: per setting the sampling time (after compilation and one untimed
round of every setting, best of the rounds; the rounds are interleaved across settings, so load
drift falls on all of them alike),
the speedup over plain Inductor, PSNR / SSIM of its clips against the plain Inductor clips (the
unaccelerated model), the graphs Dynamo compiled while warming up and while timed (a cache that
recompiles every step shows there), and how many attention calls of a timed round AsymRnR
reduced (matched or reused).

Every setting but the baseline goes through ``asymrnr_fx.apply(model, config)``: diffusers'
caches (``enable_cache``) and cache-dit's (``cache_dit.enable_cache``, when installed) run their
decisions eagerly around compiled blocks (:mod:`asymrnr_fx.fences`); a cache alone is the same
with AsymRnR at ratio 0 (plain Inductor graphs). AsymRnR uses the demo schedule. Every
generation starts from reset caches, as a diffusers pipeline call does.

Cache settings were chosen by ``--sweep`` (each cache alone, eager, PSNR only): the most
aggressive setting that keeps the cache alone at or above 32 dB, leaving room for AsymRnR.

    python -m benchmarks.compose --threads 2          # the table, its JSON and docs/composition.md's (about 20 minutes on 2 cores)
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


# cache-dit (optional: pip install -e ".[compose]"): DBCache with one front block computed every
# step and none behind, alone and with its TaylorSeer calibrator. Chosen by --sweep likewise.
DBCACHE_THRESHOLD = 0.4
DBCACHE_TAYLOR_THRESHOLD = 0.4


def cache_dit_configs() -> dict[str, Callable[[], dict[str, Any]]]:
    """cache-dit's settings by name (``cache_dit.enable_cache`` keyword arguments)."""
    import cache_dit

    def dbcache(threshold: float) -> Any:
        return cache_dit.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, max_warmup_steps=4,
                                       residual_diff_threshold=threshold, num_inference_steps=STEPS)

    return {
        "cache-dit DBCache": lambda: {"cache_config": dbcache(DBCACHE_THRESHOLD)},
        "cache-dit DBCache + TaylorSeer": lambda: {
            "cache_config": dbcache(DBCACHE_TAYLOR_THRESHOLD),
            "calibrator_config": cache_dit.TaylorSeerCalibratorConfig(taylorseer_order=1)},
    }


def _has_cache_dit() -> bool:
    import importlib.util

    return importlib.util.find_spec("cache_dit") is not None


def _model(cache: str | None, clock: dict) -> torch.nn.Module:
    from asymrnr_fx.small.sampling import load_small_model

    model = load_small_model()
    if cache is None:
        return model
    if cache.startswith("cache-dit"):
        import cache_dit

        cache_dit.enable_cache(model, **cache_dit_configs()[cache]())
    else:
        model.enable_cache(cache_configs(clock)[cache]())
    return model


def _reset_caches(model: torch.nn.Module, cache: str | None) -> None:
    """A fresh generation: what a diffusers pipeline call (or cache-dit's refresh) does."""
    if cache is None:
        return
    if cache.startswith("cache-dit"):
        import cache_dit

        cache_dit.refresh_context(model, num_inference_steps=STEPS)
    else:
        model._reset_stateful_cache()


def _sample(model: Callable, geometry: tuple, clock: dict, prompts=PROMPTS) -> torch.Tensor:  # noqa: ANN001
    from asymrnr_fx.small.sampling import generate

    def tick(step: int, t: float) -> None:
        clock["t"] = t

    return generate(model, list(prompts), list(range(len(prompts))), steps=STEPS, geometry=geometry,
                    on_step=tick)


def settings() -> list[tuple[str, str | None, bool]]:
    """(name, cache, with AsymRnR); cache-dit rows when it is installed."""
    rows = [("Inductor (unaccelerated)", None, False), ("AsymRnR (demo schedule)", None, True)]
    caches = ["FirstBlockCache", "TaylorSeer", "PAB", "FasterCache"]
    if _has_cache_dit():
        caches += ["cache-dit DBCache", "cache-dit DBCache + TaylorSeer"]
    for cache in caches:
        rows += [(cache, cache, False), (f"{cache} + AsymRnR", cache, True)]
    return rows


def _unique_graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def run(args: argparse.Namespace) -> dict[str, Any]:
    import asymrnr_fx
    from asymrnr_fx.config import AsymRnRConfig
    from asymrnr_fx.small.demo import demo_config
    from asymrnr_fx.small.metrics import psnr, ssim
    from asymrnr_fx.small.sampling import clip_geometry, load_small_model

    geometry = clip_geometry(load_small_model())
    chosen = [s for i, s in enumerate(settings()) if i == 0 or not args.only or args.only.lower() in s[0].lower()]
    torch._dynamo.reset()
    # Every setting holds its own compiled graphs of the same block code for the whole run (the
    # rounds are interleaved), so Dynamo keeps more than its default 8 entries per code object.
    torch._dynamo.config.recompile_limit = 64
    runs = []
    for name, cache, with_asymrnr in chosen:
        clock = {"t": 1000.0}
        model = _model(cache, clock)
        if cache is None and not with_asymrnr:
            compiled, state = torch.compile(model, backend="inductor", dynamic=False), None
        else:
            config = demo_config(model.config.num_layers, STEPS) if with_asymrnr else AsymRnRConfig(kv_ratio=0.0)
            compiled = asymrnr_fx.apply(model, config)
            (state,) = asymrnr_fx.states_of(model)
        print(f"compile + warm-up: {name}", file=sys.stderr, flush=True)
        graphs = _unique_graphs()
        start = time.perf_counter()
        _reset_caches(model, cache)
        _sample(compiled, geometry, clock)
        runs.append({"name": name, "cache": cache, "model": model, "compiled": compiled, "clock": clock,
                     "state": state, "with_asymrnr": with_asymrnr, "first_s": time.perf_counter() - start,
                     "graphs_warmup": _unique_graphs() - graphs, "graphs_timed": 0, "seconds": [],
                     "reduced": None})
    # One untimed round of every setting first: settings of one process share the model's code
    # objects, and the first run of a setting after the others were compiled still compiles a
    # few frames of its own. Counted with the warm-up, so the timed rounds compile nothing.
    for r in runs:
        print(f"settle (untimed): {r['name']}", file=sys.stderr, flush=True)
        graphs = _unique_graphs()
        _reset_caches(r["model"], r["cache"])
        _sample(r["compiled"], geometry, r["clock"])
        r["graphs_warmup"] += _unique_graphs() - graphs
    for round_ in range(args.rounds):
        for r in runs:
            print(f"round {round_ + 1}/{args.rounds}: {r['name']}", file=sys.stderr, flush=True)
            if r["state"] is not None:
                r["state"].reset()
            _reset_caches(r["model"], r["cache"])
            graphs = _unique_graphs()
            start = time.perf_counter()
            r["clips"] = _sample(r["compiled"], geometry, r["clock"])
            r["seconds"].append(time.perf_counter() - start)
            r["graphs_timed"] += _unique_graphs() - graphs
            if r["with_asymrnr"]:  # attention calls of the round that were reduced (a cache skips some)
                r["reduced"] = r["state"].stats["cache_refreshes"] + r["state"].stats["cache_hits"]
    base = runs[0]
    rows = []
    for r in runs:
        p, s = psnr(r["clips"], base["clips"]), ssim(r["clips"], base["clips"])
        best, base_best = min(r["seconds"]), min(base["seconds"])
        spread = [min(b / x for b, x in zip(base["seconds"], r["seconds"], strict=True)),
                  max(b / x for b, x in zip(base["seconds"], r["seconds"], strict=True))]
        rows.append({"setting": r["name"], "seconds": round(best, 3), "speedup": round(base_best / best, 3),
                     "speedup_per_round": [round(v, 3) for v in spread],
                     "psnr_mean": round(float(p.mean()), 2), "psnr_worst": round(float(p.min()), 2),
                     "ssim_mean": round(float(s.mean()), 4), "first_run_seconds": round(r["first_s"], 1),
                     "graphs_warmup": r["graphs_warmup"], "graphs_timed": r["graphs_timed"],
                     "attention_calls_reduced": r["reduced"]})
    return {"prompts": PROMPTS, "seeds": list(range(len(PROMPTS))), "steps": STEPS, "rounds": args.rounds,
            "threads": torch.get_num_threads(), "torch": torch.__version__, "rows": rows,
            "settings": {"FirstBlockCache threshold": FBC_THRESHOLD, "TaylorSeer interval": TAYLOR_INTERVAL,
                         "PAB spatial timestep range": PAB_RANGE, "FasterCache spatial timestep range": FASTER_RANGE,
                         "cache-dit DBCache threshold": DBCACHE_THRESHOLD,
                         "cache-dit DBCache + TaylorSeer threshold": DBCACHE_TAYLOR_THRESHOLD}}


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
    if _has_cache_dit():
        import cache_dit

        for calibrated in (False, True):
            for threshold in (0.2, 0.3, 0.4, 0.6):
                model = _model(None, clock)
                extra = {"calibrator_config": cache_dit.TaylorSeerCalibratorConfig(taylorseer_order=1)} if calibrated else {}
                cache_dit.enable_cache(model, cache_config=cache_dit.DBCacheConfig(
                    Fn_compute_blocks=1, Bn_compute_blocks=0, max_warmup_steps=4, residual_diff_threshold=threshold,
                    num_inference_steps=STEPS), **extra)
                clips = _sample(model, geometry, clock)
                name = "cache-dit DBCache" + (" + TaylorSeer" if calibrated else "")
                table.append([name, f"threshold {threshold}", round(float(psnr(clips, base).mean()), 2)])
                print(table[-1], file=sys.stderr, flush=True)
    return table


def render(result: dict[str, Any]) -> str:
    """The stacking table (Markdown) from a result document."""
    from tabulate import tabulate

    def reduced(row: dict[str, Any]) -> str:
        count = row.get("attention_calls_reduced")
        return "" if count is None else str(count)

    def spread(row: dict[str, Any]) -> str:
        low, high = row["speedup_per_round"]
        return f"{low:.2f}-{high:.2f}x"

    return tabulate([[r["setting"], f"{r['seconds']:.2f}", f"{r['speedup']:.2f}x", spread(r),
                      f"{r['psnr_mean']:.2f}", f"{r['psnr_worst']:.2f}", f"{r['ssim_mean']:.4f}",
                      f"{r['first_run_seconds']:.1f}", r["graphs_warmup"], r["graphs_timed"], reduced(r)]
                     for r in result["rows"]],
                    headers=["setting", f"{len(result['prompts'])} clips s", "speedup", "per round",
                             "PSNR dB", "worst clip", "SSIM", "first run s (compile)", "graphs compiled",
                             "compiled while timed", "attention calls reduced"],
                    tablefmt="github", disable_numparse=True)


def main(argv: list[str] | None = None) -> int:
    from tabulate import tabulate

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds per setting (best is kept)")
    parser.add_argument("--sweep", action="store_true", help="choose the cache settings (eager, PSNR only)")
    parser.add_argument("--only", default=None,
                        help="only settings whose name contains this (and the baseline); JSON and docs are not written")
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
    print(f"wrote the {SECTION} table in docs/composition.md", file=sys.stderr)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
