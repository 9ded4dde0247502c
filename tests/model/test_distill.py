"""Knowledge distillation (quantflow/core/distill.py): the loss, a student that learns the teacher's logits
(not the labels when alpha is 1), the student's config, and its ONNX export."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from quantflow.core.distill import (
    DistillSettings,
    agreement,
    distill,
    distill_loss,
    distill_student,
    logits_of,
    student_config,
)
from quantflow.core.export import export_onnx
from quantflow.core.models import build_model
from quantflow.core.onnx_model import INPUT_NAME, MODEL_FILE
from quantflow.core.pruning import count_params
from tests.model.tiny import family_config, train_briefly

VOCAB = 60
SHORT = DistillSettings(temperature=2.0, alpha=1.0, epochs=2, batch_size=16, lr=0.01, seed=3)

pytestmark = pytest.mark.usefixtures("one_thread")


def corpus(n: int = 160, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, 10) ids in [2, VOCAB) and a label the teacher can learn: does id 5, 6 or 7 occur."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, VOCAB, size=(n, 10))
    ids[::3, 6:] = 0
    return ids, np.isin(ids, (5, 6, 7)).any(axis=1).astype(np.int64)


@cache
def teacher() -> torch.nn.Module:
    """An ngram_textcnn that learned the corpus (trained once per session; nothing here changes it)."""
    ids, y = corpus()
    torch.manual_seed(0)
    return train_briefly(build_model(family_config("ngram_textcnn", VOCAB)), ids, y, steps=80)


def test_the_loss_mixes_soft_and_hard_terms() -> None:
    torch.manual_seed(0)
    student, teacher_logits, y = torch.randn(8, 3), torch.randn(8, 3), torch.randint(0, 3, (8,))
    t = 3.0
    p = F.softmax(teacher_logits / t, dim=1)
    kl = (p * (p.log() - F.log_softmax(student / t, dim=1))).sum(dim=1).mean() * t**2
    ce = F.cross_entropy(student, y)
    torch.testing.assert_close(distill_loss(student, teacher_logits, None, t, 1.0), kl)
    torch.testing.assert_close(distill_loss(student, teacher_logits, y, t, 0.0), ce)
    torch.testing.assert_close(distill_loss(student, teacher_logits, y, t, 0.25), 0.25 * kl + 0.75 * ce)
    assert float(distill_loss(teacher_logits, teacher_logits, None, t, 1.0)) == pytest.approx(0, abs=1e-6)
    with pytest.raises(ValueError, match="needs the labels"):
        distill_loss(student, teacher_logits, None, t, 0.5)


def trained_student(labels: np.ndarray | None, settings: DistillSettings) -> torch.nn.Module:
    ids, _ = corpus()
    targets = logits_of(teacher(), ids)
    torch.manual_seed(1)
    student = build_model(family_config("textcnn", VOCAB))
    distill(student, targets, ids, labels, settings)
    return student


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_with_alpha_one_the_labels_are_never_read() -> None:
    _, y = corpus()
    shuffled = np.random.default_rng(9).permutation(y)
    assert (shuffled != y).any()
    assert same_weights(trained_student(y, SHORT), trained_student(shuffled, SHORT))
    assert same_weights(trained_student(y, SHORT), trained_student(None, SHORT))
    mixed = DistillSettings(**{**vars(SHORT), "alpha": 0.5})  # the hard term reads them: results differ
    assert not same_weights(trained_student(y, mixed), trained_student(shuffled, mixed))


def test_the_student_comes_to_agree_with_the_teacher() -> None:
    ids, y = corpus()
    big = teacher()
    targets = logits_of(big, ids)
    student_cfg = student_config(family_config("ngram_textcnn", VOCAB), "textcnn", kernel_sizes=[3])
    torch.manual_seed(SHORT.seed)
    before = agreement(build_model(student_cfg), targets, ids)
    settings = DistillSettings(**{**vars(SHORT), "epochs": 6, "lr": 0.03})
    result = distill_student(big, student_cfg, ids, y, settings)
    assert [row["epoch"] for row in result.history] == list(range(1, 7))
    assert result.history[-1]["agreement"] >= max(before + 0.2, 0.9)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert count_params(result.model) < count_params(big) and not result.model.training


def test_the_student_config_keeps_the_contract_and_takes_new_sizes() -> None:
    teacher_cfg = family_config("ngram_textcnn", VOCAB)
    pruned = teacher_cfg.__class__(
        **{**teacher_cfg.to_dict(), "extra": {**teacher_cfg.extra, "ngram_rows": 9}}
    )
    small = student_config(pruned, embed_dim=8, num_filters=4, kernel_sizes=[3], buckets=101)
    assert (small.arch, small.vocab_size, small.num_classes, small.max_len) == ("ngram_textcnn", VOCAB, 2, 64)
    assert (small.embed_dim, small.num_filters, small.kernel_sizes) == (8, 4, (3,))
    assert small.extra == {
        "ngram_max": 3,
        "buckets": 101,
    }  # the teacher's pruned table size is not the student's
    plain = student_config(teacher_cfg, "textcnn", num_filters=16)
    assert plain.arch == "textcnn" and plain.extra == {} and plain.embed_dim == teacher_cfg.embed_dim
    with pytest.raises(ValueError, match="ngram_max and buckets apply to"):
        student_config(teacher_cfg, "textcnn", buckets=101)
    with pytest.raises(ValueError, match=r"student sizes \['width'\] are unknown"):
        student_config(teacher_cfg, width=3)


def test_bad_settings_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"compress\.distill_temperature must be > 0 \(got: 0\)"):
        DistillSettings(temperature=0)
    with pytest.raises(ValueError, match=r"compress\.distill_alpha must be in \[0, 1\] \(got: 1\.5\)"):
        DistillSettings(alpha=1.5)
    ids, y = corpus()
    with pytest.raises(ValueError, match="one teacher row and one label per text"):
        distill(build_model(family_config("textcnn", VOCAB)), np.zeros((3, 2), np.float32), ids, y, SHORT)


def test_the_student_exports_with_parity(tmp_path: Path) -> None:
    ids, y = corpus()
    student_cfg = student_config(family_config("ngram_textcnn", VOCAB), "fasttext", embed_dim=8, ngram_max=2)
    student = distill_student(teacher(), student_cfg, ids, y, SHORT).model
    path = export_onnx(student, student_cfg, tmp_path / MODEL_FILE)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (ids[:9], ids[:1, :4]):
        expected = logits_of(student, batch)
        np.testing.assert_allclose(session.run(None, {INPUT_NAME: batch})[0], expected, atol=1e-4, rtol=0)
