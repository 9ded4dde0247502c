"""Model surgery in PyTorch: per-layer magnitude pruning and the slim (filter-pruned) TextCNN."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from quantflow.core.models import ModelConfig, build_model
from quantflow.core.pruning import (
    count_params,
    magnitude_prune,
    make_permanent,
    prunable_layers,
    slim_textcnn,
    weight_sparsity,
)

CFG = ModelConfig(
    arch="textcnn", vocab_size=500, num_classes=3, embed_dim=16, num_filters=8, kernel_sizes=(2, 3)
)


def textcnn() -> nn.Module:
    torch.manual_seed(0)
    return build_model(CFG).eval()


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.8])
def test_every_layer_reaches_the_target_sparsity(sparsity: float) -> None:
    model = make_permanent(magnitude_prune(textcnn(), sparsity))
    for name, module in prunable_layers(model):
        share = float((module.weight == 0).float().mean())
        assert abs(share - sparsity) <= 0.01, name  # per layer: no conv is wiped out by the embedding
    assert abs(weight_sparsity(model) - sparsity) <= 0.01


def test_masks_hold_through_training_and_fold_into_plain_weights() -> None:
    model = magnitude_prune(textcnn(), 0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    ids, y = torch.randint(1, 500, (8, 12)), torch.randint(0, 3, (8,))
    model.train()
    nn.functional.cross_entropy(model(ids), y).backward()
    optimizer.step()
    make_permanent(model)
    assert not any(name.endswith(("_orig", "_mask")) for name, _ in model.named_parameters())
    assert not any(name.endswith("_mask") for name, _ in model.named_buffers())
    assert abs(weight_sparsity(model) - 0.5) <= 0.01


def test_slim_keeping_every_filter_is_the_same_function() -> None:
    model = textcnn()
    slim, cfg = slim_textcnn(model, CFG, 1.0)
    ids = torch.randint(1, 500, (4, 10))
    torch.testing.assert_close(slim(ids), model(ids))
    assert cfg == CFG


def test_slim_keeps_the_strongest_filters_and_has_fewer_parameters() -> None:
    model = textcnn()
    with torch.no_grad():
        model.convs[0].weight[5] *= 100  # filter 5 of width 2 is by far the strongest
    slim, cfg = slim_textcnn(model, CFG, 0.5)
    assert cfg.num_filters == 4 and all(conv.out_channels == 4 for conv in slim.convs)
    assert count_params(slim) < count_params(model)
    kept = slim.convs[0].weight
    assert any(torch.equal(kept[i], model.convs[0].weight[5]) for i in range(4))
    assert slim(torch.randint(1, 500, (2, 9))).shape == (2, CFG.num_classes)


def test_bad_settings_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"compress\.sparsity must be in \[0, 1\) \(got: 1\.0\)"):
        magnitude_prune(textcnn(), 1.0)
    with pytest.raises(ValueError, match=r"compress\.filter_keep must be in \(0, 1\] \(got: 0\)"):
        slim_textcnn(textcnn(), CFG, 0)
    transformer = ModelConfig(arch="transformer", vocab_size=50, num_classes=2, embed_dim=16, heads=2)
    with pytest.raises(ValueError, match="needs a textcnn"):
        slim_textcnn(build_model(transformer), transformer, 0.5)


def test_pruning_is_core_code_without_steps_or_orchestration() -> None:
    import subprocess
    import sys

    probe = (
        "import sys, quantflow.core.pruning; "
        "print(','.join(m for m in ('prefect', 'mlflow', 'tasks', 'flows', 'serving', 'onnxruntime') "
        "if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""
