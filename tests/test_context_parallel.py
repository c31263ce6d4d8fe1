"""AsymRnR under diffusers' context parallelism: two CPU processes over gloo against one.

Every case runs in one spawn of two processes (``tests/cp_harness.py``, about two minutes on
two cores); the tests below check what it saved. Ulysses must compute exactly what
single-process AsymRnR computes, with every video self-attention site rewritten; ring is
refused at compile time.
"""

from __future__ import annotations

import socket

import pytest
import torch
from diffusers import ContextParallelConfig

import asymrnr_fx
from asymrnr_fx.context_parallel import RING_REFUSAL
from asymrnr_fx.tiny_models import build_tiny

from . import cp_harness

TOLERANCE = 1e-4  # relative, fp32
SITES = 2  # video self-attention sites of every tiny model (one per block)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("context-parallel") / "results.pt"
    with socket.socket() as probe:  # a free port for the process group
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torch.multiprocessing.start_processes(cp_harness.worker, args=(2, port, str(out)), nprocs=2,
                                          start_method="spawn")
    return torch.load(out)


def _relative(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).norm() / ref.norm())


def _kinds(left_alone: list[tuple[str, str]]) -> list[str]:
    """Why sites were left alone, without node names and sizes (they differ per process)."""
    return sorted(reason.split(" (")[0] for _, reason in left_alone)


def _assert_same_asymrnr(single: dict, ulysses: dict) -> None:
    assert ulysses["rewritten"] == single["rewritten"] == SITES
    assert _kinds(ulysses["left_alone"]) == _kinds(single["left_alone"])
    for out, ref in zip(ulysses["outputs"], single["outputs"], strict=True):
        assert _relative(out, ref) < TOLERANCE


@pytest.mark.parametrize("name", sorted(cp_harness.CASES))
def test_ulysses_computes_single_process_asymrnr(runs: dict, name: str) -> None:
    single, ulysses = runs[f"{name}/single"], runs[f"{name}/ulysses"]
    _assert_same_asymrnr(single, ulysses)
    for ref, plain in zip(single["outputs"], single["plain"], strict=True):
        assert _relative(ref, plain) > 1e-3  # AsymRnR did change the output
    # Step 0 matched afresh, step 1 reused the indices, on each process as on one.
    assert (ulysses["refreshes"], ulysses["hits"]) == (single["refreshes"], single["hits"]) == (4, 4)


def test_ulysses_through_inductor(runs: dict) -> None:
    # Against the eager single-process run (Inductor's own rounding is within the tolerance).
    _assert_same_asymrnr(runs[f"{cp_harness.INDUCTOR_CASE}/single"], runs["inductor/ulysses"])


def test_plain_torch_compile_after_enable_context_parallel(runs: dict) -> None:
    # The grid comes from the graph's own patch embedding: diffusers' split hooks must not
    # break the graph in front of it.
    _assert_same_asymrnr(runs["compile/single"], runs["compile/ulysses"])


def test_attention_over_a_shard_is_never_taken_for_the_video(runs: dict) -> None:
    shard = runs["shard"]
    assert shard["rewritten"] == 0
    assert all("shorter than the 64 video tokens" in reason for _, reason in shard["left_alone"])


def test_ring_is_refused_at_compile_time(runs: dict) -> None:
    ring = runs["ring"]
    assert _relative(ring["plain"], ring["reference"]) < TOLERANCE  # the CPU ring itself is right
    assert ring["refusal"] is not None and RING_REFUSAL in ring["refusal"]


def test_apply_refuses_ring_before_touching_the_model() -> None:
    tiny = build_tiny("wan", batch=1)
    with pytest.raises(ValueError, match="does not support ring attention"):
        asymrnr_fx.apply(tiny.model, parallel=ContextParallelConfig(ring_degree=2))
    assert getattr(tiny.model, "_diffusers_hook", None) is None and tiny.model._parallel_config is None
