"""Shared fixtures: tiny, local, deterministic data; no network."""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from flows.logs import PREFECT_ENV

for _key, _value in {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "true",
    "GIT_PYTHON_REFRESH": "quiet",
    **PREFECT_ENV,  # as the CLI sets it: the steps' lines in a flow run's logs, none sent outside one
}.items():
    os.environ.setdefault(_key, _value)

NEWS_WORDS = [
    "国务院",
    "经济",
    "发展",
    "会议",
    "代表",
    "政府",
    "改革",
    "人民",
    "建设",
    "工作",
    "记者",
    "报道",
    "全国",
    "企业",
    "中央",
]
REVIEW_WORDS = [
    "质量",
    "不错",
    "喜欢",
    "推荐",
    "失望",
    "便宜",
    "物流",
    "服务",
    "好评",
    "差评",
    "酒店",
    "房间",
    "这本书",
    "值得",
    "买了",
]


def make_texts(words: list[str], n: int, rng: random.Random) -> list[str]:
    return ["".join(rng.choices(words, k=rng.randint(3, 12))) + rng.choice("。！，") for _ in range(n)]


def two_vocabulary_frame(per_class: int = 150, seed: int = 7) -> pd.DataFrame:
    """``per_class`` news-like then ``per_class`` comment-like texts from two disjoint vocabularies."""
    rng = random.Random(seed)
    news, comments = make_texts(NEWS_WORDS, per_class, rng), make_texts(REVIEW_WORDS, per_class, rng)
    return pd.DataFrame({"text": news + comments, "label": ["news"] * per_class + ["comment"] * per_class})


@pytest.fixture
def tiny_frame() -> pd.DataFrame:
    """300 news-like and comment-like texts from two disjoint vocabularies: easy to learn, fast to train."""
    return two_vocabulary_frame(150)


@pytest.fixture
def project_root() -> Path:
    return Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _restore_sys_path() -> Iterator[None]:
    """Loading an MLflow pyfunc prepends the model's code folder to sys.path for good; processes spawned later
    (the Dask workers of the scaling study) inherit it and would import the model's minimal copy of quantflow."""
    saved = list(sys.path)
    yield
    sys.path[:] = saved
