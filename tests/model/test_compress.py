"""The compress step on tiny local models: export parity on dynamic shapes, the structure of every variant
(quantized ops, sparsity, a slim model with smaller layers and the same ids in, a smaller distilled student),
invariance on int8, the report and the choice."""

from __future__ import annotations

import inspect
import json
import random
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from quantflow.core.calibration import calibration_metrics, fit_calibration, softmax
from quantflow.core.errors import DataError
from quantflow.core.export import ParityError, check_parity
from quantflow.core.layout import CompressionReports
from quantflow.core.models import ModelConfig, build_model, save_model
from quantflow.core.onnx_model import OnnxClassifier
from quantflow.core.pruning import count_params
from quantflow.core.qdq_graph import tighten
from quantflow.core.quantize import BucketedReader, quantize_static_qdq
from quantflow.core.text import Tokenizer, TokenizerConfig, build_vocab
from serving.model import ServedModel
from tasks.compress import CompressResult, choose, compress, compress_task
from tests.params_helpers import params_with, shipped_params

LABELS = ["体育", "财经", "娱乐"]
ATOL = 1e-4
POOL = [chr(0x4E00 + i) for i in range(3000)]  # a vocabulary big enough that the embedding dominates the size
CUES = {label: POOL[i * 40 : (i + 1) * 40] for i, label in enumerate(LABELS)}  # 40 marker characters a class


def synthetic_texts(n: int, seed: int) -> tuple[list[str], list[str]]:
    """Chinese-ish texts of 3-50 characters: mostly random pool characters, a few of the class's markers."""
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        label = rng.choice(LABELS)
        length = rng.randint(3, 50)
        chars = [rng.choice(CUES[label] if rng.random() < 0.3 else POOL[120:]) for _ in range(length)]
        texts.append("".join(chars) + rng.choice(["", "。", "！"]))
        labels.append(label)
    return texts, labels


def tiny_config(arch: str, vocab_size: int) -> ModelConfig:
    """Embedding 16 and a textcnn of 8 filters of widths 2 and 3 (ngram_textcnn: beside a bag of 1009 hashed
    n-gram buckets, n <= 3), or a transformer of 1 layer, 2 heads."""
    if arch in ("textcnn", "ngram_textcnn"):
        layers = {"num_filters": 8, "kernel_sizes": (2, 3)}
        if arch == "ngram_textcnn":
            layers["extra"] = {"ngram_max": 3, "buckets": 1009}
    else:
        layers = {"layers": 1, "heads": 2, "ff_dim": 32}
    return ModelConfig(
        arch=arch,
        vocab_size=vocab_size,
        num_classes=len(LABELS),
        embed_dim=16,
        dropout=0.1,
        max_len=64,
        **layers,
    )


def train_a_little(model: nn.Module, ids: np.ndarray, labels: list[str], steps: int = 40) -> nn.Module:
    """A few Adam steps on random mini-batches: enough to move the logits away from a coin toss."""
    torch.manual_seed(0)
    x, y = torch.from_numpy(ids), torch.tensor([LABELS.index(label) for label in labels])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _ in range(steps):
        batch = torch.randint(0, len(x), (32,))
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
        optimizer.step()
    return model.eval()


@dataclass(frozen=True)
class Setup:
    arch: str
    root: Path
    model: nn.Module
    tokenizer: Tokenizer
    test_texts: list[str]
    result: CompressResult

    @property
    def fp32(self) -> Path:
        return self.root / "variants" / "fp32"

    def variant(self, name: str) -> Path:
        return self.root / "variants" / name

    @property
    def report(self) -> dict:
        return json.loads((self.root / "reports" / "compression.json").read_text())


def make_inputs(root: Path, arch: str) -> tuple[nn.Module, Tokenizer, list[str]]:
    """tokenizer folder, trained model folder and the test, train and val splits under ``root``."""
    train_texts, train_labels = synthetic_texts(300, seed=1)
    test_texts, test_labels = synthetic_texts(120, seed=2)
    val_texts, val_labels = synthetic_texts(120, seed=3)
    vocab = build_vocab([POOL, *(list(t) for t in train_texts)], min_freq=1, max_size=4000)
    tokenizer = Tokenizer(TokenizerConfig(max_len=64), vocab)
    tokenizer.save(root / "tokenizer")
    torch.manual_seed(0)
    cfg = tiny_config(arch, len(vocab))
    model = train_a_little(build_model(cfg), tokenizer.encode(train_texts), train_labels)
    save_model(root / "model", model, cfg, LABELS, root / "tokenizer")
    splits = (
        ("test", test_texts, test_labels),
        ("train", train_texts, train_labels),
        ("val", val_texts, val_labels),
    )
    for name, texts, labels in splits:
        keys = [f"{name}{i}" for i in range(len(texts))]
        pd.DataFrame({"text": texts, "label": labels, "key": keys}).to_parquet(root / f"{name}.parquet")
    return model, tokenizer, test_texts


