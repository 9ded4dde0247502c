"""The one typed view of ``params.yaml``: every step reads its own section of :class:`Params`.

The models validate; they hold no values. params.yaml is the one place a shipped value is written, so every
key is required here: a file without one fails, naming the dotted key. Tests build their params from the repo's
params.yaml and say what they change (tests/params_helpers.py).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from quantflow.core.errors import QuantflowError

BUILTIN_DATASETS: dict[str, tuple[str, ...]] = {
    "news_vs_comment": ("news", "comment"),
    "review_sentiment": ("positive", "negative"),
}


class ParamsError(QuantflowError):
    """params.yaml is missing, unreadable or holds an unknown key or a bad value."""


class _Section(BaseModel):
    """A section of params.yaml: every key required (no defaults), unknown keys are errors, values frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PathsParams(_Section):
    raw_dir: Path
    split_dir: Path
    features_dir: Path
    tokenizer_dir: Path
    model_dir: Path  # the shipped model: the winning candidate's folder, copied
    candidates_dir: Path  # every trained candidate, one folder each
    variants_dir: Path
    reports_dir: Path
    accepted_dir: Path  # nightly batches that passed their contracts (DVC-tracked), one folder per dataset


class IngestParams(_Section):
    dataset: str
    path: Path | None
    text_column: str
    label_column: str
    max_rows_per_class: int | None = Field(ge=1)
    # share of the built-in corpus held back (by text hash) for `quantflow simulate-nights` to release
    holdout_fraction: float = Field(ge=0, lt=1)

    @model_validator(mode="after")
    def _known_source(self) -> IngestParams:
        if self.path is None and self.dataset not in BUILTIN_DATASETS:
            raise ValueError(
                f"unknown dataset {self.dataset!r}: use one of {sorted(BUILTIN_DATASETS)}, "
                "or set ingest.path to a CSV, Parquet or JSONL file of your own"
            )
        if not self.dataset.replace("_", "").replace("-", "").isalnum():
            raise ValueError(
                f"dataset name may hold letters, digits, '_' and '-' only (got: {self.dataset!r})"
            )
        return self


class ValidateParams(_Section):
    suite: str
    class_suite: str
    labels: list[str] | None
    min_text_length: int = Field(ge=1)
    max_text_length: int = Field(ge=1)
    min_rows_per_class: int = Field(ge=1)
    example_rows: int = Field(ge=1)


LabelIssuesAction = Literal["off", "report", "drop"]
FilterBy = Literal[
    "prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given"
]


class LabelAuditParams(_Section):
    """The label-noise audit of the training split (quantflow/core/label_audit.py): its candidate and rule."""

    folds: int = Field(ge=2)  # out-of-fold probabilities from k folds of the training split
    ngram_max: int = Field(ge=1, le=6)  # char 1..ngram_max TF-IDF
    max_features: int = Field(ge=1)  # most frequent char n-grams kept
    inverse_regularization: float = Field(gt=0)  # the logistic regression's C
    # cleanlab's rule for which rows to flag (cleanlab.filter.find_label_issues)
    filter_by: FilterBy


class SplitParams(_Section):
    val_fraction: float = Field(gt=0, lt=1)
    test_fraction: float = Field(gt=0, lt=1)
    salt: str
    # the training split's flagged rows: not audited, written to reports/label_issues.csv, or also dropped
    label_issues: LabelIssuesAction
    label_audit: LabelAuditParams

    @field_validator("label_issues", mode="before")
    @classmethod
    def _off_read_as_false(cls, value: Any) -> Any:
        """YAML 1.1 (params.yaml, ``--set``) reads a bare ``off`` as false: that is the ``off`` it means."""
        return "off" if value is False else value

    @model_validator(mode="after")
    def _room_for_train(self) -> SplitParams:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(
                "split.val_fraction + split.test_fraction must leave at least 10% for train "
                f"(got: {self.val_fraction} + {self.test_fraction})"
            )
        return self


class PreprocessParams(_Section):
    language: str
    # char+word (zh): chars, <sep>, jieba words in one sequence (quantflow.core.text.char_word_tokens)
    segmenter: Literal["char", "jieba", "char+word"]
    lowercase: bool
    min_freq: int = Field(ge=1)
    max_vocab: int = Field(ge=10)
    max_len: int = Field(ge=8)


