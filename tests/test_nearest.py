"""nearest_dst: chunked path, custom op, compile/opcheck, and the Triton kernel.

Every path is compared with a plain full-matrix reference written here. Integer-valued data
makes fp32 exact, so ties must resolve exactly (lowest dst index); on random data an index
may differ only where the two distances are equal within rounding.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from asymrnr_fx.kernels import triton_nearest
from asymrnr_fx.kernels.nearest import (
    CHUNK_BUDGET_BYTES,
    CPU_CHUNK_BUDGET_BYTES,
    nearest_dst,
    nearest_dst_chunked,
)

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
OP = torch.ops.asymrnr.nearest_dst.default


def reference(src: torch.Tensor, dst: torch.Tensor, metric: str) -> torch.Tensor:
    """The full (..., Ns, Nd) fp32 distance matrix, straight from the definitions."""
    s, d = src.float(), dst.float()
    if metric == "l2":
        return (
            s.square().sum(-1)[..., :, None]
            - 2 * s @ d.transpose(-1, -2)
            + d.square().sum(-1)[..., None, :]
        )
    sn, dn = F.normalize(s, dim=-1, eps=1e-6), F.normalize(d, dim=-1, eps=1e-6)
    return 1 - sn @ dn.transpose(-1, -2)


def tolerance(src: torch.Tensor, dst: torch.Tensor, metric: str) -> float:
    if metric == "cosine":
        return 1e-5
    # Cancellation in ||s||^2 - 2 s.d + ||d||^2 scales with the norms.
    scale = src.float().square().sum(-1).amax().item() if src.numel() else 0.0
    scale += dst.float().square().sum(-1).amax().item() if dst.numel() else 0.0
    return 4e-6 * (1.0 + scale)


def assert_nearest(dist, idx, src, dst, metric, exact=False) -> None:
    """(dist, idx) is a correct nearest-dst answer for (src, dst)."""
    assert dist.dtype == torch.float32 and idx.dtype == torch.int64
    assert dist.shape == idx.shape == src.shape[:-1]
    if src.shape[-2] == 0:
        return
    full = reference(src, dst, metric)
    ref_dist, ref_idx = full.min(-1)  # first minimal index on ties
    if exact:
        assert torch.equal(idx, ref_idx)
        assert torch.equal(dist, ref_dist)
        return
    tol = tolerance(src, dst, metric)
    torch.testing.assert_close(dist, ref_dist, atol=tol, rtol=0)
    at_idx = full.gather(-1, idx.unsqueeze(-1)).squeeze(-1)
    assert bool(((idx == ref_idx) | ((at_idx - ref_dist).abs() <= tol)).all())


def draw_inputs(data, *, integer: bool, max_n: int = 40, max_d: int = 40):
    lead = tuple(data.draw(st.lists(st.integers(1, 3), max_size=2), label="lead"))
    ns = data.draw(st.integers(0, max_n), label="ns")
    nd = data.draw(st.integers(1, max_n), label="nd")
    dim = data.draw(st.integers(1, max_d), label="dim")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    gen = torch.Generator().manual_seed(seed)
    if integer:
        # Small integers are exact in every dtype and in fp32 sums: ties are real ties.
        src = torch.randint(-2, 3, (*lead, ns, dim), generator=gen).to(dtype)
        dst = torch.randint(-2, 3, (*lead, nd, dim), generator=gen).to(dtype)
    else:
        src = torch.randn(*lead, ns, dim, generator=gen).to(dtype)
        dst = torch.randn(*lead, nd, dim, generator=gen).to(dtype)
    return src, dst


BUDGETS = st.sampled_from([4, 64, 1000, None])


@settings(max_examples=40, deadline=None)
@given(data=st.data(), metric=st.sampled_from(["l2", "cosine"]), budget=BUDGETS)
def test_chunked_matches_reference_on_random_data(data, metric, budget):
    src, dst = draw_inputs(data, integer=False)
    dist, idx = nearest_dst_chunked(src, dst, metric, budget_bytes=budget)
    assert_nearest(dist, idx, src, dst, metric)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), budget=BUDGETS)
def test_chunked_breaks_ties_to_lowest_index(data, budget):
    src, dst = draw_inputs(data, integer=True)
    dist, idx = nearest_dst_chunked(src, dst, "l2", budget_bytes=budget)
    assert_nearest(dist, idx, src, dst, "l2", exact=True)


def test_ties_go_to_lowest_index_across_chunks():
    # Every dst row equals the src row: all distances tie; the answer is index 0 always.
    src = torch.ones(2, 5, 4)
    dst = torch.ones(2, 9, 4)
    for budget in (4, 40, None):
        for metric in ("l2", "cosine"):
            dist, idx = nearest_dst_chunked(src, dst, metric, budget_bytes=budget)
            assert torch.equal(idx, torch.zeros(2, 5, dtype=torch.int64))
            assert torch.allclose(dist, torch.zeros(2, 5), atol=1e-6)


def test_op_matches_chunked_and_handles_layouts():
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(2, 70, 3, 16, generator=gen)
    src = base.transpose(1, 2)[:, :, :50]  # (B, H, N, D) view, not contiguous
    dst = base.transpose(1, 2)[:, :, 50:]
    for metric in ("l2", "cosine"):
        got = nearest_dst(src, dst, metric)
        want = nearest_dst_chunked(src.contiguous(), dst.contiguous(), metric)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        assert_nearest(*got, src, dst, metric)
    # 2-D inputs (no leading dims) and an empty src.
    assert_nearest(*nearest_dst(src[0, 0], dst[0, 0]), src[0, 0], dst[0, 0], "l2")
    dist, idx = nearest_dst(src[:, :, :0], dst)
    assert dist.shape == idx.shape == (2, 3, 0)


def test_chunk_blocks_stay_within_budget(monkeypatch):
    seen: list[int] = []
    real = torch.bmm

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.append(out.numel())
        return out

    monkeypatch.setattr(torch, "bmm", spy)
    src, dst = torch.randn(6, 100, 8), torch.randn(6, 30, 8)
    budget = 4 * 1000  # 1000 fp32 distances
    assert_nearest(*nearest_dst_chunked(src, dst, "l2", budget_bytes=budget), src, dst, "l2")
    assert seen and max(seen) <= 1000 and sum(seen) == 6 * 100 * 30
    # Blocks prefer many rows of few groups over few rows of many groups.
    seen.clear()
    nearest_dst_chunked(src, dst, "l2", budget_bytes=4 * 30 * 100)
    assert max(seen) == 30 * 100  # one whole group per block, not six groups of 16 rows
    # A budget below one row of one group still makes progress, one row at a time.
    seen.clear()
    nearest_dst_chunked(src, dst, "l2", budget_bytes=8)
    assert max(seen) == 30
    assert CHUNK_BUDGET_BYTES >= CPU_CHUNK_BUDGET_BYTES >= 2**20


@pytest.mark.parametrize(
    "src_shape, dst_shape, metric",
    [
        ((2, 3, 4, 8), (2, 3, 5, 7), "l2"),
        ((2, 3, 4, 8), (2, 4, 5, 8), "l2"),
        ((4, 8), (0, 8), "l2"),
        ((4, 8), (5, 8), "dot"),
        ((8,), (5, 8), "l2"),
    ],
)
def test_bad_inputs_name_the_problem(src_shape, dst_shape, metric):
    with pytest.raises(ValueError):
        nearest_dst(torch.randn(src_shape), torch.randn(dst_shape), metric)


def test_gradient_is_that_of_the_selected_pair():
    gen = torch.Generator().manual_seed(1)
    for metric in ("l2", "cosine"):
        src = torch.randn(2, 30, 8, generator=gen, requires_grad=True)
        dst = torch.randn(2, 11, 8, generator=gen)
        dst[0, 3] = 0  # a zero vector exercises the eps branch of the cosine norm
        dst.requires_grad_(True)
        weight = torch.randn(2, 30, generator=gen)
        dist, _ = nearest_dst(src, dst, metric)
        got = torch.autograd.grad((dist * weight).sum(), (src, dst))
        ref, _ = reference(src, dst, metric).min(-1)
        want = torch.autograd.grad((ref * weight).sum(), (src, dst))
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(metric, requires_grad):
    gen = torch.Generator().manual_seed(2)
    src = torch.randn(2, 3, 20, 8, generator=gen).requires_grad_(requires_grad)
    dst = torch.randn(2, 3, 7, 8, generator=gen).requires_grad_(requires_grad)
    torch.library.opcheck(OP, (src, dst, metric))
    torch.library.opcheck(OP, (src.detach().bfloat16(), dst.detach().bfloat16(), metric))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("dynamic", [False, True])
def test_compiled_graph_holds_one_opaque_node(backend, dynamic):
    graphs = []

    def capture(gm, example_inputs, **kwargs):
        graphs.append(gm)
        return torch._dynamo.lookup_backend(backend)(gm, example_inputs, **kwargs)

    def match(x: torch.Tensor) -> torch.Tensor:
        # The shape of a matching call site: split src/dst, match, gather the matched dst.
        src, dst = x[:, :, 8:], x[:, :, :8]
        dist, idx = nearest_dst(src, dst, "l2")
        order = dist.argsort(dim=-1)
        return torch.gather(idx, -1, order) + 0 * dist.sum()

    torch._dynamo.reset()
    compiled = torch.compile(match, backend=capture, fullgraph=True, dynamic=dynamic)
    gen = torch.Generator().manual_seed(3)
    for n in (40, 48):
        x = torch.randint(-2, 3, (2, 3, n, 16), generator=gen).float()
        assert torch.equal(compiled(x), match(x))
    calls = [
        n for g in graphs for n in g.graph.nodes if n.target is OP or n.target is OP.overloadpacket
    ]
    assert len(calls) == len(graphs) >= 1


def _triton_cases():
    gen = torch.Generator().manual_seed(4)
    cases = []
    # Head dims 64/128 (the models), odd sizes that leave partial tiles, and a tiny dim.
    for dtype in DTYPES:
        for metric in ("l2", "cosine"):
            for lead, ns, nd, dim in (((2, 3), 150, 70, 64), ((1,), 33, 130, 128), ((), 5, 3, 3)):
                src = torch.randn(*lead, ns, dim, generator=gen).to(dtype)
                dst = torch.randn(*lead, nd, dim, generator=gen).to(dtype)
                cases.append((src, dst, metric, False))
        ints = (torch.randint(-2, 3, (2, 70, 24), generator=gen).to(dtype),)
        ints += (torch.randint(-2, 3, (2, 140, 24), generator=gen).to(dtype),)
        cases.append((*ints, "l2", True))
    return cases


@pytest.mark.skipif(
    not (
        triton_nearest.available() and (torch.cuda.is_available() or triton_nearest.interpreting())
    ),
    reason="needs Triton with CUDA, or TRITON_INTERPRET=1",
)
def test_triton_kernel_matches_reference():
    device = "cuda" if torch.cuda.is_available() and not triton_nearest.interpreting() else "cpu"
    for src, dst, metric, exact in _triton_cases():
        src, dst = src.to(device), dst.to(device)
        dist, idx = triton_nearest.nearest_dst_triton(src, dst, metric)
        assert_nearest(dist.cpu(), idx.cpu(), src.cpu(), dst.cpu(), metric, exact=exact)
    # Strided views are read in place.
    base = torch.randn(2, 90, 4, 64, device=device)
    src, dst = base.transpose(1, 2)[:, :, :60], base.transpose(1, 2)[:, :, 60:]
    dist, idx = triton_nearest.nearest_dst_triton(src, dst, "l2")
    assert_nearest(dist.cpu(), idx.cpu(), src.cpu(), dst.cpu(), "l2")
    if device == "cuda":
        # On CUDA the op itself takes the fused kernel.
        got = nearest_dst(src, dst, "l2")
        assert torch.equal(got[0], dist) and torch.equal(got[1], idx)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
@pytest.mark.skipif(torch.cuda.is_available(), reason="the kernel runs on the GPU instead")
@pytest.mark.skipif(triton_nearest.interpreting(), reason="already under the interpreter")
def test_triton_kernel_under_interpreter():
    # TRITON_INTERPRET is read when kernels are defined, so the interpreter gets its own process.
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    root = Path(__file__).resolve().parents[1]
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-o",
        "addopts=",
        "-p",
        "no:cacheprovider",
        __file__,
        "-k",
        "test_triton_kernel_matches_reference",
    ]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "1 passed" in proc.stdout, proc.stdout[-2000:]


# -- the GPU path must not be able to break users: the fallback, simulated on CPU -----------------

@pytest.fixture
def pretend_gpu(monkeypatch):
    """The kernel 'exists' for CPU tensors; the health record starts empty."""
    from asymrnr_fx.kernels import nearest

    monkeypatch.setattr(nearest, "kernel_health", nearest.KernelHealth())
    monkeypatch.setattr(nearest, "_triton_can_run", lambda src: True)
    monkeypatch.delenv(nearest.KERNEL_ENV, raising=False)
    return nearest


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 40, 8, generator=gen), torch.randn(2, 3, 9, 8, generator=gen)


def test_a_failing_kernel_falls_back_with_one_warning(pretend_gpu, monkeypatch, caplog) -> None:
    calls = []

    def broken(src, dst, metric):  # noqa: ANN001, ANN202
        calls.append(1)
        raise RuntimeError("ptxas fatal: unsupported sm")

    monkeypatch.setattr(pretend_gpu, "_run_triton", broken)
    src, dst = _inputs()
    with caplog.at_level("WARNING", logger="asymrnr_fx"):
        for _ in range(3):
            dist, idx = nearest_dst(src, dst, "l2")
    want = nearest_dst_chunked(src, dst, "l2")
    assert torch.equal(idx, want[1]) and torch.equal(dist, want[0])
    assert len(calls) == 1  # checked once, then the chunked path without trying again
    assert caplog.text.count("Triton matching kernel is not used") == 1
    assert "ptxas fatal" in caplog.text and "ASYMRNR_MATCH_KERNEL" in caplog.text


def test_a_kernel_that_disagrees_with_the_chunked_path_is_not_used(pretend_gpu, monkeypatch, caplog) -> None:
    def wrong(src, dst, metric):  # noqa: ANN001, ANN202
        dist, idx = nearest_dst_chunked(src, dst, metric)
        return dist, (idx + 1) % dst.shape[-2]

    monkeypatch.setattr(pretend_gpu, "_run_triton", wrong)
    src, dst = _inputs()
    with caplog.at_level("WARNING", logger="asymrnr_fx"):
        _, idx = nearest_dst(src, dst, "cosine")
    assert torch.equal(idx, nearest_dst_chunked(src, dst, "cosine")[1])
    assert "disagree" in caplog.text


def test_a_kernel_that_passes_the_check_is_used(pretend_gpu, monkeypatch) -> None:
    used = []

    def fine(src, dst, metric):  # noqa: ANN001, ANN202
        used.append(src.shape)
        return nearest_dst_chunked(src, dst, metric)

    monkeypatch.setattr(pretend_gpu, "_run_triton", fine)
    src, dst = _inputs()
    nearest_dst(src, dst, "l2")
    assert used == [(1, 40, 8), (2, 3, 40, 8)]  # the small check slice, then the real call


@pytest.mark.parametrize("how", ["config", "environment"])
def test_either_path_can_be_forced(pretend_gpu, monkeypatch, how) -> None:
    def broken(src, dst, metric):  # noqa: ANN001, ANN202
        raise RuntimeError("boom")

    monkeypatch.setattr(pretend_gpu, "_run_triton", broken)
    src, dst = _inputs()
    if how == "config":
        with pytest.raises(RuntimeError, match="boom"):  # forced: the failure is shown
            nearest_dst(src, dst, "l2", kernel="triton")
        nearest_dst(src, dst, "l2", kernel="chunked")  # never touches the kernel
    else:
        monkeypatch.setenv(pretend_gpu.KERNEL_ENV, "triton")
        with pytest.raises(RuntimeError, match="boom"):
            nearest_dst(src, dst, "l2")
        monkeypatch.setenv(pretend_gpu.KERNEL_ENV, "chunked")
        nearest_dst(src, dst, "l2")
    assert not pretend_gpu.kernel_health.reasons
    with pytest.raises(ValueError, match="kernel"):
        nearest_dst(src, dst, "l2", kernel="cuda")


def test_ops_lower_in_inductor_with_every_argument_given():
    # Regression: an op argument named `kernel` clashed with Inductor's
    # FallbackKernel.create(kernel, ...) ("multiple values for argument 'kernel'") whenever the
    # rewritten graph passed the matching-kernel choice, as every rewritten site does.
    from asymrnr_fx import ops

    def run(x, dst, src, keep, restore, refresh):  # noqa: ANN001, ANN202
        keep, restore = torch.ops.asymrnr.select_tokens.default(
            x, dst, src, keep, restore, refresh, 0, 0, "l2", "auto")
        dist, idx = OP(x[:, :, 4:], x[:, :, :4], "l2", "auto")
        return keep, restore, dist, idx

    part = ops.partition((2, 2, 2), (2, 2, 2), seed=0)
    x = torch.randn(1, 2, 8, 4, generator=torch.Generator().manual_seed(0))
    args = (x, part.dst_idx, part.src_idx, torch.empty(1, 2, 4, dtype=torch.long),
            torch.empty(1, 2, 8, dtype=torch.long), torch.ones(1, dtype=torch.bool))
    torch._dynamo.reset()
    compiled = torch.compile(run, backend="inductor", fullgraph=True)
    for got, want in zip(compiled(*args), run(*args), strict=True):
        assert torch.equal(got, want)
