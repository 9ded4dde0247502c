"""Imports point down only: the core never pulls in a step, a flow, Prefect or MLflow."""

import subprocess
import sys

import pytest

CORE = [
    "quantflow.core.params",
    "quantflow.core.text",
    "quantflow.core.models",
    "quantflow.core.bundle",
    "quantflow.core.onnx_model",
    "quantflow.core.layout",
    "quantflow.core.errors",
    "quantflow.core.pruning",
]
FORBIDDEN = ["prefect", "mlflow", "tasks", "flows", "serving", "quantflow.cli"]


@pytest.mark.parametrize("module", CORE)
def test_core_module_imports_nothing_above_it(module: str) -> None:
    probe = f"import sys, {module}; print(','.join(m for m in {FORBIDDEN!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "", f"{module} imports {done.stdout.strip()}"


def test_tokenizer_and_onnx_inference_import_no_model_code() -> None:
    probe = "import sys, quantflow.core.onnx_model; print('quantflow.core.models' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
