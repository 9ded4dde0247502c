"""Classic models on token ids (quantflow/core/classic.py, classic_onnx.py): ONNX parity with scikit-learn,
standard operators only, padding and truncation, the model folder the service loads, and the int8 variant."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest

from quantflow.core.bundle import Manifest
from quantflow.core.classic import ClassicFit, ClassicParams, fit_classic
from quantflow.core.classic_onnx import quantize_classic, save_classic_folder
from quantflow.core.features import load_features
from quantflow.core.onnx_model import INPUT_NAME, MODEL_FILE, OnnxClassifier, softmax
from quantflow.core.text import Tokenizer, pad_batch
from serving.model import ServedModel
from tests.conftest import NEWS_WORDS, REVIEW_WORDS, make_texts, two_vocabulary_frame
from tests.model.tiny import split_and_preprocess
from tests.params_helpers import classic_with, preprocess_with

MAX_LEN = 24  # the tiny texts run 6-37 chars: some are cut
PARITY_ATOL = 1e-4
SETTINGS = [  # (model, train.classic.sublinear_tf)
    ("tfidf_lr", False),
    ("tfidf_lr", True),
    ("nb_lr", False),
    ("nb_lr", True),
]


@dataclass(frozen=True)
class Prepared:
    root: Path
    labels: list[str]
    texts: list[str]  # the test split's texts

    def ids(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        return load_features(self.root / "features", split)

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "tokenizer"


def three_class_frame(per_class: int = 100) -> pd.DataFrame:
    """News-like, comment-like and mixed texts: three classes for the multinomial and one-vs-rest graphs."""
    rng = random.Random(11)
    frame = two_vocabulary_frame(per_class)
    mixed = make_texts(NEWS_WORDS + REVIEW_WORDS, per_class, rng)
    return pd.concat([frame, pd.DataFrame({"text": mixed, "label": "mixed"})], ignore_index=True)


def _prepare(root: Path, frame: pd.DataFrame) -> Prepared:
    split_and_preprocess(root, frame, preprocess_with(max_len=MAX_LEN))
    labels = json.loads((root / "features" / "labels.json").read_text(encoding="utf-8"))
    texts = pd.read_parquet(root / "split" / "test.parquet")["text"].tolist()
    return Prepared(root, labels, texts)


@pytest.fixture(scope="module")
def two_classes(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    return _prepare(tmp_path_factory.mktemp("two"), two_vocabulary_frame(150))


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    return _prepare(tmp_path_factory.mktemp("three"), three_class_frame())


def fit_on(data: Prepared, model: str = "tfidf_lr", settings: ClassicParams | None = None) -> ClassicFit:
    """``model`` fitted on the training split with params.yaml's train.classic (or ``settings``)."""
    ids, y = data.ids("train")
    return fit_classic(ids, y, len(data.labels), model, settings or classic_with(), MAX_LEN, seed=0)


def export(data: Prepared, fit: ClassicFit, folder: Path) -> OnnxClassifier:
    return OnnxClassifier(save_classic_folder(fit, folder, data.labels, data.tokenizer_dir))


def onnx_proba(classifier: OnnxClassifier, ids: np.ndarray) -> np.ndarray:
    return softmax(classifier.logits(ids))


