"""Speed of the asymrnr backend against plain Inductor, measured in one run.

Model presets (a CogVideoXTransformer3DModel with random weights) time one forward and a
sampling loop of ``--steps`` steps (distinct decreasing timesteps) under four settings:

* ``inductor``: plain ``torch.compile`` (the baseline every ratio refers to);
* ``asymrnr``: the backend at the given ratios / schedule and matching cache;
* ``bound``: the same token cut with fixed strided indices (``match_mode="strided"``): no
  matching at all, so the best any matching could do;
* ``match-every-step``: the asymrnr setting with ``cache_interval=1``.

Each also reports compile time, peak memory (CUDA) and the fraction of the bound's saving
it reaches. The matching cost per refresh (the ``nearest_dst`` op alone and with the
selection that turns distances into keep/restore indices) is timed separately at the size
of one attention site. The attention preset times SDPA alone with K/V cut, including the
matching amortised over the cache interval.

Settings are compiled one after the other (each with a warm-up generation), then timed in
round-robin order; every number is the best of ``--repeats``. Compile times come from a
fresh Inductor cache directory, shared within the run: the first setting pays for kernels
that later settings reuse.

    python -m benchmarks.speed --threads 1              # CPU mid size (a few minutes)
    python -m benchmarks.speed --preset cogvideox-2b    # CUDA, real size, bf16
    python -m benchmarks.speed --preset hunyuan-attn    # CUDA, attention only
"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["PRESETS", "ModelPreset", "AttentionPreset", "main"]


@dataclass(frozen=True)
class ModelPreset:
    """A CogVideoXTransformer3DModel size and its inputs."""

    name: str
    heads: int
    head_dim: int
    layers: int
    latent: tuple[int, int, int]  # (T, H, W) latent frames and pixels (before the 2x2 patch)
    text_tokens: int
    text_dim: int
    batch: int
    dtype: torch.dtype
    steps: int
    repeats: int
    extra: dict[str, Any] = field(default_factory=dict)
    weights: str = "random"  # "random", or "small": the shipped trained model (sizes from it)
    default_settings: str = "inductor,bound,asymrnr,match-every-step"

    @property
    def grid(self) -> tuple[int, int, int]:
        t, h, w = self.latent
        return t, h // 2, w // 2

    @property
    def video_tokens(self) -> int:
        return math.prod(self.grid)


@dataclass(frozen=True)
class AttentionPreset:
    """One attention call: (B, heads, text + video, head_dim), video grid and stride."""

    name: str
    heads: int
    head_dim: int
    grid: tuple[int, int, int]
    text_tokens: int
    batch: int
    dtype: torch.dtype
    stride: tuple[int, int, int]
    cache_interval: int
    repeats: int

    @property
    def video_tokens(self) -> int:
        return math.prod(self.grid)


PRESETS: dict[str, ModelPreset | AttentionPreset] = {
    # Thousands of tokens, a 2-core CPU, minutes: the same model class and layout as 2B, with
    # attention still the larger part of a forward (attention / linear FLOPs ~ N / (6 d_model)
    # ~ 1.9, against 1.5 for the real 2B).
    "cpu-mid": ModelPreset(
        "cpu-mid", heads=4, head_dim=64, layers=2, latent=(5, 48, 48), text_tokens=32,
        text_dim=256, batch=2, dtype=torch.float32, steps=10, repeats=2,
    ),
    # CogVideoX-2B, 49 frames 480x720: 13 x 30 x 45 = 17,550 video + 226 text tokens.
    "cogvideox-2b": ModelPreset(
        "cogvideox-2b", heads=30, head_dim=64, layers=30, latent=(13, 60, 90), text_tokens=226,
        text_dim=4096, batch=2, dtype=torch.bfloat16, steps=10, repeats=2,
    ),
    # The shipped small trained model (6 layers, 4 heads x 32, 8 x 16 x 16 = 2,048 video + 5
    # condition tokens), one prompt, a 20-step loop: where a calibrated multi-phase schedule is
    # timed against plain Inductor (compiled) and against eager (eager).
    "small": ModelPreset(
        "small", heads=4, head_dim=32, layers=6, latent=(8, 32, 32), text_tokens=5, text_dim=5,
        batch=1, dtype=torch.float32, steps=20, repeats=4, weights="small",
        default_settings="inductor,asymrnr,eager,asymrnr-eager",
    ),
    # HunyuanVideo 129 frames 720p: 33 x 45 x 80 = 118,800 video + 256 text = 119,056 tokens.
    "hunyuan-attn": AttentionPreset(
        "hunyuan-attn", heads=24, head_dim=128, grid=(33, 45, 80), text_tokens=256, batch=1,
        dtype=torch.bfloat16, stride=(6, 2, 2), cache_interval=3, repeats=10,
    ),
    "cpu-attn": AttentionPreset(
        "cpu-attn", heads=4, head_dim=64, grid=(8, 24, 24), text_tokens=32, batch=1,
        dtype=torch.float32, stride=(2, 2, 2), cache_interval=5, repeats=3,
    ),
}


# ---- timing helpers ------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Best wall time of ``fn()`` over ``repeats`` calls, in seconds (synchronised on CUDA).

    The best, not the median: other load on the machine only ever adds time.
    """
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 3)


