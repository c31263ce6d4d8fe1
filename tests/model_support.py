"""The model-support table: every video transformer class of diffusers, checked and generated.

    python -m tests.model_support                # all tiny configs and pipelines (about 15 minutes)
    python -m tests.model_support --only mochi   # some configs; JSON and docs left as they are

Runs :func:`tests.model_checks.check_model` on every tiny config of
:mod:`asymrnr_fx.tiny_models` and :func:`tests.pipeline_checks.check_pipeline` on every tiny
pipeline, prints the table, writes ``benchmarks/results/models.json`` and replaces the docs'
model-support table with it. ``tests/test_model_support.py`` runs the same checks in CI (the
Inductor column for a representative subset, the rest read from the JSON) and fails when the
docs' table is not what they produce.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from benchmarks.readme import ROOT, read_section, write_section

RESULTS = ROOT / "benchmarks" / "results" / "models.json"
SECTION = "model-support"

__all__ = ["video_classes", "render_table", "readme_table", "run_all", "main"]

# Video transformers whose name does not say 3-D.
EXTRA_VIDEO_CLASSES = ("Cosmos3OmniTransformer",)

def video_classes() -> list[str]:
    """The video transformer classes diffusers exports: ``*Transformer3DModel`` under
    ``diffusers.models.transformers``, and those of :data:`EXTRA_VIDEO_CLASSES`."""
    import diffusers

    names = []
    for name in dir(diffusers):
        if not (name.endswith("Transformer3DModel") or name in EXTRA_VIDEO_CLASSES):
            continue
        cls = getattr(diffusers, name)
        if getattr(cls, "__module__", "").startswith("diffusers.models.transformers"):
            names.append(name)
    return sorted(names)


def _labels(labels: Iterable[str]) -> str:
    return "; ".join(labels)


def _cell(value: Any) -> str:
    return str(value).replace("|", "/")


def _model_line(row: dict[str, Any]) -> str:
    total = row["rewritten"] + row["left_alone"]
    plain = f"{row['plain_rewritten']} / {total}"
    if row["plain_labels"]:
        plain += f" ({_labels(row['plain_labels'])})"
    if row["prepared"]:
        plain += " after `asymrnr_fx.prepare`"
    reference = row["reference"] if row["reference"] != "nothing rewritten" else "-"
    regional = row["regional"].replace("_repeated_blocks", "`_repeated_blocks`")
    cells = [f"`{row['model']}`", row["config"], f"{row['rewritten']} / {total}", plain,
             _labels(row["labels"]), reference, row["inductor"] or "not checked", regional, row["notes"]]
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _pipeline_line(row: dict[str, Any]) -> str:
    rewritten = ", ".join(f"{n}: {c}" for n, c in zip(row["transformers"], row["rewritten"], strict=True))
    refresh = "; ".join(f"{n}: {s}" for n, s in zip(row["transformers"], row["refresh_steps"], strict=True))
    cells = [f"`{row['pipeline']}`", row["name"], rewritten, str(row["num_steps"][0]), refresh,
             "yes" if row["changed"] else "no", "yes" if row["restored"] else "no",
             row["result"].split(":", 1)[0]]
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def render_table(models: Sequence[dict[str, Any]], pipelines: Sequence[dict[str, Any]]) -> str:
    """The model-support tables (Markdown) from the rows of the checks."""
    lines = [
        "| class | tiny config | rewritten with `apply` | plain `torch.compile` | left alone (why) "
        "| vs reference | with Inductor | regional compile | conditioning |",
        "|---|---|---|---|---|---|---|---|---|",
        *(_model_line(row) for row in sorted(models, key=lambda r: (r["model"], r["config"]))),
        "",
        "| pipeline | tiny config | rewritten per forward | steps (told by the scheduler) "
        "| matching refreshed at steps | output changed | `remove` restores it | result |",
        "|---|---|---|---|---|---|---|---|",
        *(_pipeline_line(row) for row in sorted(pipelines, key=lambda r: (r["pipeline"], r["name"]))),
    ]
    return "\n".join(lines)


def readme_table() -> str:
    """The model-support section (docs/model-support.md) as it stands."""
    return read_section(SECTION)


def saved_inductor_column() -> dict[str, str]:
    """The "with Inductor" cell of every tiny config, as the last full run saved it (CI checks
    a subset again: compiling every class is the benchmark's job, not the test suite's)."""
    if not RESULTS.exists():
        return {}
    return {row["config"]: row.get("inductor", "") for row in json.loads(RESULTS.read_text())["models"]}


def run_all(only: Sequence[str] | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every model check (Inductor behind the rewrite included) and pipeline check (or those
    named in ``only``)."""
    from asymrnr_fx.tiny_models import TINY_MODELS

    from .model_checks import check_model
    from .pipeline_checks import check_pipeline
    from .tiny_pipelines import PIPELINES

    models, pipelines = [], []
    for name in TINY_MODELS:
        if only is None or name in only:
            row = check_model(name, inductor=True)
            models.append(row.to_dict())
            print(f"{name}: {row.rewritten} rewritten, reference {row.reference}, Inductor {row.inductor}, "
                  f"{row.seconds} s", file=sys.stderr)
    for name in PIPELINES:
        if only is None or name in only:
            pipelines.append(check_pipeline(name).to_dict())
    return models, pipelines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", help="tiny config or pipeline names (nothing is written)")
    args = parser.parse_args(argv)
    models, pipelines = run_all(args.only)
    table = render_table(models, pipelines)
    print(table)
    if args.only is None:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps({"models": models, "pipelines": pipelines}, indent=1) + "\n")
        write_section(SECTION, table)
        print(f"wrote {RESULTS.relative_to(ROOT)} and the table in docs/model-support.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
