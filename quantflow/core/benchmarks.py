"""BENCHMARKS.md is written by several bench commands, each owning one marked section."""

from __future__ import annotations

import subprocess
from pathlib import Path


def uptime() -> str:
    """The machine's load as `uptime` prints it: each section records it before and after its run."""
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def write_section(text: str, path: Path, start: str, end: str, heading: str | None = None) -> None:
    """Replace the ``start``…``end`` section of ``path`` with ``text`` (which carries both markers), or append
    it under ``heading``: the other commands' sections stay as they are."""
    current = path.read_text(encoding="utf-8") if path.exists() else "# quantflow benchmarks\n"
    if start in current and end in current:
        head, rest = current.split(start, 1)
        current = head + text.strip() + rest.split(end, 1)[1]
    else:
        current = current.rstrip() + "\n\n" + (f"{heading}\n\n" if heading else "") + text.strip() + "\n"
    path.write_text(current, encoding="utf-8")
