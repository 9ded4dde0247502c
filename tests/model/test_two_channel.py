"""The char+word TextCNN: one id sequence ``chars <sep> words``, one conv bank per part; padding invariance,
each bank blind to the other part, then the pipeline on a tiny corpus: preprocess (char+word), train, compress
(ONNX export, parity with PyTorch, int8 variants) and the service's explanation."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch

from quantflow.core.candidates import train_neural
from quantflow.core.layout import CompressionReports
from quantflow.core.models import ModelConfig, build_model, load_model
from quantflow.core.text import SEP, Tokenizer
from quantflow.core.training import TrainResult, model_config
from quantflow.registry.model_code import pip_requirements
from serving.model import ServedModel
from tasks.compress import CompressResult, compress
from tests.conftest import two_vocabulary_frame
from tests.model.tiny import LABELS, split_and_preprocess, tiny_train_params
from tests.params_helpers import params_with, preprocess_with, train_with

ARCH = "char_word_textcnn"
SEP_ID = 2
CHARS = 12  # features of the char bank: 4 filters x 3 widths; the word bank's follow

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(
        arch=ARCH, vocab_size=50, num_classes=3, embed_dim=16, num_filters=4, dropout=0.0, extra={"sep_id": 2}
    )
    return build_model(cfg).eval()


def logits(model: torch.nn.Module, *rows: list[int]) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return model(torch.tensor([r + [0] * (width - len(r)) for r in rows]))


@pytest.mark.parametrize("text", [[4, 5, 6, SEP_ID, 7, 8], [4, 5, SEP_ID], [SEP_ID, 7], [4, 5]])
def test_padding_and_batch_mates_never_change_the_logits(text: list[int]) -> None:
    model = tiny_model()
    alone = logits(model, text)
    padded = logits(model, text + [0] * 7)
    batched = logits(model, text + [0] * 3, [9] * 6 + [SEP_ID, 9, 9])[:1]
    torch.testing.assert_close(alone, padded, atol=1e-6, rtol=0)
    torch.testing.assert_close(alone, batched, atol=1e-6, rtol=0)


def test_each_bank_sees_only_its_own_part() -> None:
    model = tiny_model()
    with torch.inference_mode():
        base = model.features(torch.tensor([[4, 5, 6, SEP_ID, 7, 8]]))
        other_words = model.features(torch.tensor([[4, 5, 6, SEP_ID, 30, 31, 32]]))
        other_chars = model.features(torch.tensor([[40, SEP_ID, 7, 8]]))
    torch.testing.assert_close(base[:, :CHARS], other_words[:, :CHARS], atol=1e-6, rtol=0)
    assert not torch.allclose(base[:, CHARS:], other_words[:, CHARS:])
    # the word bank pools the same windows wherever the words start
    torch.testing.assert_close(base[:, CHARS:], other_chars[:, CHARS:], atol=1e-6, rtol=0)
    assert not torch.allclose(base[:, :CHARS], other_chars[:, :CHARS])


def test_texts_with_an_empty_part_get_finite_logits() -> None:
    model = tiny_model()
    with torch.inference_mode():
        rows = [[SEP_ID], [4, 5, SEP_ID], [SEP_ID, 7], [4, 5]]
        features = [model.features(torch.tensor([r])) for r in rows]
        out = logits(model, *rows)
    assert torch.isfinite(out).all()
    assert (features[0] == 0).all()  # nothing to pool: both banks give zeros
    assert (features[1][:, CHARS:] == 0).all() and (features[2][:, :CHARS] == 0).all()
    torch.testing.assert_close(features[1], features[3])  # no <sep>: all chars, no words


def test_sep_id_is_required() -> None:
    with pytest.raises(ValueError, match=r"needs extra\['sep_id'\]"):
        build_model(ModelConfig(arch=ARCH, vocab_size=10, num_classes=2))
    with pytest.raises(ValueError, match="preprocess.segmenter = char\\+word"):
        model_config(train_with(model=ARCH), {"<pad>": 0, "<unk>": 1}, 2, 32)


# --- the pipeline on a tiny corpus --------------------------------------------------------------------------

TINY = tiny_train_params(
    model=ARCH,
    augment_delete=0.1,  # the <sep> must survive augmentation
    augment_swap=0.05,
)
VARIANTS = {"fp32", "int8-dynamic", "int8-static", "pruned-int8", "slim-int8", "distilled-int8"}


@dataclass(frozen=True)
class Pipeline:
    root: Path
    trained: TrainResult
    compressed: CompressResult
    test_texts: list[str]

    def variant(self, name: str) -> Path:
        return self.root / "variants" / name


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    root = tmp_path_factory.mktemp("two_channel")
    preprocess = preprocess_with(segmenter="char+word", min_freq=1, max_len=40)
    split_and_preprocess(root, two_vocabulary_frame(120), preprocess, holdout=0.2, labels=LABELS)
    torch.set_num_threads(1)
    trained = train_neural(
        TINY, root / "features", root / "tokenizer", root / "model", root / "h.json", seed=0
    )
    params = params_with(
        {
            "compress.latency_texts": 10,
            "compress.throughput_texts": 64,
            "compress.calibration_samples": 64,
            "compress.parity_samples": 32,
            "compress.distill_student.embed_dim": 8,  # a student smaller than the tiny teacher
            "compress.distill_student.num_filters": 4,
            "compress.distill_lr": 0.05,  # ~100 training texts: params.yaml's rate would barely move it
            "compress.distill_batch_size": 16,
        }
    )
    test_path = root / "split" / "test.parquet"
    compressed = compress(
        params.compress,
        params.calibrate,
        root / "model",
        root / "split",
        root / "variants",
        CompressionReports.under(root / "reports"),
        params.seed,
    )
    return Pipeline(root, trained, compressed, pd.read_parquet(test_path)["text"].tolist())


def test_train_learns_the_tiny_corpus_and_the_folder_rebuilds_itself(pipeline: Pipeline) -> None:
    assert pipeline.trained.best_val_macro_f1 > 0.9
    model, cfg, _ = load_model(pipeline.root / "model")
    assert cfg.arch == ARCH and cfg.extra == {"sep_id": 2}
    assert Tokenizer.load(pipeline.root / "model").vocab[SEP] == 2


def test_onnx_matches_torch_on_dynamic_batch_and_length(pipeline: Pipeline) -> None:
    model, _, _ = load_model(pipeline.root / "model")
    tokenizer = Tokenizer.load(pipeline.root / "model")
    session = ort.InferenceSession(
        str(pipeline.variant("fp32") / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    texts = pipeline.test_texts
    shapes = set()
    for batch in (texts[:1], texts[1:6], texts[6:19], ["", "。！", "国务院"]):
        ids = tokenizer.encode(batch)
        shapes.add(ids.shape)
        with torch.inference_mode():
            expected = model(torch.from_numpy(ids)).numpy()
        got = session.run(None, {"ids": ids})[0]
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
        padded = np.pad(ids, ((0, 0), (0, 9)))
        np.testing.assert_allclose(session.run(None, {"ids": padded})[0], got, atol=1e-4, rtol=0)
    assert len({b for b, _ in shapes}) >= 3 and len({t for _, t in shapes}) >= 3
    assert pipeline.compressed.parity_max_abs_diff <= 1e-4


def test_compress_builds_int8_variants_that_keep_the_accuracy(pipeline: Pipeline) -> None:
    variants = pipeline.compressed.variants
    assert set(variants) == VARIANTS
    fp32_size = (pipeline.variant("fp32") / "model.onnx").stat().st_size
    for name in VARIANTS - {"fp32"}:
        path = pipeline.variant(name) / "model.onnx"
        ops = Counter(node.op_type for node in onnx.load(path).graph.node)
        assert ops["DequantizeLinear"] >= 1, name
        assert ops["MatMulInteger"] >= 1 or ops["QuantizeLinear"] >= 1, name
        assert path.stat().st_size < fp32_size, name
        assert variants[name]["accuracy"] >= variants["fp32"]["accuracy"] - 0.05, name
    assert variants["fp32"]["accuracy"] > 0.9


def test_service_explains_with_the_sep_token(pipeline: Pipeline) -> None:
    served = ServedModel.load(pipeline.variant("int8-dynamic"), "m", "1", None, threads=1)
    explained = served.explain("国务院召开会议")
    tokens = [t["token"] for t in explained["tokens"]]
    assert tokens[: tokens.index(SEP)] == list("国务院召开会议")
    assert "国务院" in tokens[tokens.index(SEP) + 1 :]
    assert all(np.isfinite(t["contribution"]) for t in explained["tokens"])
    assert explained["label"] == "news"


def test_registry_pins_jieba_for_the_char_word_tokenizer(pipeline: Pipeline) -> None:
    pins = pip_requirements(pipeline.variant("fp32"))
    assert any(p.startswith("jieba==") for p in pins)
    assert json.loads((pipeline.variant("fp32") / "tokenizer.json").read_text())["segmenter"] == "char+word"