CLASSIC_MODELS = ("tfidf_lr", "nb_lr")
NEURAL = "neural"  # the candidate that is train.model with the train.* settings
CANDIDATES = (NEURAL, *CLASSIC_MODELS)


class ClassicParams(_Section):
    """The classic candidates (quantflow/core/classic.py): char n-gram TF-IDF + LR and NB-LR on token ids."""

    ngram_max: int = Field(ge=1, le=6)  # n-grams of n = 1..ngram_max consecutive ids
    # most frequent n-grams kept (null: all): the ONNX graph's widest tensor is (B, max_features)
    max_features: int | None = Field(ge=1)
    min_df: int = Field(ge=1)  # n-grams in fewer training texts are dropped
    sublinear_tf: bool  # tf = 1 + log(count) instead of the count
    C: float = Field(gt=0)  # inverse L2 strength of the logistic regression(s)
    max_iter: int = Field(ge=1)
    nb_alpha: float = Field(gt=0)  # nb_lr: additive smoothing of the naive-Bayes log-count ratio


Arch = Literal["textcnn", "transformer", "fasttext", "ngram_textcnn", "char_word_textcnn"]


class TrainParams(_Section):
    # the families trained by the train step; the best on validation (macro-F1) ships (quantflow/core/candidates.py)
    candidates: list[Literal[CANDIDATES]] = Field(min_length=1)
    classic: ClassicParams  # tfidf_lr and nb_lr
    # char_word_textcnn needs preprocess.segmenter = char+word
    model: Arch
    embed_dim: int = Field(ge=2)
    num_filters: int = Field(ge=1)
    kernel_sizes: list[int] = Field(min_length=1)
    dropout: float = Field(ge=0, lt=1)
    transformer_layers: int = Field(ge=1)
    transformer_heads: int = Field(ge=1)
    transformer_ff_dim: int = Field(ge=1)
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    patience: int = Field(ge=1)
    threads: int = Field(ge=1)
    # data-parallel training (quantflow/core/ddp.py): N processes under torchrun; 1 on CPU: in-process
    workers: int = Field(ge=1)
    device: Literal["auto", "cpu", "cuda"]  # auto: CUDA when torch sees a GPU, else CPU
    # fasttext and ngram_textcnn: hashed char n-grams, n = 2..ngram_max, into one table of `buckets` rows
    ngram_max: int = Field(ge=1, le=5)
    buckets: int = Field(ge=1)
    # learning rate per step: constant, or linear warm-up over warmup_fraction of the steps then cosine to 0
    schedule: Literal["constant", "cosine"]
    warmup_fraction: float = Field(ge=0, lt=1)
    label_smoothing: float = Field(ge=0, lt=1)
    # augmentation of the training split only, redrawn every epoch (quantflow/core/augment.py)
    augment_delete: float = Field(ge=0, lt=0.5)  # share of chars dropped from a text
    augment_swap: float = Field(ge=0, lt=0.5)  # share of chars swapped with their neighbour
    # share of words with a synonym replaced by one, lexicon learned on the training split (quantflow/core/synonyms.py)
    augment_synonym: float = Field(ge=0, le=1)
    # initialize the char embedding with word2vec vectors trained on the training split (quantflow/core/pretrain.py)
    pretrained_embeddings: bool

    @model_validator(mode="after")
    def _candidates_once_each(self) -> TrainParams:
        repeated = sorted({c for c in self.candidates if self.candidates.count(c) > 1})
        if repeated:
            raise ValueError(f"train.candidates names {repeated} more than once (got: {self.candidates})")
        return self

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TrainParams:
        if self.model == "transformer" and self.embed_dim % self.transformer_heads:
            raise ValueError(
                f"train.embed_dim ({self.embed_dim}) must be a multiple of "
                f"train.transformer_heads ({self.transformer_heads})"
            )
        return self


class EvaluateParams(_Section):
    baseline_ngram_max: int = Field(ge=1, le=6)
    baseline_max_features: int = Field(ge=100)


VARIANTS = ("fp32", "int8-dynamic", "int8-static", "pruned-int8", "slim-int8", "distilled-int8")
QuantOp = Literal["Gather", "Gemm", "MatMul", "Conv", "Relu", "Transpose"]


