"""preprocess: clean + spaCy-tokenize the splits, build the vocabulary on train only, encode to fixed-width ids."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import task
from tqdm import tqdm

from quantflow.core.layout import SPLITS, features_file, split_file
from quantflow.core.params import PreprocessParams
from quantflow.core.text import (
    UNK,
    Tokenizer,
    TokenizerConfig,
    base_vocab,
    build_vocab,
    pad_batch,
    special_tokens,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreprocessResult:
    features_dir: Path
    tokenizer_dir: Path
    vocab_size: int
    labels: list[str]
    oov_rate: dict[str, float]


def tokenize_texts(tokenizer: Tokenizer, texts: list[str], desc: str) -> list[list[str]]:
    stream = tokenizer.iter_tokens(texts)
    return list(tqdm(stream, total=len(texts), desc=f"tokenize {desc}", unit="text", mininterval=1.0))


def label_order(train_labels: pd.Series, allowed: tuple[str, ...] | None) -> list[str]:
    """Class index order: the configured label set if there is one, else the sorted train labels."""
    return list(allowed) if allowed else sorted(train_labels.unique().tolist())


def encode_split(
    tokenizer: Tokenizer, tokens: list[list[str]], labels: pd.Series, label_index: dict[str, int], out: Path
) -> float:
    """Write ``ids`` (N, max_len) and ``y`` (N,) to ``out``; returns the share of unknown tokens."""
    rows = [tokenizer.ids(t) for t in tokens]
    ids = pad_batch(rows, tokenizer.config.max_len)
    y = labels.map(label_index).to_numpy(dtype=np.int64)
    np.savez_compressed(out, ids=ids, y=y)
    total = sum(len(r) for r in rows)
    unknown = sum(r.count(tokenizer.vocab[UNK]) for r in rows)
    return unknown / total if total else 0.0


def preprocess(
    params: PreprocessParams,
    split_dir: Path,
    features_dir: Path,
    tokenizer_dir: Path,
    labels: tuple[str, ...] | None = None,
) -> PreprocessResult:
    """Tokenize every split with one tokenizer, save it and the encoded arrays."""
    frames = {name: pd.read_parquet(split_file(split_dir, name)) for name in SPLITS}
    config = TokenizerConfig(params.language, params.segmenter, params.lowercase, params.max_len)
    bootstrap = Tokenizer(config, base_vocab(config))
    tokens = {name: tokenize_texts(bootstrap, frames[name]["text"].tolist(), name) for name in SPLITS}
    vocab = build_vocab(tokens["train"], params.min_freq, params.max_vocab, special_tokens(config))
    tokenizer = Tokenizer(config, vocab)
    tokenizer.save(tokenizer_dir)
    label_list = label_order(frames["train"]["label"], labels)
    label_index = {label: i for i, label in enumerate(label_list)}
    features_dir.mkdir(parents=True, exist_ok=True)
    oov = {
        name: encode_split(
            tokenizer, tokens[name], frames[name]["label"], label_index, features_file(features_dir, name)
        )
        for name in SPLITS
    }
    (features_dir / "labels.json").write_text(
        json.dumps(label_list, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    logger.info(
        "preprocess: vocab %d, labels %s, unknown-token rate %s", len(tokenizer.vocab), label_list, oov
    )
    return PreprocessResult(features_dir, tokenizer_dir, len(tokenizer.vocab), label_list, oov)


# The Prefect task is the plain function itself, named for the flow's UI; tests call preprocess() directly.
preprocess_task = task(preprocess, name="preprocess")
