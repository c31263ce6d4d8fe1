"""``apply(pipe)`` end to end on a tiny pipeline: one row of the pipeline table.

Generates once without AsymRnR, once after ``asymrnr_fx.apply(pipe)`` and once after
``asymrnr_fx.remove(pipe)`` (same seed), and records, for every transformer of the pipeline
(Wan 2.2's two experts included), the attention calls rewritten per forward, the steps the
scheduler told, the refresh steps of the matching cache, and whether the output changed under
AsymRnR and came back exactly after ``remove``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

import asymrnr_fx

from .model_checks import output_tensors
from .tiny_pipelines import build_pipeline

__all__ = ["PipelineRow", "PIPELINE_CONFIG", "check_pipeline"]

PIPELINE_CONFIG = asymrnr_fx.AsymRnRConfig(kv_ratio=0.5, q_ratio=0.3, cache_interval=2)


@dataclass
class PipelineRow:
    """What ``apply(pipe)`` did on one tiny pipeline."""

    name: str
    pipeline: str
    transformers: list[str] = field(default_factory=list)  # "transformer", "transformer_2"
    rewritten: list[int] = field(default_factory=list)  # attention calls rewritten per forward, each
    forwards: list[int] = field(default_factory=list)
    num_steps: list[int | None] = field(default_factory=list)  # as the scheduler told each state
    told: list[bool] = field(default_factory=list)
    refresh_steps: list[list[int]] = field(default_factory=list)
    changed: bool = False  # the output moved under AsymRnR
    restored: bool = False  # remove() gave back the unreduced output exactly
    finite: bool = False
    result: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _generate(pipe: Any, call: dict[str, Any]) -> list[torch.Tensor]:
    with torch.no_grad():
        return output_tensors(pipe(**call, generator=torch.Generator().manual_seed(0)).frames)


def _summary(row: PipelineRow) -> str:
    parts = [f"{name}: {count} rewritten/forward" for name, count in zip(row.transformers, row.rewritten, strict=True)]
    steps = "steps told" if all(row.told) and len(set(row.num_steps)) == 1 else "steps NOT told"
    verdict = "ok" if row.changed and row.restored and row.finite and all(row.rewritten) else "FAILED"
    return f"{verdict}: {'; '.join(parts)}; {row.num_steps[0]} {steps}"


def check_pipeline(name: str) -> PipelineRow:
    """Run tiny pipeline ``name`` without, with and after AsymRnR."""
    start = time.perf_counter()
    pipe, call = build_pipeline(name)
    row = PipelineRow(name, type(pipe).__name__)
    torch._dynamo.reset()
    baseline = _generate(pipe, call)
    asymrnr_fx.apply(pipe, PIPELINE_CONFIG, inner="eager")
    try:
        reduced = _generate(pipe, call)
        for attr in ("transformer", "transformer_2"):
            module = getattr(pipe, attr, None)
            if module is None:
                continue
            (state,) = asymrnr_fx.states_of(module)
            row.transformers.append(attr)
            row.rewritten.append(state.ratios.sites_per_forward or 0)
            row.forwards.append(state.stats["forwards"])
            row.num_steps.append(state.num_steps)
            row.told.append(state.tracker.told)
            row.refresh_steps.append(list(state.refresh_steps))
    finally:
        asymrnr_fx.remove(pipe)
    restored = _generate(pipe, call)
    row.finite = all(bool(torch.isfinite(t).all()) for t in reduced)
    row.changed = any(not torch.equal(a, b) for a, b in zip(reduced, baseline, strict=True))
    row.restored = all(torch.equal(a, b) for a, b in zip(restored, baseline, strict=True))
    row.result = _summary(row)
    row.seconds = round(time.perf_counter() - start, 1)
    return row
