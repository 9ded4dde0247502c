"""quantflow/core/epochs.py: rows reach listeners under their candidate's name; a failing listener never stops
training (a tracking server that goes down mid-training only loses the live points)."""

from __future__ import annotations

from typing import Any

from quantflow.core import epochs


def test_rows_reach_listeners_under_the_candidate_training() -> None:
    seen: list[tuple[str, dict[str, Any]]] = []
    with epochs.listening(lambda candidate, row: seen.append((candidate, row))):
        with epochs.training("neural"):
            epochs.report({"epoch": 1, "val_macro_f1": 0.5})
        with epochs.training("nb_lr"):
            epochs.report({"epoch": 1, "val_macro_f1": 0.7})
    epochs.report({"epoch": 2})  # nobody listens any more
    assert seen == [
        ("neural", {"epoch": 1, "val_macro_f1": 0.5}),
        ("nb_lr", {"epoch": 1, "val_macro_f1": 0.7}),
    ]


def test_a_listener_that_fails_is_dropped_and_the_others_go_on() -> None:
    calls: list[int] = []

    def broken(candidate: str, row: dict[str, Any]) -> None:
        calls.append(row["epoch"])
        raise ConnectionError("tracking server down")

    kept: list[int] = []
    with epochs.listening(broken), epochs.listening(lambda c, row: kept.append(row["epoch"])):
        for epoch in (1, 2, 3):
            epochs.report({"epoch": epoch})  # must not raise
    assert calls == [1] and kept == [1, 2, 3]