class DistillStudentParams(_Section):
    """distilled-int8's student: any family on the teacher's tokenizer; sizes not named are the teacher's."""

    arch: Arch
    embed_dim: int = Field(ge=2)
    num_filters: int = Field(ge=1)  # conv families
    kernel_sizes: list[int] = Field(min_length=1)  # conv families


class CompressParams(_Section):
    """The compress step: which variants, how each is made, how they are measured and which one ships."""

    variants: list[Literal[VARIANTS]]  # fp32 is always built: the reference
    parity_samples: int = Field(ge=1)
    parity_atol: float = Field(gt=0)
    # int8-dynamic
    quantize_ops: list[QuantOp]  # ConvInteger measured slower than fp32
    weight_type: Literal["uint8", "int8"]
    # int8-static (also the int8 step of pruned-int8, slim-int8 and distilled-int8)
    static_ops: list[QuantOp]
    calibration: Literal["minmax", "entropy", "percentile"]
    calibration_samples: int = Field(ge=1)
    # pruned-int8 (masks) and slim-int8 (smaller layers, quantflow/core/slim.py), each then fine-tuned
    sparsity: float = Field(ge=0, lt=1)
    filter_keep: float = Field(gt=0, le=1)  # conv families
    head_keep: float = Field(gt=0, le=1)  # transformer
    ff_keep: float = Field(gt=0, le=1)  # transformer
    token_keep: float | None = Field(gt=0, le=1)  # None: the token table stays whole
    ngram_keep: float | None = Field(
        gt=0, le=1
    )  # fasttext, ngram_textcnn; None: the n-gram table stays whole
    finetune_epochs: int = Field(ge=0)
    finetune_lr: float = Field(gt=0)
    # distilled-int8 (quantflow/core/distill.py): a student on the teacher's softened logits and the labels
    distill_student: DistillStudentParams
    distill_temperature: float = Field(gt=0)
    distill_alpha: float = Field(ge=0, le=1)  # weight of the soft (teacher) term; 1 - alpha: the labels'
    distill_epochs: int = Field(ge=1)
    distill_lr: float = Field(gt=0)
    distill_batch_size: int = Field(ge=1)
    distill_weight_decay: float = Field(ge=0)
    # measurement (one process, interleaved) and the choice
    latency_texts: int = Field(ge=10)
    throughput_texts: int = Field(ge=64)
    rounds: int = Field(ge=1)
    policy: Literal["fastest", "smallest"]
    max_drop_pp: float = Field(ge=0, le=100)


class ScaleGridParams(_Section):
    """One architecture's sizes: the sweep trains every combination of the two lists."""

    embed_dim: list[int] = Field(min_length=1)  # textcnn: embedding width
    num_filters: list[int] = Field(min_length=1)  # textcnn: filters per kernel width
    layers: list[int] = Field(min_length=1)  # transformer: encoder layers
    width: list[int] = Field(min_length=1)  # transformer: model width (embed_dim)


class ScaleParams(_Section):
    """``quantflow scale``: the model-size sweep (flows/scale.py) run as Prefect tasks on Dask."""

    model: Literal["textcnn", "transformer"]
    grid: ScaleGridParams
    variants: list[Literal[VARIANTS]]  # fp32 always; one int8 variant compared
    workers: int = Field(ge=1)  # LocalCluster worker processes (1 thread each)
    experiment: str
    work_dir: Path  # the sweep's own data, models and variants
    reports_dir: Path  # scale.csv (DVC plots) and the PNG plots

    @model_validator(mode="after")
    def _one_int8_variant(self) -> ScaleParams:
        int8 = [v for v in self.variants if v != "fp32"]
        if len(int8) != 1:
            raise ValueError(
                f"scale.variants: list fp32 and exactly one int8 variant, e.g. [fp32, int8-static] (got: {self.variants})"
            )
        return self


