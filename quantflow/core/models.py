"""The classifiers: the founding design's TextCNN, a small Transformer encoder, a fastText-style bag of
hashed character n-grams (alone, or beside a TextCNN) and a TextCNN with a char and a word channel.

All take right-padded ids (B, T) with 0 as padding and give logits (B, C). Padding never changes a text's
logits, so a text scores the same alone or in a batch, in PyTorch and in the exported ONNX model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from quantflow.core.bundle import Manifest, copy_tokenizer


@dataclass(frozen=True)
class ModelConfig:
    """Architecture hyper-parameters: saved with the weights so a model folder rebuilds itself."""

    arch: str
    vocab_size: int
    num_classes: int
    embed_dim: int = 64
    num_filters: int = 64
    kernel_sizes: tuple[int, ...] = (2, 3, 4)
    dropout: float = 0.3
    layers: int = 2
    heads: int = 4
    ff_dim: int = 128
    max_len: int = 128
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return cls(**{**data, "kernel_sizes": tuple(data.get("kernel_sizes", (2, 3, 4)))})


def remap_dtype(rows: int) -> torch.dtype:
    """The narrowest index type that holds every row number: int16 halves the remap table of int32."""
    return torch.int16 if rows <= torch.iinfo(torch.int16).max else torch.int32


class RemappedEmbedding(nn.Embedding):
    """An embedding table with fewer rows than ids: ``remap`` (an int buffer, one entry per id) sends each id to
    its row, so a pruned table keeps the ids its callers (the tokenizer, the n-gram hash) already produce.

    ``remap`` is (num_ids, 1), a one-column table, so the lookup is an embedding too: in the ONNX graph a plain
    Gather, a Squeeze, a Cast and the Gather of the rows (``remap[ids]`` exported as Unsqueeze + GatherND). It
    is set by the pruning code (quantflow/core/slim.py) and saved in the state dict; row 0 is the padding row.
    """

    def __init__(self, num_ids: int, rows: int, dim: int) -> None:
        super().__init__(rows, dim, padding_idx=0)
        self.num_ids = num_ids
        self.register_buffer("remap", torch.zeros((num_ids, 1), dtype=remap_dtype(rows)))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(ids, self.remap).squeeze(-1)  # (...): each id's row
        return super().forward(rows.to(torch.int64))  # (..., dim)

    def extra_repr(self) -> str:
        return f"{self.num_ids} ids → {super().extra_repr()}"


def token_embedding(cfg: ModelConfig) -> nn.Embedding:
    """The token (char, word) table: ``vocab_size`` rows, or ``extra["token_rows"]`` behind a remap once its
    rows were pruned (ids stay the tokenizer's)."""
    rows = cfg.extra.get("token_rows")
    if rows is None:
        return nn.Embedding(cfg.vocab_size, cfg.embed_dim, padding_idx=0)
    return RemappedEmbedding(cfg.vocab_size, int(rows), cfg.embed_dim)


class TextCNN(nn.Module):
    """embedding → Conv1d per width → ReLU → max over time → dropout → linear.

    The pool needs no mask: the embedding's padding row is zero, so a window that sees only padding gives
    ``ReLU(bias)`` for its filter, and every text gets at least one such window (one pad id is appended before
    the convolutions). Each filter's feature is therefore ``max(ReLU(bias), the max over the windows touching a
    real token)`` however much padding a batch adds: padding never changes the logits, and the graph has no
    mask multiply over the (B, F, T) conv outputs (the largest tensors of the int8 graph at batch 64).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embedding = token_embedding(cfg)
        # padding=k-1: every window that touches a real token exists, however short the text
        self.convs = nn.ModuleList(
            nn.Conv1d(cfg.embed_dim, cfg.num_filters, k, padding=k - 1) for k in cfg.kernel_sizes
        )
        self.dropout = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(cfg.num_filters * len(cfg.kernel_sizes), cfg.num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.features(ids)))

    def features(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) ids → (B, F * widths): max-pooled conv features, before dropout and the head."""
        x = self.embedding(F.pad(ids, (0, 1))).transpose(1, 2)  # (B, E, T + 1): the last column padding
        # ReLU then max over time; a padding-only window adds ReLU(bias), which every text has anyway
        return torch.cat([F.relu(conv(x)).amax(dim=2) for conv in self.convs], dim=1)  # (B, F * widths)


class _EncoderLayer(nn.Module):
    """Pre-norm self-attention + feed-forward, written with plain matmuls so export stays dynamic.

    ``head_dim`` defaults to ``dim // heads``; a head-pruned layer keeps its heads' width with fewer heads, so
    attention runs in ``heads * head_dim`` < ``dim`` dimensions."""

    def __init__(
        self, dim: int, heads: int, ff_dim: int, dropout: float, head_dim: int | None = None
    ) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = head_dim or dim // heads
        inner = heads * self.head_dim
        self.qkv = nn.Linear(dim, 3 * inner)
        self.out = nn.Linear(inner, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, ff_dim), nn.GELU(), nn.Linear(ff_dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        h, hd = self.heads, self.head_dim
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)  # each (B, T, H * hd)
        q, k, v = (z.reshape(b, t, h, hd).transpose(1, 2) for z in (q, k, v))  # each (B, H, T, hd)
        scores = q @ k.transpose(-2, -1) / hd**0.5 + key_bias  # (B, H, T, T)
        attn = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, t, h * hd)
        x = x + self.dropout(self.out(attn))
        return x + self.dropout(self.ff(self.norm2(x)))


