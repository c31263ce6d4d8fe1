"""Fused Triton kernel for :func:`asymrnr_fx.kernels.nearest.nearest_dst` on CUDA.

One program owns ``BLOCK_M`` src rows of one group (batch x head). It loads them once,
then walks over dst in tiles of ``BLOCK_N`` rows like flash attention walks over keys: one
tensor-core GEMM tile ``s @ d^T`` (fp32 accumulation), the distance, and a running
min/argmin per src row. The ``Ns x Nd`` matrix never exists; memory traffic is one read of
src and ``Ns / BLOCK_M`` reads of dst per group.

Numerics match the chunked PyTorch path up to summation order: bf16/fp16 products are exact
in fp32, so the GEMM on the native dtype with an fp32 accumulator equals the fp32 GEMM of the
upcast values; fp32 inputs use IEEE fp32 (never TF32). Cosine divides the raw dot by the two
clamped norms, which is ``normalize(s) . normalize(d)`` up to rounding. Ties: Triton's
``min(..., return_indices=True)`` keeps the leftmost index in a tile, and a later tile only
wins on a strictly better value, so the lowest dst index wins. As in the chunked path, l2
picks the argmin of ``||d||^2 - 2 s.d`` and adds ``||s||^2`` afterwards, and cosine picks
the largest cosine and returns ``1 - cos``.

Importing this module never fails: without Triton, :func:`available` is False and the op
uses the chunked path. Under ``TRITON_INTERPRET=1`` the kernel runs on CPU tensors (slowly),
which is how it is tested without a GPU.
"""

from __future__ import annotations

import contextlib
import os

import torch
from torch import Tensor

from .contract import NORM_EPS, check_inputs

try:  # Triton is optional: the CPU path and the CUDA fallback never need it.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None

__all__ = ["MAX_DIM", "available", "interpreting", "nearest_dst_triton", "supports"]

# One program keeps BLOCK_M x BLOCK_D src values in registers; beyond 256 the chunked path
# (cuBLAS GEMMs) is the better choice anyway.
MAX_DIM = 256
_NATIVE = (torch.float16, torch.bfloat16, torch.float32)


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def available() -> bool:
    """True when the fused kernel can run here (Triton plus CUDA, or the interpreter)."""
    return triton is not None and (torch.cuda.is_available() or interpreting())


def supports(src: Tensor) -> bool:
    """Whether the kernel handles this input (device and head dim)."""
    return (src.is_cuda or interpreting()) and 1 <= src.shape[-1] <= MAX_DIM


