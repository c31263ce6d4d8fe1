"""What to expect at real sizes: each preset's saving, computed (not timed) on the real shapes.

    python -m benchmarks.real_sizes     # prints the table, writes results/real_sizes.json and the docs section

The saving a schedule makes is a matter of shapes, not weights. Each model is built from its
published configuration on the meta device (no weights, no download, no compute); torch's own
counter (:class:`torch.utils.flop_counter.FlopCounterMode`) counts

* the plain forward, and every attention call in it (found as ``scaled_dot_product_attention``
  calls; video self-attention is a call whose query and key cover the whole text + video
  sequence, the others are cross-attention or text-only);
* per preset, the reduced attention of every video self-attention site at every step of a full
  generation (the site's kept query and key/value lengths, counted as an SDPA call of those
  lengths), and the matching at refresh steps (the src x dst distance product, counted as the
  batched matrix product it is).

From these: attention's share of a forward, the share of a whole generation's FLOPs each preset
removes (matching paid back), and the bound it can reach, ``1 / (1 - saved share)``: the speedup
if time followed FLOPs. Stacked rows add a step cache that serves the blocks after the first
from cache on half the steps (those blocks' FLOPs counted as saved there, AsymRnR on the steps
that compute). Gathers, restores and cache bookkeeping are not counted: the GPU anchors show
gathers free inside a compiled graph. These are FLOP counts, not timings: docs/performance.md compares
them with the one measured anchor (H200, CogVideoX-2B size: K/V 0.5 in every layer, 1.48x
compiled).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from asymrnr_fx.schedules.schedule import Schedule

from .readme import ROOT, write_section

RESULTS = ROOT / "benchmarks" / "results" / "real_sizes.json"
SECTION = "real-sizes"
CACHED_STEP_SHARE = 0.5  # stacked rows: half the steps serve blocks 1.. from a step cache

__all__ = ["RealModel", "MODELS", "sdpa_flops", "matching_flops", "forward_counts", "preset_saving",
           "run_all", "render", "main"]


@dataclass(frozen=True)
class RealModel:
    """One published model at one resolution people use."""

    name: str
    cls: str  # the diffusers class
    config: dict[str, Any]  # the published config (keys that differ from the class defaults)
    resolution: str
    latent: tuple[int, int, int, int]  # (channels, frames, height, width) of the latent input
    text_tokens: int
    presets: tuple[str, ...]
    steps: int  # the step count its pipeline uses by default
    inputs: Callable[[RealModel], dict[str, Any]]

    def grid(self, config: Any) -> tuple[int, int, int]:
        """The video token grid under the model's patch sizes (``config``: its diffusers config)."""
        from asymrnr_fx.models import patch_sizes

        _, frames, height, width = self.latent
        pt, ph, pw = patch_sizes(config)
        return frames // pt, height // ph, width // pw


