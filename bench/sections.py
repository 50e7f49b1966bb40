"""BENCHMARKS.md sections written by the scripts that measure them."""

from __future__ import annotations


def replace_section(md: str, heading: str, text: str) -> str:
    """`md` with the section under `heading` (a `## ` line, to the next one) replaced by
    `text`, or `text` appended when `md` has no such section."""
    start = md.find("\n" + heading)
    if start < 0:
        return md.rstrip("\n") + "\n\n" + text
    end = md.find("\n## ", start + 1)
    return md[:start] + "\n" + text.rstrip("\n") + "\n" + (md[end:] if end >= 0 else "")