class CalibrationParams(_Section):
    """``calibrate:``: the map from the shipped variant's logits to probabilities, fitted on the validation split
    after compression (quantflow/core/calibration.py) and stored in its model.json."""

    # auto: temperature, unless an alternative's cross-fitted ECE is lower by min_gain; or one method, or none
    method: Literal["auto", "none", "temperature", "platt", "vector", "isotonic"]
    bins: int = Field(ge=2)  # equal-width bins of the max probability (ECE, reliability diagram)
    folds: int = Field(ge=2)  # validation folds of the cross-fitted choice
    min_gain: float = Field(ge=0, le=1)  # ECE an alternative must win by (absolute)


class RegisterParams(_Section):
    experiment: str
    model_name: str | None
    min_f1: float = Field(ge=0, le=1)
    champion_tolerance: float = Field(ge=0, le=1)
    # the paired test against the champion (quantflow/core/stats.py): "better" or "not_worse"
    champion_rule: Literal["better", "not_worse"]
    alpha: float = Field(gt=0, lt=1)
    bootstrap_samples: int = Field(ge=100)
    # optional ceilings, checked when compression.json reports the figure for the chosen variant
    max_latency_ms: float | None = Field(gt=0)
    max_size_bytes: int | None = Field(gt=0)
    # optional ceiling on the shipped variant's expected calibration error on the test split, after calibration
    max_ece: float | None = Field(gt=0, le=1)
    # faults: registry calls retried with exponential backoff; a promotion lock older than this is stale
    retries: int = Field(ge=0)
    retry_backoff_s: float = Field(ge=0)
    # the register task's own retries (Prefect), one per entry: the pause before it, in seconds
    task_retry_delays_s: list[float]
    lock_timeout_s: float = Field(gt=0)
    # `quantflow reproduce`: largest absolute difference allowed between a recorded and a rebuilt metric
    reproduce_tolerance: float = Field(ge=0)


class ServeParams(_Section):
    """``quantflow serve`` and ``quantflow predict``: where the model comes from and what a request may hold."""

    host: str
    port: int = Field(ge=1, le=65535)
    model_name: str | None  # null: the registered name, register.model_name or quantflow-<dataset>
    alias: str
    poll_interval_s: float = Field(ge=0)  # 0: never look for a new version
    cache_dir: Path
    threads: int = Field(ge=1)  # ORT intra-op threads per request
    max_texts: int = Field(ge=1)
    max_chars: int = Field(ge=1)
    long_texts: Literal["reject", "truncate"]
    max_body_bytes: int = Field(ge=1024)
    read_timeout_s: float = Field(gt=0)  # a request's headers + body, from its first byte
    keep_alive_s: float = Field(gt=0)  # an idle connection between two requests
    max_connections: int = Field(ge=1)  # open connections per worker; more get 503
    max_in_flight: int = Field(ge=1)  # requests read but not answered, per worker; more get 503
    workers: int = Field(ge=1)  # server processes on one port (SO_REUSEPORT)
    log_sample: float = Field(ge=0, le=1)  # share of /predict requests logged (all their texts, or none)
    log_text: bool  # false: the text's sha256 and length only
    log_dir: Path
    log_max_mb: float = Field(gt=0)  # the whole log_dir
    log_queue: int = Field(ge=1)  # requests queued for the writer thread, per worker
    shadow: Literal["challenger"] | None  # the alias scored beside the served one, after the response
    shadow_sample: float = Field(ge=0, le=1)


class ScheduleParams(_Section):
    """``quantflow schedule`` and infra/prefect.yaml: when the nightly flow runs, how runs may overlap, who hears
    of a failure."""

    deployment: str  # the deployment's name: nightly_retrain/<deployment> in the Prefect UI
    cron: str
    timezone: str  # an IANA name, e.g. Europe/Berlin: 02:00 local time, DST included
    # at most this many runs of the deployment at once; a run that would exceed it is cancelled (CANCEL_NEW:
    # a night whose predecessor still runs is skipped, not queued behind it) or waits (ENQUEUE)
    concurrency_limit: int = Field(ge=1)
    collision_strategy: Literal["CANCEL_NEW", "ENQUEUE"]
    notify_block: str | None  # a saved Prefect notification block, "<block-type-slug>/<name>"
    failure_dir: Path  # one markdown summary per failed run

    @model_validator(mode="after")
    def _valid_cron_and_zone(self) -> ScheduleParams:
        fields = self.cron.split()
        if len(fields) not in (5, 6):
            raise ValueError(
                f"schedule.cron must have 5 fields (minute hour day month weekday), e.g. '0 2 * * *' "
                f"(got: {self.cron!r})"
            )
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"schedule.timezone must be an IANA time zone such as UTC or Europe/Berlin "
                f"(got: {self.timezone!r})"
            ) from None
        if self.notify_block is not None and self.notify_block.count("/") != 1:
            raise ValueError(
                "schedule.notify_block must name a saved block as <block-type-slug>/<name>, e.g. "
                f"custom-webhook/nightly-alerts (got: {self.notify_block!r})"
            )
        return self


