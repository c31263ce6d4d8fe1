"""Every video transformer class of diffusers under the backend, and apply(pipe) on tiny
pipelines: the checks behind the generated model-support table (docs/model-support.md).

Each tiny config runs :func:`tests.model_checks.check_model` (sites, the reference,
regional compilation) and must give exactly the row specified here; each tiny pipeline runs
:func:`tests.pipeline_checks.check_pipeline`. The last test renders the table from these
rows and compares it with the docs (``python -m tests.model_support`` rewrites it).
"""

from __future__ import annotations

import pytest

from asymrnr_fx.tiny_models import TINY_MODELS, build_tiny
from tests.model_checks import ModelRow, check_model
from tests.model_support import (
    readme_table,
    render_table,
    saved_inductor_column,
    video_classes,
)
from tests.pipeline_checks import PipelineRow, check_pipeline
from tests.tiny_pipelines import PIPELINES

# Why a call is left alone, in the words of the table (model_checks.site_label, from the kinds).
_REASON = {"cross": "cross-attention", "mask": "per-query mask (may be causal)", "causal": "causal",
           "gqa": "grouped-query", "no-grid": "no grid evidence", "layout": "where the video sits is unknown",
           "short": "shorter than the video grid (text, audio, per-frame or temporal)",
           "flex": "flex_attention (not SDPA)"}
_REGIONAL = {"none": "no _repeated_blocks", "blocks": "its blocks are not in _repeated_blocks"}

# config: (calls rewritten with apply's grid hint, attention calls per forward, rewritten by a plain
# torch.compile, regional compile, why the others are left alone)
EXPECTED: dict[str, tuple[int, int, int, str, set[str]]] = {
    "cogvideox": (2, 2, 2, "none", set()),
    "cogvideox-i2v": (2, 2, 2, "none", set()),
    "cogvideox1.5-i2v": (2, 2, 0, "none", set()),  # linear patch embedding: no conv in the graph
    "consisid": (2, 2, 2, "none", set()),
    "hunyuanvideo": (2, 3, 2, "equal", {"mask"}),  # the token refiner's masked text attention
    "hunyuanvideo-i2v": (2, 3, 2, "blocks", {"mask"}),  # token-replace blocks
    "hunyuanvideo15": (2, 3, 2, "equal", {"mask"}),  # its (B, 1, S, S) mask is K & K^T: proven
    "hunyuanvideo15-i2v": (2, 3, 2, "equal", {"mask"}),
    "hunyuanvideo-framepack": (0, 3, 0, "none", {"layout", "mask"}),
    "mochi": (2, 3, 2, "none", {"cross"}),  # after prepare(); the caption pooling is cross-attention
    "wan": (2, 4, 2, "equal", {"cross"}),
    "wan-i2v": (2, 6, 2, "equal", {"cross"}),
    "wan2.2-ti2v": (2, 4, 2, "equal", {"cross"}),
    "wan-vace": (3, 6, 3, "equal", {"cross"}),
    "wan-animate": (2, 5, 2, "equal", {"cross"}),
    "wan-animate2": (0, 6, 0, "equal", {"cross"}),  # its self-attention reads K/V through the cache
    "chronoedit": (2, 4, 2, "equal", {"cross"}),
    "skyreels-v2": (2, 4, 2, "equal", {"cross"}),
    "skyreels-v2-df": (0, 4, 0, "equal", {"cross", "mask"}),  # block-causal
    "anyflow": (2, 4, 2, "equal", {"cross"}),
    "anyflow-far": (0, 4, 0, "equal", {"flex", "cross"}),
    "helios": (1, 4, 1, "differs", {"layout", "cross"}),  # later blocks cannot see the history cat
    "ltxvideo": (2, 4, 0, "equal", {"cross"}),  # pre-patchified tokens: the grid comes from apply()
    "ltxvideo-i2v": (2, 4, 0, "equal", {"cross"}),
    "ltx2": (2, 12, 0, "equal", {"cross", "short"}),
    "sana-wm-refiner": (0, 4, 0, "equal", {"no-grid", "cross"}),
    "cosmos": (2, 4, 0, "none", {"cross"}),
    "cosmos-v2w": (2, 4, 0, "none", {"cross"}),
    "easyanimate": (2, 2, 2, "none", set()),
    "latte": (0, 3, 0, "none", {"cross", "short"}),  # factorised spatial / temporal attention
    "allegro": (2, 4, 2, "none", {"cross"}),
    "kandinsky5": (2, 5, 0, "equal", {"cross", "short"}),
    "kandinsky6": (2, 14, 0, "equal", {"cross", "short"}),
    "kandinsky6-sr": (0, 2, 0, "equal", {"flex"}),
    "minimax-h3": (0, 3, 0, "equal", {"no-grid"}),
    "motif-video": (2, 2, 2, "equal", set()),
    "sana-video": (0, 2, 0, "none", {"cross"}),  # its self-attention is linear
    "sana-wm": (2, 4, 2, "equal", {"cross"}),
    "joyimage-edit": (2, 2, 2, "equal", set()),
    "joyimage-edit-plus": (0, 2, 0, "equal", {"layout"}),
    "cosmos3-omni": (0, 4, 0, "equal", {"causal", "gqa"}),
}

