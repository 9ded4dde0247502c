"""The registered model's code: an MLflow *models-from-code* file, raw texts in, a label and probabilities out.

quantflow/registry/model_code.py logs this file as ``python_model=<path>``: MLflow copies it into the model's
``code/`` folder beside a minimal copy of the project modules it imports (quantflow.core.onnx_model and what
that imports), and executes it on load; the last line hands the model to MLflow with ``set_model``. Nothing in
the project imports this module. It imports MLflow, pydantic and the core's ONNX inference: no torch, no
Prefect, no other room of the project, so the model loads in any interpreter with the pinned requirements.

``predict`` is type-hinted (``list[str]`` in, ``list[Prediction]`` out), so MLflow infers the signature from the
hints and ``mlflow models serve`` takes its fast path: ``POST /invocations`` with ``{"inputs": ["text", ...]}``
answers ``{"predictions": [{"label": ..., "probabilities": {label: p, ...}}, ...]}``. Inputs accepted by
``mlflow.pyfunc.load_model(uri).predict``, as MLflow 3.17 converts them before ``predict`` sees them:

- a list of strings (anything else in the list is refused by MLflow's check against the hint);
- a pandas DataFrame: MLflow passes on its *first column holding strings* (judged by the first row) as the
  list, so ``pd.DataFrame({"text": [...]})`` works; put the text column first when there are several.

A pandas Series, a numpy array or a bare string are refused (wrap them in a list). The output is a list of
:class:`Prediction` objects (pydantic; ``.model_dump()`` gives the dict the server answers with).

Why these hints (MLflow 3.17's source): the input must be ``list[...]`` (types/type_hints.py
``_infer_schema_from_list_type_hint``); the DataFrame conversion is ``_PythonModelPyfuncWrapper._convert_input``
(pyfunc/model.py). An output hint ``list[X]`` gives an output schema for X a primitive, ``dict[str, ...]``, a list
or a pydantic model (models/signature.py ``_infer_signature_from_type_hints``): a pydantic model records the
exact ``{label: string, probabilities: map<string, double>}`` where ``dict[str, Any]`` would record
``map<Any>``, and the scoring server serializes it with ``model_dump`` (utils/proto_json_utils.py
``NumpyEncoder``).
"""

# no `from __future__ import annotations`: MLflow reads predict's hints at run time
import logging
from pathlib import Path
from typing import Any

import mlflow.models
import mlflow.pyfunc
from pydantic import BaseModel

from quantflow.core.bundle import ARTIFACT_KEY
from quantflow.core.onnx_model import OnnxClassifier

logger = logging.getLogger(__name__)


class Prediction(BaseModel):
    """One text's answer: the most probable label and every class probability (they sum to 1)."""

    label: str
    probabilities: dict[str, float]


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
        model_input: list[str],
        params: dict[str, Any] | None = None,
    ) -> list[Prediction]:
        """Raw texts → per text, the label and the class probabilities (one ORT call per 256 texts)."""
        if self._classifier is None:
            raise RuntimeError("predict called before load_context: load it with mlflow.pyfunc.load_model")
        labels = self._classifier.labels
        proba = self._classifier.predict_proba(model_input)  # (N, C)
        return [
            Prediction(
                label=labels[int(row.argmax())],
                probabilities={label: float(p) for label, p in zip(labels, row.tolist(), strict=True)},
            )
            for row in proba
        ]


mlflow.models.set_model(QuantflowModel())