# params.yaml's student is sized for the default model; the tiny teachers here need a tinier one
TINY_STUDENT = {
    "compress.distill_student.embed_dim": 8,
    "compress.distill_student.num_filters": 8,
    "compress.distill_student.kernel_sizes": [2],
    "compress.distill_lr": 0.05,  # 300 training texts: 60 steps in all
    "compress.distill_batch_size": 32,
}


def run_compress(root: Path, changes: dict | None = None, out: str = "") -> CompressResult:
    params = params_with(TINY_STUDENT | (changes or {}))
    return compress(
        params.compress,
        params.calibrate,
        root / "model",
        root,
        root / f"variants{out}",
        CompressionReports.under(root / f"reports{out}"),
        params.seed,
    )


@pytest.fixture(scope="module", params=["textcnn", "transformer"])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Setup:
    root = tmp_path_factory.mktemp(request.param)
    model, tokenizer, test_texts = make_inputs(root, request.param)
    return Setup(request.param, root, model, tokenizer, test_texts, run_compress(root))


def torch_logits(model: nn.Module, ids: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(ids)).numpy()


def op_types(path: Path) -> Counter:
    return Counter(node.op_type for node in onnx.load(path).graph.node)


# --- export -------------------------------------------------------------------------------------------------


def test_fp32_matches_torch_on_dynamic_batch_and_length(setup: Setup) -> None:
    session = ort.InferenceSession(str(setup.fp32 / "model.onnx"), providers=["CPUExecutionProvider"])
    texts = setup.test_texts
    batches = [texts[:1], texts[1:2], texts[2:7], texts[7:20], texts[20:21] * 3]  # 1, 1, 5, 13, 3 rows
    shapes = set()
    for batch in batches:
        ids = setup.tokenizer.encode(batch)
        shapes.add(ids.shape)
        got = session.run(None, {"ids": ids})[0]
        np.testing.assert_allclose(got, torch_logits(setup.model, ids), atol=ATOL, rtol=0)
    assert len({b for b, _ in shapes}) >= 3 and len({t for _, t in shapes}) >= 3  # axes really vary


def test_fp32_padding_does_not_change_logits(setup: Setup) -> None:
    session = ort.InferenceSession(str(setup.fp32 / "model.onnx"), providers=["CPUExecutionProvider"])
    ids = setup.tokenizer.encode(setup.test_texts[:8])  # (8, T) right-padded
    padded = np.pad(ids, ((0, 0), (0, 11)))  # 11 more pad columns
    logits = session.run(None, {"ids": ids})[0]
    np.testing.assert_allclose(session.run(None, {"ids": padded})[0], logits, atol=ATOL, rtol=0)


