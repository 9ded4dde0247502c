"""The compress step on tiny local models: export parity on dynamic shapes, int8 structure, the report."""

from __future__ import annotations

import inspect
import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from torch import nn

from quantflow.errors import DataError
from quantflow.models import ModelConfig, build_model, save_model
from quantflow.onnx_model import OnnxClassifier
from quantflow.params import Params
from quantflow.text import Tokenizer, TokenizerConfig, build_vocab
from tasks.compress import (
    CompressResult,
    ParityError,
    check_parity,
    compress,
    compress_task,
)

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
    if arch == "textcnn":
        return ModelConfig(
            arch="textcnn",
            vocab_size=vocab_size,
            num_classes=len(LABELS),
            embed_dim=16,
            num_filters=8,
            kernel_sizes=(2, 3),
            dropout=0.1,
            max_len=64,
        )
    return ModelConfig(
        arch="transformer",
        vocab_size=vocab_size,
        num_classes=len(LABELS),
        embed_dim=16,
        layers=1,
        heads=2,
        ff_dim=32,
        dropout=0.1,
        max_len=64,
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

    @property
    def int8(self) -> Path:
        return self.root / "variants" / "int8"


def make_inputs(root: Path, arch: str) -> tuple[nn.Module, Tokenizer, list[str]]:
    """tokenizer folder, trained model folder and test.parquet under ``root``."""
    train_texts, train_labels = synthetic_texts(300, seed=1)
    test_texts, test_labels = synthetic_texts(120, seed=2)
    vocab = build_vocab([POOL, *(list(t) for t in train_texts)], min_freq=1, max_size=4000)
    tokenizer = Tokenizer(TokenizerConfig(max_len=64), vocab)
    tokenizer.save(root / "tokenizer")
    torch.manual_seed(0)
    cfg = tiny_config(arch, len(vocab))
    model = train_a_little(build_model(cfg), tokenizer.encode(train_texts), train_labels)
    save_model(root / "model", model, cfg, LABELS, root / "tokenizer")
    pd.DataFrame(
        {"text": test_texts, "label": test_labels, "key": [f"k{i}" for i in range(len(test_texts))]}
    ).to_parquet(root / "test.parquet")
    return model, tokenizer, test_texts


def run_compress(root: Path) -> CompressResult:
    return compress(
        Params(),
        root / "model",
        root / "test.parquet",
        root / "variants",
        root / "reports" / "compression.json",
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


def test_int8_has_quantized_ops_and_is_smaller(setup: Setup) -> None:
    ops = op_types(setup.int8 / "model.onnx")
    assert ops["DynamicQuantizeLinear"] >= 1 and ops["MatMulInteger"] >= 1
    assert ops["DequantizeLinear"] >= 1  # the quantized embedding table
    assert "Gemm" not in ops
    weights = {t.name: t.data_type for t in onnx.load(setup.int8 / "model.onnx").graph.initializer}
    assert "embedding.weight" not in weights  # replaced by its uint8 copy
    assert any(dtype == onnx.TensorProto.UINT8 and "embedding" in name for name, dtype in weights.items())
    assert (setup.int8 / "model.onnx").stat().st_size < 0.6 * (setup.fp32 / "model.onnx").stat().st_size


def test_int8_agrees_with_fp32(setup: Setup) -> None:
    fp32 = OnnxClassifier(setup.fp32).predict(setup.test_texts)
    int8 = OnnxClassifier(setup.int8).predict(setup.test_texts)
    agreement = np.mean([a == b for a, b in zip(fp32, int8, strict=True)])
    assert agreement >= 0.9


def test_int8_prediction_does_not_depend_on_batch_mates(setup: Setup) -> None:
    """Dynamic quantization picks scales per batch, so logits move a little with it; labels should not."""
    classifier = OnnxClassifier(setup.int8)
    texts = setup.test_texts[:40]
    alone = [classifier.predict([t])[0] for t in texts]
    assert np.mean([a == b for a, b in zip(alone, classifier.predict(texts), strict=True)]) >= 0.9


# --- report and result --------------------------------------------------------------------------------------


def test_report_shape(setup: Setup) -> None:
    report = json.loads((setup.root / "reports" / "compression.json").read_text())
    assert report["chosen"] == "int8" == setup.result.chosen
    assert set(report["variants"]) == {"fp32", "int8"}
    assert report["parity"]["samples"] == min(Params().compress.parity_samples, len(setup.test_texts))
    assert 0 <= report["parity"]["max_abs_diff"] <= report["parity"]["atol"]
    assert 0 < report["size_ratio"] < 1
    for name, variant in report["variants"].items():
        assert set(variant) == {"path", "accuracy", "macro_f1", "size_bytes", "accuracy_drop"}
        assert 0 <= variant["accuracy"] <= 1 and 0 <= variant["macro_f1"] <= 1
        assert variant["path"] == (setup.root / "variants" / name / "model.onnx").as_posix()
        assert variant["size_bytes"] == Path(variant["path"]).stat().st_size
        manifest = json.loads((setup.root / "variants" / name / "model.json").read_text())
        assert manifest["variant"] == f"onnx-{name}" and manifest["labels"] == LABELS
        assert manifest["metrics"]["accuracy"] == variant["accuracy"]
    assert report["variants"]["fp32"]["accuracy_drop"] == 0
    assert report["variants"] == setup.result.variants


def test_trained_model_beats_chance(setup: Setup) -> None:
    # the fixtures are learnable: agreement tests above compare real predictions, not coin tosses
    assert setup.result.variants["fp32"]["accuracy"] > 1 / len(LABELS) + 0.1


def test_rerun_elsewhere_gives_relative_paths_and_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setup: Setup
) -> None:
    if setup.arch != "textcnn":
        pytest.skip("one architecture is enough: a run costs seconds")
    monkeypatch.chdir(setup.root)
    result = compress(Params(), Path("model"), Path("test.parquet"), Path("again"), Path("again.json"))
    report = json.loads(Path("again.json").read_text())
    assert report["variants"]["int8"]["path"] == "again/int8/model.onnx"
    for name in ("fp32", "int8"):  # deterministic: same bytes wherever the outputs go
        assert (
            Path(f"again/{name}/model.onnx").read_bytes()
            == (setup.root / "variants" / name / "model.onnx").read_bytes()
        )
    assert result.variants["int8"]["accuracy"] == setup.result.variants["int8"]["accuracy"]


# --- bad input ----------------------------------------------------------------------------------------------


def test_missing_test_split_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="test split not found"):
        compress(Params(), tmp_path / "model", tmp_path / "nope.parquet", tmp_path / "v", tmp_path / "r.json")
    assert not (tmp_path / "v").exists()


def test_test_split_without_labels_is_a_clear_error(tmp_path: Path) -> None:
    pd.DataFrame({"text": ["你好"]}).to_parquet(tmp_path / "test.parquet")
    with pytest.raises(DataError, match=r"missing column\(s\) \['label'\]"):
        compress(Params(), tmp_path / "model", tmp_path / "test.parquet", tmp_path / "v", tmp_path / "r.json")
    assert not (tmp_path / "v").exists()


def test_prefect_task_wraps_the_plain_function() -> None:
    assert compress_task.name == "compress"
    wrapped = inspect.signature(compress_task.fn).parameters
    assert list(wrapped) == list(inspect.signature(compress).parameters)
