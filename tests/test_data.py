"""The procedural clip generator: determinism, shapes, value range, conditions."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from asymrnr_fx.small.data import (
    COLOURS,
    MOTIONS,
    SHAPES,
    TEXT_DIM,
    TEXT_TOKENS,
    VOCAB,
    Condition,
    encode_condition,
    make_batch,
    make_clip,
    parse_prompt,
)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_clip_is_deterministic_shaped_and_in_range(seed: int) -> None:
    clip, cond = make_clip(seed)
    again, cond_again = make_clip(seed)
    assert clip.shape == (8, 3, 32, 32) and clip.dtype == torch.float32
    assert torch.equal(clip, again) and cond == cond_again
    assert clip.min() >= -1.0 and clip.max() <= 1.0
    assert torch.isfinite(clip).all()


def test_different_seeds_give_different_clips() -> None:
    a, _ = make_clip(1)
    b, _ = make_clip(2)
    assert not torch.equal(a, b)


@pytest.mark.parametrize("motion", MOTIONS)
def test_every_motion_moves_the_shape(motion: str) -> None:
    # With a still camera only the shape changes between frames.
    cond = Condition("circle", "red", motion, "gradient", "still")
    clip, _ = make_clip(3, cond=cond)
    assert (clip[-1] - clip[0]).abs().max() > 0.5


def test_pan_moves_the_background() -> None:
    still, _ = make_clip(4, cond=Condition("square", "blue", "zoom", "stripes", "still"))
    panned, _ = make_clip(4, cond=Condition("square", "blue", "zoom", "stripes", "pan-left"))
    corner = (slice(None), slice(None), slice(0, 4), slice(0, 4))  # far from the centred zoom
    assert torch.equal(still[0][corner[1:]], panned[0][corner[1:]])  # frame 0: no pan yet
    assert not torch.allclose(still[-1][corner[1:]], panned[-1][corner[1:]])


def test_colour_condition_shows_in_pixels() -> None:
    red, _ = make_clip(5, cond=Condition("square", "red", "zoom", "gradient", "still"))
    blue, _ = make_clip(5, cond=Condition("square", "blue", "zoom", "gradient", "still"))
    centre = (slice(None), slice(13, 19), slice(13, 19))
    assert red[-1][0][centre[1:]].mean() > red[-1][2][centre[1:]].mean()  # red > blue channel
    assert blue[-1][2][centre[1:]].mean() > blue[-1][0][centre[1:]].mean()


def test_batch_and_sizes() -> None:
    clips, conds = make_batch([0, 1, 2], frames=4, size=16)
    assert clips.shape == (3, 4, 3, 16, 16) and len(conds) == 3
    assert torch.equal(clips[1], make_clip(1, frames=4, size=16)[0])


def test_encode_condition_is_one_hot_per_token() -> None:
    cond = Condition("triangle", "yellow", "orbit", "checker", "pan-right")
    enc = encode_condition([cond, None])
    assert enc.shape == (2, TEXT_TOKENS, TEXT_DIM)
    assert torch.equal(enc[0].sum(-1), torch.ones(TEXT_TOKENS))
    assert [VOCAB[i] for i in enc[0].argmax(-1).tolist()] == list(cond.tokens)
    assert torch.equal(enc[1], torch.zeros(TEXT_TOKENS, TEXT_DIM))


@settings(max_examples=30, deadline=None)
@given(shape=st.sampled_from(SHAPES), colour=st.sampled_from(COLOURS), motion=st.sampled_from(MOTIONS))
def test_prompt_round_trip(shape: str, colour: str, motion: str) -> None:
    cond = parse_prompt(f"a {colour} {shape} moving {motion}")
    assert (cond.shape, cond.colour, cond.motion) == (shape, colour, motion)
    assert parse_prompt(cond.prompt) == cond


def test_bad_prompt_and_condition_are_errors() -> None:
    with pytest.raises(ValueError, match="motion"):
        parse_prompt("red circle")
    with pytest.raises(ValueError, match="hexagon"):
        Condition("hexagon", "red", "left", "stripes", "still")
