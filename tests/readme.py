"""The README's shell examples, read as a reader would run them: its ```bash blocks, a server command's port,
the sample requests (``curl``) beside it."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
PORT_FLAG = re.compile(r"(?:\s-p|\s--port)[ =](\d+)")


def bash_blocks(text: str | None = None) -> list[list[str]]:
    """The lines of every ```bash block, stripped."""
    text = README.read_text(encoding="utf-8") if text is None else text
    return [
        [line.strip() for line in block.splitlines() if line.strip()]
        for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    ]


def blocks_starting(pattern: str) -> list[list[str]]:
    """The blocks holding a line that matches ``pattern`` (a server command)."""
    return [block for block in bash_blocks() if any(re.match(pattern, line) for line in block)]


def port_of(line: str, default: int) -> int:
    """The port a server command line asks for (``-p N`` / ``--port N``), else the server's ``default``."""
    found = PORT_FLAG.search(line)
    return int(found.group(1)) if found else default


def requests_to(block: list[str], port: int) -> list[str]:
    """The ``curl`` lines of ``block`` that call ``127.0.0.1:<port>``, comments removed."""
    return [
        re.sub(r"\s+#[^'\"]*$", "", line)
        for line in block
        if line.startswith("curl ") and f"127.0.0.1:{port}/" in line
    ]