# Compiled with Inductor behind the rewrite in CI (each costs a compile); the benchmark compiles
# every class. Mochi's autocast region once crashed the rewrite's compile.
INDUCTOR_IN_CI = ("mochi", "cogvideox", "wan")

_MODEL_ROWS: dict[str, ModelRow] = {}
_PIPELINE_ROWS: dict[str, PipelineRow] = {}


def _model_row(name: str) -> ModelRow:
    if name not in _MODEL_ROWS:
        _MODEL_ROWS[name] = check_model(name, inductor=name in INDUCTOR_IN_CI)
    return _MODEL_ROWS[name]


def _pipeline_row(name: str) -> PipelineRow:
    if name not in _PIPELINE_ROWS:
        _PIPELINE_ROWS[name] = check_pipeline(name)
    return _PIPELINE_ROWS[name]


def test_every_video_transformer_class_has_a_tiny_config() -> None:
    covered = {type(build_tiny(name, batch=1).model).__name__ for name in TINY_MODELS}
    assert set(video_classes()) <= covered, sorted(set(video_classes()) - covered)
    assert len(video_classes()) >= 32 and set(EXPECTED) == set(TINY_MODELS)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_model(name: str) -> None:
    """Compiles and runs, finite; every call rewritten (equal to the reference, on exactly the
    video grid) or left alone for the stated reason; regional compilation agrees."""
    rewritten, calls, plain, regional, reasons = EXPECTED[name]
    row = _model_row(name)
    assert row.finite
    assert (row.rewritten, row.rewritten + row.left_alone, row.plain_rewritten) == (rewritten, calls, plain)
    assert set(row.labels) == {_REASON[r] for r in reasons}
    if rewritten:
        assert row.reference == "equal" and row.reference_error <= 1e-4, row.reference
        assert row.effect > 1e-3  # the comparison is not vacuous: the rewrite moves the output
    else:
        assert row.reference == "nothing rewritten"
    assert row.regional.startswith(_REGIONAL.get(regional, regional)), row.regional


@pytest.mark.parametrize("name", list(PIPELINES))
def test_apply_on_a_tiny_pipeline(name: str) -> None:
    """apply(pipe): every transformer rewritten, steps told by the scheduler, the matching
    refreshed on its interval per expert, remove() restores the unreduced output exactly."""
    row = _pipeline_row(name)
    assert row.result.startswith("ok"), row
    assert all(row.told) and set(row.num_steps) == {4} and all(row.forwards)
    if len(row.transformers) == 2:  # Wan 2.2: high-noise expert, then low-noise expert
        assert row.refresh_steps == [[0], [1, 2]]
    else:
        assert row.refresh_steps == [[0, 2]]


@pytest.mark.parametrize("name", INDUCTOR_IN_CI)
def test_inductor_behind_the_rewrite(name: str) -> None:
    """apply(transformer) with Inductor (the default) compiles the rewrite and equals the
    checked eager rewrite; the saved table says the same."""
    row = _model_row(name)
    assert row.inductor == "equal", row.inductor
    assert saved_inductor_column()[name] == row.inductor


def test_every_rewritten_config_was_compiled_with_inductor_in_the_saved_table() -> None:
    saved = saved_inductor_column()
    for name, (rewritten, *_rest) in EXPECTED.items():
        assert saved.get(name, "").startswith("equal") if rewritten else saved.get(name) == "-", (name, saved.get(name))


def test_readme_model_support_section_is_the_generated_table() -> None:
    saved = saved_inductor_column()
    models = [{**row, "inductor": row["inductor"] or saved.get(name, "")}
              for name in EXPECTED for row in [_model_row(name).to_dict()]]
    pipelines = [_pipeline_row(name).to_dict() for name in PIPELINES]
    assert readme_table() == render_table(models, pipelines), (
        "docs/model-support.md's model-support table is stale: run `python -m tests.model_support`")
