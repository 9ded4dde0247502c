"""Structured pruning that rebuilds smaller layers (not masks), for every model family, then a short fine-tune.

What shrinks, per family (each rebuilt as an ordinary model of :mod:`quantflow.core.models` from its config):

- conv filters (textcnn, ngram_textcnn, char_word_textcnn): each width keeps the filters with the largest L1
  norm, the head keeps the matching input columns (``num_filters`` smaller);
- token rows (every family): the chars (or words) never seen in the training split, then the least important,
  leave the table; each dropped id maps to the ``<unk>`` row, the row the model already learned for a char the
  tokenizer does not know, so a dropped char reads as an unknown one (``extra["token_rows"]``);
- n-gram buckets (fasttext, ngram_textcnn): the buckets never hit on the training split, then the least
  important, leave the table; each dropped bucket maps to a zero row (padding's, which padding n-grams read
  already): it still counts in the bag's mean and adds nothing, the closest stand-in for a row of small
  weights, and the one that leaves every text made of kept buckets with exactly its old logits
  (``extra["ngram_rows"]``);
- attention heads and feed-forward width (transformer): the heads whose value → output map has the largest
  norm, and the hidden units with the largest ``|w_in| * |w_out|`` (``heads``, ``ff_dim``, ``extra["head_dim"]``).

Dropped ids go through a remap table inside the model (:class:`quantflow.core.models.RemappedEmbedding`, a
Gather in the ONNX graph), so the tokenizer, its ids and the model folder format stay as they are.
Importance of a row: how often the training split hits it times how far dropping it moves the row
(``|row|`` for a bucket, ``|row - unk row|`` for a token): the expected shift of the bag's sum.

Everything works on the state dict: each piece maps (tensors, config) to smaller ones, and the result is
loaded strictly into ``build_model(new config)``, so every shape is checked. No ONNX, no Prefect here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from quantflow.core.models import BUCKETS, NGRAM_MAX, ModelConfig, build_model, ngram_rows

logger = logging.getLogger(__name__)

State = dict[str, torch.Tensor]
FineTune = Callable[[nn.Module], nn.Module]
UNK_ID = 1  # quantflow.core.text: <pad> is 0, <unk> is 1
COUNT_BATCH = 4096  # training texts hashed at a time when counting n-gram hits


@dataclass(frozen=True)
class SlimSpec:
    """How much of each structure to keep; a share that does not apply to the model's family is ignored.

    ``filter_keep``, ``head_keep``, ``ff_keep``: share of conv filters (per width), attention heads and
    feed-forward units (per layer) kept, 1.0 keeps all. ``token_keep``, ``ngram_keep``: share of the token
    table's ids and of the n-gram buckets kept; rows never hit on the training split go whatever the share (so
    1.0 drops exactly those); None leaves the table whole.
    """

    filter_keep: float = 1.0
    head_keep: float = 1.0
    ff_keep: float = 1.0
    token_keep: float | None = None
    ngram_keep: float | None = None

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value is not None and not 0 < value <= 1:
                raise ValueError(f"compress.{name} must be in (0, 1] (got: {value})")


@dataclass(frozen=True)
class _Layout:
    """Where a family keeps what can shrink: state-dict prefixes, conv banks in the head's column order."""

    conv_banks: tuple[str, ...] = ()
    token_tables: tuple[str, ...] = ("embedding",)
    ngram_table: str | None = None
    encoder: bool = False


LAYOUTS = {
    "textcnn": _Layout(conv_banks=("convs",)),
    "ngram_textcnn": _Layout(("cnn.convs",), ("cnn.embedding", "bag.embedding"), "bag.ngrams"),
    "char_word_textcnn": _Layout(conv_banks=("char_convs", "word_convs")),
    "fasttext": _Layout(ngram_table="ngrams"),
    "transformer": _Layout(encoder=True),
}


@dataclass(frozen=True)
class Slimmed:
    """A pruned model (eval mode), its config, and what shrank (for the compress report)."""

    model: nn.Module
    cfg: ModelConfig
    facts: dict[str, Any]