if triton is not None:

    @triton.jit
    def _nearest_kernel(
        S,
        Dst,
        DNorm,
        OutD,
        OutI,
        ns,
        nd,
        dim,
        s_sg,
        s_sn,
        s_sd,
        d_sg,
        d_sn,
        d_sd,
        COSINE: tl.constexpr,
        IEEE: tl.constexpr,
        EPS: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        g = tl.program_id(1).to(tl.int64)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rd = tl.arange(0, BLOCK_D)
        m_mask = rm < ns
        d_mask = rd < dim
        s_ptrs = S + g * s_sg + rm[:, None].to(tl.int64) * s_sn + rd[None, :] * s_sd
        s = tl.load(s_ptrs, mask=m_mask[:, None] & d_mask[None, :], other=0.0)
        sf = s.to(tl.float32)
        s_sq = tl.sum(sf * sf, 1)
        if COSINE:
            s_inv = 1.0 / tl.maximum(tl.sqrt(s_sq), EPS)
        # l2 tracks the smallest ||d||^2 - 2 s.d (||s||^2 is added at the end, as in the
        # chunked path); cosine tracks the largest cosine.
        if COSINE:
            best = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        else:
            best = tl.full((BLOCK_M,), float("inf"), tl.float32)
        best_i = tl.zeros((BLOCK_M,), tl.int32)
        for n0 in range(0, nd, BLOCK_N):
            rn = n0 + tl.arange(0, BLOCK_N)
            n_mask = rn < nd
            d_ptrs = Dst + g * d_sg + rn[:, None].to(tl.int64) * d_sn + rd[None, :] * d_sd
            dt = tl.load(d_ptrs, mask=n_mask[:, None] & d_mask[None, :], other=0.0)
            # ||d||^2 (l2) or 1 / max(||d||, eps) (cosine), computed once per dst row.
            dn = tl.load(DNorm + g * nd + rn, mask=n_mask, other=0.0)
            if IEEE:
                dot = tl.dot(sf, tl.trans(dt.to(tl.float32)), input_precision="ieee")
            else:
                dot = tl.dot(s, tl.trans(dt), out_dtype=tl.float32)
            if COSINE:
                score = dot * s_inv[:, None] * dn[None, :]
                score = tl.where(n_mask[None, :], score, float("-inf"))
                tbest, targ = tl.max(
                    score, 1, return_indices=True, return_indices_tie_break_left=True
                )
                better = tbest > best  # strict: an earlier tile keeps its lower index on a tie
            else:
                score = dn[None, :] - 2.0 * dot
                score = tl.where(n_mask[None, :], score, float("inf"))
                tbest, targ = tl.min(
                    score, 1, return_indices=True, return_indices_tie_break_left=True
                )
                better = tbest < best
            best = tl.where(better, tbest, best)
            best_i = tl.where(better, targ + n0, best_i)
        if COSINE:
            best = 1.0 - best
        else:
            best = best + s_sq
        out = g * ns + rm
        tl.store(OutD + out, best, mask=m_mask)
        tl.store(OutI + out, best_i.to(tl.int64), mask=m_mask)


def _blocks(dim_block: int, ieee: bool) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for a padded head dim."""
    if ieee or dim_block > 128:
        return 64, 32, 4, 2
    if dim_block > 64:
        return 64, 64, 4, 2
    return 128, 64, 4, 2


def nearest_dst_triton(src: Tensor, dst: Tensor, metric: str = "l2") -> tuple[Tensor, Tensor]:
    """The fused kernel; same contract as :func:`asymrnr_fx.kernels.nearest.nearest_dst`."""
    check_inputs(src, dst, metric)
    if not available():
        raise RuntimeError(
            "the Triton nearest_dst kernel needs Triton and CUDA (or TRITON_INTERPRET=1)"
        )
    if not supports(src):
        raise ValueError(f"the Triton kernel needs head dim 1..{MAX_DIM}; got {src.shape[-1]}")
    lead, ns, nd, d = src.shape[:-2], src.shape[-2], dst.shape[-2], src.shape[-1]
    g = lead.numel()  # not reshape(-1, ...): that is ambiguous for empty tensors
    dtype = torch.promote_types(src.dtype, dst.dtype)
    if dtype not in _NATIVE:
        dtype = torch.float32
    s3 = src.to(dtype).reshape(g, ns, d)
    d3 = dst.to(dtype).reshape(g, nd, d)
    dist = torch.empty(g, ns, dtype=torch.float32, device=src.device)
    idx = torch.empty(g, ns, dtype=torch.int64, device=src.device)
    if g > 0 and ns > 0:
        # fp32 never runs as TF32. The interpreter mis-executes tl.dot on bf16 (it multiplies
        # the raw bits), so there bf16 takes the fp32 path; bf16 products are exact in fp32,
        # so the result is the same.
        ieee = dtype == torch.float32 or (interpreting() and dtype == torch.bfloat16)
        # Per dst row, in fp32 with the same torch ops as the chunked path.
        dsq = d3.float().square().sum(-1)
        dnorm = dsq if metric == "l2" else 1.0 / dsq.sqrt().clamp_min(NORM_EPS)
        block_d = max(16, triton.next_power_of_2(d))
        block_m, block_n, warps, stages = _blocks(block_d, ieee)
        grid = (triton.cdiv(ns, block_m), g)
        with torch.cuda.device(src.device) if src.is_cuda else contextlib.nullcontext():
            _nearest_kernel[grid](
                s3,
                d3,
                dnorm,
                dist,
                idx,
                ns,
                nd,
                d,
                *s3.stride(),
                *d3.stride(),
                COSINE=metric == "cosine",
                IEEE=ieee,
                EPS=NORM_EPS,
                BLOCK_M=block_m,
                BLOCK_N=block_n,
                BLOCK_D=block_d,
                num_warps=warps,
                num_stages=stages,
            )
    return dist.reshape(*lead, ns), idx.reshape(*lead, ns)