# ---- matching cost -------------------------------------------------------------------------


def time_matching(
    shape: tuple[int, int, int, int],
    grid: tuple[int, int, int],
    stride: tuple[int, int, int],
    ratio: float,
    metric: str,
    dtype: torch.dtype,
    device: torch.device,
    repeats: int,
) -> dict[str, Any]:
    """Time one site's matching: ``nearest_dst`` alone, and with the index selection.

    ``shape`` is (B, H, N_video, D) of the tensor matched on (V for K/V).
    """
    from asymrnr_fx import ops
    from asymrnr_fx.kernels.nearest import nearest_dst, nearest_dst_chunked

    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(shape, generator=gen, device=device).to(dtype)
    part = ops.partition(grid, stride, seed=0, device=device)
    num_keep = ops.kept_count(shape[2], ratio, part.dst_idx.numel())
    src, dst = x[:, :, part.src_idx], x[:, :, part.dst_idx]
    result: dict[str, Any] = {
        "shape": list(shape), "grid": list(grid), "stride": list(stride), "ratio": ratio,
        "num_src": part.src_idx.numel(), "num_dst": part.dst_idx.numel(), "num_keep": num_keep,
        "metric": metric, "dtype": str(dtype).removeprefix("torch."),
    }
    with torch.no_grad():
        result["nearest_ms"] = _ms(time_call(lambda: nearest_dst(src, dst, metric), device, repeats))
        result["match_ms"] = _ms(
            time_call(lambda: ops.match(x, part, num_keep, metric), device, repeats)
        )
        if device.type == "cuda":
            # The fallback the fused kernel replaces (cuBLAS GEMM blocks + min), for reference.
            result["nearest_chunked_ms"] = _ms(
                time_call(lambda: nearest_dst_chunked(src, dst, metric), device, repeats)
            )
    return result


# ---- model benchmark -----------------------------------------------------------------------


