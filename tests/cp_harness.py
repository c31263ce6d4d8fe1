"""Two CPU processes over gloo running diffusers' context parallelism, for the tests.

One spawn runs every case (process start-up and imports dominate): rank 0 first computes the
single-process AsymRnR reference of each tiny model, then both ranks run the same model under
``ContextParallelConfig``; rank 0 saves what the tests compare.

diffusers' context parallelism assumes an accelerator. The stand-ins below make it run on CPU
and live here only, never in the package.

    python -m tests.cp_harness    # the equivalence table in docs/multi-gpu.md, and its JSON
"""

from __future__ import annotations

import os
import time
import traceback
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

# Per model: AsymRnR settings beyond the ratios. CogVideoX is told its text side (the pass must
# then still lay the interleaved gathered sequence out right); HunyuanVideo infers it.
CASES: dict[str, dict[str, Any]] = {
    "wan": {},
    "ltxvideo": {},
    "cogvideox": {"text_side": "before"},
    "hunyuanvideo": {},
}
# diffusers 0.42's LTX attention expands the text mask to every head before the Ulysses exchange,
# so under context parallelism it no longer matches the H/W local heads (a diffusers bug, with or
# without AsymRnR): LTX runs here without a text mask.
WITHOUT = {"ltxvideo": ("encoder_attention_mask",)}
INDUCTOR_CASE = "cogvideox"  # the interleaved (text + video) layout, through Inductor
SETTINGS = {"kv_ratio": 0.5, "q_ratio": 0.3}
TIMESTEPS = (900, 700)  # two steps: a refresh, then cached indices


def cpu_stand_ins() -> None:
    """What diffusers' context parallelism needs on a machine without an accelerator."""
    import diffusers.hooks.context_parallel as cp_hooks
    import diffusers.models.attention_dispatch as dispatch

    # enable_parallelism picks a device with `rank % torch.accelerator.device_count()`: 0 on CPU.
    torch.accelerator.device_count = lambda: 1
    # The split hook warns through `logger.warning_once`, which a logging.Logger does not have;
    # Dynamo is told to leave the call out of the graph (it would break the graph otherwise).
    cp_hooks.logger.warning_once = cp_hooks.logger.warning
    torch._dynamo.config.ignore_logging_functions.add(cp_hooks.logger.warning_once)
    # Ring attention needs a kernel that returns the log-sum-exp; diffusers' only such native
    # kernel (aten._scaled_dot_product_flash_attention) is GPU-only. Its CPU twin stands in.
    dispatch._native_flash_attention_forward_op = _cpu_flash_forward_op


def _cpu_flash_forward_op(ctx: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attn_mask: Any = None, dropout_p: float = 0.0, is_causal: bool = False,
                          scale: float | None = None, enable_gqa: bool = False, return_lse: bool = False,
                          _save_ctx: bool = True, _parallel_config: Any = None) -> Any:
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), dropout_p, is_causal, scale=scale)
    out, lse = out.transpose(1, 2), lse.transpose(1, 2)
    return (out, lse) if return_lse else out


def _forwards(model: torch.nn.Module, inputs: dict[str, Any]) -> list[torch.Tensor]:
    outputs = []
    with torch.no_grad():
        for t in TIMESTEPS:
            step = dict(inputs, timestep=torch.full_like(inputs["timestep"], t))
            outputs.append(model(**step)[0])
    return outputs


def _adjust_inputs(name: str, inputs: dict[str, Any]) -> None:
    for key in WITHOUT.get(name, ()):
        inputs[key] = None
    if name == "hunyuanvideo":
        # Prompts padded over more than one process's share of the text (2 and 5 of 6 tokens
        # valid): the key mask must follow the tokens to their process.
        mask = inputs["encoder_attention_mask"]
        mask[:] = True
        mask[0, 2:] = False
        mask[1, 5:] = False