def test_fp32_folder_is_self_contained(setup: Setup) -> None:
    assert sorted(p.name for p in setup.fp32.iterdir()) == [
        "model.json",
        "model.onnx",
        "tokenizer.json",
        "vocab.json",
    ]
    model = onnx.load(setup.fp32 / "model.onnx", load_external_data=False)
    assert not any(onnx.external_data_helper.uses_external_data(t) for t in model.graph.initializer)
    assert [i.name for i in model.graph.input] == ["ids"]
    assert [o.name for o in model.graph.output] == ["logits"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert all(d.dim_param for d in dims)  # symbolic batch and sequence axes
    assert json.loads((setup.fp32 / "model.json").read_text())["variant"] == "onnx-fp32"


# --- parity -------------------------------------------------------------------------------------------------


def test_parity_failure_names_both_numbers(setup: Setup) -> None:
    broken = build_model(tiny_config(setup.arch, len(setup.tokenizer.vocab)))
    broken.load_state_dict(setup.model.state_dict())
    with torch.no_grad():
        broken.fc.bias += 1.0  # every logit off by exactly one
    with pytest.raises(ParityError, match=r"by up to 1\b.*parity_atol = 0\.0001"):
        check_parity(broken.eval(), setup.fp32, setup.test_texts[:4], atol=ATOL)


# --- int8 ---------------------------------------------------------------------------------------------------

INT8 = ("int8-dynamic", "int8-static", "pruned-int8", "slim-int8", "distilled-int8")


def built_int8(setup: Setup) -> list[str]:
    return [name for name in INT8 if name in setup.result.variants]


def int8_weights(path: Path) -> dict[str, int]:
    return {t.name: t.data_type for t in onnx.load(path).graph.initializer}


def test_variants_per_architecture(setup: Setup) -> None:
    assert set(setup.result.variants) == {"fp32", *INT8}  # slim and distilled apply to every family


def test_dynamic_int8_has_integer_ops_and_is_smaller(setup: Setup) -> None:
    path = setup.variant("int8-dynamic") / "model.onnx"
    ops = op_types(path)
    assert ops["DynamicQuantizeLinear"] >= 1 and ops["MatMulInteger"] >= 1
    assert ops["DequantizeLinear"] >= 1  # the quantized embedding table
    assert "Gemm" not in ops
    if setup.arch == "textcnn":
        quantized = "Conv" in shipped_params().compress.quantize_ops  # ConvInteger, or the convs left in fp32
        assert ops["ConvInteger" if quantized else "Conv"] == len(setup.model.convs)
    weights = int8_weights(path)
    assert "embedding.weight" not in weights  # replaced by its uint8 copy
    assert any(dtype == onnx.TensorProto.UINT8 and "embedding" in name for name, dtype in weights.items())
    assert path.stat().st_size < 0.6 * (setup.fp32 / "model.onnx").stat().st_size


@pytest.mark.parametrize("name", ["int8-static", "pruned-int8", "slim-int8", "distilled-int8"])
def test_static_int8_is_qdq_with_int8_weights_and_smaller(setup: Setup, name: str) -> None:
    path = setup.variant(name) / "model.onnx"
    ops = op_types(path)
    assert ops["QuantizeLinear"] >= 1 and ops["DequantizeLinear"] >= 1
    float_weights = [
        t.name
        for t in onnx.load(path).graph.initializer
        if t.data_type == onnx.TensorProto.FLOAT and t.name.endswith("weight") and len(t.dims) > 1
    ]
    assert float_weights == []  # every weight matrix is stored in 8 bits
    assert onnx.TensorProto.INT8 in set(int8_weights(path).values())
    assert path.stat().st_size < 0.6 * (setup.fp32 / "model.onnx").stat().st_size


SAME_WEIGHTS = ("int8-dynamic", "int8-static")  # quantized copies of fp32; pruned/slim were fine-tuned


def test_int8_agrees_with_fp32(setup: Setup) -> None:
    fp32 = OnnxClassifier(setup.fp32).predict(setup.test_texts)
    for name in SAME_WEIGHTS:
        int8 = OnnxClassifier(setup.variant(name)).predict(setup.test_texts)
        agreement = np.mean([a == b for a, b in zip(fp32, int8, strict=True)])
        assert agreement >= 0.9, name


def test_dynamic_int8_prediction_does_not_depend_on_batch_mates(setup: Setup) -> None:
    """Dynamic quantization picks scales per batch, so logits move a little with it; labels should not."""
    classifier = OnnxClassifier(setup.variant("int8-dynamic"))
    texts = setup.test_texts[:40]
    alone = [classifier.predict([t])[0] for t in texts]
    assert np.mean([a == b for a, b in zip(alone, classifier.predict(texts), strict=True)]) >= 0.9


def confident_texts(setup: Setup, n: int = 20) -> list[str]:
    """The ``n`` test texts fp32 is surest about: a fixed set on which no int8 rounding may flip the label."""
    proba = OnnxClassifier(setup.fp32).predict_proba(setup.test_texts)
    order = np.argsort(-proba.max(axis=1), kind="stable")[:n]
    return [setup.test_texts[i] for i in order]


FULL_TO_HALF = str.maketrans({"！": "!", "，": ",", "？": "?", "：": ":"})
HALF_TO_FULL = str.maketrans({"!": "！", ",": "，", "?": "？", ":": "："})


def perturbations(text: str) -> list[str]:
    """Extra whitespace around and inside; full-width punctuation as half-width and back."""
    middle = len(text) // 2
    return [
        f"  {text}\t ",
        f"{text[:middle]}   {text[middle:]}",
        text.translate(FULL_TO_HALF),
        text.translate(FULL_TO_HALF).translate(HALF_TO_FULL),
    ]


def test_invariance_holds_on_every_int8_variant(setup: Setup) -> None:
    """Whitespace and punctuation width never change a label; the quantized copies also keep fp32's label."""
    texts = confident_texts(setup)
    fp32 = OnnxClassifier(setup.fp32).predict(texts)
    for name in built_int8(setup):
        classifier = OnnxClassifier(setup.variant(name))
        own = classifier.predict(texts)
        if name in SAME_WEIGHTS:
            assert own == fp32, name
        for text, label in zip(texts, own, strict=True):
            got = [classifier.predict([t])[0] for t in perturbations(text)]
            assert got == [label] * len(got), (name, text, got)


# --- pruning ------------------------------------------------------------------------------------------------


def test_pruned_variant_reaches_the_sparsity_and_a_smaller_gzip(setup: Setup) -> None:
    pruned = setup.result.variants["pruned-int8"]
    target = shipped_params().compress.sparsity
    assert abs(pruned["sparsity"] - target) <= 0.01
    assert pruned["nonzero_params"] < (1 - target + 0.01) * pruned["params"] + sum(
        p.numel() for name, p in setup.model.named_parameters() if not name.endswith("weight")
    )
    assert pruned["gzip_bytes"] < setup.result.variants["int8-static"]["gzip_bytes"]


def variant_config(setup: Setup, name: str) -> ModelConfig:
    return ModelConfig.from_dict(json.loads((setup.variant(name) / "model.json").read_text())["config"])


def weight_dims(path: Path) -> dict[str, tuple[int, ...]]:
    """Each weight initializer's dims by its PyTorch name (the quantizer's ``_quantized`` suffix dropped)."""
    graph = onnx.load(path).graph
    return {t.name.removesuffix("_quantized"): tuple(t.dims) for t in graph.initializer}


def test_slim_variant_has_fewer_parameters_and_smaller_layers(setup: Setup) -> None:
    """slim-int8 rebuilds smaller layers (not masks): its config, its PyTorch model and its int8 graph agree."""
    s = shipped_params().compress
    slim, fp32 = setup.result.variants["slim-int8"], setup.result.variants["fp32"]
    teacher, cfg = variant_config(setup, "fp32"), variant_config(setup, "slim-int8")
    assert count_params(build_model(cfg)) == slim["params"] < fp32["params"] == count_params(setup.model)
    rows = cfg.extra["token_rows"]  # the ids never seen in train.parquet lost their rows
    assert rows == slim["token_rows"] < teacher.vocab_size == slim["token_rows_before"]
    dims = weight_dims(setup.variant("slim-int8") / "model.onnx")
    assert dims["embedding.weight"] == (rows, teacher.embed_dim)
    assert dims["embedding.remap"] == (teacher.vocab_size, 1)  # every tokenizer id still has an entry
    if setup.arch == "textcnn":
        assert cfg.num_filters == round(s.filter_keep * teacher.num_filters) < teacher.num_filters
        assert [dims[f"convs.{i}.weight"][0] for i in range(len(cfg.kernel_sizes))] == [cfg.num_filters] * 2
        assert dims["fc.weight"] == (len(LABELS), cfg.num_filters * len(cfg.kernel_sizes))
    else:
        assert (cfg.heads, cfg.ff_dim) == (
            round(s.head_keep * teacher.heads),
            round(s.ff_keep * teacher.ff_dim),
        )
        assert cfg.heads < teacher.heads and cfg.ff_dim < teacher.ff_dim
        # the exporter names a Linear's weight by its node (val_N) and stores it (in, out): find them by shape
        e, head_dim = teacher.embed_dim, teacher.embed_dim // teacher.heads
        shapes = set(dims.values())
        assert {(e, 3 * cfg.heads * head_dim), (cfg.heads * head_dim, e), (cfg.ff_dim, e)} <= shapes
        assert not {(e, 3 * teacher.heads * head_dim), (e, teacher.ff_dim)} & shapes


def test_the_default_family_gets_a_slim_variant_with_a_smaller_ngram_table(tmp_path: Path) -> None:
    """params.yaml's model (ngram_textcnn) through the step: fewer filters, a hashed n-gram table cut to the
    kept buckets and a zero row, every bucket (and padding) still mapped in the graph, the same tokenizer."""
    s = shipped_params().compress
    _, tokenizer, texts = make_inputs(tmp_path, "ngram_textcnn")
    result = run_compress(tmp_path, {"compress.variants": ["fp32", "slim-int8"]})
    folder = tmp_path / "variants" / "slim-int8"
    teacher = ModelConfig.from_dict(json.loads((tmp_path / "model" / "model.json").read_text())["config"])
    cfg = ModelConfig.from_dict(json.loads((folder / "model.json").read_text())["config"])
    slim, fp32 = result.variants["slim-int8"], result.variants["fp32"]
    assert count_params(build_model(cfg)) == slim["params"] < fp32["params"]
    assert cfg.num_filters == round(s.filter_keep * teacher.num_filters) < teacher.num_filters
    table = teacher.extra["buckets"] + 1  # each bucket and padding's row
    rows = cfg.extra["ngram_rows"]  # the kept buckets and the zero row
    assert 2 <= rows <= round(s.ngram_keep * table) + 1
    dims = weight_dims(folder / "model.onnx")
    assert dims["bag.ngrams.weight"] == (rows, teacher.embed_dim) and dims["bag.ngrams.remap"] == (table, 1)
    assert dims["cnn.convs.0.weight"][0] == cfg.num_filters
    classifier = OnnxClassifier(folder)
    assert classifier.tokenizer.vocab == tokenizer.vocab
    np.testing.assert_array_equal(classifier.tokenizer.encode(texts), tokenizer.encode(texts))
    assert classifier.text_logits(texts[:5]).shape == (5, len(LABELS))


def test_the_default_family_int8_graph_is_rewritten_and_scores_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """quantflow/core/qdq_graph.py on the default family's QDQ graph: the bag's sums become MatMulInteger, each
    conv's max over time a uint8 MaxPool first, the gathered embedding reaches the convs without requantizing;
    the logits are the plain QDQ graph's at every length, also past one pool window (POOL positions)."""
    _, tokenizer, texts = make_inputs(tmp_path, "ngram_textcnn")
    run_compress(tmp_path, {"compress.variants": ["fp32"]})
    fp32 = tmp_path / "variants" / "fp32" / "model.onnx"
    monkeypatch.setattr("quantflow.core.quantize.tighten", lambda path: {})
    plain = quantize_static_qdq(
        fp32, tmp_path / "plain.onnx", BucketedReader(tokenizer, texts), shipped_params().compress.static_ops
    )
    rewritten = tmp_path / "rewritten.onnx"
    shutil.copy(plain, rewritten)
    assert tighten(rewritten) == {"integer_row_sums": 2, "max_over_time_as_pool": 2}
    ops = op_types(rewritten)
    assert ops["MatMulInteger"] == 2 and ops["MaxPool"] == 2 and ops["Transpose"] == 1
    graph = onnx.load(rewritten).graph
    names = {i.name for i in graph.initializer}
    transpose = next(n for n in graph.node if n.op_type == "Transpose")
    q = next(n for n in graph.node if n.input and n.input[0] == transpose.output[0])
    assert q.op_type == "QuantizeLinear" and q.input[1] == "cnn.embedding.weight_scale" in names
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (plain, rewritten)]
    rng = np.random.default_rng(0)
    for width in (1, 2, 7, 64, 300, 1, 2):  # 1, 2: no trigram (no bigram) to sum
        ids = rng.integers(1, len(tokenizer.vocab), size=(5, width))
        ids[1:, rng.integers(1, width + 1) :] = 0  # right padding of various lengths
        before, after = (s.run(None, {"ids": ids})[0] for s in sessions)
        np.testing.assert_allclose(after, before, atol=1e-5)