def build_cogvideox(preset: ModelPreset, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """Random-weight CogVideoXTransformer3DModel of ``preset`` and its forward kwargs."""
    from diffusers import CogVideoXTransformer3DModel

    t, h, w = preset.latent
    torch.manual_seed(0)
    with torch.device(device):
        model = CogVideoXTransformer3DModel(
            num_attention_heads=preset.heads, attention_head_dim=preset.head_dim,
            in_channels=16, out_channels=16, text_embed_dim=preset.text_dim,
            num_layers=preset.layers, sample_width=w, sample_height=h,
            sample_frames=(t - 1) * 4 + 1, patch_size=2, max_text_seq_length=preset.text_tokens,
            use_rotary_positional_embeddings=False,
        )
    if preset.dtype != torch.float32:
        model = model.to(preset.dtype)
    model = model.eval().requires_grad_(False)
    gen = torch.Generator(device="cpu").manual_seed(1)
    inputs = {
        "hidden_states": torch.randn(preset.batch, t, 16, h, w, generator=gen),
        "encoder_hidden_states": torch.randn(preset.batch, preset.text_tokens, preset.text_dim, generator=gen),
    }
    inputs = {k: v.to(device=device, dtype=preset.dtype) for k, v in inputs.items()}
    inputs["return_dict"] = False
    return model, inputs


def build_small(preset: ModelPreset, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """The shipped small trained model and one prompt's inputs."""
    from asymrnr_fx.small.data import encode_condition, parse_prompt
    from asymrnr_fx.small.sampling import clip_geometry, load_small_model

    model = load_small_model().to(device)
    gen = torch.Generator(device="cpu").manual_seed(1)
    inputs = {
        "hidden_states": torch.randn(preset.batch, *clip_geometry(model), generator=gen).to(device),
        "encoder_hidden_states": encode_condition(
            [parse_prompt("red circle right stripes still")] * preset.batch).to(device),
        "return_dict": False,
    }
    return model, inputs


def build_model(preset: ModelPreset, device: torch.device) -> tuple[torch.nn.Module, dict]:
    return build_small(preset, device) if preset.weights == "small" else build_cogvideox(preset, device)


def timesteps_for(steps: int) -> list[int]:
    """Distinct decreasing timesteps: each is the next denoising step for the backend."""
    return [int(round(999 - i * 998 / max(1, steps - 1))) for i in range(steps)]


def run_loop(fn: Callable[..., Any], inputs: dict, steps: Sequence[int], device: torch.device) -> list[float]:
    """Per-step wall seconds of one sampling loop (one forward per timestep)."""
    batch = inputs["hidden_states"].shape[0]
    times = []
    with torch.no_grad():
        for t in steps:
            timestep = torch.full((batch,), t, dtype=torch.long, device=device)
            _sync(device)
            start = time.perf_counter()
            fn(**inputs, timestep=timestep)
            _sync(device)
            times.append(time.perf_counter() - start)
    return times


EAGER_SETTINGS = ("eager", "asymrnr-eager")


def asymrnr_config(args: argparse.Namespace, preset: ModelPreset) -> Any:
    """The AsymRnR config every asymrnr setting shares."""
    import asymrnr_fx

    fields: dict[str, Any] = {
        "kv_ratio": args.kv_ratio, "q_ratio": args.q_ratio, "cache_interval": args.cache_interval,
        "metric": args.metric, "num_steps": preset.steps,
    }
    if args.schedule:
        fields["schedule"] = args.schedule
        if args.cache_interval_given is None:
            del fields["cache_interval"]  # a schedule brings its own
    return asymrnr_fx.AsymRnRConfig(**fields)


def _setting_backends(args: argparse.Namespace, preset: ModelPreset) -> dict[str, Any]:
    """The settings: name -> (torch.compile backend or None for eager, asymrnr config or None)."""
    import asymrnr_fx

    config = asymrnr_config(args, preset)
    variants = {
        "inductor": ("inductor", None),
        # The bound before the method: under a time budget the reference point comes first.
        "bound": (None, config.replace(match_mode="strided")),
        "asymrnr": (None, config),
        "match-every-step": (None, config.replace(cache_interval=1)),
        "eager": (None, None),
        "asymrnr-eager": ("eager", config),
    }
    settings = {}
    for name, (inner, cfg) in variants.items():
        if cfg is not None:
            compiler = asymrnr_fx.backend(cfg, inner=inner or "inductor")
        else:
            compiler = inner  # "inductor", or None: the model runs eagerly
        settings[name] = (compiler, cfg)
    wanted = (args.settings or preset.default_settings).split(",")
    unknown = sorted(set(wanted) - set(settings))
    if unknown:
        raise SystemExit(f"unknown setting(s) {unknown}; choose from {list(settings)}")
    return {name: settings[name] for name in wanted}


@dataclass
class _Setting:
    name: str
    config: Any
    compiler: Any  # "inductor", an AsymRnR backend, or None (eager)
    compiled: Callable[..., Any]
    warm: list[float] = field(default_factory=list)
    loops: list[list[float]] = field(default_factory=list)
    peak: int = 0
    stats: dict[str, int] = field(default_factory=dict)
    isolated: dict[str, Any] | None = None  # compile + warm-up measured in a fresh process


def _loop(setting: _Setting, inputs: dict, steps: Sequence[int], device: torch.device) -> list[float]:
    state = getattr(setting.compiler, "state", None)  # the AsymRnR backend's own state
    if state is not None:
        state.reset()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = run_loop(setting.compiled, inputs, steps, device)
    if device.type == "cuda":
        setting.peak = max(setting.peak, torch.cuda.max_memory_allocated(device))
    for key, value in (state.stats.items() if state is not None else ()):
        setting.stats[key] = setting.stats.get(key, 0) + value
    return times


def _summarise(setting: _Setting, device: torch.device) -> dict[str, Any]:
    # Best of the repeats, per step: the machine's other load only ever adds time.
    per_step = [min(col) for col in zip(*setting.loops, strict=True)]
    config = setting.config
    interval = None
    if config is not None and config.match_mode == "similarity":
        interval = config.cache_interval
    refresh = [s for i, s in enumerate(per_step) if interval is not None and i % interval == 0]
    reuse = [s for i, s in enumerate(per_step) if interval is None or i % interval != 0]
    out: dict[str, Any] = {
        "setting": setting.name,
        "loop_ms": _ms(min(sum(loop) for loop in setting.loops)),
        "forward_ms": _ms(statistics.median(reuse or refresh)),
        "refresh_forward_ms": _ms(statistics.median(refresh)) if refresh else None,
        # Compile (and first-call) time: the warm-up generation minus the same steps warm.
        "compile_s": round(sum(w - s for w, s in zip(setting.warm, per_step, strict=True)), 2),
        "per_step_ms": [_ms(s) for s in per_step],
        "stats": setting.stats,
    }
    if setting.isolated is not None:  # measured alone in a fresh process and Inductor cache
        out["compile_s"] = setting.isolated["compile_s"]
        out["first_loop_s"] = setting.isolated["first_loop_s"]
        out["graphs"] = setting.isolated["graphs"]
        out["compile_isolated"] = True
    if device.type == "cuda":
        out["peak_mem_gib"] = round(setting.peak / 2**30, 2)
    return out


def attention_sites_matched(config: Any, layers: int) -> int:
    """Matchings per refresh step (K/V and Q count separately) for a uniform config."""
    if config.schedule is not None or config.layer_ratios is not None:
        return -1  # varies per step and layer; the JSON carries the per-site time
    return layers * (int(config.kv_ratio > 0) + int(config.q_ratio > 0 and not config.symmetric))


def _speedups(rows: list[dict[str, Any]]) -> None:
    """Ratios against each setting's own baseline (plain Inductor for compiled settings, the
    eager model for eager ones) and the fraction of the bound's saving, in place."""
    by_name = {r["setting"]: r for r in rows}
    inductor, bound = by_name.get("inductor"), by_name.get("bound")
    for row in rows:
        base = by_name.get("eager") if row["setting"] in EAGER_SETTINGS else inductor
        if base:
            row["baseline"] = base["setting"]
            row["loop_speedup"] = round(base["loop_ms"] / row["loop_ms"], 3)
            row["forward_speedup"] = round(base["forward_ms"] / row["forward_ms"], 3)
            if "first_loop_s" in row and "first_loop_s" in base:
                row["first_loop_vs_baseline"] = round(row["first_loop_s"] / base["first_loop_s"], 3)
        base = inductor
        if base and bound and base["loop_ms"] > bound["loop_ms"]:
            saved = base["loop_ms"] - row["loop_ms"]
            row["fraction_of_bound"] = round(saved / (base["loop_ms"] - bound["loop_ms"]), 3)


def bench_model(
    preset: ModelPreset, args: argparse.Namespace, device: torch.device,
    checkpoint: Callable[[dict[str, Any]], None] = lambda result: None,
) -> dict[str, Any]:
    """The model benchmark; ``checkpoint`` receives the partial result after each stage."""
    started = time.monotonic()
    budget = args.time_budget

    def over(fraction: float) -> bool:
        return budget is not None and time.monotonic() - started > fraction * budget

    settings = _setting_backends(args, preset)
    result: dict[str, Any] = {
        "preset": preset.name, "kind": "model", "model": "CogVideoXTransformer3DModel",
        "shape": {
            "layers": preset.layers, "heads": preset.heads, "head_dim": preset.head_dim,
            "grid": list(preset.grid), "video_tokens": preset.video_tokens,
            "text_tokens": preset.text_tokens, "batch": preset.batch,
            "dtype": str(preset.dtype).removeprefix("torch."), "steps": preset.steps,
            "repeats": preset.repeats,
        },
        "config": {
            "kv_ratio": args.kv_ratio, "q_ratio": args.q_ratio, "schedule": args.schedule,
            "cache_interval": args.cache_interval, "metric": args.metric,
        },
        "settings": [], "matching": None, "skipped": [],
    }
    # Matching cost first: it takes seconds and is what the cache amortises.
    # Every asymrnr setting shares ratios, stride and metric: any of them sizes the matching.
    asym_config = next((c for _, c in settings.values() if c is not None), None)
    if asym_config is not None and asym_config.kv_ratio > 0 and asym_config.schedule is None:
        shape = (preset.batch, preset.heads, preset.video_tokens, preset.head_dim)
        matching = time_matching(
            shape, preset.grid, asym_config.stride, asym_config.kv_ratio, asym_config.metric,
            preset.dtype, device, repeats=10,
        )
        sites = attention_sites_matched(asym_config, preset.layers)
        matching["sites_per_refresh"] = sites
        if sites > 0:
            matching["per_refresh_ms"] = round(matching["match_ms"] * sites, 3)
        result["matching"] = matching
        checkpoint(result)

    model, inputs = build_model(preset, device)
    torch._dynamo.reset()
    steps = timesteps_for(preset.steps)
    runs = []
    for name, (compile_backend, config) in settings.items():
        if runs and over(0.6):
            result["skipped"].append(name)  # out of time: keep what can still be timed
            continue
        isolated = compile_in_fresh_process(args, preset, name) if args.isolate_compile else None
        print(f"[{preset.name}] compile + warm-up: {name}", file=sys.stderr, flush=True)
        compiled = model if compile_backend is None else torch.compile(model, backend=compile_backend)
        setting = _Setting(name, config, compile_backend, compiled, isolated=isolated)
        setting.warm = _loop(setting, inputs, steps, device)
        runs.append(setting)
    # Round-robin timing: drift in the machine's load hits every setting alike.
    for repeat in range(preset.repeats):
        if repeat and over(0.85):
            break
        for setting in runs:
            print(f"[{preset.name}] repeat {repeat + 1}/{preset.repeats}: {setting.name}",
                  file=sys.stderr, flush=True)
            setting.loops.append(_loop(setting, inputs, steps, device))
        result["settings"] = [_summarise(s, device) for s in runs]
        result["shape"]["repeats"] = repeat + 1
        _speedups(result["settings"])
        checkpoint(result)
    return result


def compile_only(preset: ModelPreset, args: argparse.Namespace, name: str,
                 device: torch.device) -> dict[str, Any]:
    """One setting alone: compile + warm-up (the first generation), then a warm generation."""
    from torch._dynamo.utils import counters

    compile_backend, _ = _setting_backends(args, preset)[name]
    model, inputs = build_model(preset, device)
    compiled = model if compile_backend is None else torch.compile(model, backend=compile_backend)
    setting = _Setting(name, None, compile_backend, compiled)
    steps = timesteps_for(preset.steps)
    first = _loop(setting, inputs, steps, device)
    warm = _loop(setting, inputs, steps, device)
    return {"setting": name, "first_loop_s": round(sum(first), 2),
            "compile_s": round(sum(first) - sum(warm), 2),
            "graphs": counters["aot_autograd"]["total"]}


def compile_in_fresh_process(args: argparse.Namespace, preset: ModelPreset, name: str) -> dict[str, Any]:
    """:func:`compile_only` in a new Python process with an empty Inductor cache, so no
    setting reuses kernels another one compiled."""
    import subprocess

    with tempfile.TemporaryDirectory(prefix="asymrnr-compile-") as tmp:
        out = os.path.join(tmp, "compile.json")
        command = [sys.executable, "-m", "benchmarks.speed", "--preset", preset.name,
                   "--compile-only", name, "--out", out, "--steps", str(preset.steps),
                   "--kv-ratio", str(args.kv_ratio), "--q-ratio", str(args.q_ratio),
                   "--metric", args.metric, "--layers", str(preset.layers)]
        for flag, value in (("--schedule", args.schedule), ("--cache-interval", args.cache_interval_given),
                            ("--threads", args.threads), ("--device", args.device)):
            if value is not None:
                command += [flag, str(value)]
        print(f"[{preset.name}] compile + warm-up in a fresh process: {name}", file=sys.stderr, flush=True)
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        with open(out) as f:
            return json.load(f)


def demo_schedule(preset: ModelPreset, out_dir: str) -> str:
    """``demo``: the small model's demo schedule (``asymrnr demo``'s default) as a JSON path."""
    if preset.weights != "small":
        raise SystemExit("--schedule demo needs --preset small")
    from asymrnr_fx.small.demo import demo_config

    path = os.path.join(out_dir, "demo.json")
    demo_config(preset.layers, preset.steps).schedule_source.schedule.save(path)
    return path


def calibrated_schedule(spec: str, preset: ModelPreset, out_dir: str) -> str:
    """``calibrate:TARGET``: run ``asymrnr calibrate`` on the small model; the JSON path."""
    if preset.weights != "small":
        raise SystemExit("--schedule calibrate:TARGET needs --preset small (a trained model)")
    from asymrnr_fx.cli import main as cli_main

    target = spec.split(":", 1)[1]
    path = os.path.join(out_dir, f"calibrated-{target}.json")
    code = cli_main(["calibrate", "--model", "small", "--target", target, "--steps",
                     str(preset.steps), "--out", path])
    if code:
        raise SystemExit(f"calibration failed (exit {code})")
    return path


# ---- attention benchmark -------------------------------------------------------------------


def bench_attention(preset: AttentionPreset, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """SDPA with K/V cut by ``args.kv_ratio``: full, strided slice, gathered, + matching."""
    from asymrnr_fx import ops

    n_text, n_video = preset.text_tokens, preset.video_tokens
    shape = (preset.batch, preset.heads, n_text + n_video, preset.head_dim)
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = (
        torch.randn(shape, generator=gen, device=device).to(preset.dtype) for _ in range(3)
    )
    part = ops.partition(preset.grid, preset.stride, seed=0, device=device)
    num_keep = ops.kept_count(n_video, args.kv_ratio, part.dst_idx.numel())
    # Text before video (the CogVideoX / HunyuanVideo joint layout).
    video = slice(n_text, n_text + n_video)

    with torch.no_grad():
        keep, _ = ops.match(v[:, :, video], part, num_keep, args.metric)

        def gathered() -> torch.Tensor:
            rows = keep.unsqueeze(-1).expand(*keep.shape, preset.head_dim) + n_text
            k_cut = torch.cat([k[:, :, :n_text], k.gather(2, rows)], dim=2)
            v_cut = torch.cat([v[:, :, :n_text], v.gather(2, rows)], dim=2)
            return F.scaled_dot_product_attention(q, k_cut, v_cut)

        full = time_call(lambda: F.scaled_dot_product_attention(q, k, v), device, preset.repeats)
        free = time_call(
            lambda: F.scaled_dot_product_attention(
                q, k[:, :, : n_text + num_keep], v[:, :, : n_text + num_keep]
            ),
            device, preset.repeats,
        )
        cut = time_call(gathered, device, preset.repeats)
    matching = time_matching(
        (preset.batch, preset.heads, n_video, preset.head_dim), preset.grid, preset.stride,
        args.kv_ratio, args.metric, preset.dtype, device, repeats=preset.repeats,
    )
    amortised = cut + matching["match_ms"] / 1e3 / preset.cache_interval
    every = cut + matching["match_ms"] / 1e3
    rows = [
        {"setting": "full", "ms": _ms(full), "speedup": 1.0},
        {"setting": f"kv {args.kv_ratio} free (prefix slice)", "ms": _ms(free)},
        {"setting": f"kv {args.kv_ratio} gathered (cache hit)", "ms": _ms(cut)},
        {"setting": f"kv {args.kv_ratio} + matching / {preset.cache_interval}", "ms": _ms(amortised)},
        {"setting": f"kv {args.kv_ratio} + matching every call", "ms": _ms(every)},
    ]
    for row in rows[1:]:
        row["speedup"] = round(full * 1e3 / row["ms"], 3)
    return {
        "preset": preset.name, "kind": "attention",
        "shape": {
            "batch": preset.batch, "heads": preset.heads, "head_dim": preset.head_dim,
            "grid": list(preset.grid), "video_tokens": n_video, "text_tokens": n_text,
            "dtype": str(preset.dtype).removeprefix("torch."), "kv_keep": num_keep,
            "stride": list(preset.stride), "cache_interval": preset.cache_interval,
        },
        "rows": rows,
        "matching": matching,
    }


# ---- report --------------------------------------------------------------------------------


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict[str, Any]:
    """Versions and hardware, stored beside every result."""
    info = {
        "python": platform.python_version(), "torch": torch.__version__,
        "cpu": _cpu_name(), "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(), "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


def _num(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


def _x(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def format_tables(result: dict[str, Any], tablefmt: str = "simple") -> str:
    """Human-readable tables of a result (what ``main`` prints; ``tablefmt="github"`` is the
    docs' Markdown)."""
    from tabulate import tabulate

    lines = []
    if result["kind"] == "model":
        headers = ["setting", "forward ms", "refresh forward ms", "loop ms", "loop speedup",
                   "forward speedup", "vs", "of bound", "compile s", "first loop s",
                   "first loop vs base", "graphs", "peak GiB"]
        table = [
            [r["setting"], _num(r["forward_ms"]), _num(r["refresh_forward_ms"]), _num(r["loop_ms"]),
             _x(r.get("loop_speedup")), _x(r.get("forward_speedup")), r.get("baseline", ""),
             "" if r.get("fraction_of_bound") is None else f"{100 * r['fraction_of_bound']:.0f}%",
             _num(r["compile_s"]), _num(r.get("first_loop_s")), _x(r.get("first_loop_vs_baseline")),
             _num(r.get("graphs")), _num(r.get("peak_mem_gib", "n/a"))]
            for r in result["settings"]
        ]
        lines.append(tabulate(table, headers=headers, disable_numparse=True, tablefmt=tablefmt))
        if any(r.get("compile_isolated") for r in result["settings"]):
            lines.append("\ncompile s, first loop s (compile + warm-up) and graphs (Inductor compiles): "
                         "each setting alone in a fresh process with an empty Inductor cache")
        if result.get("skipped"):
            lines.append(f"not run (time budget): {', '.join(result['skipped'])}")
    else:
        table = [[r["setting"], _num(r["ms"]), _x(r["speedup"])] for r in result["rows"]]
        lines.append(tabulate(table, headers=["attention", "ms", "speedup"], disable_numparse=True, tablefmt=tablefmt))
    m = result.get("matching")
    if m:
        names = {
            "nearest_ms": "nearest_dst op, ms", "match_ms": "nearest_dst + selection, ms",
            "nearest_chunked_ms": "chunked fallback (no Triton), ms",
            "sites_per_refresh": "matchings per refresh step",
            "per_refresh_ms": "matching per refresh step, ms",
        }
        table = [[label, _num(m[key])] for key, label in names.items() if key in m]
        lines.append(f"\nmatching at one site: (B, H, N, D) = {tuple(m['shape'])}, "
                     f"{m['num_src']} src x {m['num_dst']} dst, keep {m['num_keep']}, "
                     f"{m['metric']}, {m['dtype']}\n")
        lines.append(tabulate(table, headers=["matching", "value"], disable_numparse=True, tablefmt=tablefmt))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="default: cogvideox-2b on CUDA, cpu-mid otherwise")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--kv-ratio", type=float, default=0.5)
    parser.add_argument("--q-ratio", type=float, default=0.0)
    parser.add_argument("--schedule", default=None,
                        help="a schedule preset name or JSON path; with --preset small also "
                        "'demo' (the demo's schedule) or calibrate:TARGET (run `asymrnr calibrate "
                        "--target TARGET` first)")
    parser.add_argument("--cache-interval", type=int, default=None,
                        help="default: the schedule's, else 5")
    parser.add_argument("--metric", choices=["l2", "cosine"], default="l2")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (model presets)")
    parser.add_argument("--repeats", type=int, default=None, help="timed generations / calls")
    parser.add_argument("--layers", type=int, default=None, help="override the preset's layers")
    parser.add_argument("--settings", default=None,
                        help="comma list of inductor,asymrnr,bound,match-every-step,eager,"
                        "asymrnr-eager (default: the preset's)")
    parser.add_argument("--isolate-compile", action="store_true",
                        help="measure each setting's compile + warm-up alone in a fresh process "
                        "with an empty Inductor cache (no setting reuses another's kernels)")
    parser.add_argument("--compile-only", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--reuse-compile-cache", action="store_true",
                        help="keep Inductor's on-disk cache (compile times then depend on "
                        "earlier runs); default: a fresh cache directory per run")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds: skip settings / repeats that would overrun (partial JSON is "
                        "written after every stage)")
    parser.add_argument("--out", default=None, help="JSON path (default speed_<preset>.json)")
    parser.add_argument("--readme", action="store_true",
                        help="also write the tables as the speed-<preset> section of docs/performance.md")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    args.cache_interval_given = args.cache_interval
    if args.cache_interval is None:
        args.cache_interval = 5
    if not args.reuse_compile_cache:
        # Compile times as a first run sees them. Graphs that repeat within this run (the
        # rewrite shared by asymrnr and match-every-step) still compile only once.
        cache = tempfile.mkdtemp(prefix="asymrnr-speed-cache-")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        os.environ["TRITON_CACHE_DIR"] = os.path.join(cache, "triton")
        atexit.register(shutil.rmtree, cache, ignore_errors=True)
    if args.threads:
        torch.set_num_threads(args.threads)  # before any compile: Inductor bakes it into code
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    preset = PRESETS[args.preset or ("cogvideox-2b" if device.type == "cuda" else "cpu-mid")]
    overrides = {k: getattr(args, k) for k in ("steps", "repeats", "layers") if getattr(args, k)}
    if overrides:
        import dataclasses

        valid = {f.name for f in dataclasses.fields(preset)}
        preset = dataclasses.replace(preset, **{k: v for k, v in overrides.items() if k in valid})
    out = args.out or f"speed_{preset.name}.json"
    if args.compile_only:
        with open(out, "w") as f:
            json.dump(compile_only(preset, args, args.compile_only, device), f)
        return {}
    calibration = None
    if args.schedule and args.schedule.startswith("calibrate:"):
        calibration = args.schedule
        args.schedule = calibrated_schedule(args.schedule, preset, tempfile.mkdtemp(prefix="asymrnr-schedule-"))
    elif args.schedule == "demo":
        calibration = "demo"
        args.schedule = demo_schedule(preset, tempfile.mkdtemp(prefix="asymrnr-schedule-"))
    machine = machine_info(device)

    def write(result: dict[str, Any]) -> None:
        result["machine"] = machine
        if device.type != "cuda":
            result["note"] = ("peak memory is reported on CUDA only (a CPU process high-water "
                              "mark does not isolate one setting)")
        with open(out, "w") as f:
            json.dump(result, f, indent=2)

    if isinstance(preset, ModelPreset):
        result = bench_model(preset, args, device, checkpoint=write)
        if calibration:
            with open(args.schedule) as f:
                result["calibration"] = {"spec": calibration, "schedule": json.load(f)}
    else:
        result = bench_attention(preset, args, device)
    write(result)
    print(f"{preset.name} on {result['machine'].get('gpu', result['machine']['cpu'])} "
          f"({result['machine']['cpu_count']} CPU cores), torch {torch.__version__}")
    print(format_tables(result))
    print(f"wrote {out}")
    if args.readme:
        from benchmarks.readme import write_section

        write_section(f"speed-{preset.name}", format_tables(result, "github"))
        print(f"wrote the speed-{preset.name} section of docs/performance.md")
    return result


if __name__ == "__main__":
    main()
