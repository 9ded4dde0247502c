"""Live drift and the review queue on crafted prediction logs, written with the service's own format module
(quantflow/core/prediction_log.py), without the flow: the figures, the verdict and the gate check; the cursor
that only a completed night moves; the review file."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from quantflow.core.layout import Layout
from quantflow.core.prediction_log import day_folder, encode, read_log, served_record, shadow_record
from quantflow.core.text import Tokenizer, TokenizerConfig, build_vocab, char_tokens, clean_text, text_key
from quantflow.intake.drift import oov
from quantflow.intake.live import Reference, live_drift, measure, read_cursor, window
from quantflow.intake.review import review_queue
from tests.conftest import NEWS_WORDS, REVIEW_WORDS, make_texts, two_vocabulary_frame
from tests.params_helpers import params_with, shipped_params

START = datetime(2026, 12, 4, 8, 0, tzinfo=UTC)
LIVE = shipped_params().nightly.live_drift


def served(text: str, label: str, confidence: float, at: datetime = START, keep_text: bool = True) -> dict:
    other = "comment" if label == "news" else "news"
    return served_record(
        moment=at,
        model="quantflow-news_vs_comment",
        version="3",
        variant="int8-static",
        text=text,
        keep_text=keep_text,
        label=label,
        proba={label: confidence, other: 1 - confidence},
        latency_ms=0.2,
    )


def shadow(text: str, label: str, staging_label: str, at: datetime = START) -> dict:
    return shadow_record(
        moment=at,
        model="quantflow-news_vs_comment",
        version="4",
        variant="int8-static",
        text=text,
        keep_text=True,
        label=label,
        proba={label: 0.8, "other": 0.2},
        staging_version="3",
        staging_label=staging_label,
    )


def write_log(log_dir: Path, records: list[dict], name: str = "predictions-1-0.jsonl") -> Path:
    """The lines as the service appends them: one file per process and UTC day."""
    folder = day_folder(log_dir, datetime.fromisoformat(records[0]["time"].replace("Z", "+00:00")))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with path.open("ab") as handle:
        handle.write(encode(records))
    return path


@pytest.fixture(scope="module")
def reference() -> Reference:
    """The training side: the train split's lengths, a char vocabulary, the model's answers on test (50/50, 0.9)."""
    train = two_vocabulary_frame(150)
    tokenizer = Tokenizer(
        TokenizerConfig(), build_vocab((char_tokens(clean_text(t)) for t in train["text"]), 1, 500)
    )
    val = two_vocabulary_frame(30, seed=3)
    return Reference(
        train_lengths=train["text"].str.len().to_numpy(),
        tokenizer=tokenizer,
        val_oov=oov(tokenizer, val["text"].tolist())[0],
        predicted_mix={"news": 0.5, "comment": 0.5},
        confidences=np.full(60, 0.9),
        model="crafted",
    )


def in_distribution(n: int, seed: int = 11) -> list[dict]:
    """n served answers to texts like the training data: both labels, confident."""
    rng = random.Random(seed)
    frame = two_vocabulary_frame(n // 2, seed=seed)
    return [
        served(t, label, rng.uniform(0.85, 0.97), START + timedelta(seconds=i))
        for i, (t, label) in enumerate(zip(frame["text"], frame["label"], strict=True))
    ]


def shifted(n: int) -> list[dict]:
    """n served answers to long texts of an unseen script, all one label, unsure."""
    rng = random.Random(5)
    texts = ["".join(rng.choices("αβγδεζηθικλμνξοπρστυφχψω ", k=rng.randint(150, 300))) for _ in range(n)]
    return [served(t, "comment", 0.55, START + timedelta(seconds=i)) for i, t in enumerate(texts)]


def test_an_in_distribution_log_does_not_flag(tmp_path: Path, reference: Reference) -> None:
    write_log(tmp_path, in_distribution(200))
    report = measure(read_log(tmp_path), reference, LIVE)
    figures = {r["metric"]: r["verdict"] for r in report.rows}
    assert set(figures) == {
        "text length (KS)",
        "predicted label mix (TVD)",
        "mean confidence drop",
        "OOV rate increase",
    }
    assert report.verdict == "ok", report.rows
    assert report.new_tokens == []


def test_a_shifted_log_flags_and_blocks_naming_each_figure(tmp_path: Path, reference: Reference) -> None:
    from quantflow.intake.live import LiveDrift

    write_log(tmp_path, shifted(150))
    report = measure(read_log(tmp_path), reference, LIVE)
    verdicts = {r["metric"]: r["verdict"] for r in report.rows}
    assert verdicts == {
        "text length (KS)": "warn",  # shipped without a block bound: warns only
        "predicted label mix (TVD)": "block",
        "mean confidence drop": "block",
        "OOV rate increase": "block",
    }
    assert report.new_tokens and report.new_tokens[0][0] in "αβγδεζηθικλμνξοπρστυφχψω"
    live = LiveDrift("2026-12-03T08:00:00.000000Z", "2026-12-04T08:00:00.000000Z", LIVE.min_texts)
    live.status, live.served, live.drift = "measured", 150, report
    check = live.check()
    assert not check["passed"] and check["name"] == "live_drift"
    assert "predicted label mix (TVD) = 0.500 over its block bound 0.45" in check["detail"]
    assert "mean confidence drop = 0.350" in check["detail"] and "on 150 served texts" in check["detail"]
    assert check["value"] == pytest.approx(0.5) and check["threshold"] == 0.45
    assert live.metrics()["live_label_tvd"] == pytest.approx(0.5)


def test_shadow_disagreement_is_measured_from_enough_shadow_lines(
    tmp_path: Path, reference: Reference
) -> None:
    lines = in_distribution(200)
    texts = [line["text"] for line in lines]
    lines += [shadow(t, "news", "news" if i % 4 else "comment") for i, t in enumerate(texts[:120])]
    write_log(tmp_path, lines)
    (row,) = [
        r for r in measure(read_log(tmp_path), reference, LIVE).rows if r["metric"] == "shadow disagreement"
    ]
    assert row["value"] == pytest.approx(0.25) and row["verdict"] == "warn"  # 0.1 < 0.25, block: never
    assert "agreed with the served label on 75.0% of 120 texts" in row["detail"]


def test_too_few_texts_give_no_verdict(tmp_path: Path) -> None:
    layout = Layout.of(shipped_params(), tmp_path)
    write_log(layout.served_log_dir, shifted(LIVE.min_texts - 1))
    live = live_drift(shipped_params(), layout, None, START + timedelta(days=1))
    assert live.status == "not enough traffic" and live.verdict == "not enough traffic"
    assert live.drift.rows == [] and live.check()["passed"]
    assert live.headline() == (
        f"Live drift: {LIVE.min_texts - 1} served texts (the start of the log → {live.until}), fewer than "
        f"nightly.live_drift.min_texts={LIVE.min_texts}: not enough traffic, no verdict."
    )
    assert set(live.metrics()) == {"live_served_texts", "live_review_texts"}
    assert layout.live_reports.table.read_text().startswith(live.headline())


def test_no_log_says_so_in_one_line(tmp_path: Path) -> None:
    layout = Layout.of(shipped_params(), tmp_path)
    live = live_drift(shipped_params(), layout, None, START)
    assert live.status == "no log" and live.metrics() == {} and live.review is None
    assert layout.live_reports.table.read_text() == (
        "Live drift: no prediction log in `data/served` (the service writes it): nothing to read.\n"
    )


def test_the_window_starts_where_the_last_completed_night_stopped(tmp_path: Path) -> None:
    """Lines the cursor has passed are not read again; a line newer than settle_s waits for the next night."""
    from quantflow.intake.live import advance_cursor

    now = START + timedelta(hours=20)
    assert window(tmp_path, 5, now) == (None, now - timedelta(seconds=5))
    advance_cursor(tmp_path, "2026-12-04T10:00:00.000000Z", "night-1")
    since, until = window(tmp_path, 5, now)
    assert since == datetime(2026, 12, 4, 10, tzinfo=UTC) and read_cursor(tmp_path) == since
    write_log(
        tmp_path / "log",
        [served("旧的", "news", 0.9, since), served("新的", "news", 0.9, since + timedelta(seconds=1))],
    )
    assert read_log(tmp_path / "log", since, until)["text"].tolist() == ["新的"]


def test_the_cursor_moves_only_when_the_night_completes(tmp_path: Path) -> None:
    """A night rolled back (or killed, or finished by a later run: close_night) leaves the cursor: the next night
    reads its lines again; a night completing in its own run moves it to the end of the window it read."""
    from flows.night import close_night, complete_night, open_night, roll_back
    from tests.params_helpers import write_params

    write_params(tmp_path / "params.yaml")
    params = shipped_params()
    layout = Layout.of(params, tmp_path)
    for ends in (roll_back, close_night):
        night = open_night(layout, "params.yaml", {}, params)
        night.live_until = "2026-12-04T10:00:00.000000Z"
        ends(layout, night, "stopped")
        assert read_cursor(tmp_path) is None, ends.__name__
    night = open_night(layout, "params.yaml", {}, params)
    night.live_until = "2026-12-04T10:00:00.000000Z"
    complete_night(layout, night, "not retrained")
    assert read_cursor(tmp_path) == datetime(2026, 12, 4, 10, tzinfo=UTC)


def review_log(tmp_path: Path) -> tuple[Layout, pd.DataFrame, list[str]]:
    """Served texts with known confidences: repeats (the same text in full width), a text of the dataset and
    one of an accepted batch, a confident answer the shadow model disputes, texts logged without their text."""
    layout = Layout.of(shipped_params(), tmp_path)
    rng = random.Random(2)
    texts = make_texts(NEWS_WORDS, 6, rng) + make_texts(REVIEW_WORDS, 6, rng)
    layout.raw.parent.mkdir(parents=True)
    pd.DataFrame({"text": [texts[0]], "label": ["news"]}).to_parquet(layout.raw)
    layout.accepted_dir.mkdir(parents=True)
    pd.DataFrame(
        {"text": [texts[1]], "label": ["news"], "key": [text_key(texts[1])], "batch": ["b"]}
    ).to_parquet(layout.accepted_file("b"))
    confidences = [0.51, 0.52, 0.90, 0.60, 0.55, 0.70, 0.80, 0.65, 0.75, 0.58, 0.95, 0.85]
    lines = [
        served(t, "news", c, START + timedelta(seconds=i))
        for i, (t, c) in enumerate(zip(texts, confidences, strict=True))
    ]
    lines.append(
        served(f"<b>{texts[4]}</b> ", "news", 0.53, START + timedelta(minutes=1))
    )  # the same text by its key, less sure
    lines.append(shadow(texts[10], "comment", "news"))  # served at 0.95, but the challenger says otherwise
    lines += [served(f"秘密{i}", "news", 0.5, keep_text=False) for i in range(3)]
    write_log(layout.served_log_dir, lines)
    return layout, read_log(layout.served_log_dir), texts


def test_review_queue_takes_disagreements_then_the_lowest_confidence(tmp_path: Path) -> None:
    layout, log, texts = review_log(tmp_path)
    queue = review_queue(log, layout, 5, "2026-12-04")
    exported = pd.read_csv(queue.path, keep_default_na=False)
    assert queue.path == tmp_path / "data" / "review" / "2026-12-04.csv"
    assert list(exported.columns) == ["text", "label"] and set(exported["label"]) == {""}
    # the disputed one first; then 0.53 (texts[4]'s repeat: one row, its first-served form), 0.58, 0.60, 0.65;
    # texts[0] (0.51) is in the raw data and texts[1] (0.52) in an accepted batch: left out
    assert exported["text"].tolist() == [texts[10], texts[4], texts[9], texts[3], texts[7]]
    assert (queue.rows, queue.disagreements, queue.known, queue.without_text) == (5, 1, 2, 3)
    assert (queue.lowest, queue.highest) == (0.53, 0.95)
    assert queue.describe("data/review/2026-12-04.csv") == (
        "Review queue: 5 texts in `data/review/2026-12-04.csv` to label (1 shadow disagreements, then the lowest "
        "confidence, served confidence 0.53 to 0.95); 2 served texts left out: already in the dataset or an "
        "earlier review file; 3 served texts were logged without their text (serve.log_text: false) and cannot "
        "be queued."
    )


def test_a_second_queue_the_same_day_leaves_the_first_file_and_its_texts(tmp_path: Path) -> None:
    layout, log, _ = review_log(tmp_path)
    first = review_queue(log, layout, 5, "2026-12-04")
    second = review_queue(log, layout, 5, "2026-12-04")
    assert second.path == tmp_path / "data" / "review" / "2026-12-04-2.csv"
    earlier = set(pd.read_csv(first.path)["text"])
    assert not earlier & set(pd.read_csv(second.path)["text"]) and second.rows == 5


def test_no_queue_without_texts(tmp_path: Path) -> None:
    layout = Layout.of(params_with({"nightly.review_size": 10}), tmp_path)
    write_log(layout.served_log_dir, [served(f"秘密{i}", "news", 0.5, keep_text=False) for i in range(4)])
    queue = review_queue(read_log(layout.served_log_dir), layout, 10, "2026-12-04")
    assert queue.path is None and queue.without_text == 4 and not layout.review_dir.exists()
    assert queue.describe("") == (
        "Review queue: nothing to queue; 4 served texts were logged without their text (serve.log_text: false) "
        "and cannot be queued."
    )