def test_slim_variant_takes_the_same_ids_end_to_end(setup: Setup) -> None:
    """The folder's tokenizer is the model's, so the service sends the same ids; a char whose row was dropped
    reads the <unk> row: it scores like a char the tokenizer does not know, and occlusion gives it no weight."""
    folder = setup.variant("slim-int8")
    classifier = OnnxClassifier(folder)
    assert classifier.tokenizer.vocab == setup.tokenizer.vocab
    assert (folder / "vocab.json").read_bytes() == (setup.root / "model" / "vocab.json").read_bytes()
    texts = setup.test_texts[:20]
    np.testing.assert_array_equal(classifier.tokenizer.encode(texts), setup.tokenizer.encode(texts))
    remap = next(
        numpy_helper.to_array(t)
        for t in onnx.load(folder / "model.onnx").graph.initializer
        if t.name == "embedding.remap"
    )
    unk_row = remap[setup.tokenizer.vocab["<unk>"], 0]
    dropped = [c for c, i in setup.tokenizer.vocab.items() if i > 1 and remap[i, 0] == unk_row]
    assert dropped  # the tiny vocabulary holds chars train.parquet never uses
    text = dropped[0] + texts[0]
    unknown = "\u2603" + texts[0]  # ☃: not in the vocabulary, encoded as <unk>
    assert setup.tokenizer.encode([unknown])[0, 0] == setup.tokenizer.vocab["<unk>"]
    np.testing.assert_allclose(
        classifier.text_logits([text]), classifier.text_logits([unknown]), atol=1e-6, rtol=0
    )
    served = ServedModel.load(folder, "m", "1", None, threads=1)
    assert served.explain(text)["tokens"][0]["contribution"] == pytest.approx(0, abs=1e-6)
    assert served.explain(text)["label"] == classifier.predict([text])[0]