class DriftParams(_Section):
    """Drift of a batch against the current training data: each figure warns or blocks past its bound."""

    length_ks_warn: float = Field(ge=0, le=1)  # Kolmogorov-Smirnov statistic of text lengths
    length_ks_block: float = Field(ge=0, le=1)
    label_tvd_warn: float = Field(ge=0, le=1)  # total variation distance of the label mix
    label_tvd_block: float = Field(ge=0, le=1)
    oov_increase_warn: float = Field(ge=0, le=1)  # batch OOV rate minus the val split's
    oov_increase_block: float = Field(ge=0, le=1)
    top_new_tokens: int = Field(ge=1)


class LiveDriftParams(_Section):
    """The service's prediction log against the training data and the served model on the test split
    (quantflow/intake/live.py): each figure warns past its warn bound and, when its block bound is set, holds
    tonight's model at @challenger past that one."""

    min_texts: int = Field(ge=1)  # fewer served texts in the window: not enough traffic, no verdict
    settle_s: float = Field(ge=0)  # lines younger than this are left for the next night
    length_ks_warn: float = Field(ge=0, le=1)  # Kolmogorov-Smirnov statistic of text lengths, served vs train
    length_ks_block: float | None = Field(ge=0, le=1)  # None: warns only
    oov_increase_warn: float = Field(ge=0, le=1)  # served OOV rate minus the val split's
    oov_increase_block: float | None = Field(ge=0, le=1)
    label_tvd_warn: float = Field(ge=0, le=1)  # predicted-label mix, served vs the model's on the test split
    label_tvd_block: float | None = Field(ge=0, le=1)
    confidence_drop_warn: float = Field(ge=0, le=1)  # mean top probability, test split minus served
    confidence_drop_block: float | None = Field(ge=0, le=1)
    disagreement_warn: float = Field(
        ge=0, le=1
    )  # share of shadow lines whose label differs from the served one
    disagreement_block: float | None = Field(ge=0, le=1)
    top_new_tokens: int = Field(ge=1)

    @model_validator(mode="after")
    def _block_past_warn(self) -> LiveDriftParams:
        for figure in ("length_ks", "oov_increase", "label_tvd", "confidence_drop", "disagreement"):
            warn, block = getattr(self, f"{figure}_warn"), getattr(self, f"{figure}_block")
            if block is not None and block < warn:
                raise ValueError(
                    f"nightly.live_drift.{figure}_block ({block}) is below {figure}_warn ({warn}): "
                    "a figure must warn before it blocks (null: never block)"
                )
        return self


class NightlyParams(_Section):
    """Incoming batches: folders, the batch and dataset contracts, drift, and when to retrain."""

    incoming_dir: Path
    processed_dir: Path
    rejected_dir: Path
    quarantine_dir: Path
    batch_suite: str  # expectations/<batch_suite>.json
    dataset_suite: str  # expectations/<dataset_suite>.json, after split
    max_bad_row_share: float = Field(ge=0, le=1)  # over it the batch is blocked
    min_script_share: float = Field(ge=0, le=1)  # mean share of expected-script characters
    max_markup_share: float = Field(ge=0, le=1)  # share of rows with HTML/URL junk
    max_duplicate_share: float = Field(ge=0, le=1)  # repeated texts within the batch
    max_known_share: float = Field(ge=0, le=1)  # texts already in the dataset
    min_class_share: float = Field(ge=0, le=1)  # dataset contract: every class's share
    max_class_share: float = Field(ge=0, le=1)
    min_rows_per_class_split: int = Field(ge=0)  # dataset contract: rows per class in each split
    drift: DriftParams
    live_drift: LiveDriftParams  # the service's prediction log, every night (retrained or not)
    review_dir: Path  # the review queue: <review_dir>/<YYYY-MM-DD>.csv of served texts to label
    review_size: int = Field(ge=0)  # texts queued per night (0: no queue)
    retrain: Literal["changed", "always"]  # changed: only with new data or a stale pipeline
    # commit dvc.lock and data/accepted/*.dvc: after a night that accepted data, after every retrain, never
    git_commit: Literal["accepted", "always", "never"]


