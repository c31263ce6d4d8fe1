"""The README's generated sections.

A generated section lies between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` and is
written only by the command that measures it (the command is named above each section);
``tests/test_readme_tables.py`` checks that each section is what its checked-in JSON renders.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "results"

__all__ = ["README", "RESULTS", "ROOT", "read_section", "write_section"]


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def _span(text: str, name: str) -> tuple[int, int]:
    begin, end = _markers(name)
    if begin not in text or end not in text:
        raise KeyError(f"the README has no generated section {name!r}: add the lines {begin} and {end}")
    return text.index(begin) + len(begin), text.index(end)


def read_section(name: str, readme: Path = README) -> str:
    """The text of the generated section ``name``, stripped."""
    text = readme.read_text()
    start, end = _span(text, name)
    return text[start:end].strip()


def write_section(name: str, body: str, readme: Path = README) -> None:
    """Replace the generated section ``name`` by ``body``."""
    text = readme.read_text()
    start, end = _span(text, name)
    readme.write_text(text[:start] + "\n" + body.strip() + "\n" + text[end:])
