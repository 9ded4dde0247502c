"""The service's prediction log: what each logged line holds, where the files are, and how a reader gets them.

The service (serving/) writes it, the nightly flow (quantflow/intake/live.py) reads it; both import this module
only, so the format is written once. One JSON object per line (JSONL: appendable in batches, readable while
the service runs, one ``tail -f`` away for a human), in daily files per server process::

    <serve.log_dir>/<YYYY-MM-DD>/predictions-<pid>-<start>.jsonl     (UTC date of the lines inside)

Two kinds of line:

- ``served``: a text the service answered, with the model (name, version, variant) that answered it.
- ``shadow``: the same text scored after the response by the version behind ``@challenger``
  (``serve.shadow: challenger``), with the served label beside it and whether the two agree.

``text`` is null when ``serve.log_text`` is false; ``text_sha256`` is always there (deduplication, joins of a
shadow line to its served line, counting repeats), so the log is useful without storing what users wrote.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import orjson

if TYPE_CHECKING:  # imported in read_log: the service writes the log and never loads pandas (~0.3 s, ~40 MB)
    import pandas as pd

logger = logging.getLogger(__name__)

Kind = Literal["served", "shadow"]
FILE_GLOB = "*/predictions-*.jsonl"
# the columns of read_log's frame; a line lacking one (older writer) reads as null there
COLUMNS = [
    "kind",
    "time",
    "model",
    "version",
    "variant",
    "text",
    "text_sha256",
    "length",
    "label",
    "proba",
    "confidence",
    "latency_ms",
    "staging_version",
    "staging_label",
    "agree",
]


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def utc_now() -> datetime:
    return datetime.now(UTC)


def timestamp(moment: datetime) -> str:
    """ISO 8601 in UTC with microseconds and a ``Z``: sorts as text, parses with pandas. The text up to the
    second is formatted once a second (``strftime`` was a sixth of the service's cost of writing a line)."""
    return f"{_second(math.floor(moment.timestamp()))}.{moment.microsecond:06d}Z"


@functools.lru_cache(maxsize=8)
def _second(epoch_second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch_second))


def day_folder(log_dir: Path, moment: datetime) -> Path:
    return log_dir / moment.astimezone(UTC).strftime("%Y-%m-%d")


def file_name(pid: int, start: datetime) -> str:
    """The file one server process appends to, in each day folder: ``predictions-<pid>-<start>.jsonl``, its
    start in UTC to the second (a restarted process that gets the same pid starts a new file)."""
    return f"predictions-{pid}-{start.astimezone(UTC).strftime('%Y%m%dT%H%M%SZ')}.jsonl"


def _answer(
    kind: Kind,
    moment: datetime,
    model: str,
    version: str,
    variant: str,
    text: str,
    keep_text: bool,
    label: str,
    proba: Mapping[str, float],
) -> dict[str, Any]:
    """What both kinds of line hold: when, which model, the text (or its hash), and the model's answer."""
    return {
        "kind": kind,
        "time": timestamp(moment),
        "model": model,
        "version": version,
        "variant": variant,
        "text": text if keep_text else None,
        "text_sha256": text_hash(text),
        "length": len(text),
        "label": label,
        "proba": (rounded := {k: round(v, 6) for k, v in proba.items()}),
        "confidence": max(rounded.values()),
    }


def served_record(
    *,
    moment: datetime,
    model: str,
    version: str,
    variant: str,
    text: str,
    keep_text: bool,
    label: str,
    proba: Mapping[str, float],
    latency_ms: float,
) -> dict[str, Any]:
    """One ``served`` line: the answer the caller got, and how long the request took in the service."""
    line = _answer("served", moment, model, version, variant, text, keep_text, label, proba)
    line["latency_ms"] = round(float(latency_ms), 4)
    return line


def shadow_record(
    *,
    moment: datetime,
    model: str,
    version: str,
    variant: str,
    text: str,
    keep_text: bool,
    label: str,
    proba: Mapping[str, float],
    staging_version: str,
    staging_label: str,
) -> dict[str, Any]:
    """One ``shadow`` line: the challenger's answer to a served text, and whether it agrees with the served one."""
    line = _answer("shadow", moment, model, version, variant, text, keep_text, label, proba)
    line.update(staging_version=staging_version, staging_label=staging_label, agree=label == staging_label)
    return line


def encode(records: list[dict[str, Any]]) -> bytes:
    """Lines ready to append (one write per batch: a reader never sees half a batch's last line for long)."""
    return b"".join(json.dumps(r, ensure_ascii=False).encode("utf-8") + b"\n" for r in records)


def encode_lines(records: list[dict[str, Any]]) -> list[bytes]:
    """:func:`encode` line by line through orjson (~15x faster; no space after ``,`` and ``:``, the same objects
    read back): what the service writes, in a thread that shares the interpreter lock with its requests."""
    return [orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in records]


def log_files(log_dir: Path) -> list[Path]:
    """Every log file, oldest day first (and by name within a day)."""
    return sorted(log_dir.glob(FILE_GLOB)) if log_dir.is_dir() else []


def _lines(path: Path) -> Iterator[dict[str, Any]]:
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.endswith(b"\n"):
                return  # the writer's batch still being appended (or cut by a kill): skipped, not an error
            try:
                yield json.loads(line)
            except ValueError:
                logger.warning("prediction log %s line %d is not JSON: skipped", path, number)


def read_log(log_dir: Path, since: datetime | None = None, until: datetime | None = None) -> pd.DataFrame:
    """The logged lines with ``since < time <= until`` (both optional), as a frame with :data:`COLUMNS`
    (``time`` as UTC timestamps), in time order. Whole days before ``since`` are not opened."""
    import pandas as pd

    first_day = since.astimezone(UTC).strftime("%Y-%m-%d") if since else ""
    rows = [row for path in log_files(log_dir) if path.parent.name >= first_day for row in _lines(path)]
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["time"] = pd.to_datetime(frame["time"], utc=True, format="ISO8601")
    if since is not None:
        frame = frame[frame["time"] > pd.Timestamp(since)]
    if until is not None:
        frame = frame[frame["time"] <= pd.Timestamp(until)]
    return frame.sort_values("time", kind="stable").reset_index(drop=True)
