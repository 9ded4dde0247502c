"""preprocess: clean + spaCy-tokenize the splits, build the vocabulary on train only, encode to fixed-width ids."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import task

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

TOKENIZE_LOG_EVERY = 5000  # texts between two progress lines of the tokenizer


@dataclass(frozen=True)
class PreprocessResult:
    features_dir: Path
    tokenizer_dir: Path
    vocab_size: int
    labels: list[str]
    oov_rate: dict[str, float]


def tokenize_texts(
    tokenizer: Tokenizer, texts: list[str], desc: str, every: int = TOKENIZE_LOG_EVERY
) -> list[list[str]]:
    """The tokens of every text; a log line every ``every`` texts and one at the end (a flow run's logs show
    how far a long tokenization got)."""
    started = time.perf_counter()
    tokens: list[list[str]] = []
    for done, row in enumerate(tokenizer.iter_tokens(texts), start=1):
        tokens.append(row)
        if done % every == 0 and done < len(texts):
            logger.info("preprocess: tokenized %d of %d %s texts", done, len(texts), desc)
    logger.info(
        "preprocess: tokenized %d %s texts in %.1f s", len(tokens), desc, time.perf_counter() - started
    )
    return tokens


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