def test_distilled_variant_is_a_smaller_student_of_the_teacher(setup: Setup) -> None:
    student = shipped_params().compress.distill_student
    distilled = setup.result.variants["distilled-int8"]
    cfg = variant_config(setup, "distilled-int8")
    assert (cfg.arch, cfg.embed_dim) == (student.arch, TINY_STUDENT["compress.distill_student.embed_dim"])
    assert (cfg.vocab_size, cfg.num_classes) == (len(setup.tokenizer.vocab), len(LABELS))  # same contract
    assert count_params(build_model(cfg)) == distilled["params"] < distilled["params_before"]
    assert distilled["params_before"] == count_params(setup.model)
    assert distilled["teacher_agreement"] > 1 / len(LABELS) + 0.2  # it learned the teacher, not noise
    dims = weight_dims(setup.variant("distilled-int8") / "model.onnx")
    assert dims["embedding.weight"] == (len(setup.tokenizer.vocab), cfg.embed_dim)


# --- report, choice and result ------------------------------------------------------------------------------


def test_report_shape(setup: Setup) -> None:
    report = setup.report
    assert report["chosen"] == setup.result.chosen == report["decision"]["chosen"]
    assert set(report["variants"]) == set(setup.result.variants)
    assert report["parity"]["samples"] == min(shipped_params().compress.parity_samples, len(setup.test_texts))
    assert 0 <= report["parity"]["max_abs_diff"] <= report["parity"]["atol"]
    assert 0 < report["size_ratio"] <= 1
    timing = {"latency_p50_ms", "latency_p99_ms", "model_p50_ms", "throughput_b64"}
    for name, variant in report["variants"].items():
        assert {"path", "accuracy", "macro_f1", "size_bytes", "accuracy_drop"} | timing <= set(variant)
        assert {"gzip_bytes", "params", "accuracy_drop_pp"} <= set(variant)
        assert 0 <= variant["accuracy"] <= 1 and 0 <= variant["macro_f1"] <= 1
        assert variant["latency_p50_ms"] <= variant["latency_p99_ms"] and variant["throughput_b64"] > 0
        assert variant["path"] == (setup.root / "variants" / name / "model.onnx").as_posix()
        assert variant["size_bytes"] == Path(variant["path"]).stat().st_size
        manifest = json.loads((setup.root / "variants" / name / "model.json").read_text())
        assert manifest["variant"] == f"onnx-{name}" and manifest["labels"] == LABELS
        assert manifest["metrics"]["accuracy"] == variant["accuracy"]
    assert report["variants"]["fp32"]["accuracy_drop"] == 0
    assert timing <= set(report["reference"]["torch-fp32-eager"])
    assert report["variants"] == setup.result.variants


