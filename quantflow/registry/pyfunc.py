"""The MLflow pyfunc face of an ONNX model folder: raw text in, a label and class probabilities out.

Logged by ``tasks/register.py`` with the folder as the ``model_dir`` artifact and the ``quantflow`` and
``serving`` packages as code, so ``mlflow.pyfunc.load_model("models:/<name>@staging")`` works anywhere.
No torch and no Prefect: the folder's manifest, tokenizer and ``model.onnx`` are all it needs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import ColSpec, Schema

from quantflow.core.onnx_model import OnnxClassifier

logger = logging.getLogger(__name__)

ARTIFACT_KEY = "model_dir"
TEXT_COLUMN = "text"
LABEL_COLUMN = "label"
PROBA_PREFIX = "proba_"


def proba_column(label: str) -> str:
    return f"{PROBA_PREFIX}{label}"


def model_signature(labels: Sequence[str]) -> ModelSignature:
    """Input: one string column ``text``. Output: ``label`` plus one ``proba_<label>`` column per class."""
    outputs = [ColSpec("string", LABEL_COLUMN)] + [ColSpec("float", proba_column(lb)) for lb in labels]
    return ModelSignature(inputs=Schema([ColSpec("string", TEXT_COLUMN)]), outputs=Schema(outputs))


def texts_from_input(model_input: Any) -> list[str]:
    """A DataFrame with a ``text`` column, a Series, or a list/array of strings → a list of strings."""
    if isinstance(model_input, pd.DataFrame):
        if TEXT_COLUMN not in model_input.columns:
            raise ValueError(
                f"input DataFrame needs a {TEXT_COLUMN!r} column (got columns: {list(model_input.columns)})"
            )
        model_input = model_input[TEXT_COLUMN]
    if isinstance(model_input, str):
        model_input = [model_input]
    texts = list(model_input)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"input row {i} is not a string (got {type(text).__name__}: {text!r})")
    return texts


def predictions_frame(labels: Sequence[str], proba: np.ndarray) -> pd.DataFrame:
    """(N, C) probabilities in ``labels`` order → DataFrame[label, proba_<label>...]."""
    frame = pd.DataFrame({LABEL_COLUMN: pd.Series([labels[i] for i in proba.argmax(axis=1)], dtype=str)})
    for j, label in enumerate(labels):
        frame[proba_column(label)] = proba[:, j].astype(np.float32)
    return frame


class QuantflowModel(mlflow.pyfunc.PythonModel):
    """ONNX Runtime behind the pyfunc API; ``threads`` sets ORT intra-op threads (1 is fastest per text)."""

    def __init__(self, threads: int = 1) -> None:
        self.threads = threads
        self._classifier: OnnxClassifier | None = None

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        folder = Path(context.artifacts[ARTIFACT_KEY])
        self._classifier = OnnxClassifier(folder, threads=self.threads)
        logger.info("loaded %s (labels: %s)", folder, self._classifier.labels)

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext | None,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        """Raw texts (DataFrame ``text`` column, Series or list of strings) → labels and probabilities.

        ``model_input`` is annotated as a DataFrame only: with any other annotation MLflow 3 warns, or checks
        inputs against the annotation instead of the logged signature.
        """
        if self._classifier is None:
            raise RuntimeError("predict called before load_context: load it with mlflow.pyfunc")
        texts = texts_from_input(model_input)
        proba = self._classifier.predict_proba(texts)
        return predictions_frame(self._classifier.labels, proba)