def keep_count(total: int, share: float) -> int:
    return max(1, round(total * share))


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- counting hits on the training split --------------------------------------------------------------------


def token_hits(ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """(vocab_size,) how often each id occurs in the (N, T) padded ids (padding not counted)."""
    hits = np.bincount(ids.ravel(), minlength=vocab_size)[:vocab_size].astype(np.float64)
    hits[0] = 0
    return hits


def bucket_hits(ids: np.ndarray, ngram_max: int, buckets: int) -> np.ndarray:
    """(buckets + 1,) how often each row of the n-gram table (n = 2..ngram_max) is hit, hashed as the model
    hashes; the last row, padding's, counts as never hit."""
    hits = np.zeros(buckets + 1, dtype=np.float64)
    for start in range(0, len(ids), COUNT_BATCH):
        rows, _ = ngram_rows(torch.from_numpy(ids[start : start + COUNT_BATCH]), ngram_max, buckets)
        hits += np.bincount(rows.ravel().numpy(), minlength=buckets + 1)
    hits[buckets] = 0
    return hits


def top_rows(score: np.ndarray, keep: int, fixed: tuple[int, ...] = ()) -> torch.Tensor:
    """Sorted indices of the ``fixed`` rows and the ``keep`` (in all) highest-scoring rows with a score > 0."""
    score = score.copy()
    score[list(fixed)] = np.inf
    order = np.argsort(-score, kind="stable")[: max(keep, len(fixed))]
    return torch.from_numpy(np.sort(order[score[order] > 0]))


# --- the pieces: (state, config) → smaller (state, config) --------------------------------------------------


def prune_filters(state: State, cfg: ModelConfig, layout: _Layout, share: float) -> ModelConfig:
    """Keep each width's ``share`` of filters with the largest L1 norm in every bank; the head's input columns
    follow (the banks' pooled features come first, in bank then width order; any after them are kept)."""
    keep = keep_count(cfg.num_filters, share)
    columns, offset = [], 0
    for bank in layout.conv_banks:
        for i in range(len(cfg.kernel_sizes)):
            weight = state[f"{bank}.{i}.weight"]  # (F, E, k)
            kept = weight.abs().sum(dim=(1, 2)).topk(keep).indices.sort().values
            state[f"{bank}.{i}.weight"] = weight[kept]
            state[f"{bank}.{i}.bias"] = state[f"{bank}.{i}.bias"][kept]
            columns.append(kept + offset)
            offset += cfg.num_filters
    head = state["fc.weight"]  # (C, features)
    columns.append(torch.arange(offset, head.size(1)))
    state["fc.weight"] = head[:, torch.cat(columns)]
    return replace(cfg, num_filters=keep)


def remap_table(num_ids: int, kept: torch.Tensor, dropped_to: int, first_row: int) -> torch.Tensor:
    """(num_ids, 1) row of each id: kept ids in order from ``first_row``, the others ``dropped_to``."""
    remap = torch.full((num_ids, 1), dropped_to, dtype=torch.int64)
    remap[kept, 0] = torch.arange(first_row, first_row + len(kept))
    return remap


def prune_tokens(
    state: State, cfg: ModelConfig, layout: _Layout, share: float, hits: np.ndarray
) -> ModelConfig:
    """Keep padding, ``<unk>`` (and ``<sep>``) and the most important ids; dropped ids read the ``<unk>`` row."""
    if "token_rows" in cfg.extra:
        raise ValueError("the token table was pruned already: prune the original model instead")
    fixed = tuple(sorted({0, UNK_ID, *([cfg.extra["sep_id"]] if "sep_id" in cfg.extra else [])}))
    shift = np.zeros(cfg.vocab_size)
    for table in layout.token_tables:
        weight = state[f"{table}.weight"]  # (V, E)
        shift += (weight - weight[UNK_ID]).norm(dim=1).numpy()  # how far a drop moves each id's vector
    kept = top_rows(hits * shift, keep_count(cfg.vocab_size, share), fixed)
    if len(kept) == cfg.vocab_size:
        return cfg  # nothing to drop: no remap
    unk_row = int((kept == UNK_ID).nonzero()[0, 0])
    for table in layout.token_tables:
        state[f"{table}.weight"] = state[f"{table}.weight"][kept]
        state[f"{table}.remap"] = remap_table(cfg.vocab_size, kept, unk_row, 0)
    return replace(cfg, extra={**cfg.extra, "token_rows": len(kept)})


def prune_buckets(state: State, cfg: ModelConfig, table: str, share: float, hits: np.ndarray) -> ModelConfig:
    """Keep the most important hit buckets behind a zero row 0, which every dropped bucket (and padding,
    never hit) reads; ``hits``: one count per row of the table."""
    if "ngram_rows" in cfg.extra:
        raise ValueError("the n-gram table was pruned already: prune the original model instead")
    weight = state[f"{table}.weight"]  # (buckets, E)
    kept = top_rows(hits * weight.norm(dim=1).numpy(), keep_count(len(weight), share))
    if len(kept) == len(weight):
        return cfg  # every bucket is hit and kept: no remap, no zero row
    state[f"{table}.weight"] = torch.cat([torch.zeros_like(weight[:1]), weight[kept]])
    state[f"{table}.remap"] = remap_table(len(weight), kept, 0, 1)
    return replace(cfg, extra={**cfg.extra, "ngram_rows": len(kept) + 1})


def prune_heads(state: State, cfg: ModelConfig, share: float) -> ModelConfig:
    """Per layer, keep the heads whose value → output map ``W_out[:, h] @ W_v[h]`` has the largest norm."""
    head_dim = int(cfg.extra.get("head_dim", cfg.embed_dim // cfg.heads))
    inner, keep = cfg.heads * head_dim, keep_count(cfg.heads, share)
    for layer in range(cfg.layers):
        p = f"layers.{layer}"
        qkv_w, qkv_b, out_w = state[f"{p}.qkv.weight"], state[f"{p}.qkv.bias"], state[f"{p}.out.weight"]
        v = qkv_w[2 * inner :].reshape(cfg.heads, head_dim, -1)  # (H, hd, D)
        o = out_w.reshape(-1, cfg.heads, head_dim).transpose(0, 1)  # (H, D, hd)
        kept = torch.linalg.matrix_norm(o @ v).topk(keep).indices.sort().values
        dims = (kept[:, None] * head_dim + torch.arange(head_dim)).ravel()  # the kept heads' dimensions
        rows = torch.cat([dims + part * inner for part in range(3)])  # in the q, k and v blocks
        state[f"{p}.qkv.weight"], state[f"{p}.qkv.bias"] = qkv_w[rows], qkv_b[rows]
        state[f"{p}.out.weight"] = out_w[:, dims]
    return replace(cfg, heads=keep, extra={**cfg.extra, "head_dim": head_dim})


def prune_feed_forward(state: State, cfg: ModelConfig, share: float) -> ModelConfig:
    """Per layer, keep the feed-forward units with the largest ``|w_in| * |w_out|``."""
    keep = keep_count(cfg.ff_dim, share)
    for layer in range(cfg.layers):
        p = f"layers.{layer}.ff"
        w_in, w_out = state[f"{p}.0.weight"], state[f"{p}.2.weight"]  # (ff, D), (D, ff)
        kept = (w_in.norm(dim=1) * w_out.norm(dim=0)).topk(keep).indices.sort().values
        state[f"{p}.0.weight"], state[f"{p}.0.bias"] = w_in[kept], state[f"{p}.0.bias"][kept]
        state[f"{p}.2.weight"] = w_out[:, kept]
    return replace(cfg, ff_dim=keep)


# --- the entry points ---------------------------------------------------------------------------------------


def layout_of(cfg: ModelConfig) -> _Layout:
    if cfg.arch not in LAYOUTS:
        raise ValueError(f"structured pruning knows {sorted(LAYOUTS)}, not {cfg.arch!r}")
    return LAYOUTS[cfg.arch]


def shrink_state(state: State, cfg: ModelConfig, spec: SlimSpec, train_ids: np.ndarray | None) -> ModelConfig:
    """Apply every piece of ``spec`` that fits the family to ``state`` (in place); returns the new config."""
    layout = layout_of(cfg)
    if (spec.token_keep is not None or spec.ngram_keep is not None) and train_ids is None:
        raise ValueError("pruning token or n-gram rows needs the training split's ids (train_ids)")
    new = cfg
    if layout.conv_banks and spec.filter_keep < 1:
        new = prune_filters(state, new, layout, spec.filter_keep)
    if layout.encoder and spec.head_keep < 1:
        new = prune_heads(state, new, spec.head_keep)
    if layout.encoder and spec.ff_keep < 1:
        new = prune_feed_forward(state, new, spec.ff_keep)
    if spec.token_keep is not None:
        new = prune_tokens(state, new, layout, spec.token_keep, token_hits(train_ids, cfg.vocab_size))
    if layout.ngram_table and spec.ngram_keep is not None:
        extra = cfg.extra
        hits = bucket_hits(
            train_ids, int(extra.get("ngram_max", NGRAM_MAX)), int(extra.get("buckets", BUCKETS))
        )
        new = prune_buckets(state, new, layout.ngram_table, spec.ngram_keep, hits)
    return new


def ngram_table_rows(cfg: ModelConfig) -> int | None:
    """Rows of an unpruned n-gram table: a bucket each and the padding row (None for other families)."""
    if layout_of(cfg).ngram_table is None:
        return None
    return int(cfg.extra.get("buckets", BUCKETS)) + 1


def shrink_sizes(cfg: ModelConfig) -> dict[str, int | None]:
    """The sizes structured pruning changes (token and n-gram rows: of the tables, not of the ids)."""
    return {
        "num_filters": cfg.num_filters,
        "heads": cfg.heads,
        "ff_dim": cfg.ff_dim,
        "token_rows": cfg.extra.get("token_rows", cfg.vocab_size),
        "ngram_rows": cfg.extra.get("ngram_rows", ngram_table_rows(cfg)),
    }


def shrink_facts(before: ModelConfig, after: ModelConfig) -> dict[str, int | None]:
    """The sizes that shrank, each beside its value before (``<name>_before``)."""
    old, new = shrink_sizes(before), shrink_sizes(after)
    changed = [k for k in old if new[k] != old[k]]
    return {f"{k}_before": old[k] for k in changed} | {k: new[k] for k in changed}


def structured_prune(
    model: nn.Module, cfg: ModelConfig, spec: SlimSpec, train_ids: np.ndarray | None = None
) -> Slimmed:
    """A smaller model of the same family: ``spec``'s pieces applied to a copy of ``model``'s weights.

    ``train_ids``: the training split's (N, T) ids, needed to prune token or n-gram rows (hit counts).
    """
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    new_cfg = shrink_state(state, cfg, spec, train_ids)
    slim = build_model(new_cfg)
    slim.load_state_dict(state)  # strict: every rebuilt shape must match
    facts = shrink_facts(cfg, new_cfg) | {"params_before": param_count(model), "params": param_count(slim)}
    logger.info("slim: %s %d → %d parameters (%s)", cfg.arch, facts["params_before"], facts["params"], facts)
    return Slimmed(slim.eval(), new_cfg, facts)


def slim_and_fine_tune(
    model: nn.Module,
    cfg: ModelConfig,
    spec: SlimSpec,
    train_ids: np.ndarray | None,
    fine_tune: FineTune | None,
) -> Slimmed:
    """:func:`structured_prune`, then ``fine_tune`` (the compress step's short loop on the training split) on
    the smaller model; returned in eval mode, ready for the ONNX export and static int8."""
    slimmed = structured_prune(model, cfg, spec, train_ids)
    if fine_tune is None:
        return slimmed
    return Slimmed(fine_tune(slimmed.model).eval(), slimmed.cfg, slimmed.facts)