def _asymrnr_run(name: str, parallel: Any, inner: str) -> dict[str, Any]:
    """Tiny ``name`` under ``asymrnr_fx.apply`` (with ``parallel``, or one process)."""
    import asymrnr_fx
    from asymrnr_fx.tiny_models import build_tiny

    torch._dynamo.reset()
    tiny = build_tiny(name, batch=2)
    _adjust_inputs(name, tiny.inputs)
    plain = _forwards(tiny.model, tiny.inputs) if parallel is None else None
    asymrnr_fx.apply(tiny.model, inner=inner, parallel=parallel, **SETTINGS, **CASES[name])
    outputs = _forwards(tiny.model, tiny.inputs)
    (state,) = asymrnr_fx.states_of(tiny.model)
    return {"outputs": outputs, "plain": plain, "rewritten": state.sites_rewritable, "left_alone": list(state.sites_left_alone),
            "refreshes": state.stats["cache_refreshes"], "hits": state.stats["cache_hits"]}


def _compile_run(parallel: Any) -> dict[str, Any]:
    """The issue's recipe: tiny Wan under plain ``torch.compile(backend=asymrnr_fx.backend(...))``
    (no ``apply``: the grid must come from the graph's own patch embedding)."""
    import asymrnr_fx
    from asymrnr_fx.tiny_models import build_tiny

    torch._dynamo.reset()
    tiny = build_tiny("wan", batch=2)
    if parallel is not None:
        asymrnr_fx.enable_context_parallel(tiny.model, parallel)
    backend = asymrnr_fx.backend(**SETTINGS, inner="eager")
    outputs = _forwards(torch.compile(tiny.model, backend=backend, dynamic=False), tiny.inputs)
    return {"outputs": outputs, "rewritten": backend.state.sites_rewritable,
            "left_alone": list(backend.state.sites_left_alone)}


def _shard_case() -> dict[str, Any]:
    """CogVideoX split by the shipped plan but left with diffusers' own attention processor:
    each process then attends over its shard only, and no site may be taken for the video."""
    from diffusers import ContextParallelConfig

    import asymrnr_fx
    from asymrnr_fx.cp_plans import SHIPPED_PLANS
    from asymrnr_fx.tiny_models import build_tiny

    torch._dynamo.reset()
    tiny = build_tiny("cogvideox", batch=2)
    tiny.model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=2),
                                  cp_plan=SHIPPED_PLANS["cogvideox"].plan())
    asymrnr_fx.apply(tiny.model, inner="eager", **SETTINGS)
    _forwards(tiny.model, tiny.inputs)
    (state,) = asymrnr_fx.states_of(tiny.model)
    return {"rewritten": state.sites_rewritable, "left_alone": list(state.sites_left_alone)}


def _ring_case(rank: int) -> dict[str, Any]:
    """Plain ring attention on CPU (checked against one process), then AsymRnR on it."""
    from diffusers import ContextParallelConfig

    import asymrnr_fx
    from asymrnr_fx.tiny_models import build_tiny

    torch._dynamo.reset()
    single = build_tiny("wan", batch=2)
    reference = _forwards(single.model, single.inputs)[0]
    tiny = build_tiny("wan", batch=2)
    tiny.model.set_attention_backend("_native_flash")
    tiny.model.enable_parallelism(config=ContextParallelConfig(ring_degree=2))
    plain = _forwards(tiny.model, tiny.inputs)[0]
    compiled = torch.compile(tiny.model, backend=asymrnr_fx.backend(**SETTINGS, inner="eager"), dynamic=False)
    try:
        _forwards(compiled, tiny.inputs)
        refusal = None
    except Exception as error:  # the refusal, wrapped by Dynamo
        refusal = f"{type(error).__name__}: {error}"
    return {"reference": reference, "plain": plain, "refusal": refusal}


