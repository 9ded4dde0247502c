"""The ``char+word`` segmenter: chars, ``<sep>``, jieba words in one sequence, ``<sep>`` always at id 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from quantflow.core.features import load_features
from quantflow.core.text import (
    PAD,
    SEP,
    UNK,
    Tokenizer,
    TokenizerConfig,
    base_vocab,
    build_vocab,
    special_tokens,
)
from tasks.preprocess import preprocess
from tasks.split import split
from tests.params_helpers import preprocess_with, split_with

CW = TokenizerConfig(segmenter="char+word", max_len=32)


def tokenizer(max_len: int = 32) -> Tokenizer:
    config = TokenizerConfig(segmenter="char+word", max_len=max_len)
    return Tokenizer(config, base_vocab(config))


def test_chars_then_sep_then_words() -> None:
    chars = ["我", "爱", "北", "京", "天", "安", "门"]
    assert tokenizer().tokens("我爱北京天安门") == [*chars, SEP, "我", "爱", "北京", "天安门"]


def test_whitespace_is_dropped_from_both_parts_and_text_is_cleaned() -> None:
    tokens = tokenizer().tokens("  Hello  WORLD\t<b>好</b> ")
    assert tokens == [*"helloworld", "好", SEP, "hello", "world", "好"]


@pytest.mark.parametrize("max_len", [9, 10])
def test_each_part_is_cut_to_its_share_of_max_len(max_len: int) -> None:
    text = "我爱北京天安门今天天气不错我们去公园散步吧"
    tokens = tokenizer(max_len).tokens(text)
    h = (max_len - 1) // 2  # 4 chars
    assert tokens[:h] == list(text[:h]) and tokens[h] == SEP
    assert tokens[h + 1 :] == ["我", "爱", "北京", "天安门", "今天天气"][: max_len - 1 - h]
    assert len(tokens) == max_len
    assert tokenizer(max_len).encode([text]).shape == (1, max_len)


def test_empty_text_is_a_lone_sep() -> None:
    assert tokenizer().tokens("   ") == [SEP]
    assert tokenizer().encode([""]).tolist() == [[2]]
    assert tokenizer().encode(["", "好"]).tolist() == [[2, 0, 0], [1, 2, 1]]  # 好 is unknown here


def test_iter_tokens_equals_tokens(tiny_frame: pd.DataFrame) -> None:
    tok = tokenizer(24)
    texts = [*tiny_frame["text"].tolist()[::10], "", " ， ", "ＡＢＣ１２３，全角！", "e-mail: a_b@c.de 😀"]
    assert list(tok.iter_tokens(texts)) == [tok.tokens(t) for t in texts]


def test_sep_is_reserved_at_2_whatever_the_counts() -> None:
    lists = [["好", "好", "书", SEP], ["好", "书", SEP]]
    vocab = build_vocab(lists, min_freq=1, max_size=10, reserved=special_tokens(CW))
    assert vocab == {PAD: 0, UNK: 1, SEP: 2, "好": 3, "书": 4}
    assert build_vocab([["好"]], min_freq=5, max_size=10, reserved=(SEP,)) == {PAD: 0, UNK: 1, SEP: 2}
    assert special_tokens(TokenizerConfig(segmenter="char")) == ()
    assert special_tokens(TokenizerConfig(segmenter="jieba")) == ()


def test_char_word_vocab_without_sep_at_2_is_refused() -> None:
    with pytest.raises(ValueError, match=r"'<sep>' at id 2 in the vocabulary \(got: None\)"):
        Tokenizer(CW, {PAD: 0, UNK: 1, "好": 2})
    with pytest.raises(ValueError, match="for language 'zh'"):
        Tokenizer(TokenizerConfig(language="en", segmenter="char+word"), {PAD: 0, UNK: 1, SEP: 2})


def test_preprocess_reserves_sep_and_the_folder_round_trips(tmp_path: Path, tiny_frame: pd.DataFrame) -> None:
    tiny_frame.to_parquet(tmp_path / "raw.parquet")
    split(split_with(), tmp_path / "raw.parquet", tmp_path / "split", tmp_path / "s.json", seed=0)
    params = preprocess_with(segmenter="char+word", min_freq=1, max_len=24)
    preprocess(params, tmp_path / "split", tmp_path / "feat", tmp_path / "tok", labels=("news", "comment"))
    vocab = json.loads((tmp_path / "tok" / "vocab.json").read_text(encoding="utf-8"))
    assert list(vocab)[:3] == [PAD, UNK, SEP] and vocab[SEP] == 2
    assert "国务院" in vocab and "国" in vocab  # words and chars in one table
    ids, _ = load_features(tmp_path / "feat", "train")
    assert ids.shape[1] == 24 and ((ids == 2).sum(axis=1) == 1).all()  # one sep per row
    loaded = Tokenizer.load(tmp_path / "tok")
    assert loaded.config.segmenter == "char+word"
    text = "国务院经济发展会议。"
    assert loaded.tokens(text)[: len(text) + 1] == [*text, SEP]
    assert np.array_equal(loaded.encode([text]), Tokenizer(loaded.config, vocab).encode([text]))


def test_preprocess_with_char_segmenter_has_no_sep(tmp_path: Path, tiny_frame: pd.DataFrame) -> None:
    tiny_frame.to_parquet(tmp_path / "raw.parquet")
    split(split_with(), tmp_path / "raw.parquet", tmp_path / "split", tmp_path / "s.json", seed=0)
    preprocess(preprocess_with(min_freq=1, max_len=16), tmp_path / "split", tmp_path / "f", tmp_path / "t")
    assert SEP not in Tokenizer.load(tmp_path / "t").vocab


def test_char_word_tokenizer_needs_neither_spacy_nor_torch() -> None:
    code = (
        "import sys\n"
        "from quantflow.core.text import Tokenizer, TokenizerConfig, base_vocab\n"
        "c = TokenizerConfig(segmenter='char+word')\n"
        "assert Tokenizer(c, base_vocab(c)).tokens('我爱北京')[-1] == '北京'\n"
        "print(sorted(m for m in ('spacy', 'thinc', 'torch') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
