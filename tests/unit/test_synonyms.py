"""Synonym replacement on encoded training ids: the lexicon it learns and what a replacement may change."""

from __future__ import annotations

import numpy as np

from quantflow.core.synonyms import SynonymAugmenter, build_lexicon, decode_words, is_content_word
from quantflow.core.text import pad_batch

TEXTS = ["这家酒店的服务很好", "房间干净,价格便宜", "宾馆离地铁站不远"]


def char_vocab(texts: list[str]) -> dict[str, int]:
    vocab = {"<pad>": 0, "<unk>": 1}
    for ch in sorted({c for t in texts for c in t}):
        vocab[ch] = len(vocab)
    return vocab


def encode(texts: list[str], vocab: dict[str, int], width: int = 16) -> np.ndarray:
    ids = pad_batch([[vocab.get(c, 1) for c in t] for t in texts])
    return np.pad(ids, ((0, 0), (0, width - ids.shape[1])))


def test_content_words_are_two_or_more_chinese_chars() -> None:
    assert is_content_word("酒店") and is_content_word("服务态度")
    assert not is_content_word("好")  # single chars are mostly function words
    assert not is_content_word("wifi") and not is_content_word("，。") and not is_content_word("3天")


def test_char_ids_decode_to_jieba_words_that_spell_the_text_again() -> None:
    vocab = char_vocab(TEXTS)
    ids = encode([*TEXTS, "酒店好X"], vocab)  # X is not in the vocabulary: <unk>
    words = decode_words(ids, vocab, char_level=True)
    assert ["".join(w) for w in words[:3]] == TEXTS
    assert "酒店" in words[0]
    assert "".join(words[3]) == "酒店好\ufffd"


def test_share_zero_keeps_every_text_and_share_one_replaces_every_listed_word() -> None:
    vocab = char_vocab([*TEXTS, "饭店", "旅馆"])
    ids = encode(TEXTS, vocab)
    words = decode_words(ids, vocab, char_level=True)
    lexicon = {"酒店": ["饭店"], "宾馆": ["旅馆"]}
    aug = SynonymAugmenter(words, lexicon, vocab, char_level=True, width=ids.shape[1])
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(aug.replace(0.0, rng), ids)
    out = aug.replace(1.0, rng)
    inverse = {i: t for t, i in vocab.items()}
    decoded = ["".join(inverse[int(i)] for i in row if i) for row in out]
    assert decoded == ["这家饭店的服务很好", TEXTS[1], "旅馆离地铁站不远"]
    assert out.shape == ids.shape


def test_word_level_ids_are_replaced_id_for_id() -> None:
    vocab = {"<pad>": 0, "<unk>": 1, "酒店": 2, "饭店": 3, "很": 4, "好": 5}
    ids = np.array([[2, 4, 5, 0], [1, 2, 0, 0]])
    aug = SynonymAugmenter(decode_words(ids, vocab, char_level=False), {"酒店": ["饭店"]}, vocab, False, 4)
    np.testing.assert_array_equal(aug.replace(1.0, np.random.default_rng(0)), [[3, 4, 5, 0], [1, 3, 0, 0]])


def test_the_lexicon_pairs_words_that_share_contexts_and_only_content_words() -> None:
    rng = np.random.default_rng(0)
    places, moods = ["酒店", "宾馆", "饭店"], ["满意", "喜欢", "推荐"]
    corpus = []
    for _ in range(400):
        corpus.append(["这家", str(rng.choice(places)), "的", "房间", "很", "大"])
        corpus.append(["我", "非常", str(rng.choice(moods)), "这本", "书"])
    lexicon = build_lexicon(corpus, dim=16, seed=0)
    assert lexicon == build_lexicon(corpus, dim=16, seed=0), "one seed, one lexicon"
    assert set(lexicon["酒店"]) <= {"宾馆", "饭店", "房间", "这家"}
    assert all(is_content_word(w) and all(map(is_content_word, n)) for w, n in lexicon.items())