def test_choice_follows_the_policy_within_the_allowed_drop(setup: Setup) -> None:
    """params.yaml's compress.policy: the smallest (bytes) or fastest (latency p50) eligible variant."""
    settings = shipped_params().compress
    report, limit = setup.report, settings.max_drop_pp
    eligible = {n: v for n, v in report["variants"].items() if v["accuracy_drop_pp"] <= limit}
    assert report["decision"]["eligible"] == list(eligible)
    figure = {"smallest": "size_bytes", "fastest": "latency_p50_ms"}[settings.policy]
    assert report["chosen"] == min(eligible, key=lambda n: eligible[n][figure])


def test_slim_and_distilled_rows_and_goal_ratios_are_reported(setup: Setup) -> None:
    report = setup.report
    table = (setup.root / "reports" / "compression.md").read_text()
    variants = report["variants"]
    for name in ("slim-int8", "distilled-int8"):
        row = variants[name]
        assert row["size_bytes"] > 0 and row["latency_p50_ms"] > 0 and 0 <= row["accuracy"] <= 1
        line = next(line for line in table.splitlines() if f"{name}" in line and line.startswith("|"))
        assert f"{row['accuracy']:.4f}" in line and f"{row['latency_p50_ms']:.3f}" in line
    ratios = report["ratios"]
    slim, fp32, static = variants["slim-int8"], variants["fp32"], variants["int8-static"]
    distilled = variants["distilled-int8"]
    assert ratios["slim_size_ratio_vs_fp32"] == round(slim["size_bytes"] / fp32["size_bytes"], 4)
    assert ratios["distilled_size_ratio_vs_teacher_int8"] == round(
        distilled["size_bytes"] / static["size_bytes"], 4
    )
    speedup = static["latency_p50_ms"] / distilled["latency_p50_ms"]
    assert ratios["distilled_latency_speedup_vs_teacher_int8"] == round(speedup, 3)