class TransformerClassifier(nn.Module):
    """Token + position embeddings → encoder layers → masked mean over real tokens → linear.

    ``extra["head_dim"]``: the width of a head when it is not ``embed_dim // heads`` (a head-pruned model)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embedding = token_embedding(cfg)
        self.position = nn.Embedding(cfg.max_len, cfg.embed_dim)
        head_dim = cfg.extra.get("head_dim")
        self.layers = nn.ModuleList(
            _EncoderLayer(cfg.embed_dim, cfg.heads, cfg.ff_dim, cfg.dropout, head_dim)
            for _ in range(cfg.layers)
        )
        self.norm = nn.LayerNorm(cfg.embed_dim)
        self.fc = nn.Linear(cfg.embed_dim, cfg.num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != 0).to(torch.float32)  # (B, T)
        positions = torch.arange(ids.size(1), device=ids.device).unsqueeze(0)  # (1, T)
        x = self.embedding(ids) + self.position(positions)  # (B, T, D)
        key_bias = ((1.0 - mask) * -1e9)[:, None, None, :]  # (B, 1, 1, T)
        for layer in self.layers:
            x = layer(x, key_bias)
        x = self.norm(x)
        summed = (x * mask.unsqueeze(-1)).sum(dim=1)  # (B, D)
        return self.fc(summed / mask.sum(dim=1, keepdim=True).clamp(min=1.0))


# Multipliers of the n-gram hash: large primes, so (a, b) and (b, a) land apart; products stay far inside int64
# for ids < 2**20 (an id times a prime < 2**40, three of them summed < 2**42).
_NGRAM_PRIMES = (1_000_003, 999_983, 1_000_033, 999_979, 1_000_037)
NGRAM_MAX, BUCKETS = 3, 100_003  # a config's defaults when its extra names neither


def ngram_buckets(ids: torch.Tensor, n: int, buckets: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hash every run of ``n`` consecutive ids into ``[0, buckets)``.

    ids (B, T) → bucket ids (B, T - n + 1) and a float mask of the same shape, 1 where all ``n`` ids are real
    tokens (not padding). The hash is plain integer arithmetic (Mul, Add, Mod), so the ONNX graph computes it
    too and the tokenizer, the service and the model folder format stay as they are.
    """
    t = ids.size(1) - n + 1
    key = torch.zeros_like(ids[:, :t])  # (B, T - n + 1)
    real = torch.ones_like(ids[:, :t])
    for j in range(n):
        part = ids[:, j : j + t]
        key = key + part * _NGRAM_PRIMES[j]
        real = real * (part != 0).to(ids.dtype)
    return torch.remainder(key, buckets), real.to(torch.float32)


