"""The composition matrix: AsymRnR stacked with the optimizations people already use.

Each combination runs a tiny random-weight ``WanTransformer3DModel`` through a pipeline-shaped
6-step denoising loop twice, from the same start: once with ``asymrnr_fx.apply`` (the rewrite,
compiled), once eagerly with the independent reference of AsymRnR (``reference_mode``) in
place of the rewrite, everything else (the cache hook, the adapter, the quantized weights)
identical. A row says whether it ran, how many attention sites were rewritten, how far the
two outputs are apart, how many graphs Dynamo compiled (against the same combination under a
plain backend), and whether the steps were counted right.

    python -m tests.compose_matrix    # prints the table, writes its JSON and the table in docs/composition.md

``tests/test_compose.py`` asserts every row; ``tests/test_readme_tables.py`` checks that the
docs' composition table is what the checked-in JSON renders.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch

from benchmarks.readme import RESULTS, write_section

from .reference_mode import ReferenceAsymRnR

SECTION = "composition"

STEPS = 6
KV_RATIO, CACHE_INTERVAL = 0.5, 3


@dataclass
class Combination:
    """One row: how to set the model up, and what is expected of it."""

    name: str
    setup: Callable[[torch.nn.Module, dict], None] = lambda model, clock: None
    apply_kwargs: dict[str, Any] = field(default_factory=dict)
    expect_rewritten: bool = True  # False: AsymRnR cannot reach the attention (it must warn)
    needs: str | None = None  # an optional package the combination needs
    note: str = ""


def _cache(config_factory: Callable[[dict], Any]) -> Callable[[torch.nn.Module, dict], None]:
    def setup(model: torch.nn.Module, clock: dict) -> None:
        model.enable_cache(config_factory(clock))
    return setup


def _lora(fused: bool) -> Callable[[torch.nn.Module, dict], None]:
    def setup(model: torch.nn.Module, clock: dict) -> None:
        from peft import LoraConfig

        torch.manual_seed(3)
        model.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v"],
                                     init_lora_weights=False))
        if fused:
            model.fuse_lora()
    return setup


def _int8(model: torch.nn.Module, clock: dict) -> None:
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    quantize_(model, Int8WeightOnlyConfig())


def combinations() -> list[Combination]:
    from diffusers.hooks import (
        FasterCacheConfig,
        FirstBlockCacheConfig,
        MagCacheConfig,
        PyramidAttentionBroadcastConfig,
        TaylorSeerCacheConfig,
    )

    def now(clock: dict) -> Callable[[], float]:
        return lambda: clock["t"]

    return [
        Combination("AsymRnR alone (whole model)"),
        Combination("regional compilation (`apply(pipe, regional=True)`)", apply_kwargs={"regional": True}),
        Combination("Inductor behind the rewrite", apply_kwargs={"inner": "inductor"}),
        Combination("FirstBlockCache (threshold 0.2)",
                    _cache(lambda c: FirstBlockCacheConfig(threshold=0.2)),
                    note="skipped blocks skip their sites; the next refresh re-matches them"),
        Combination("TaylorSeer (interval 3, whole blocks)",
                    # Its default patterns match no module of Wan (attn1/attn2): name the blocks.
                    _cache(lambda c: TaylorSeerCacheConfig(cache_interval=3, disable_cache_before_step=2,
                                                           cache_identifiers=[r"blocks\.\d+"]))),
        Combination("PyramidAttentionBroadcast (spatial, skip 2)",
                    _cache(lambda c: PyramidAttentionBroadcastConfig(
                        spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(0, 1000),
                        current_timestep_callback=now(c))),
                    note="a broadcast step skips every self-attention of the forward"),
        Combination("FasterCache (spatial, skip 2)",
                    _cache(lambda c: FasterCacheConfig(
                        spatial_attention_block_skip_range=2, current_timestep_callback=now(c),
                        attention_weight_callback=lambda _: 0.5, is_guidance_distilled=True,
                        tensor_format="BCFHW"))),
        Combination("MagCache (calibration pass)",
                    _cache(lambda c: MagCacheConfig(calibrate=True, num_inference_steps=STEPS)),
                    note="diffusers fences MagCache's hooks with torch.compiler.disable; apply compiles "
                         "the blocks under them"),
        Combination("LoRA adapter (peft, unfused)", _lora(False), needs="peft"),
        Combination("LoRA adapter (peft, fused)", _lora(True), needs="peft"),
        Combination("torchao int8 weight-only", _int8, needs="torchao",
                    note="CPU-capable; GPU int8 kernels untested here"),
    ]


def _loop(pipe: SimpleNamespace, inputs: dict, clock: dict,
          before_forward: Callable[[int], None] = lambda step: None) -> tuple[torch.Tensor, list[int]]:
    from asymrnr_fx import states_of

    pipe.scheduler.set_timesteps(STEPS)
    latents, told = inputs["hidden_states"], []
    with torch.no_grad():
        for i, t in enumerate(pipe.scheduler.timesteps):
            clock["t"] = float(t)
            before_forward(i)
            with pipe.transformer.cache_context("cond"):
                out = pipe.transformer(**{**inputs, "hidden_states": latents, "timestep": t.expand(1)})[0]
            if hasattr(pipe.transformer, "_asymrnr_applied"):
                told.append(states_of(pipe)[0].step)
            latents = pipe.scheduler.step(out, t, latents).prev_sample
    return latents, told


def _fresh(combination: Combination) -> tuple[SimpleNamespace, Any, dict]:
    from diffusers import FlowMatchEulerDiscreteScheduler

    from asymrnr_fx.tiny_models import build_tiny

    tiny = build_tiny("wan", batch=1)
    clock = {"t": 1000.0}
    combination.setup(tiny.model, clock)
    return SimpleNamespace(transformer=tiny.model, scheduler=FlowMatchEulerDiscreteScheduler()), tiny, clock


def _fresh_dynamo() -> None:
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()


def _graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def run(combination: Combination) -> dict[str, Any]:
    """Run one combination both ways; the row of the matrix."""
    import importlib.util

    import asymrnr_fx

    row: dict[str, Any] = {"combination": combination.name, "note": combination.note}
    if combination.needs and importlib.util.find_spec(combination.needs) is None:
        return {**row, "runs": False, "skipped": f"{combination.needs} is not installed"}
    kwargs = {"kv_ratio": KV_RATIO, "cache_interval": CACHE_INTERVAL, "inner": "eager",
              **combination.apply_kwargs}

    # The same combination under a plain backend: how many graphs it compiles by itself.
    _fresh_dynamo()
    pipe, tiny, clock = _fresh(combination)
    pipe.transformer = torch.compile(pipe.transformer, backend="eager", dynamic=False)
    _loop(pipe, tiny.inputs, clock)
    plain_graphs = _graphs()

    _fresh_dynamo()
    pipe, tiny, clock = _fresh(combination)
    warnings: list[str] = []
    handler = _Collect(warnings)
    logging.getLogger("asymrnr_fx").addHandler(handler)
    try:
        asymrnr_fx.apply(pipe, **kwargs)
        out, told = _loop(pipe, tiny.inputs, clock)
        (state,) = asymrnr_fx.states_of(pipe)
        graphs = _graphs()
    finally:
        logging.getLogger("asymrnr_fx").removeHandler(handler)

    # Where AsymRnR cannot reach the attention, the reference is the combination without it.
    pipe, tiny, clock = _fresh(combination)
    ratio = KV_RATIO if combination.expect_rewritten else 0.0
    mode = ReferenceAsymRnR(grid=tiny.grid, text_tokens=0, text_side=None, ratios=lambda s, i: (0.0, ratio),
                            cache_interval=CACHE_INTERVAL)
    with mode:
        expected, _ = _loop(pipe, tiny.inputs, clock, before_forward=lambda step: mode.begin_forward(step, "cond"))
    error = float((out - expected).norm() / expected.norm())
    return {**row, "runs": bool(torch.isfinite(out).all()), "sites_rewritten": state.sites_rewritable,
            "reference_calls": mode.calls, "relative_error_vs_reference": error,
            "graphs": graphs, "graphs_plain_backend": plain_graphs, "steps_told": told,
            "steps_right": told == list(range(STEPS)), "warnings": warnings,
            "expect_rewritten": combination.expect_rewritten}


class _Collect(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record.getMessage())


def markdown(rows: list[dict[str, Any]]) -> str:
    """The docs table (docs/composition.md)."""
    lines = ["| combination | runs | sites rewritten | vs reference (rel. error) | graphs (plain backend) | steps right | note |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['combination']} | not run: {r['skipped']} | | | | | |")
            continue
        warned = " (warns)" if r["warnings"] and not r["sites_rewritten"] else ""
        lines.append(f"| {r['combination']} | {'yes' if r['runs'] else 'no'} | {r['sites_rewritten']}{warned} | "
                     f"{r['relative_error_vs_reference']:.1e} | {r['graphs']} ({r['graphs_plain_backend']}) | "
                     f"{'yes' if r['steps_right'] else 'no'} | {r['note']} |")
    return "\n".join(lines)


def main() -> int:
    rows = [run(c) for c in combinations()]
    table = markdown(rows)
    print(table)
    out = RESULTS / "compose_matrix.json"
    out.write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=2) + "\n")
    write_section(SECTION, table)
    print(f"wrote {out} and the {SECTION} table in docs/composition.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
