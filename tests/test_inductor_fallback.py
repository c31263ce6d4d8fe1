"""The rewritten graph's own compile never takes a model down.

Mochi enters a float32 autocast region that warns on CPU: a second Dynamo trace of the
rewritten graph refused it ("Attempted to call function marked as skipped"), so
``apply(mochi)`` with Inductor crashed where plain Inductor ran. The rewrite now goes to
Inductor without a second trace, and if compiling it still fails, the graph falls back (the
rewrite without Inductor, else the original graph) with one WARNING.
"""

from __future__ import annotations

import logging

import pytest
import torch

import asymrnr_fx
import asymrnr_fx.runner as runner
from asymrnr_fx.tiny_models import build_tiny
from tests.model_checks import (
    check_inductor,
    compare_with_reference,
    run_compiled,
)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name == "asymrnr_fx"]


def test_mochi_with_apply_and_inductor_equals_the_reference() -> None:
    tiny = build_tiny("mochi", batch=1)
    asymrnr_fx.prepare(tiny.model)
    run = run_compiled(tiny)  # the eager rewrite, and the plan the reference replays
    assert compare_with_reference(tiny, run)[0] == "equal"
    # apply(transformer) with Inductor behind the rewrite (the default), without a fallback
    verdict, error = check_inductor(tiny, run)
    assert verdict == "equal" and error <= 1e-4, (verdict, error)


class _Toy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = torch.nn.Linear(16, 48)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).view(1, 32, 3, 2, 8).permute(2, 0, 3, 1, 4)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v).sum(1)


def _toy_outputs(inner: str) -> tuple[torch.Tensor, asymrnr_fx.AsymRnRBackend]:
    torch.manual_seed(0)
    model, x = _Toy(), torch.randn(1, 32, 16)
    backend = asymrnr_fx.backend(kv_ratio=0.5, grid=(2, 4, 4), inner=inner)
    with torch.no_grad():
        out = torch.compile(model, backend=backend, dynamic=False)(x)
    return out, backend


def test_a_rewrite_inductor_cannot_compile_runs_without_inductor(monkeypatch, caplog) -> None:
    expected, _ = _toy_outputs("eager")
    torch._dynamo.reset()

    def failing(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("inductor says no")

    monkeypatch.setattr(runner, "_inductor", failing)
    with caplog.at_level(logging.WARNING, logger="asymrnr_fx"):
        out, backend = _toy_outputs("inductor")
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    (fallback,) = backend.state.fallbacks
    assert fallback.runs == "rewrite without inductor"
    assert fallback.causes == ("Inductor: RuntimeError: inductor says no",)
    (line,) = [line for line in _warnings(caplog) if "failed" in line]
    assert "inductor says no" in line and "without Inductor" in line


def test_a_rewrite_that_cannot_run_at_all_runs_the_original_graph(monkeypatch, caplog) -> None:
    torch.manual_seed(0)
    model, x = _Toy(), torch.randn(1, 32, 16)
    with torch.no_grad():
        plain = model(x)

    def broken_forward(self, *args):  # noqa: ANN001, ANN002, ANN202
        raise RuntimeError("broken rewrite")

    original_rewrite = runner.rewrite_attention

    def rewrite(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        result = original_rewrite(*args, **kwargs)
        result.gm.forward = broken_forward.__get__(result.gm)
        return result

    monkeypatch.setattr(runner, "rewrite_attention", rewrite)
    backend = asymrnr_fx.backend(kv_ratio=0.5, grid=(2, 4, 4), inner="eager")
    compiled = torch.compile(model, backend=backend, dynamic=False)
    with caplog.at_level(logging.WARNING, logger="asymrnr_fx"), torch.no_grad():
        first, second = compiled(x), compiled(x)
    torch.testing.assert_close(first, plain)
    torch.testing.assert_close(second, plain)
    (fallback,) = backend.state.fallbacks
    assert fallback.runs == "original graph" and "broken rewrite" in fallback.causes[0]
    assert sum("failed" in line for line in _warnings(caplog)) == 1