def ngram_rows(ids: torch.Tensor, ngram_max: int, buckets: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows of every 2..``ngram_max``-gram of each text in one table of ``buckets + 1`` rows.

    ids (B, T) → rows (B, sum over n of T - n + 1): the n-gram's bucket (the hash of :func:`ngram_buckets`) or,
    for a run that touches padding, row ``buckets`` (the table's zero padding row); and (B, 1) the number of real
    1..``ngram_max``-grams of each text (the bag's denominator). The hash is built up n by n (each n adds one id
    times its prime to the sum of the n - 1 before) with fixed-offset slices only, and padding is sent to its
    row in the (B, T) ids: the graph stays small (a single text's cost is mostly per node) and the bag needs no
    mask over its (B, T, E) vectors.
    """
    real = (ids != 0).to(ids.dtype)  # (B, T): 1 on tokens; for each n: "every id of the run is real"
    nonzero, key = real, ids * _NGRAM_PRIMES[0]
    rows, count = [], real.sum(dim=1, keepdim=True)  # the unigrams
    for n in range(2, ngram_max + 1):
        # (B, T - n + 1): the runs starting at 0 .. T - n, each extended by the id n - 1 places on
        key = key[:, :-1] + ids[:, n - 1 :] * _NGRAM_PRIMES[n - 1]
        real = real[:, :-1] * nonzero[:, n - 1 :]
        rows.append(torch.where(real > 0, torch.remainder(key, buckets), buckets))
        count = count + real.sum(dim=1, keepdim=True)
    return (torch.cat(rows, dim=1) if rows else ids[:, :0]), count


class HashedNgramBag(nn.Module):
    """fastText-style: mean of char (unigram) embeddings and hashed 2..n-gram embeddings → dropout → linear.

    This is ``EmbeddingBag(mode="mean")`` written as ``Embedding`` gathers and sums: the same numbers, but it
    exports to plain ONNX Gathers that ONNX Runtime quantizes to int8 (Gather is in both
    ``compress.quantize_ops`` and ``compress.static_ops``). Padding reads zero rows (the char table's row 0, the
    n-gram table's last row), so the sums need no mask and padding never changes the logits.
    Config: ``extra["ngram_max"]`` (1..5) and ``extra["buckets"]`` (the hash's range; the n-gram table has one
    more row, for padding); ``extra["ngram_rows"]``: the rows left once buckets were pruned (a remap inside the
    model sends each bucket to its row, dropped buckets and padding to row 0, a zero row),
    ``extra["token_rows"]``: see :func:`token_embedding`.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ngram_max = int(cfg.extra.get("ngram_max", NGRAM_MAX))
        self.buckets = int(cfg.extra.get("buckets", BUCKETS))
        if not 1 <= self.ngram_max <= len(_NGRAM_PRIMES):
            raise ValueError(f"ngram_max must be in [1, {len(_NGRAM_PRIMES)}] (got: {self.ngram_max})")
        self.embedding = token_embedding(cfg)
        # one table for every n >= 2 (n is folded into the hash through the number of primes used), plus the
        # padding row ``buckets``
        rows = cfg.extra.get("ngram_rows")
        if rows is None:
            self.ngrams = nn.Embedding(self.buckets + 1, cfg.embed_dim, padding_idx=self.buckets)
            nn.init.normal_(self.ngrams.weight, std=0.02)
            with torch.no_grad():
                self.ngrams.weight[self.buckets] = 0
        else:
            self.ngrams = RemappedEmbedding(self.buckets + 1, int(rows), cfg.embed_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(cfg.embed_dim, cfg.num_classes)

    def pooled(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) ids → (B, E): the mean over every real unigram and n-gram of the text."""
        total = self.embedding(ids).sum(dim=1)  # (B, E): the padding row is zero
        rows, count = ngram_rows(ids, self.ngram_max, self.buckets)  # (B, N) rows, (B, 1) real 1..n-grams
        if self.ngram_max >= 2:
            total = total + self.ngrams(rows).sum(dim=1)
        return total / count.clamp(min=1).to(total.dtype)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.pooled(ids)))


class NgramTextCNN(nn.Module):
    """A TextCNN and a hashed n-gram bag side by side, their features concatenated before one linear layer:
    the bag sees which n-grams occur (what the TF-IDF baseline sees), the convolutions their local order."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cnn = TextCNN(cfg)
        self.bag = HashedNgramBag(cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(cfg.num_filters * len(cfg.kernel_sizes) + cfg.embed_dim, cfg.num_classes)
        del self.cnn.fc, self.bag.fc  # the shared head replaces both

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.cat([self.cnn.features(ids), self.bag.pooled(ids)], dim=1)))


def _window_mask(start: torch.Tensor, count: torch.Tensor, k: int, width: int) -> torch.Tensor:
    """(B, 1, width) float mask of the conv outputs (padding ``k - 1``) whose window touches positions
    ``[start, start + count)`` of each row (none when ``count`` is 0); output ``p`` sees inputs
    ``p - k + 1 .. p``. ``start``, ``count``: (B, 1)."""
    p = torch.arange(width, device=start.device).unsqueeze(0)  # (1, width)
    touches = (p >= start) & (p < start + count + (k - 1)) & (count > 0)  # (B, width)
    return touches.unsqueeze(1).to(torch.float32)


class CharWordTextCNN(nn.Module):
    """A TextCNN over two channels of one sequence, ``chars <sep> words`` (the ``char+word`` tokenizer).

    One embedding table; one bank of convolutions sees only the chars (every other position zeroed), the other
    only the words, and each bank is max-pooled over the windows touching its own part: so each bank computes
    what a TextCNN would on that part alone, and padding never changes the logits. The sep position is found
    in the graph (a cumsum of ``ids == sep_id``), so the ONNX export keeps batch and length dynamic. A row
    without ``<sep>`` is all chars; an empty part pools to zeros (finite logits). ``extra["sep_id"]``: the
    tokenizer's ``<sep>`` id.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if "sep_id" not in cfg.extra:
            raise ValueError(
                f"model {cfg.arch!r} needs extra['sep_id'] (the tokenizer's '<sep>' id) in its config"
            )
        self.sep_id = int(cfg.extra["sep_id"])
        self.embedding = token_embedding(cfg)
        widths = cfg.kernel_sizes
        self.char_convs = nn.ModuleList(
            nn.Conv1d(cfg.embed_dim, cfg.num_filters, k, padding=k - 1) for k in widths
        )
        self.word_convs = nn.ModuleList(
            nn.Conv1d(cfg.embed_dim, cfg.num_filters, k, padding=k - 1) for k in widths
        )
        self.dropout = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(2 * cfg.num_filters * len(widths), cfg.num_classes)

    @staticmethod
    def _bank(
        convs: nn.ModuleList, x: torch.Tensor, start: torch.Tensor, count: torch.Tensor
    ) -> list[torch.Tensor]:
        pooled = []
        for conv in convs:
            h = F.relu(conv(x))  # (B, F, T + k - 1)
            valid = _window_mask(start, count, conv.kernel_size[0], h.size(2))  # (B, 1, T + k - 1)
            # ReLU outputs are >= 0, so zeroing the other part's windows leaves this part's max unchanged
            pooled.append((h * valid.to(h.dtype)).amax(dim=2))  # (B, F)
        return pooled

    def features(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) ids → (B, 2 * F * widths): the char bank's pooled features, then the word bank's."""
        is_sep = ids == self.sep_id  # (B, T)
        after = is_sep.to(torch.int64).cumsum(dim=1) > 0  # (B, T): True from the first sep on
        real = ids != 0
        chars = real & ~after
        words = real & after & ~is_sep
        n_chars = chars.sum(dim=1, keepdim=True)  # (B, 1): chars start at 0
        n_words = words.sum(dim=1, keepdim=True)  # (B, 1): words start right after the sep
        x = self.embedding(ids)  # (B, T, E)
        x_chars = (x * chars.unsqueeze(-1).to(x.dtype)).transpose(1, 2)  # (B, E, T)
        x_words = (x * words.unsqueeze(-1).to(x.dtype)).transpose(1, 2)  # (B, E, T)
        pooled = self._bank(self.char_convs, x_chars, torch.zeros_like(n_chars), n_chars)
        pooled += self._bank(self.word_convs, x_words, n_chars + 1, n_words)
        return torch.cat(pooled, dim=1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.features(ids)))


ARCHITECTURES: dict[str, type[nn.Module]] = {
    "textcnn": TextCNN,
    "transformer": TransformerClassifier,
    "fasttext": HashedNgramBag,
    "ngram_textcnn": NgramTextCNN,
    "char_word_textcnn": CharWordTextCNN,
}


def build_model(cfg: ModelConfig) -> nn.Module:
    try:
        return ARCHITECTURES[cfg.arch](cfg)
    except KeyError:
        raise ValueError(
            f"unknown model architecture {cfg.arch!r}; choose one of {sorted(ARCHITECTURES)}"
        ) from None


def save_model(
    folder: Path,
    model: nn.Module,
    cfg: ModelConfig,
    labels: list[str],
    tokenizer_dir: Path,
    metrics: dict[str, float] | None = None,
) -> None:
    """Write ``model.pt`` (state dict), ``model.json`` and the tokenizer files into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / "model.pt")
    Manifest(labels=labels, config=cfg.to_dict(), variant="torch-fp32", metrics=metrics).save(folder)
    copy_tokenizer(tokenizer_dir, folder)


def load_model(folder: Path) -> tuple[nn.Module, ModelConfig, Manifest]:
    """Rebuild the model of a folder written by :func:`save_model`, in eval mode."""
    manifest = Manifest.load(folder)
    cfg = ModelConfig.from_dict(manifest.config)
    model = build_model(cfg)
    try:
        model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    except RuntimeError as error:  # shapes or keys differ: weights saved by other model code
        raise ValueError(
            f"{folder / 'model.pt'} does not fit the {cfg.arch!r} model code (saved before a change such as "
            f"the n-gram table's padding row?): retrain it with `dvc repro train`. {error}"
        ) from None
    return model.eval(), cfg, manifest
