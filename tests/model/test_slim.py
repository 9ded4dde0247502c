"""Structured pruning of every family (quantflow/core/slim.py): smaller layers, the same ids in, the same
logits where nothing hit was dropped, ONNX parity, static int8 and a fine-tune of the smaller model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from torch import nn

from quantflow.core.export import export_onnx
from quantflow.core.models import ModelConfig, RemappedEmbedding, build_model, ngram_buckets
from quantflow.core.onnx_model import INPUT_NAME, MODEL_FILE
from quantflow.core.pruning import count_params
from quantflow.core.quantize import BucketedReader, quantize_static_qdq
from quantflow.core.slim import SlimSpec, slim_and_fine_tune, structured_prune
from quantflow.core.text import PAD, UNK, Tokenizer, TokenizerConfig, build_vocab
from quantflow.core.training import train_epoch
from tests.model.tiny import family_config, train_briefly

ARCHS = ["textcnn", "ngram_textcnn", "char_word_textcnn", "fasttext", "transformer"]
VOCAB, HIT = 60, 40  # training texts use ids 2..39 only: ids 40..59 are never hit
SHRINK = SlimSpec(filter_keep=0.5, head_keep=0.5, ff_keep=0.5, token_keep=0.5, ngram_keep=0.3)
STATIC_OPS = ["Gather", "Gemm", "MatMul", "Conv", "Relu"]

pytestmark = pytest.mark.usefixtures("one_thread")


def train_ids(n: int = 120, seed: int = 0) -> np.ndarray:
    """(n, 12) ids in [2, HIT), every fourth row padded after 5 tokens."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, HIT, size=(n, 12))
    ids[::4, 5:] = 0
    return ids


def trained(arch: str) -> tuple[nn.Module, ModelConfig, np.ndarray]:
    ids = train_ids()
    cfg = family_config(arch, VOCAB, sep_id=7)
    torch.manual_seed(0)
    y = (ids[:, 0] % 2).astype(np.int64)  # a learnable label: the parity of the first id
    return train_briefly(build_model(cfg), ids, y), cfg, ids


def logits(model: nn.Module, ids: np.ndarray) -> torch.Tensor:
    with torch.inference_mode():
        return model.eval()(torch.from_numpy(ids))


# --- structure ----------------------------------------------------------------------------------------------


# the shapes SHRINK gives each tiny model: 4 of 8 filters, 2 of 4 heads (of width 4), 16 of 32 units,
# 30 of 60 token rows, 303 of the 1010 n-gram rows (1009 buckets and padding's) and the zero row
SHRUNK = {
    "textcnn": {"convs.0.weight": (4, 16, 2), "fc.weight": (2, 8), "embedding.weight": (30, 16)},
    "ngram_textcnn": {
        "cnn.convs.1.weight": (4, 16, 3),
        "fc.weight": (2, 8 + 16),
        "cnn.embedding.weight": (30, 16),
        "bag.embedding.weight": (30, 16),
        "bag.ngrams.weight": (304, 16),
        "bag.ngrams.remap": (1010, 1),
    },
    "char_word_textcnn": {"char_convs.0.weight": (4, 16, 2), "word_convs.1.weight": (4, 16, 3)},
    "fasttext": {"ngrams.weight": (304, 16), "embedding.remap": (VOCAB, 1)},
    "transformer": {
        "layers.1.qkv.weight": (3 * 2 * 4, 16),
        "layers.1.out.weight": (16, 2 * 4),
        "layers.0.ff.0.weight": (16, 16),
        "layers.0.ff.2.weight": (16, 16),
    },
}


