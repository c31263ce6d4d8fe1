"""The generated sections of the README and of the docs pages (``docs/*.md``).

A generated section lies between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` in one of
those files and is written only by the command that measures it (the command is named above
each section); ``tests/test_readme_tables.py`` checks that each section is what its checked-in
JSON renders.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
RESULTS = ROOT / "benchmarks" / "results"

__all__ = ["DOCS", "README", "RESULTS", "ROOT", "read_section", "section_file", "write_section"]


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def _span(text: str, name: str) -> tuple[int, int]:
    begin, end = _markers(name)
    return text.index(begin) + len(begin), text.index(end)


def section_file(name: str) -> Path:
    """The file (README.md or a docs page) that holds the generated section ``name``."""
    begin, end = _markers(name)
    for path in [README, *sorted(DOCS.glob("*.md"))]:
        text = path.read_text()
        if begin in text and end in text:
            return path
    raise KeyError(f"no README or docs page has the generated section {name!r}: add the lines {begin} and {end}")


def read_section(name: str, path: Path | None = None) -> str:
    """The text of the generated section ``name``, stripped."""
    text = (path or section_file(name)).read_text()
    start, end = _span(text, name)
    return text[start:end].strip()


def write_section(name: str, body: str, path: Path | None = None) -> None:
    """Replace the generated section ``name`` by ``body``."""
    path = path or section_file(name)
    text = path.read_text()
    start, end = _span(text, name)
    path.write_text(text[:start] + "\n" + body.strip() + "\n" + text[end:])
