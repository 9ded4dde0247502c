"""The hashed n-gram models (fasttext, ngram_textcnn), the learning-rate schedule and pre-trained embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from quantflow.core.bundle import Manifest
from quantflow.core.export import export_onnx
from quantflow.core.models import ModelConfig, build_model, load_model, ngram_buckets
from quantflow.core.params import TrainParams
from quantflow.core.pretrain import word2vec_vectors
from quantflow.core.training import init_embeddings, make_scheduler
from tests.model.tiny import overfit_one_batch
from tests.params_helpers import train_with

NGRAM_ARCHS = ["fasttext", "ngram_textcnn"]

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(arch: str, vocab_size: int = 50, classes: int = 2) -> ModelConfig:
    return ModelConfig(
        arch=arch,
        vocab_size=vocab_size,
        num_classes=classes,
        embed_dim=16,
        num_filters=4,
        dropout=0.0,
        extra={"ngram_max": 3, "buckets": 1009},
    )


def test_ngram_hash_covers_real_runs_only_and_depends_on_order() -> None:
    ids = torch.tensor([[5, 6, 7, 0, 0], [6, 5, 9, 8, 4]])
    bucket, real = ngram_buckets(ids, 2, 1009)
    assert bucket.shape == real.shape == (2, 4)
    assert real.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]  # (7, 0) and (0, 0) touch padding
    assert ((bucket >= 0) & (bucket < 1009)).all()
    assert bucket[0, 0] != bucket[1, 0]  # (5, 6) and (6, 5) are different bigrams
    trigram, real3 = ngram_buckets(torch.tensor([[5]]), 3, 1009)
    assert trigram.numel() == real3.numel() == 0  # a text shorter than n has no n-grams, and no error


@pytest.mark.parametrize("arch", NGRAM_ARCHS)
def test_padding_and_batch_mates_never_change_the_logits(arch: str) -> None:
    model = build_model(tiny(arch)).eval()
    alone = model(torch.tensor([[4, 5, 6]]))
    padded = model(torch.tensor([[4, 5, 6, 0, 0, 0, 0]]))
    batched = model(torch.tensor([[4, 5, 6, 0, 0, 0, 0], [9, 8, 7, 6, 5, 4, 3]]))[:1]
    torch.testing.assert_close(alone, padded, atol=1e-6, rtol=0)
    torch.testing.assert_close(alone, batched, atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch", NGRAM_ARCHS)
def test_loss_falls_when_overfitting_one_batch(arch: str) -> None:
    losses = overfit_one_batch(tiny(arch))
    assert losses[-1] < 0.25 * losses[0]


def test_order_reaches_the_fasttext_model_only_through_ngrams() -> None:
    """Unigrams alone are a bag: the same chars in another order differ only by their bigrams and trigrams."""
    unigram = build_model(ModelConfig(**{**tiny("fasttext").to_dict(), "extra": {"ngram_max": 1}})).eval()
    trigram = build_model(tiny("fasttext")).eval()
    a, b = torch.tensor([[4, 5, 6, 7]]), torch.tensor([[7, 6, 5, 4]])
    torch.testing.assert_close(unigram(a), unigram(b))
    assert not torch.allclose(trigram(a), trigram(b))


def lrs(params: TrainParams, steps_per_epoch: int) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=params.lr)
    scheduler = make_scheduler(optimizer, params, steps_per_epoch)
    out = []
    for _ in range(params.epochs * steps_per_epoch):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_cosine_schedule_warms_up_then_decays_to_zero() -> None:
    params = train_with(lr=0.01, epochs=4, schedule="cosine", warmup_fraction=0.1)
    rates = lrs(params, steps_per_epoch=25)  # 100 steps, 10 of warm-up
    assert rates[0] == pytest.approx(0.001)
    assert rates[9] == pytest.approx(0.01)
    assert all(b <= a for a, b in zip(rates[9:], rates[10:], strict=False))
    assert rates[-1] < 0.0005


def test_constant_schedule_keeps_the_rate() -> None:
    assert set(lrs(train_with(lr=0.01, epochs=2, schedule="constant"), steps_per_epoch=5)) == {0.01}


def corpus() -> np.ndarray:
    """Ids 2-11 only ever appear with each other, ids 12-21 likewise: six of a group per text."""
    rng = np.random.default_rng(0)
    groups = (np.arange(2, 12), np.arange(12, 22))
    return np.array([rng.choice(g, 6, replace=False) for g in groups for _ in range(500)], dtype=np.int64)


def test_word2vec_vectors_group_co_occurring_ids() -> None:
    vectors = word2vec_vectors(corpus(), vocab_size=24, dim=8, seed=0)
    assert vectors.shape == (24, 8) and (vectors[0] == 0).all()
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-6)
    cosine = unit @ unit.T
    within, across = cosine[2:12, 2:12].mean(), cosine[2:12, 12:22].mean()
    assert within > across + 0.3


def test_init_embeddings_fills_the_char_table_not_the_ngram_table() -> None:
    model = build_model(tiny("fasttext", vocab_size=24))
    ngrams_before = model.ngrams.weight.detach().clone()
    init_embeddings(model, corpus(), seed=0)
    expected = word2vec_vectors(corpus(), 24, 16, seed=0)
    np.testing.assert_allclose(model.embedding.weight.detach().numpy(), expected)
    assert torch.equal(model.ngrams.weight, ngrams_before)


@pytest.mark.parametrize("arch", ["textcnn", *NGRAM_ARCHS])
def test_the_graph_pools_without_a_mask_over_vectors(arch: str, tmp_path: Path) -> None:
    """Padding reads zero rows and padding-only windows add what every text has anyway, so the exported graph
    multiplies only integer ids (the n-gram hash), never the float vectors or conv outputs by a mask."""
    cfg = tiny(arch)
    model = build_model(cfg).eval()
    path = export_onnx(model, cfg, tmp_path / "model.onnx")
    graph = onnx.shape_inference.infer_shapes(onnx.load(path)).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.output]}
    products = [n for n in graph.node if n.op_type in ("Mul", "Where")]
    floats = [n.name for n in products if types.get(n.output[0]) == onnx.TensorProto.FLOAT]
    assert floats == []
    assert (len(products) > 0) == (arch != "textcnn")  # the hash multiplies ids; a TextCNN has no hash
    ids = torch.tensor([[4, 5, 6, 7, 0, 0, 0], [9, 8, 7, 6, 5, 4, 3]])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"ids": ids.numpy()})[0], model(ids).detach(), atol=1e-5)


def test_the_padding_rows_stay_zero_through_training() -> None:
    """The bag sums gathered rows without a mask: padding's rows (char row 0, n-gram row ``buckets``) must stay
    zero while the model learns."""
    cfg = tiny("ngram_textcnn")
    torch.manual_seed(0)
    model = build_model(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
    ids = torch.tensor([[4, 5, 0, 0], [6, 7, 8, 0]])
    for _ in range(5):
        optimizer.zero_grad()
        model(ids).sum().backward()
        optimizer.step()
    assert (model.bag.ngrams.weight[1009] == 0).all() and model.bag.ngrams.weight.shape[0] == 1010
    assert (model.bag.embedding.weight[0] == 0).all() and (model.cnn.embedding.weight[0] == 0).all()


def test_a_model_pt_from_before_the_padding_row_is_refused_clearly(tmp_path: Path) -> None:
    cfg = tiny("fasttext")
    model = build_model(cfg)
    old = {
        k: (v[:-1] if k == "ngrams.weight" else v) for k, v in model.state_dict().items()
    }  # no padding row
    folder = tmp_path / "model"
    folder.mkdir()
    torch.save(old, folder / "model.pt")
    Manifest(labels=["a", "b"], config=cfg.to_dict(), variant="torch-fp32").save(folder)
    with pytest.raises(
        ValueError, match=r"model\.pt does not fit the 'fasttext' model code.*dvc repro train"
    ):
        load_model(folder)
