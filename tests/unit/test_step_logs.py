"""quantflow's own loggers reach Prefect: the CLI sets Prefect's extra loggers before importing it, a flow sets
them up where a process did not, and long steps log their progress."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from flows.logs import PREFECT_ENV, STEP_LOGGERS
from quantflow.core.text import Tokenizer, TokenizerConfig, base_vocab
from tasks.preprocess import tokenize_texts

# prints, per step logger: (how many Prefect API handlers it has, its effective level)
PROBE = f"""
import json, logging
from prefect.logging.handlers import APILogHandler
print(json.dumps({{n: [sum(isinstance(h, APILogHandler) for h in logging.getLogger(n).handlers),
                      logging.getLogger(n).getEffectiveLevel()] for n in {STEP_LOGGERS!r}}}))
"""


def probe(setup: str) -> dict[str, list]:
    """Run ``setup`` then import Prefect's flow API (which configures its logging) in a fresh process whose
    environment lacks the logging settings."""
    env = {k: v for k, v in os.environ.items() if k not in PREFECT_ENV}
    done = subprocess.run(
        [sys.executable, "-c", setup + "\nfrom prefect import flow\n" + PROBE],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=120,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_cli_names_the_step_loggers_before_prefect_configures_logging() -> None:
    seen = probe("from quantflow.cli import _setup; _setup()")
    assert seen == {name: [1, logging.INFO] for name in STEP_LOGGERS}


def test_without_it_prefect_ignores_them_and_a_flow_sets_them_up() -> None:
    assert probe("") == {name: [0, logging.WARNING] for name in STEP_LOGGERS}
    seen = probe(
        "from prefect import flow\nfrom flows.logs import send_step_logs\nsend_step_logs(); send_step_logs()"
    )
    assert seen == {name: [1, logging.INFO] for name in STEP_LOGGERS}


def test_infra_and_cli_send_the_same_loggers() -> None:
    assert PREFECT_ENV["PREFECT_LOGGING_EXTRA_LOGGERS"].split(",") == list(STEP_LOGGERS)


def test_tokenization_logs_its_progress_every_n_texts(caplog: pytest.LogCaptureFixture) -> None:
    config = TokenizerConfig("zh", "char", True, 16)
    texts = [f"第{i}条新闻" for i in range(250)]
    with caplog.at_level(logging.INFO, logger="tasks.preprocess"):
        tokens = tokenize_texts(Tokenizer(config, base_vocab(config)), texts, "train", every=100)
    assert len(tokens) == 250
    lines = [r.getMessage() for r in caplog.records if r.name == "tasks.preprocess"]
    assert lines[:2] == [
        "preprocess: tokenized 100 of 250 train texts",
        "preprocess: tokenized 200 of 250 train texts",
    ]
    assert len(lines) == 3 and lines[2].startswith("preprocess: tokenized 250 train texts in ")
