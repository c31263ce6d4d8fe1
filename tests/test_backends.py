"""diffusers attention backends (``transformer.set_attention_backend(...)``): the SDPA-based ones
are rewritten, the others are left alone with a reason that names the kernel and the backend."""

from __future__ import annotations

import pytest
import torch
from asymrnr_fx.passes.sites import classify_sites

import asymrnr_fx
from asymrnr_fx.tiny_models import build_tiny
from tests.model_checks import compare_with_reference, output_tensors, run_compiled


@pytest.fixture(autouse=True)
def restore_the_default_backend():
    """diffusers' set_attention_backend also sets the process-wide default backend (and
    reset_attention_backend does not undo it): later tests must not inherit 'flex'."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    active = _AttentionBackendRegistry._active_backend
    yield
    _AttentionBackendRegistry.set_active_backend(active)


@pytest.mark.parametrize("backend", ["native", "_native_math", "_native_flash"])
def test_sdpa_backends_are_rewritten_and_equal_the_reference(backend: str) -> None:
    tiny = build_tiny("wan", batch=2)
    tiny.model.set_attention_backend(backend)
    run = run_compiled(tiny)
    sites = run.call_sites()
    assert [s.rewritable for s in sites] == [True, False] * 2  # self-attention, cross-attention per block
    assert compare_with_reference(tiny, run)[0] == "equal"


def test_flex_backend_is_left_alone_naming_it() -> None:
    tiny = build_tiny("wan", batch=1)
    tiny.model.set_attention_backend("flex")
    with torch.no_grad():
        eager = output_tensors(tiny.model(**tiny.inputs))
    run = run_compiled(tiny)
    sites = run.call_sites()
    assert len(sites) == 4 and not any(s.rewritable for s in sites)
    assert all(s.kernel == "flex_attention" and "'flex'" in s.reason for s in sites)
    assert any("none rewritten" in line and "flex" in line for line in run.warnings)
    torch.testing.assert_close(run.outputs, eager)


@torch.library.custom_op("flash_attn_standin::_flash_attn_forward", mutates_args=())
def _flash_standin(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Stands in for flash-attn's registered op (the package is CUDA-only): same name pattern."""
    return torch.nn.functional.scaled_dot_product_attention(q, k, v)


@_flash_standin.register_fake
def _(q, k, v):  # noqa: ANN001, ANN202
    return torch.empty_like(q)


def test_a_flash_attn_kernel_in_the_graph_is_left_alone_naming_the_backend() -> None:
    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = torch.nn.Linear(8, 24)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q, k, v = self.qkv(x).view(1, -1, 3, 2, 4).permute(2, 0, 3, 1, 4)
            return _flash_standin(q, k, v)

    captured = {}

    def capture(gm, example_inputs):  # noqa: ANN001, ANN202
        captured["gm"] = gm
        return gm.forward

    torch.compile(Block(), backend=capture)(torch.randn(1, 8, 8))
    (site,) = classify_sites(captured["gm"].graph, (2, 2, 2))
    assert not site.rewritable and site.kernel.startswith("flash_attn_standin")
    assert "'flash'" in site.reason and "not scaled_dot_product_attention" in site.reason

    backend = asymrnr_fx.backend(kv_ratio=0.5, grid=(2, 2, 2), inner="eager")
    torch._dynamo.reset()
    torch.compile(Block(), backend=backend)(torch.randn(1, 8, 8))
    assert backend.state.sites_rewritable == 0 and "'flash'" in backend.state.sites_left_alone[0][1]