@pytest.mark.parametrize("arch", ARCHS)
def test_every_family_rebuilds_smaller_layers(arch: str) -> None:
    model, cfg, ids = trained(arch)
    slim = structured_prune(model, cfg, SHRINK, ids)
    state = slim.model.state_dict()
    assert {key: tuple(state[key].shape) for key in SHRUNK[arch]} == SHRUNK[arch]
    assert count_params(slim.model) < count_params(model)
    assert slim.facts["params"] == count_params(slim.model) < slim.facts["params_before"]
    # the config alone rebuilds it (a model folder describes itself): same shapes, same function
    again = build_model(slim.cfg)
    again.load_state_dict(slim.model.state_dict())
    torch.testing.assert_close(logits(again, ids), logits(slim.model, ids))


@pytest.mark.parametrize("arch", ARCHS)
def test_dropping_only_never_hit_rows_keeps_the_training_logits(arch: str) -> None:
    """Full shares: filters, heads and units all stay; token and n-gram rows never hit on the training ids go."""
    model, cfg, ids = trained(arch)
    slim = structured_prune(model, cfg, SlimSpec(token_keep=1.0, ngram_keep=1.0), ids)
    assert slim.cfg.extra["token_rows"] == HIT  # pad, unk and ids 2..39
    if "buckets" in cfg.extra:
        assert slim.cfg.extra["ngram_rows"] < cfg.extra["buckets"]
    assert count_params(slim.model) < count_params(model)
    torch.testing.assert_close(logits(slim.model, ids), logits(model, ids), atol=1e-6, rtol=0)
    tables = [m for m in slim.model.modules() if isinstance(m, RemappedEmbedding) and m.num_ids == VOCAB]
    assert tables
    for table in tables:  # never-hit ids now read the <unk> row
        torch.testing.assert_close(
            table(torch.arange(HIT, VOCAB)), table(torch.ones(VOCAB - HIT, dtype=torch.int64))
        )


def test_dropped_tokens_read_the_unk_row_and_dropped_buckets_a_zero_row() -> None:
    model, cfg, ids = trained("ngram_textcnn")
    slim = structured_prune(model, cfg, SlimSpec(token_keep=0.4, ngram_keep=0.1), ids).model
    every_id = torch.arange(VOCAB)
    for table in ("cnn", "bag"):
        old, new = getattr(model, table).embedding.weight, getattr(slim, table).embedding(every_id)
        kept = (new == old).all(dim=1)
        assert 2 < int(kept.sum()) == round(0.4 * VOCAB)
        assert (new[~kept] == old[1]).all()  # every dropped id reads the <unk> vector
    every_row = torch.arange(cfg.extra["buckets"] + 1)  # each bucket and the padding row
    rows = slim.bag.ngrams(every_row)
    kept = (rows == model.bag.ngrams.weight).all(dim=1) & (rows != 0).any(dim=1)
    assert int(kept.sum()) == round(0.1 * 1010) and (rows[~kept] == 0).all()
    assert (rows[-1] == 0).all()  # padding n-grams still read a zero row


def test_the_most_hit_rows_stay() -> None:
    """One bigram and one char fill the training texts: pruned to a handful of rows, both stay."""
    model, cfg, ids = trained("fasttext")
    busy = ids.copy()
    busy[:, :2] = [23, 31]  # every text starts with the bigram (23, 31)
    slim = structured_prune(model, cfg, SlimSpec(token_keep=0.1, ngram_keep=0.01), busy).model
    bucket = int(ngram_buckets(torch.tensor([[23, 31]]), 2, 1009)[0][0, 0])
    assert int(slim.ngrams.remap[bucket]) != 0  # kept: not the zero row
    assert int(slim.embedding.remap[23]) != 1 and int(slim.embedding.remap[31]) != 1  # not <unk>


@pytest.mark.parametrize("arch", ["ngram_textcnn", "char_word_textcnn"])
def test_the_strongest_filter_of_every_bank_stays(arch: str) -> None:
    model, cfg, ids = trained(arch)
    banks = [model.cnn.convs] if arch == "ngram_textcnn" else [model.char_convs, model.word_convs]
    with torch.no_grad():
        for bank in banks:
            bank[1].weight[6] *= 50
    slim = structured_prune(model, cfg, SlimSpec(filter_keep=0.25), ids).model
    slim_banks = [slim.cnn.convs] if arch == "ngram_textcnn" else [slim.char_convs, slim.word_convs]
    for old, new in zip(banks, slim_banks, strict=True):
        assert new[1].out_channels == 2
        assert any(torch.equal(new[1].weight[i], old[1].weight[6]) for i in range(2))