with warnings.catch_warnings():
    # "register" is also ABCMeta.register; as a field it is only ever read on instances, where it wins.
    warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)

    class Params(_Section):
        seed: int
        paths: PathsParams
        ingest: IngestParams
        validate_: ValidateParams = Field(alias="validate")
        split: SplitParams
        preprocess: PreprocessParams
        train: TrainParams
        evaluate: EvaluateParams
        compress: CompressParams
        calibrate: CalibrationParams
        # "= Field()": without it pydantic takes the inherited ABCMeta.register method as the default
        register: RegisterParams = Field()
        serve: ServeParams
        scale: ScaleParams
        schedule: ScheduleParams
        nightly: NightlyParams

        model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

        @model_validator(mode="after")
        def _user_data_names_labels(self) -> Params:
            if self.ingest.path is not None and self.validate_.labels is None:
                raise ValueError(
                    f"validate.labels: required for user data (ingest.path: {self.ingest.path}); "
                    "list the allowed labels, e.g. [positive, negative]"
                )
            return self

        @property
        def labels(self) -> tuple[str, ...] | None:
            """The allowed label set: configured, or the built-in dataset's own."""
            if self.validate_.labels is not None:
                return tuple(self.validate_.labels)
            if self.ingest.path is None:
                return BUILTIN_DATASETS[self.ingest.dataset]
            return None

        @property
        def model_name(self) -> str:
            return self.register.model_name or f"quantflow-{self.ingest.dataset}"

        def digest(self) -> str:
            """A short, stable hash of every value: tags a run with the exact configuration it used."""
            blob = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True)
            return hashlib.sha256(blob.encode()).hexdigest()[:16]

        def with_overrides(self, overrides: dict[str, Any]) -> Params:
            """A copy with dotted keys replaced, e.g. ``{"train.epochs": 1}``; validated like the file."""
            data = self.model_dump(mode="json", by_alias=True)
            for dotted, value in overrides.items():
                node = data
                *parents, leaf = dotted.split(".")
                for key in parents:
                    node = node.setdefault(key, {})
                node[leaf] = value
            return parse_params(data, source="overrides")


def _describe(error: dict[str, Any], source: str) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"{source}: unknown key {key!r}"
    if error["type"] == "missing":
        return (
            f"{source}: missing key {key!r}: params.yaml must set every key (no value is assumed); "
            "copy it from the repository's params.yaml"
        )
    return f"{source}: {key}: {error['msg']} (got: {error.get('input')!r})"


def _allowed_keys(error: dict[str, Any]) -> str:
    model: type[BaseModel] = Params
    for part in error["loc"][:-1]:
        field = model.model_fields.get("validate_" if part == "validate" else str(part))
        if (
            field is None
            or not isinstance(field.annotation, type)
            or not issubclass(field.annotation, BaseModel)
        ):
            return ""
        model = field.annotation
    names = [f.alias or name for name, f in model.model_fields.items()]
    return f"; allowed keys here: {', '.join(names)}"


def parse_params(data: Any, source: str = "params.yaml") -> Params:
    """Validate a mapping into :class:`Params`; every problem is named by its dotted key."""
    if not isinstance(data, dict):
        raise ParamsError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    try:
        return Params.model_validate(data)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            line = _describe(error, source)
            if error["type"] == "extra_forbidden":
                line += _allowed_keys(error)
            lines.append(line)
        raise ParamsError("\n".join(lines)) from None


def load_params(path: Path = Path("params.yaml"), overrides: dict[str, Any] | None = None) -> Params:
    """Read and validate ``params.yaml``; ``overrides`` replace dotted keys before validation."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found (run from the project root or pass --params)") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    params = parse_params(data, source=str(path))
    return params.with_overrides(overrides) if overrides else params
