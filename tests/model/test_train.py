import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from quantflow.core.candidates import train_neural
from quantflow.core.layout import EvaluationReports, TrainOutputs
from quantflow.core.models import ModelConfig, build_model, load_model
from tasks.evaluate import evaluate
from tasks.train import train
from tests.model.tiny import LABELS, overfit_one_batch, split_and_preprocess, tiny_train_params
from tests.params_helpers import preprocess_with, shipped_params

TINY = tiny_train_params(transformer_layers=1, transformer_heads=2, transformer_ff_dim=32)


@pytest.fixture
def features(tmp_path: Path, tiny_frame: pd.DataFrame) -> Path:
    return split_and_preprocess(tmp_path, tiny_frame, preprocess_with(min_freq=1, max_len=32), labels=LABELS)


@pytest.mark.parametrize("arch", ["textcnn", "transformer"])
def test_padding_never_changes_the_logits(arch: str) -> None:
    model = build_model(
        ModelConfig(
            arch=arch, vocab_size=30, num_classes=3, embed_dim=16, num_filters=4, heads=2, dropout=0.0
        )
    ).eval()
    short = torch.tensor([[4, 5, 6]])
    padded = torch.tensor([[4, 5, 6, 0, 0, 0, 0, 0]])
    torch.testing.assert_close(model(short), model(padded), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["textcnn", "transformer"])
def test_loss_falls_when_overfitting_one_batch(arch: str) -> None:
    losses = overfit_one_batch(
        ModelConfig(
            arch=arch, vocab_size=50, num_classes=2, embed_dim=16, num_filters=8, heads=2, dropout=0.0
        )
    )
    assert losses[-1] < 0.25 * losses[0]


@pytest.mark.parametrize("arch", ["textcnn", "transformer"])
def test_train_saves_a_self_describing_folder_and_learns(features: Path, arch: str) -> None:
    params = TINY.model_copy(update={"model": arch})
    result = train_neural(
        params,
        features / "features",
        features / "tokenizer",
        features / "model",
        features / "history.json",
        seed=3,
    )
    model, cfg, manifest = load_model(result.model_dir)
    assert cfg.arch == arch and manifest.labels == ["news", "comment"]
    assert {"model.pt", "model.json", "tokenizer.json", "vocab.json"} <= {
        p.name for p in result.model_dir.iterdir()
    }
    assert "torch" in manifest.versions
    history = json.loads((features / "history.json").read_text())
    assert [row["epoch"] for row in history] == list(range(1, len(history) + 1))
    assert result.best_val_macro_f1 >= 0.9  # two disjoint vocabularies: trivially separable


def test_training_is_deterministic(features: Path) -> None:
    args = (features / "features", features / "tokenizer")
    a = train_neural(TINY, *args, features / "m1", features / "h1.json", seed=5)
    b = train_neural(TINY, *args, features / "m2", features / "h2.json", seed=5)
    assert a.history == b.history
    wa, wb = torch.load(a.model_dir / "model.pt"), torch.load(b.model_dir / "model.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_evaluate_writes_metrics_baseline_and_plot(features: Path) -> None:
    outputs = TrainOutputs(
        features / "model", features / "candidates", features / "candidates.json", features / "h.json"
    )
    params = TINY.model_copy(update={"candidates": ["neural", "tfidf_lr"]})
    train(params, features / "features", features / "tokenizer", outputs, seed=3)
    result = evaluate(
        shipped_params().evaluate,
        outputs,
        features / "features",
        features / "split",
        EvaluationReports.under(features / "reports"),
        seed=3,
    )
    saved = json.loads(result.metrics_path.read_text())
    assert saved == result.metrics
    for key in ("fp32", "baseline"):
        assert 0.0 <= saved[key]["accuracy"] <= 1.0
        assert set(saved[key]["per_class"]) == {"news", "comment"}
    predictions = pd.read_csv(features / "reports" / "predictions.csv")
    assert len(predictions) == saved["test_rows"]
    accuracy = float(np.mean(predictions["actual"] == predictions["predicted"]))
    assert accuracy == pytest.approx(saved["fp32"]["accuracy"], abs=1e-6)
    assert result.plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # every candidate's test scores beside its validation scores; the shipped one's are the fp32 entry's
    assert set(saved["candidates"]) == {"neural", "tfidf_lr"}
    (winner,) = [name for name, row in saved["candidates"].items() if row["winner"]]
    assert saved["model"]["candidate"] == winner == saved["selection"]["winner"]
    assert saved["candidates"][winner]["test_accuracy"] == saved["fp32"]["accuracy"]
    assert 0.0 <= saved["versus_baseline"]["p_value"] <= 1.0