def test_the_strongest_head_and_unit_stay() -> None:
    model, cfg, ids = trained("transformer")
    layer = model.layers[0]
    with torch.no_grad():
        layer.qkv.weight[2 * 16 + 3 * 4 : 2 * 16 + 4 * 4] *= 50  # head 3's value rows
        layer.ff[0].weight[5] *= 50  # unit 5
    slim = structured_prune(model, cfg, SlimSpec(head_keep=0.25, ff_keep=0.125), ids).model
    new = slim.layers[0]
    assert (new.heads, new.head_dim, new.ff[0].out_features) == (1, 4, 4)
    torch.testing.assert_close(new.qkv.weight[2 * 4 :], layer.qkv.weight[2 * 16 + 12 : 2 * 16 + 16])
    assert any(torch.equal(new.ff[0].weight[i], layer.ff[0].weight[5]) for i in range(4))


def kill_filters(banks: list[nn.ModuleList], dead: int) -> None:
    """Zero the first ``dead`` filters of every width: ReLU(0) pools to 0, so they add nothing."""
    with torch.no_grad():
        for bank in banks:
            for conv in bank:
                conv.weight[:dead] = 0
                conv.bias[:dead] = 0


@pytest.mark.parametrize("arch", ["textcnn", "ngram_textcnn", "char_word_textcnn"])
def test_dropping_dead_filters_keeps_the_logits(arch: str) -> None:
    """Only dead filters go: the same logits, so the head's columns followed the kept filters."""
    model, cfg, ids = trained(arch)
    banks = {"textcnn": ["convs"], "ngram_textcnn": ["cnn.convs"]}.get(arch, ["char_convs", "word_convs"])
    kill_filters([model.get_submodule(b) for b in banks], 4)
    slim = structured_prune(model, cfg, SlimSpec(filter_keep=0.5), ids)
    assert slim.cfg.num_filters == 4
    torch.testing.assert_close(logits(slim.model, ids), logits(model, ids), atol=1e-6, rtol=0)


def test_dropping_dead_heads_and_units_keeps_the_logits() -> None:
    """Heads whose values are zero and units whose inputs are zero add nothing: pruning them changes nothing."""
    model, cfg, ids = trained("transformer")
    with torch.no_grad():
        for layer in model.layers:
            for head in (0, 2):  # value rows (and biases) of heads 0 and 2: 4 dims each, after q and k
                rows = slice(2 * 16 + 4 * head, 2 * 16 + 4 * head + 4)
                layer.qkv.weight[rows], layer.qkv.bias[rows] = 0, 0
            layer.ff[0].weight[::2], layer.ff[0].bias[::2] = 0, 0  # GELU(0) = 0: every other unit is dead
    slim = structured_prune(model, cfg, SlimSpec(head_keep=0.5, ff_keep=0.5), ids)
    assert (slim.cfg.heads, slim.cfg.ff_dim, slim.cfg.extra["head_dim"]) == (2, 16, 4)
    torch.testing.assert_close(logits(slim.model, ids), logits(model, ids), atol=1e-5, rtol=0)


def test_full_shares_of_filters_heads_and_units_are_the_same_model() -> None:
    for arch in ("textcnn", "transformer"):
        model, cfg, ids = trained(arch)
        slim = structured_prune(model, cfg, SlimSpec(), ids)
        assert slim.cfg == cfg and slim.facts == {
            "params_before": count_params(model),
            "params": count_params(model),
        }
        torch.testing.assert_close(logits(slim.model, ids), logits(model, ids))


# --- ONNX, int8, the same ids -------------------------------------------------------------------------------


