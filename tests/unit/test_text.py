import random
import re
import sys
import unicodedata
from pathlib import Path

import pandas as pd
import pytest

from quantflow.core.features import load_features
from quantflow.core.text import (
    _HTML_TAG,
    _URL,
    CHAR_BATCH_MIN,
    PAD,
    UNK,
    Tokenizer,
    TokenizerConfig,
    build_vocab,
    clean_text,
    nfkc,
    pad_batch,
    strip_markup,
)
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
    result = split(split_with(), tmp_path / "raw.parquet", tmp_path / "split", tmp_path / "s.json", seed=0)
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


EDGE_TEXTS = [
    "",
    "   ",
    "\u3000",
    "ＡＢＣ１２３，全角！　全角空格ﾊﾝｶｸｶﾀｶﾅ ｶﾞ ﾊﾟ",  # half-width voiced marks compose: NFKC's slow path
    "ΟΔΟΣ ΟΔΟΣ. σΣ Σ ΑΣ\u3000Β İstanbul ß ﬁ",  # final sigma beside spaces, lowering that grows
    "e\u0301 a\u0308\u0301 \u1100\u1161\u11a8 ㄱㅏ ① ㈱ … ＜b＞ ¼ \ud800 lone surrogate",
    "tabs\tand\nnew\r\nlines\u00a0nbsp\u2009thin\u200bzero-width\x1c\x1d\x1e\x1f\x85\u2028end",
    "<p>ＡＢＣ，好！</p> https://x.cn/a?b=1 WWW.Y.CN 看 www。z ｗｗｗ.q 这里",
    "emoji 😀👍🏽 𠀀𪚥 flags 🇨🇳",
    "好" * 300,
]


def test_nfkc_is_unicodedata_nfkc() -> None:
    """The fast NFKC gives unicodedata's answer for every BMP code point and for mixed strings."""
    for point in range(0x10000):
        assert nfkc(chr(point)) == unicodedata.normalize("NFKC", chr(point)), hex(point)
    rng = random.Random(0)
    pool = [chr(p) for p in [*range(0x3000, 0x3040), *range(0xFF00, 0xFFF0), 0x301, 0x308, 0x3099, 0x1161]]
    for text in EDGE_TEXTS + ["".join(rng.choices(pool + ["a", "好", " "], k=12)) for _ in range(3000)]:
        assert nfkc(text) == unicodedata.normalize("NFKC", text), repr(text)


def test_strip_markup_skips_only_texts_the_regexes_cannot_match() -> None:
    rng = random.Random(1)
    pool = list("<>/:.wWhHtTpPsS 好a") + ["http", "://", "www.", "<b>"]
    for text in EDGE_TEXTS + ["".join(rng.choices(pool, k=10)) for _ in range(5000)]:
        assert strip_markup(text) == _URL.sub(" ", _HTML_TAG.sub(" ", text)), repr(text)


def test_regex_space_is_str_isspace() -> None:
    """CharTable marks whitespace with one regex scan: re's \\s must be exactly str.isspace."""
    everything = "".join(map(chr, range(sys.maxunicode + 1)))
    assert [m.start() for m in re.finditer(r"\s", everything)] == [
        i for i, ch in enumerate(everything) if ch.isspace()
    ]


@pytest.mark.parametrize("lowercase", [True, False])
@pytest.mark.parametrize("known", ["every other char", "a few ASCII letters"])
def test_encode_one_and_many_equal_the_token_path(lowercase: bool, known: str) -> None:
    """encode's char paths (one text in string calls, a batch in numpy) give ids(tokens(text)), padded; with
    a few ASCII letters the code point table ends early and every CJK char and emoji lies past it."""
    chars = sorted({c for text in EDGE_TEXTS for c in clean_text(text, lowercase) if not c.isspace()})
    chars = chars[::2] if known == "every other char" else ["a", "b", "o", "x"]
    vocab = {PAD: 0, UNK: 1} | {c: i + 2 for i, c in enumerate(chars)}
    tok = Tokenizer(TokenizerConfig(lowercase=lowercase, max_len=40, min_len=3), vocab)
    expected = pad_batch([tok.ids(tok.tokens(text)) for text in EDGE_TEXTS], min_len=3)
    assert len(EDGE_TEXTS) >= CHAR_BATCH_MIN
    assert tok.encode(EDGE_TEXTS).tolist() == expected.tolist()
    for text, row in zip(EDGE_TEXTS, expected.tolist(), strict=True):
        single = tok.encode([text]).tolist()[0]
        assert single == row[: len(single)] and not any(row[len(single) :])
    assert tok.encode([]).shape == (0, 3)
    assert tok.encode(["", " ", "\u3000", "  "]).tolist() == [[0, 0, 0]] * 4