@pytest.mark.parametrize(("model", "sublinear"), SETTINGS, ids=[f"{m}-sublinear_{s}" for m, s in SETTINGS])
@pytest.mark.parametrize("classes", ["two_classes", "three_classes"])
def test_onnx_probabilities_match_scikit_learn(
    model: str, sublinear: bool, classes: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    data: Prepared = request.getfixturevalue(classes)
    fit = fit_on(data, model, classic_with(sublinear_tf=sublinear))
    classifier = export(data, fit, tmp_path / "model")
    ids, _ = data.ids("test")  # (N, max_len), as data/features holds them
    ids = np.vstack([ids, np.zeros((1, ids.shape[1]), np.int64)])  # + a row of padding only: no n-gram at all
    expected = fit.predict_proba(ids)
    assert np.abs(onnx_proba(classifier, ids) - expected).max() <= PARITY_ATOL
    encoded = classifier.tokenizer.encode(data.texts)  # (N, T) as the service encodes: T = the longest text
    assert np.abs(onnx_proba(classifier, encoded) - fit.predict_proba(encoded)).max() <= PARITY_ATOL


def test_graph_is_tfidf_vectorizer_and_gemm_in_standard_operators(
    two_classes: Prepared, tmp_path: Path
) -> None:
    fit = fit_on(two_classes)
    save_classic_folder(fit, tmp_path, two_classes.labels, two_classes.tokenizer_dir)
    model = onnx.load(tmp_path / MODEL_FILE)
    ops = [node.op_type for node in model.graph.node]
    assert {"TfIdfVectorizer", "Gemm"} <= set(ops)
    assert {node.domain for node in model.graph.node} == {""}  # ai.onnx only: no custom or contrib op
    assert [opset.domain for opset in model.opset_import] == [""]
    (graph_input,) = model.graph.input
    assert graph_input.name == INPUT_NAME
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert [d.dim_param for d in graph_input.type.tensor_type.shape.dim] == ["batch", "seq"]  # both dynamic
    (output,) = model.graph.output
    assert output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_nb_ratios_fold_into_the_gemm(two_classes: Prepared, three_classes: Prepared, tmp_path: Path) -> None:
    """NB-LR's graph is TF-IDF + LR's: the ratio scaling lives in the Gemm's weights, no extra node."""
    for data in (two_classes, three_classes):
        graphs = {}
        for model in ("tfidf_lr", "nb_lr"):
            save_classic_folder(fit_on(data, model), tmp_path / model, data.labels, data.tokenizer_dir)
            graphs[model] = [n.op_type for n in onnx.load(tmp_path / model / MODEL_FILE).graph.node]
        before_logits = slice(0, graphs["tfidf_lr"].index("Gemm") + 1)
        assert graphs["nb_lr"][before_logits] == graphs["tfidf_lr"][before_logits]


def test_onnx_classifier_loads_the_folder_and_predicts_scikit_learns_labels(
    two_classes: Prepared, tmp_path: Path
) -> None:
    fit = fit_on(two_classes)
    classifier = export(two_classes, fit, tmp_path / "model")
    expected = fit.predict_proba(classifier.tokenizer.encode(two_classes.texts)).argmax(axis=1)
    assert classifier.predict(two_classes.texts) == [two_classes.labels[i] for i in expected]
    manifest = Manifest.load(tmp_path / "model")
    assert manifest.config["arch"] == "tfidf_lr" and manifest.variant == "fp32"
    assert manifest.labels == two_classes.labels


def test_padding_and_ids_past_max_len_change_nothing(two_classes: Prepared, tmp_path: Path) -> None:
    """A text alone (no padding), in a padded batch, with extra padding, or with ids past max_len (which the
    tokenizer would have cut): the same probabilities."""
    fit = fit_on(two_classes, settings=classic_with(sublinear_tf=True))
    classifier = export(two_classes, fit, tmp_path / "model")
    texts = two_classes.texts[:20]
    alone = np.vstack([onnx_proba(classifier, classifier.tokenizer.encode([t])) for t in texts])
    batch = classifier.tokenizer.encode(texts)  # (20, T), short rows padded
    assert (batch == 0).any()
    assert np.abs(onnx_proba(classifier, batch) - alone).max() <= 1e-6
    wider = np.hstack([batch, np.zeros((len(texts), 7), np.int64)])
    assert np.abs(onnx_proba(classifier, wider) - alone).max() <= 1e-6
    full, _ = two_classes.ids("test")  # (N, max_len): fill every row, then append ids the tokenizer would cut
    full = np.where(full == 0, 5, full)
    beyond = np.hstack([full, np.full((len(full), 9), 7, np.int64)])
    assert np.abs(onnx_proba(classifier, beyond) - onnx_proba(classifier, full)).max() <= 1e-6
    assert np.abs(onnx_proba(classifier, beyond) - fit.predict_proba(beyond)).max() <= PARITY_ATOL
    holed = (
        full.copy()
    )  # a pad inside a row (the tokenizer makes none) ends a run of ids in both models alike
    holed[:, MAX_LEN // 2] = 0
    assert np.abs(onnx_proba(classifier, holed) - fit.predict_proba(holed)).max() <= PARITY_ATOL


def test_the_service_serves_and_explains_a_classic_folder(two_classes: Prepared, tmp_path: Path) -> None:
    fit = fit_on(two_classes)
    folder = save_classic_folder(fit, tmp_path / "model", two_classes.labels, two_classes.tokenizer_dir)
    served = ServedModel.load(folder, name="classic", version="1", alias=None, threads=1)
    text = two_classes.texts[0]
    (prediction,) = served.predict([text])
    explanation = served.explain(text)
    assert explanation["label"] == prediction["label"]
    assert len(explanation["tokens"]) == len(Tokenizer.load(folder).tokens(text)[:MAX_LEN])
    assert any(t["contribution"] != 0 for t in explanation["tokens"])


def test_int8_variant_has_quantized_ops_is_smaller_and_as_accurate(
    two_classes: Prepared, tmp_path: Path
) -> None:
    fit = fit_on(two_classes)
    fp32 = save_classic_folder(fit, tmp_path / "fp32", two_classes.labels, two_classes.tokenizer_dir)
    int8 = quantize_classic(fp32, tmp_path / "int8")
    ops = {node.op_type for node in onnx.load(int8 / MODEL_FILE).graph.node}
    assert {"QuantizeLinear", "MatMulInteger"} <= ops and "TfIdfVectorizer" in ops
    assert not ops & {"Gemm", "DynamicQuantizeLinear"}
    assert (int8 / MODEL_FILE).stat().st_size < (fp32 / MODEL_FILE).stat().st_size
    assert Manifest.load(int8).variant == "int8-static"
    texts = two_classes.texts
    assert OnnxClassifier(int8).predict(texts) == OnnxClassifier(fp32).predict(texts)


def test_int8_scores_of_a_text_do_not_depend_on_its_batch(two_classes: Prepared, tmp_path: Path) -> None:
    """Fixed scales: a text's logits are the same bits alone, in a batch, or beside a text with a far larger
    tf-idf value (a per-batch scale would change them: batch scoring vs a Dask cluster, service micro-batches)."""
    fit = fit_on(two_classes)
    fp32 = save_classic_folder(fit, tmp_path / "fp32", two_classes.labels, two_classes.tokenizer_dir)
    classifier = OnnxClassifier(quantize_classic(fp32, tmp_path / "int8"), threads=1)
    texts = two_classes.texts[:64]
    ids = classifier.tokenizer.encode(texts)
    alone = np.concatenate([classifier.logits(ids[i : i + 1]) for i in range(len(texts))])
    assert np.array_equal(classifier.logits(ids), alone)
    peaked = classifier.tokenizer.encode([texts[0][:1] * MAX_LEN] + texts[1:])  # one n-gram, many counts
    assert np.array_equal(classifier.logits(peaked)[1:], alone[1:])


def test_a_class_missing_from_the_training_labels_is_named(two_classes: Prepared) -> None:
    ids, y = two_classes.ids("train")
    with pytest.raises(ValueError, match=r"missing class indexes \[1\]"):
        fit_classic(ids[y == 0], y[y == 0], 2, "tfidf_lr", classic_with(), MAX_LEN, seed=0)


def test_a_tokenizer_that_cuts_elsewhere_is_refused(two_classes: Prepared, tmp_path: Path) -> None:
    ids, y = two_classes.ids("train")
    fit = fit_classic(pad_batch([row[row != 0][:8] for row in ids]), y, 2, "tfidf_lr", classic_with(), 8, 0)
    with pytest.raises(ValueError, match="max_len 24, but the model was fitted on ids cut to 8"):
        save_classic_folder(fit, tmp_path / "model", two_classes.labels, two_classes.tokenizer_dir)
    assert not (tmp_path / "model").exists()