def onnx_logits(path: Path, ids: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {INPUT_NAME: ids})[0]


@pytest.mark.parametrize("arch", ARCHS)
def test_pruned_models_export_with_parity(arch: str, tmp_path: Path) -> None:
    model, cfg, ids = trained(arch)
    slim = structured_prune(model, cfg, SHRINK, ids)
    path = export_onnx(slim.model, slim.cfg, tmp_path / MODEL_FILE)
    mixed = np.concatenate([ids[:7], np.array([[5, 9, 0, 0] + [0] * 8] * 2)])  # padded rows of other lengths
    for batch in (mixed, ids[:1, :5], ids[3:4, :3]):
        np.testing.assert_allclose(
            onnx_logits(path, batch), logits(slim.model, batch).numpy(), atol=1e-4, rtol=0
        )
    graph = onnx.load(path).graph
    remaps = {tuple(t.dims) for t in graph.initializer if t.data_type == onnx.TensorProto.INT16}
    assert remaps == {(VOCAB, 1)} | (
        {(1010, 1)} if "buckets" in cfg.extra else set()
    )  # id → row, in the graph (n-grams: each bucket and padding)
    (inp,) = graph.input
    assert inp.name == INPUT_NAME and inp.type.tensor_type.elem_type == onnx.TensorProto.INT64


@pytest.fixture
def corpus(tiny_frame: pd.DataFrame, tmp_path: Path) -> tuple[Tokenizer, list[str]]:
    """A char tokenizer whose vocabulary also holds ten chars the training texts never use."""
    texts = tiny_frame["text"].tolist()
    tokens = list(Tokenizer(TokenizerConfig(), {PAD: 0, UNK: 1}).iter_tokens(texts))  # what encode will see
    vocab = build_vocab([*tokens, list("甲乙丙丁戊己庚辛壬癸")], min_freq=1, max_size=500)
    tokenizer = Tokenizer(TokenizerConfig(max_len=64), vocab)
    tokenizer.save(tmp_path / "tokenizer")
    return tokenizer, texts


@pytest.mark.parametrize("arch", ["textcnn", "ngram_textcnn"])
def test_the_tokenizer_ids_run_unchanged_end_to_end(arch: str, corpus, tmp_path: Path) -> None:
    """Same tokenizer, same ids in: the pruned graph takes what the unpruned one takes, and on the training
    texts gives the same logits (only never-hit rows went)."""
    tokenizer, texts = corpus
    ids = tokenizer.encode(texts)
    labels = np.array([i % 2 for i in range(len(texts))], dtype=np.int64)
    cfg = family_config(arch, len(tokenizer.vocab))
    model = train_briefly(build_model(cfg), ids, labels)
    slim = structured_prune(model, cfg, SlimSpec(token_keep=1.0, ngram_keep=1.0), ids)
    assert slim.cfg.extra["token_rows"] == len(tokenizer.vocab) - 10
    full = export_onnx(model, cfg, tmp_path / "full" / MODEL_FILE)
    pruned = export_onnx(slim.model, slim.cfg, tmp_path / "slim" / MODEL_FILE)
    inputs = [(i.name, i.type) for i in onnx.load(full).graph.input]
    assert [(i.name, i.type) for i in onnx.load(pruned).graph.input] == inputs
    for batch in (ids[:50], tokenizer.encode(texts[:1])):
        np.testing.assert_allclose(onnx_logits(pruned, batch), onnx_logits(full, batch), atol=1e-5, rtol=0)
    assert Tokenizer.load(tmp_path / "tokenizer").vocab == tokenizer.vocab


