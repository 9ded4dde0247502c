from pathlib import Path

import pandas as pd
import pytest

from quantflow.core.features import load_features
from quantflow.core.text import PAD, UNK, Tokenizer, TokenizerConfig, build_vocab, clean_text
from tasks.preprocess import preprocess
from tasks.split import split
from tests.params_helpers import preprocess_with, split_with


def test_clean_text_normalizes_width_markup_and_space() -> None:
    assert clean_text("<p>ＡＢＣ，好！</p>  看 https://x.cn/a?b=1  这里") == "abc,好! 看 这里"
    assert clean_text("ＡＢＣ", lowercase=False) == "ABC"


def test_char_tokens_skip_spaces_and_jieba_makes_words() -> None:
    vocab = {PAD: 0, UNK: 1}
    chars = Tokenizer(TokenizerConfig(segmenter="char"), vocab)
    assert chars.tokens("我爱 北京") == ["我", "爱", "北", "京"]
    words = Tokenizer(TokenizerConfig(segmenter="jieba"), vocab)
    assert "北京" in words.tokens("我爱北京天安门")


def test_vocab_order_min_freq_and_size() -> None:
    vocab = build_vocab([["a", "b", "b", "c"], ["b", "c", "d"]], min_freq=2, max_size=10)
    assert vocab == {PAD: 0, UNK: 1, "b": 2, "c": 3}
    assert len(build_vocab([["a", "b", "b", "c", "c", "a"]], min_freq=1, max_size=3)) == 3


def test_encode_pads_truncates_and_maps_unknowns(tmp_path: Path) -> None:
    tok = Tokenizer(TokenizerConfig(max_len=4), {PAD: 0, UNK: 1, "好": 2, "书": 3})
    ids = tok.encode(["好书", "好书好书好书", "坏"])
    assert ids.tolist() == [[2, 3, 0, 0], [2, 3, 2, 3], [1, 0, 0, 0]]
    tok.save(tmp_path)
    assert Tokenizer.load(tmp_path).encode(["好书"]).tolist() == [[2, 3]]


def test_vocab_must_reserve_pad_and_unk() -> None:
    with pytest.raises(ValueError, match="'<pad>' to 0"):
        Tokenizer(TokenizerConfig(), {"x": 0})


def test_preprocess_builds_vocab_on_train_only(tmp_path: Path, tiny_frame: pd.DataFrame) -> None:
    tiny = tiny_frame.copy()
    tiny.loc[0, "text"] = "独一无二的词汇只在这里"
    tiny.to_parquet(tmp_path / "raw.parquet")
    result = split(split_with(), tmp_path / "raw.parquet", tmp_path / "split", tmp_path / "s.json")
    out = preprocess(
        preprocess_with(min_freq=1, max_len=16),
        tmp_path / "split",
        tmp_path / "feat",
        tmp_path / "tok",
        labels=("news", "comment"),
    )
    train_chars = {c for t in pd.read_parquet(result.paths["train"])["text"] for c in clean_text(t)}
    vocab = Tokenizer.load(tmp_path / "tok").vocab
    assert set(vocab) - {PAD, UNK} <= train_chars
    ids, y = load_features(tmp_path / "feat", "test")
    assert ids.shape[1] == 16 and len(ids) == len(y) == result.stats["splits"]["test"]["rows"]
    assert set(y.tolist()) <= {0, 1} and out.labels == ["news", "comment"]
