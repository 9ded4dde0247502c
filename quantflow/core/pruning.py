"""Model surgery in plain PyTorch: per-layer magnitude pruning and structured filter pruning of a TextCNN.

Unstructured pruning only zeroes weights (a smaller gzip, no speed); structured pruning drops whole conv
filters and rebuilds a narrower TextCNN, which is what makes the network faster (quantflow/core/slim.py does
that for every family, and for embedding rows, heads and feed-forward units). No ONNX, no Prefect here.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils import prune

from quantflow.core.models import ModelConfig, TextCNN
from quantflow.core.slim import SlimSpec, structured_prune

PRUNABLE = (nn.Embedding, nn.Conv1d, nn.Linear)


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every embedding, conv and linear layer with a ``weight``: the tensors magnitude pruning ranks."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, PRUNABLE)]


def magnitude_prune(model: nn.Module, sparsity: float) -> nn.Module:
    """Mask the smallest-|w| ``sparsity`` share of each layer's weight, layer by layer.

    Per layer, not global: the embedding holds most of a TextCNN's weights, and a global ranking pruned every
    conv weight to zero here. The masks stay attached (``weight_orig * weight_mask``) so a fine-tune keeps
    the pruned weights at zero; call :func:`make_permanent` afterwards.
    """
    if not 0 <= sparsity < 1:
        raise ValueError(f"compress.sparsity must be in [0, 1) (got: {sparsity})")
    for _, module in prunable_layers(model):
        prune.l1_unstructured(module, name="weight", amount=sparsity)
    return model


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold the masks into plain ``weight`` tensors (zeros stay zeros) so the model exports like any other."""
    for _, module in prunable_layers(model):
        if prune.is_pruned(module) and hasattr(module, "weight_mask"):
            prune.remove(module, "weight")
    return model


def weight_sparsity(model: nn.Module) -> float:
    """The share of exact zeros over the prunable layers' weights (what magnitude pruning targets)."""
    zeros = total = 0
    for _, module in prunable_layers(model):
        weight = module.weight.detach()
        zeros += int((weight == 0).sum())
        total += weight.numel()
    return zeros / total if total else 0.0


def count_params(model: nn.Module, nonzero: bool = False) -> int:
    """Parameter count; ``nonzero=True`` counts only the entries that are not exactly zero."""
    if nonzero:
        return sum(int((p.detach() != 0).sum()) for p in model.parameters())
    return sum(p.numel() for p in model.parameters())


def slim_textcnn(model: TextCNN, cfg: ModelConfig, keep_fraction: float) -> tuple[TextCNN, ModelConfig]:
    """A narrower TextCNN that keeps the ``keep_fraction`` of each width's filters with the largest L1 norm.

    Every width keeps the same count, so the result is an ordinary TextCNN with a smaller ``num_filters``
    (the model code and its ONNX contract are unchanged). The linear layer keeps the matching input columns.
    The filter piece of :func:`quantflow.core.slim.structured_prune`, which does this for every family.
    """
    if cfg.arch != "textcnn" or not isinstance(model, TextCNN):
        raise ValueError(f"structured filter pruning needs a textcnn model (got: {cfg.arch!r})")
    slimmed = structured_prune(model, cfg, SlimSpec(filter_keep=keep_fraction))
    return slimmed.model, slimmed.cfg