def worker(rank: int, world: int, port: int, out: str, cases: tuple[str, ...] = tuple(CASES),
           extra: bool = True) -> None:
    """One process: the ``cases`` (with ``extra``: the Inductor and ring cases too); rank 0
    saves the results to ``out``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    cpu_stand_ins()
    from diffusers import ContextParallelConfig

    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=300))
    results: dict[str, Any] = {"seconds": {}}

    def run(key: str, case: Any, *args: Any) -> None:
        start = time.perf_counter()
        results[key] = case(*args)
        results["seconds"][key] = time.perf_counter() - start

    try:
        for name in cases:
            if rank == 0:
                run(f"{name}/single", _asymrnr_run, name, None, "eager")
            run(f"{name}/ulysses", _asymrnr_run, name, ContextParallelConfig(ulysses_degree=world), "eager")
        if not extra:
            return
        if rank == 0:  # (Inductor is compared with the eager single-process run: one compile less)
            run("compile/single", _compile_run, None)
        run("inductor/ulysses", _asymrnr_run, INDUCTOR_CASE, ContextParallelConfig(ulysses_degree=world), "inductor")
        run("compile/ulysses", _compile_run, ContextParallelConfig(ulysses_degree=world))
        run("shard", _shard_case)
        run("ring", _ring_case, rank)
    except Exception:
        results["error"] = traceback.format_exc()
        raise
    finally:
        if rank == 0:
            torch.save(results, out)
        dist.destroy_process_group()


# (label, plan, single-process key, two-process key, show AsymRnR's own effect) of the docs table.
ROWS = (
    ("`WanTransformer3DModel`", "diffusers'", "wan/single", "wan/ulysses", True),
    ("`LTXVideoTransformer3DModel` (no text mask)", "diffusers'", "ltxvideo/single", "ltxvideo/ulysses", True),
    ("`CogVideoXTransformer3DModel`", "shipped", "cogvideox/single", "cogvideox/ulysses", True),
    ("`HunyuanVideoTransformer3DModel` (prompts padded past one process's text share)", "shipped",
     "hunyuanvideo/single", "hunyuanvideo/ulysses", True),
    ("CogVideoX, rewritten graph through Inductor (vs eager, 1 process)", "shipped",
     f"{INDUCTOR_CASE}/single", "inductor/ulysses", False),
    ("Wan, plain `torch.compile(backend=asymrnr_fx.backend(...))`", "diffusers'", "compile/single",
     "compile/ulysses", False),
)


def _relative(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).norm() / ref.norm())


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """What the docs show of one harness run (JSON-able)."""
    rows = []
    for label, plan, single_key, ulysses_key, show_effect in ROWS:
        single, ulysses = results[single_key], results[ulysses_key]
        effect = (max(_relative(a, b) for a, b in zip(single["outputs"], single["plain"], strict=True))
                  if show_effect else None)
        rows.append({"model": label, "plan": plan, "rewritten": [single["rewritten"], ulysses["rewritten"]],
                     "vs_one_process": max(_relative(a, b) for a, b in
                                           zip(ulysses["outputs"], single["outputs"], strict=True)),
                     "asymrnr_effect": effect})
    ring = results["ring"]
    return {"settings": SETTINGS, "timesteps": list(TIMESTEPS), "rows": rows,
            "ring_vs_one_process": _relative(ring["plain"], ring["reference"]),
            "ring_refused": ring["refusal"] is not None}


def markdown(document: dict[str, Any]) -> str:
    """The equivalence table of docs/multi-gpu.md (largest relative difference over the steps)."""
    def number(value: float | None) -> str:
        return "" if value is None else ("0.0" if value == 0 else f"{value:.1e}")

    lines = ["| model | plan | sites rewritten (1 / 2 processes) | 2 processes vs 1 | AsymRnR vs unreduced |",
             "|---|---|---|---|---|"]
    for r in document["rows"]:
        lines.append(f"| {r['model']} | {r['plan']} | {r['rewritten'][0]} / {r['rewritten'][1]} | "
                     f"{number(r['vs_one_process'])} | {number(r['asymrnr_effect'])} |")
    return "\n".join(lines)


def main() -> int:
    import json
    import socket
    import tempfile

    from benchmarks.readme import RESULTS, write_section

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = os.path.join(tempfile.mkdtemp(prefix="asymrnr-cp-"), "results.pt")
    torch.multiprocessing.start_processes(worker, args=(2, port, out), nprocs=2, start_method="spawn")
    document = summary(torch.load(out))
    (RESULTS / "context_parallel.json").write_text(json.dumps(document, indent=2) + "\n")
    write_section("context-parallel", markdown(document))
    print(markdown(document))
    print(f"ring: {document['ring_vs_one_process']:.1e} against one process; refused: {document['ring_refused']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
