"""The train step's candidates (quantflow/core/candidates.py, tasks/train.py) and a classic winner's compress
(quantflow/core/classic_variants.py): every family into its own folder, the best on validation shipped, ties
to the smaller then faster model, and fp32 + int8-static of a scikit-learn model checked against it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from quantflow.core.bundle import Manifest
from quantflow.core.candidates import (
    FIT_FILE,
    CandidateScore,
    folder_family,
    load_fit,
    predict_scores,
    select,
    train_classic,
)
from quantflow.core.export import ParityError
from quantflow.core.features import load_features
from quantflow.core.layout import CompressionReports, TrainOutputs
from quantflow.core.onnx_model import MODEL_FILE, OnnxClassifier, softmax
from tasks.compress import compress
from tasks.train import train
from tests.conftest import two_vocabulary_frame
from tests.model.tiny import LABELS, split_and_preprocess, tiny_train_params
from tests.params_helpers import params_with, preprocess_with

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = tiny_train_params(candidates=["tfidf_lr", "nb_lr", "neural"])  # the winner is not the first
PARAMS = params_with({"compress.latency_texts": 20, "compress.throughput_texts": 64, "compress.rounds": 1})
COMPRESS, CALIBRATE = PARAMS.compress, PARAMS.calibrate


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("candidates")
    return split_and_preprocess(
        root, two_vocabulary_frame(120), preprocess_with(min_freq=1, max_len=32), labels=LABELS
    )


def outputs(root: Path) -> TrainOutputs:
    return TrainOutputs(
        root / "model", root / "candidates", root / "reports" / "candidates.json", root / "h.json"
    )


@pytest.fixture(scope="module")
def trained(data: Path) -> TrainOutputs:
    out = outputs(data / "run")
    train(TINY, data / "features", data / "tokenizer", out, seed=3)
    return out


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_every_candidate_gets_its_folder_and_the_best_on_validation_ships(trained: TrainOutputs) -> None:
    selection = json.loads(trained.selection.read_text())
    assert set(selection["candidates"]) == {"neural", "tfidf_lr", "nb_lr"}
    families = {n: folder_family(trained.candidate_dir(n)) for n in selection["candidates"]}
    assert families == {"neural": "neural", "tfidf_lr": "classic", "nb_lr": "classic"}
    assert (trained.candidate_dir("neural") / "model.pt").is_file()
    assert (trained.candidate_dir("tfidf_lr") / MODEL_FILE).is_file()
    rows = selection["candidates"]
    best = max(rows.values(), key=lambda r: r["val_macro_f1"])["val_macro_f1"]
    assert rows[selection["winner"]]["val_macro_f1"] == best
    winner = trained.candidate_dir(selection["winner"])
    shipped = folder_bytes(trained.model_dir)
    assert shipped == {k: v for k, v in folder_bytes(winner).items() if k != "history.json"}
    history = json.loads(trained.history.read_text())
    assert history == json.loads((winner / "history.json").read_text())
    assert selection["winner"] in selection["reason"]


def test_candidate_scores_are_the_validation_split_s(trained: TrainOutputs, data: Path) -> None:
    """The selection's validation accuracy is what the folder's model predicts on the validation ids."""
    ids, y = load_features(data / "features", "val")
    rows = json.loads(trained.selection.read_text())["candidates"]
    for name, row in rows.items():
        predicted = predict_scores(trained.candidate_dir(name), ids).argmax(axis=1)
        assert row["val_accuracy"] == pytest.approx(float(np.mean(predicted == y)), abs=1e-6)
        assert row["size_bytes"] > 0 and row["ms_per_text"] >= 0


def test_a_candidate_no_longer_listed_leaves_no_folder(data: Path) -> None:
    out = outputs(data / "relist")
    train(TINY, data / "features", data / "tokenizer", out, seed=3)
    train(TINY.model_copy(update={"candidates": ["tfidf_lr"]}), data / "features", data / "tokenizer", out, 3)
    assert sorted(p.name for p in out.candidates_dir.iterdir()) == ["tfidf_lr"]
    assert folder_family(out.model_dir) == "classic" and not (out.model_dir / "model.pt").exists()
    assert json.loads(out.selection.read_text())["winner"] == "tfidf_lr"


def score(name: str, f1: float, size: int, ms: float) -> CandidateScore:
    return CandidateScore(name, "x", name, name, f1, f1, size, ms, 1.0)


def test_ties_go_to_the_smaller_then_the_faster_model() -> None:
    winner, reason = select([score("a", 0.9, 100, 1.0), score("b", 0.91, 900, 9.0), score("c", 0.9, 50, 2.0)])
    assert winner.name == "b" and "tied" not in reason
    winner, reason = select([score("a", 0.9, 100, 1.0), score("c", 0.9, 50, 2.0), score("d", 0.8, 1, 0.1)])
    assert winner.name == "c" and "tied with a" in reason
    winner, _ = select([score("a", 0.9, 50, 3.0), score("c", 0.9, 50, 2.0)])
    assert winner.name == "c"
    with pytest.raises(ValueError, match="no candidates"):
        select([])


def test_a_classic_folder_keeps_its_fit_and_its_graph_agrees(trained: TrainOutputs, data: Path) -> None:
    folder = trained.candidate_dir("nb_lr")
    fit = load_fit(folder)
    assert fit.model == "nb_lr" and Manifest.load(folder).variant == "sklearn-fp32"
    ids, _ = load_features(data / "features", "test")
    proba = softmax(OnnxClassifier(folder).logits(ids))
    assert np.abs(proba - fit.predict_proba(ids)).max() <= 1e-4
    np.testing.assert_array_equal(predict_scores(folder, ids), fit.predict_proba(ids))


def classic_model(data: Path, name: str) -> Path:
    folder = data / name / "model"
    train_classic("tfidf_lr", TINY, data / "features", data / "tokenizer", folder, folder / "history.json", 3)
    return folder


def test_compress_builds_fp32_and_int8_static_of_a_classic_model(data: Path) -> None:
    folder = classic_model(data, "compress")
    variants = data / "compress" / "variants"
    (variants / "pruned-int8").mkdir(parents=True)  # a neural model's variant from an earlier run
    reports = CompressionReports.under(data / "compress" / "reports")
    result = compress(COMPRESS, CALIBRATE, folder, data / "split", variants, reports, seed=3)
    assert sorted(p.name for p in variants.iterdir()) == ["fp32", "int8-static"]
    assert result.chosen == "int8-static"  # the smallest within compress.max_drop_pp
    assert result.parity_max_abs_diff <= COMPRESS.parity_atol
    assert (variants / "fp32" / MODEL_FILE).read_bytes() == (folder / MODEL_FILE).read_bytes()
    ops = {n.op_type for n in onnx.load(variants / "int8-static" / MODEL_FILE).graph.node}
    assert {"TfIdfVectorizer", "MatMulInteger"} <= ops
    report = json.loads(reports.report.read_text())
    assert report["family"] == "classic" and list(report["reference"]) == ["sklearn-fp32"]
    assert report["variants"]["int8-static"]["size_bytes"] < report["variants"]["fp32"]["size_bytes"]
    assert Manifest.load(variants / "int8-static").variant == "onnx-int8-static"
    assert (
        Manifest.load(variants / "int8-static").metrics["accuracy"]
        == result.variants["int8-static"]["accuracy"]
    )
    assert "sklearn-fp32" in reports.table.read_text() and reports.plot.is_file()
    calibration = json.loads(reports.calibration.read_text())  # the chosen (int8) folder is calibrated
    assert Manifest.load(variants / "int8-static").calibration == calibration["calibration"]
    assert (
        calibration["calibration"]["method"] != "none"
        and Manifest.load(variants / "fp32").calibration is None
    )
    assert set(calibration["models"]) == {"fp32", "int8-static"} and reports.reliability_plot.is_file()


def test_a_graph_that_does_not_match_its_fit_is_refused(data: Path) -> None:
    """A model.onnx from another fit (here: NB-LR's graph beside TF-IDF + LR's fit) fails the parity check."""
    folder = classic_model(data, "mismatch")
    other = data / "mismatch" / "other"
    train_classic("nb_lr", TINY, data / "features", data / "tokenizer", other, other / "history.json", 3)
    shutil.copy2(other / MODEL_FILE, folder / MODEL_FILE)
    reports = CompressionReports.under(data / "mismatch" / "reports")
    with pytest.raises(ParityError, match="ONNX probabilities differ from scikit-learn's"):
        compress(COMPRESS, CALIBRATE, folder, data / "split", data / "mismatch" / "variants", reports, seed=3)
    assert not reports.report.exists()


def test_a_folder_without_its_fit_names_the_file(data: Path) -> None:
    folder = classic_model(data, "nofit")
    (folder / FIT_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="no model.joblib"):
        load_fit(folder)