def test_the_policy_may_choose_slim_or_distilled(setup: Setup) -> None:
    """Within the accuracy budget the new variants compete like the others: with every drop inside it,
    "smallest" picks the smallest file, and here that is one of the structurally smaller models."""
    variants = {n: {**v, "accuracy_drop_pp": 0.0} for n, v in setup.report["variants"].items()}
    decision = choose(variants, "smallest", 0.3)
    assert decision["chosen"] == min(variants, key=lambda n: variants[n]["size_bytes"])
    assert decision["chosen"] in {"slim-int8", "distilled-int8"}
    variants["distilled-int8"]["accuracy_drop_pp"] = 5.0  # over the budget: not eligible any more
    assert "distilled-int8" not in choose(variants, "smallest", 0.3)["eligible"]


def test_the_student_learns_the_teacher_logits_not_the_labels(setup: Setup) -> None:
    """With distill_alpha 1 only the teacher's logits teach the student: shuffled training labels give a
    byte-identical distilled-int8 (the calibration sample and the shuffles are seeded)."""
    if setup.arch != "textcnn":
        pytest.skip("one architecture is enough: two runs cost seconds")
    train = pd.read_parquet(setup.root / "train.parquet")
    shuffled = setup.root / "shuffled"
    shuffled.mkdir()
    for name in ("model", "tokenizer"):
        shutil.copytree(setup.root / name, shuffled / name)
    for split in ("test", "val"):
        shutil.copy(setup.root / f"{split}.parquet", shuffled / f"{split}.parquet")
    labels = train["label"].sample(frac=1.0, random_state=3).to_numpy()
    assert (labels != train["label"].to_numpy()).mean() > 0.3
    train.assign(label=labels).to_parquet(shuffled / "train.parquet")
    changes = {"compress.variants": ["fp32", "distilled-int8"], "compress.distill_alpha": 1.0}
    runs = [run_compress(root, changes, out="-alpha1") for root in (setup.root, shuffled)]
    paths = [root / "variants-alpha1" / "distilled-int8" / "model.onnx" for root in (setup.root, shuffled)]
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert runs[0].variants["distilled-int8"]["teacher_agreement"] > 0.8


def test_choice_policy_respects_the_limit() -> None:
    variants = {
        "fp32": {"accuracy_drop_pp": 0.0, "latency_p50_ms": 3.0, "size_bytes": 9},
        "fast-but-wrong": {"accuracy_drop_pp": 2.0, "latency_p50_ms": 1.0, "size_bytes": 1},
        "ok": {"accuracy_drop_pp": 0.2, "latency_p50_ms": 2.0, "size_bytes": 5},
    }
    assert choose(variants, "fastest", 0.3)["chosen"] == "ok"
    assert choose(variants, "smallest", 5.0)["chosen"] == "fast-but-wrong"
    assert choose(variants, "fastest", 0.0)["chosen"] == "fp32"  # fp32 always qualifies


