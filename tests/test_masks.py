"""Per-query masks: the symmetric padding mask (HunyuanVideo 1.5) is rewritten and equals the
reference; anything else with one row per query is left alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from asymrnr_fx.passes.sites import classify_sites

import asymrnr_fx
from asymrnr_fx.ops import kept_count, site_partition

from .reference import reference_attention

GRID, TEXT, HEADS, DIM = (2, 4, 4), 5, 2, 16
VIDEO = GRID[0] * GRID[1] * GRID[2]


class PaddedJointAttention(torch.nn.Module):
    """Video then prompt, one SDPA with a per-query mask built from the prompt mask."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.to_q, self.to_k, self.to_v = (torch.nn.Linear(DIM, DIM) for _ in range(3))

    def mask(self, prompt_mask: torch.Tensor, seq: int) -> torch.Tensor:
        batch = prompt_mask.shape[0]
        keys = F.pad(prompt_mask, (seq - prompt_mask.shape[1], 0), value=self.kind != "pad-false")
        if self.kind == "short-prefix":  # the padded prefix ends 4 tokens before the video does
            last_video = torch.rand(batch, 4) > 0.5
            keys = F.pad(torch.cat([last_video, prompt_mask], 1), (seq - TEXT - 4, 0), value=True)
        rows = keys.bool().view(batch, 1, 1, seq).repeat(1, 1, seq, 1)
        if self.kind == "causal":
            return rows & torch.ones(seq, seq, dtype=torch.bool).tril()
        if self.kind == "or":
            return rows | rows.transpose(2, 3)
        return (rows & rows.transpose(2, 3)).bool()  # what HunyuanVideo 1.5 builds

    def forward(self, video: torch.Tensor, text: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        x = torch.cat([video, text], 1)
        b, s, c = x.shape
        q, k, v = (p(x).view(b, s, HEADS, c // HEADS).transpose(1, 2) for p in (self.to_q, self.to_k, self.to_v))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask(prompt_mask, s))


def _inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    prompt_mask = torch.ones(2, TEXT, dtype=torch.bool)
    prompt_mask[0, 3:] = False  # padded prompt tokens: their rows see no key at all
    return torch.randn(2, VIDEO, DIM), torch.randn(2, TEXT, DIM), prompt_mask


def test_symmetric_padding_mask_is_rewritten_and_equals_the_reference() -> None:
    module = PaddedJointAttention("symmetric").eval()
    video, text, prompt_mask = _inputs(0)
    config = asymrnr_fx.AsymRnRConfig(kv_ratio=0.5, q_ratio=0.4, grid=GRID, seed=3)
    backend = asymrnr_fx.backend(config, inner="eager")
    with torch.no_grad():
        out = torch.compile(module, backend=backend, fullgraph=True)(video, text, prompt_mask)
        x = torch.cat([video, text], 1)
        q, k, v = (p(x).view(2, -1, HEADS, DIM // HEADS).transpose(1, 2)
                   for p in (module.to_q, module.to_k, module.to_v))
        mask = module.mask(prompt_mask, VIDEO + TEXT)
    assert backend.state.sites_rewritable == 1
    parts = {c: site_partition(GRID, (2, 2, 2), seed=3, site=0, component=c, window=0) for c in ("q", "kv")}
    expected = reference_attention(
        q, k, v, mask, video_start=0, video_len=VIDEO,
        q_partition=(parts["q"].dst_idx.tolist(), parts["q"].src_idx.tolist()),
        kv_partition=(parts["kv"].dst_idx.tolist(), parts["kv"].src_idx.tolist()),
        q_keep=kept_count(VIDEO, 0.4, 4), kv_keep=kept_count(VIDEO, 0.5, 4)).float()
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(out[0, :, VIDEO + 3:], torch.zeros_like(out[0, :, VIDEO + 3:]))  # as SDPA gives


@pytest.mark.parametrize("kind", ["causal", "or", "pad-false", "short-prefix"])
def test_other_per_query_masks_are_left_alone(kind: str) -> None:
    module = PaddedJointAttention(kind)
    captured = {}

    def capture(gm, example_inputs):  # noqa: ANN001, ANN202
        captured["gm"] = gm
        return gm.forward

    torch.compile(module, backend=capture, fullgraph=True)(*_inputs(1))
    (site,) = classify_sites(captured["gm"].graph, GRID)
    assert not site.rewritable and "may be causal" in site.reason