def _meta(*shape: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    return torch.empty(*shape, device="meta", dtype=dtype)


def _video(model: RealModel) -> torch.Tensor:
    channels, frames, height, width = model.latent
    return _meta(1, frames, channels, height, width)  # (B, F, C, H, W): CogVideoX's layout


def _cogvideox_inputs(model: RealModel) -> dict[str, Any]:
    return {"hidden_states": _video(model), "encoder_hidden_states": _meta(1, model.text_tokens, 4096),
            "timestep": _meta(1, dtype=torch.long), "return_dict": False}


def _channels_first(model: RealModel) -> torch.Tensor:
    channels, frames, height, width = model.latent
    return _meta(1, channels, frames, height, width)


def _hunyuan_inputs(model: RealModel) -> dict[str, Any]:
    return {"hidden_states": _channels_first(model), "timestep": _meta(1, dtype=torch.long),
            "encoder_hidden_states": _meta(1, model.text_tokens, 4096),
            "encoder_attention_mask": _meta(1, model.text_tokens, dtype=torch.bool),
            "pooled_projections": _meta(1, 768), "guidance": _meta(1), "return_dict": False}


def _mochi_inputs(model: RealModel) -> dict[str, Any]:
    return {"hidden_states": _channels_first(model), "encoder_hidden_states": _meta(1, model.text_tokens, 4096),
            "timestep": _meta(1, dtype=torch.long),
            "encoder_attention_mask": _meta(1, model.text_tokens, dtype=torch.bool), "return_dict": False}


def _wan_inputs(model: RealModel) -> dict[str, Any]:
    return {"hidden_states": _channels_first(model), "timestep": _meta(1, dtype=torch.long),
            "encoder_hidden_states": _meta(1, model.text_tokens, 4096), "return_dict": False}


def _ltx_inputs(model: RealModel) -> dict[str, Any]:
    channels, frames, height, width = model.latent
    return {"hidden_states": _meta(1, frames * height * width, channels),
            "encoder_hidden_states": _meta(1, model.text_tokens, 4096), "timestep": _meta(1, dtype=torch.long),
            "encoder_attention_mask": _meta(1, model.text_tokens, dtype=torch.bool),
            "num_frames": frames, "height": height, "width": width, "return_dict": False}


# Published configurations (Hugging Face model cards / transformer/config.json); the keys not
# given are the class defaults, which are those of the first model of each class.
MODELS: tuple[RealModel, ...] = (
    RealModel("CogVideoX-2B", "CogVideoXTransformer3DModel", {}, "49 frames 480x720",
              (16, 13, 60, 90), 226, ("cogvideox-2b", "cogvideox-2b-fast"), 50, _cogvideox_inputs),
    RealModel("CogVideoX-5B", "CogVideoXTransformer3DModel",
              {"num_attention_heads": 48, "num_layers": 42, "use_rotary_positional_embeddings": True},
              "49 frames 480x720", (16, 13, 60, 90), 226, ("cogvideox-5b", "cogvideox-5b-fast"), 50,
              _cogvideox_inputs),
    RealModel("HunyuanVideo", "HunyuanVideoTransformer3DModel", {}, "129 frames 720x1280",
              (16, 33, 90, 160), 256, ("hunyuanvideo", "hunyuanvideo-fast"), 50, _hunyuan_inputs),
    RealModel("Mochi 1", "MochiTransformer3DModel", {}, "163 frames 480x848",
              (12, 28, 60, 106), 256, ("mochi", "mochi-fast"), 64, _mochi_inputs),
    RealModel("Wan2.1-T2V-1.3B", "WanTransformer3DModel",
              {"num_attention_heads": 12, "num_layers": 30, "ffn_dim": 8960}, "81 frames 480x832",
              (16, 21, 60, 104), 512, ("wan2.1",), 50, _wan_inputs),
    RealModel("Wan2.1-T2V-14B", "WanTransformer3DModel",
              {"num_attention_heads": 40, "num_layers": 40, "ffn_dim": 13824}, "81 frames 720x1280",
              (16, 21, 90, 160), 512, ("wan2.1",), 50, _wan_inputs),
    RealModel("LTX-Video", "LTXVideoTransformer3DModel", {}, "161 frames 512x768",
              (128, 21, 16, 24), 128, ("ltx-video",), 50, _ltx_inputs),
)


class _AttentionCalls(TorchFunctionMode):
    """Records the (q, k, v) shapes of every SDPA call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q, k, v = (args + tuple(kwargs.get(n) for n in ("query", "key", "value")))[:3]
            self.calls.append((tuple(q.shape), tuple(k.shape), tuple(v.shape)))
        return func(*args, **kwargs)


@cache
def sdpa_flops(batch: int, heads: int, q_len: int, kv_len: int, head_dim: int) -> int:
    """FLOPs of one SDPA call of these sizes, as torch's counter counts them."""
    with FlopCounterMode(display=False) as counter:
        F.scaled_dot_product_attention(_meta(batch, heads, q_len, head_dim), _meta(batch, heads, kv_len, head_dim),
                                       _meta(batch, heads, kv_len, head_dim))
    return counter.get_total_flops()


@cache
def matching_flops(batch: int, heads: int, num_src: int, num_dst: int, head_dim: int) -> int:
    """FLOPs of one matching: the src x dst distance product per batch item and head."""
    with FlopCounterMode(display=False) as counter:
        torch.bmm(_meta(batch * heads, num_src, head_dim), _meta(batch * heads, head_dim, num_dst))
    return counter.get_total_flops()


@dataclass(frozen=True)
class ForwardCounts:
    """FLOPs of one forward at batch 1, and its attention calls."""

    forward: int
    attention: int  # every SDPA call
    self_attention: list[tuple[int, int, int]]  # (heads, sequence, head dim) per video self-attention site
    grid: tuple[int, int, int]  # video tokens (T, H, W)
    blocks: int  # the forward's FLOPs inside its transformer blocks
    first_block: int


@contextlib.contextmanager
def _autocast_on_meta() -> Iterator[None]:
    """``torch.autocast("meta", ...)`` as a no-op (Mochi's rotary embedding opens one on the
    input's device; autocast knows no meta device, and counting needs no casts)."""
    original = torch.autocast

    def autocast(device_type: str, *args: Any, **kwargs: Any) -> Any:
        return contextlib.nullcontext() if device_type == "meta" else original(device_type, *args, **kwargs)

    torch.autocast = autocast  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.autocast = original  # type: ignore[misc]


def forward_counts(model: RealModel) -> ForwardCounts:
    import diffusers

    import asymrnr_fx

    cls = getattr(diffusers, model.cls)
    with torch.device("meta"):
        module = cls(**model.config).to(torch.bfloat16).eval()
    asymrnr_fx.prepare(module)  # the graph-friendly processors AsymRnR runs (Mochi's joint attention)
    calls = _AttentionCalls()
    with torch.no_grad(), _autocast_on_meta(), FlopCounterMode(display=False) as counter, calls:
        module(**model.inputs(model))
    grid = model.grid(module.config)
    video = math.prod(grid)
    self_sites, attention = [], 0
    for q, k, _ in calls.calls:
        attention += sdpa_flops(q[0], q[1], q[2], k[2], q[3])
        if q[2] == k[2] and q[2] >= video:
            self_sites.append((q[1], q[2], q[3]))
    per_module = counter.get_flop_counts()
    block_lists = [name for name, child in module.named_children() if isinstance(child, torch.nn.ModuleList)]
    blocks = first = 0
    for name in block_lists:
        for index in range(len(getattr(module, name))):
            flops = sum(per_module.get(f"{cls.__name__}.{name}.{index}", {}).values())
            blocks += flops
            first = first or flops
    return ForwardCounts(counter.get_total_flops(), attention, self_sites, grid, blocks, first)


def preset_saving(model: RealModel, counts: ForwardCounts, preset: str | Schedule | None, *,
                  kv_ratio: float | None = None, cached_steps: float = 0.0) -> dict[str, Any]:
    """The share of a whole generation's FLOPs a preset, a schedule written for the model (its
    stride and cache interval in ``meta``) or a uniform K/V ratio removes, matching paid back;
    ``cached_steps`` of the steps serve blocks 1.. from a step cache."""
    from asymrnr_fx.ops import dst_count, kept_count
    from asymrnr_fx.schedules.presets import PRESETS, get_preset

    sites, steps = len(counts.self_attention), model.steps
    if isinstance(preset, Schedule):
        if preset.num_layers != sites:
            raise ValueError(f"{preset.name} has {preset.num_layers} layers; {model.name} runs {sites} sites")
        stride, interval = tuple(preset.meta["stride"]), preset.meta["cache_interval"]
        ratios = [preset.ratios_at(step, steps) for step in range(steps)]
    elif preset is not None:
        schedule = get_preset(preset, sites, steps)
        stride, interval = PRESETS[preset].stride, PRESETS[preset].cache_interval
        ratios = [schedule.ratios_at(step, steps) for step in range(steps)]
    else:
        stride, interval = (2, 2, 2), 5
        ratios = [[(0.0, kv_ratio or 0.0)] * sites for _ in range(steps)]
    video = math.prod(counts.grid)
    text = counts.self_attention[0][1] - video
    num_dst = dst_count(counts.grid, stride)
    saved = matching = 0
    matched: set[tuple[int, str, int]] = set()
    computed_steps = steps * (1.0 - cached_steps)
    for step, per_site in enumerate(ratios):
        for site, ((heads, length, dim), (q, kv)) in enumerate(zip(counts.self_attention, per_site, strict=True)):
            if not q and not kv:
                continue
            q_len = text + (kept_count(video, q, num_dst) if q else video)
            kv_len = text + (kept_count(video, kv, num_dst) if kv else video)
            saved += sdpa_flops(1, heads, length, length, dim) - sdpa_flops(1, heads, q_len, kv_len, dim)
            for component, ratio in (("q", q), ("kv", kv)):
                if ratio and (site, component, step // interval) not in matched:
                    matched.add((site, component, step // interval))
                    matching += matching_flops(1, heads, video - num_dst, num_dst, dim)
    share_on_computed = (saved - matching) / (steps * counts.forward)
    cache_saving = cached_steps * (counts.blocks - counts.first_block) / counts.forward
    saved_share = cache_saving + (computed_steps / steps) * share_on_computed
    return {"saved_share": saved_share, "bound": 1.0 / (1.0 - saved_share),
            "matching_share": matching / (steps * counts.forward)}


def _kind(preset: str) -> str:
    from asymrnr_fx.schedules.presets import PRESETS

    p = PRESETS[preset]
    return f"authors' {p.variant}" if p.kind == "authors" else "our prior"


def run_all(names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    rows = []
    for model in MODELS:
        if names and model.name not in names:
            continue
        counts = forward_counts(model)
        base = {"model": model.name, "resolution": model.resolution, "tokens": counts.self_attention[0][1],
                "video_tokens": math.prod(counts.grid), "sites": len(counts.self_attention), "steps": model.steps,
                "forward_tflops": counts.forward / 1e12, "attention_share": counts.attention / counts.forward}
        settings: list[tuple[str, str | Schedule | None, float | None, float]] = [
            (f"preset {p} ({_kind(p)})", p, None, 0.0) for p in model.presets]
        first = model.presets[0]
        settings += [(f"preset {first} ({_kind(first)}) + step cache", first, None, CACHED_STEP_SHARE)]
        settings += [("K/V 0.5 everywhere", None, 0.5, 0.0)]
        for label, preset, kv, cached in settings:
            rows.append({**base, "setting": label, **preset_saving(model, counts, preset, kv_ratio=kv,
                                                                     cached_steps=cached)})
        print(f"{model.name}: {counts.forward / 1e12:.1f} TFLOPs per forward", file=sys.stderr)
    return rows


def render(rows: Sequence[dict[str, Any]]) -> str:
    """The docs table (Markdown) from the saved rows."""
    from tabulate import tabulate

    table = [[r["model"], r["resolution"], f"{r['tokens']:,}", r["sites"], r["steps"],
              f"{r['forward_tflops']:.0f}", f"{100 * r['attention_share']:.0f}%", r["setting"],
              f"{100 * r['saved_share']:.1f}%", f"{100 * r['matching_share']:.2f}%", f"{r['bound']:.2f}x"]
             for r in rows]
    headers = ["model", "resolution", "tokens", "sites", "steps", "TFLOPs / forward", "attention share",
               "setting", "generation FLOPs saved", "of which matching costs", "bound (computed)"]
    return tabulate(table, headers=headers, tablefmt="github")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", help="model names (nothing is written)")
    args = parser.parse_args(argv)
    rows = run_all(args.only)
    table = render(rows)
    print(table)
    if args.only is None:
        RESULTS.write_text(json.dumps({"rows": rows, "cached_step_share": CACHED_STEP_SHARE}, indent=1) + "\n")
        write_section(SECTION, table)
        print(f"wrote {RESULTS.relative_to(ROOT)} and the table in docs/performance.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