def test_table_and_plot_are_written(setup: Setup) -> None:
    table = (setup.root / "reports" / "compression.md").read_text()
    for name in (*setup.result.variants, "torch-fp32-eager"):
        assert f"| {name} |" in table or f"**{name}** (chosen)" in table
    assert setup.report["decision"]["reason"] in table
    plot = setup.root / "reports" / "plots" / "compression_pareto.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_chosen_variant_alone_stores_the_calibration_fitted_on_val(setup: Setup) -> None:
    """The stored entry is what fitting ``calibrate:`` on the validation split gives; calibration.json's "after"
    is that entry scored on the test split, "before" the plain softmax; the other folders stay uncalibrated."""
    chosen, reports = setup.result.chosen, setup.root / "reports"
    report = json.loads((reports / "calibration.json").read_text())
    stored = json.loads((setup.variant(chosen) / "model.json").read_text())["calibration"]
    assert (
        report["variant"] == chosen
        and report["calibration"] == stored == setup.result.calibration["calibration"]
    )
    others = [n for n in setup.result.variants if n != chosen]
    assert all("calibration" not in json.loads((setup.variant(n) / "model.json").read_text()) for n in others)
    params = shipped_params()
    classifier = OnnxClassifier(setup.variant(chosen))
    index = {label: i for i, label in enumerate(classifier.labels)}
    val = pd.read_parquet(setup.root / "val.parquet")
    refit = fit_calibration(
        classifier.text_logits(val["text"].tolist()),
        val["label"].map(index).to_numpy(),
        params.calibrate,
        params.seed,
    )
    assert refit.calibration.to_dict() == stored
    test = pd.read_parquet(setup.root / "test.parquet")
    y = test["label"].map(index).to_numpy()
    served = classifier.predict_proba(test["text"].tolist())  # what the service answers
    assert calibration_metrics(served, y, params.calibrate.bins) == report["models"][chosen]["after"]
    plain = softmax(classifier.text_logits(test["text"].tolist()).astype(np.float64))
    assert calibration_metrics(plain, y, params.calibrate.bins) == report["models"][chosen]["before"]
    assert set(report["models"]) == {"fp32", chosen}
    rows = json.loads((reports / "calibration_reliability.json").read_text())
    assert len(rows) == params.calibrate.bins
    assert set(rows[0]) == {
        "confidence",
        "perfect",
        "fp32_before",
        "fp32_after",
        "shipped_before",
        "shipped_after",
    }
    assert (reports / "plots" / "calibration_reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_trained_model_beats_chance(setup: Setup) -> None:
    # the fixtures are learnable: agreement tests above compare real predictions, not coin tosses
    assert setup.result.variants["fp32"]["accuracy"] > 1 / len(LABELS) + 0.1


def test_rerun_elsewhere_gives_relative_paths_and_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setup: Setup
) -> None:
    if setup.arch != "textcnn":
        pytest.skip("one architecture is enough: a run costs seconds")
    monkeypatch.chdir(setup.root)
    only = params_with({"compress.variants": ["fp32", "int8-dynamic", "int8-static"]})
    reports = CompressionReports.under(Path("again-reports"))
    result = compress(
        only.compress, only.calibrate, Path("model"), Path("."), Path("again"), reports, only.seed
    )
    report = json.loads(reports.report.read_text())
    assert set(report["variants"]) == {"fp32", "int8-dynamic", "int8-static"}
    assert report["variants"]["int8-static"]["path"] == "again/int8-static/model.onnx"
    for name in report["variants"]:  # deterministic: same bytes wherever the outputs go
        assert (
            Path(f"again/{name}/model.onnx").read_bytes()
            == (setup.root / "variants" / name / "model.onnx").read_bytes()
        )
        assert result.variants[name]["accuracy"] == setup.result.variants[name]["accuracy"]


# --- bad input ----------------------------------------------------------------------------------------------


def untrained_model(root: Path) -> Path:
    """A model folder (the step reads its family before the splits): an untrained tiny textcnn."""
    tokenizer = Tokenizer(TokenizerConfig(max_len=64), build_vocab([POOL], min_freq=1, max_size=4000))
    tokenizer.save(root / "tokenizer")
    cfg = tiny_config("textcnn", len(tokenizer.vocab))
    save_model(root / "model", build_model(cfg), cfg, LABELS, root / "tokenizer")
    return root / "model"


def test_missing_test_split_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="test split not found"):
        compress(
            shipped_params().compress,
            shipped_params().calibrate,
            untrained_model(tmp_path),
            tmp_path / "nope",
            tmp_path / "v",
            CompressionReports.under(tmp_path / "r"),
            0,
        )
    assert not (tmp_path / "v").exists()


def test_test_split_without_labels_is_a_clear_error(tmp_path: Path) -> None:
    pd.DataFrame({"text": ["你好"]}).to_parquet(tmp_path / "test.parquet")
    with pytest.raises(DataError, match=r"missing column\(s\) \['label'\]"):
        compress(
            shipped_params().compress,
            shipped_params().calibrate,
            untrained_model(tmp_path),
            tmp_path,
            tmp_path / "v",
            CompressionReports.under(tmp_path / "r"),
            0,
        )
    assert not (tmp_path / "v").exists()


def test_missing_training_split_is_a_clear_error(tmp_path: Path) -> None:
    for name in ("test", "val"):
        pd.DataFrame({"text": ["你好"], "label": ["体育"]}).to_parquet(tmp_path / f"{name}.parquet")
    with pytest.raises(DataError, match=r"train\.parquet: train split not found"):
        compress(
            shipped_params().compress,
            shipped_params().calibrate,
            untrained_model(tmp_path),
            tmp_path,
            tmp_path / "v",
            CompressionReports.under(tmp_path / "r"),
            0,
        )
    assert not (tmp_path / "v").exists()


def test_prefect_task_wraps_the_plain_function() -> None:
    assert compress_task.name == "compress"
    wrapped = inspect.signature(compress_task.fn).parameters
    assert list(wrapped) == list(inspect.signature(compress).parameters)