def test_a_pruned_model_quantizes_to_static_int8(corpus, tmp_path: Path) -> None:
    tokenizer, texts = corpus
    ids = tokenizer.encode(texts)
    labels = np.array([int("经" in t or "国" in t) for t in texts], dtype=np.int64)
    cfg = family_config("ngram_textcnn", len(tokenizer.vocab))
    model = train_briefly(build_model(cfg), ids, labels, steps=60)
    slim = structured_prune(model, cfg, SlimSpec(filter_keep=0.5, token_keep=0.8, ngram_keep=0.5), ids)
    fp32 = export_onnx(slim.model, slim.cfg, tmp_path / "fp32" / MODEL_FILE)
    int8 = quantize_static_qdq(
        fp32, tmp_path / "int8" / MODEL_FILE, BucketedReader(tokenizer, texts), STATIC_OPS
    )
    graph = onnx.load(int8).graph
    ops = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    types = {t.name: t.data_type for t in graph.initializer}
    eight_bits = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    assert types["bag.ngrams.weight_quantized"] in eight_bits  # the table is 8-bit ...
    remaps = {tuple(t.dims) for t in graph.initializer if t.data_type == onnx.TensorProto.INT16}
    assert remaps == {(len(tokenizer.vocab), 1), (1010, 1)}  # ... its remaps stay integer ids
    assert int8.stat().st_size < 0.7 * fp32.stat().st_size  # tiny: the graph itself weighs ~20 kB
    agree = (onnx_logits(int8, ids).argmax(1) == onnx_logits(fp32, ids).argmax(1)).mean()
    assert agree >= 0.95


# --- fine-tune ----------------------------------------------------------------------------------------------


def test_the_fine_tune_trains_the_smaller_model_and_the_zero_row_stays_zero() -> None:
    model, cfg, ids = trained("ngram_textcnn")
    y = (ids[:, 0] % 2).astype(np.int64)
    seen: list[int] = []

    def fine_tune(smaller: nn.Module) -> nn.Module:
        seen.append(count_params(smaller))
        optimizer = torch.optim.AdamW(smaller.parameters(), lr=0.01)
        train_epoch(smaller, optimizer, ids, y, 32, np.random.default_rng(0), "fine-tune")
        return smaller

    before = structured_prune(model, cfg, SHRINK, ids).model
    after = slim_and_fine_tune(model, cfg, SHRINK, ids, fine_tune)
    assert seen == [count_params(after.model)] and not after.model.training
    assert not torch.equal(after.model.bag.ngrams.weight, before.bag.ngrams.weight)  # it trained
    assert isinstance(after.model.bag.ngrams, RemappedEmbedding)
    assert (after.model.bag.ngrams.weight[0] == 0).all()  # dropped buckets still add nothing
    torch.testing.assert_close(after.model.bag.ngrams.remap, before.bag.ngrams.remap)


# --- bad input ----------------------------------------------------------------------------------------------


def test_bad_settings_and_misuse_name_the_problem() -> None:
    with pytest.raises(ValueError, match=r"compress\.ngram_keep must be in \(0, 1\] \(got: 0\)"):
        SlimSpec(ngram_keep=0)
    with pytest.raises(ValueError, match=r"compress\.head_keep must be in \(0, 1\] \(got: 1\.5\)"):
        SlimSpec(head_keep=1.5)
    model, cfg, ids = trained("fasttext")
    with pytest.raises(ValueError, match="needs the training split's ids"):
        structured_prune(model, cfg, SlimSpec(token_keep=0.5))
    once = structured_prune(model, cfg, SlimSpec(token_keep=0.5, ngram_keep=0.5), ids)
    with pytest.raises(ValueError, match="pruned already: prune the original model"):
        structured_prune(once.model, once.cfg, SlimSpec(ngram_keep=0.5), ids)
    with pytest.raises(ValueError, match="structured pruning knows"):
        structured_prune(model, ModelConfig(arch="lstm", vocab_size=VOCAB, num_classes=2), SlimSpec())


def test_slim_and_distill_are_core_code_without_steps_or_orchestration() -> None:
    probe = (
        "import sys, quantflow.core.slim, quantflow.core.distill; "
        "print(','.join(m for m in ('prefect', 'mlflow', 'tasks', 'flows', 'serving', 'onnxruntime') "
        "if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""
