"""The service stays light (no torch, no Prefect, no spaCy for the char segmenter); truncation; batch predict."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import httpx
import pandas as pd
from typer.testing import CliRunner

from quantflow.cli import app as cli
from quantflow.core.onnx_model import OnnxClassifier
from serving.app import Service
from serving.reload import ModelSlot
from tests.params_helpers import PARAMS_FILE, params_with

HEAVY = ["torch", "prefect", "spacy", "thinc", "tasks", "flows"]


def test_service_imports_no_torch_prefect_or_training_code(variant: Path) -> None:
    """Import the app and load a char-tokenizer model, as ``quantflow serve --model-dir`` does."""
    probe = (
        "import sys; from pathlib import Path; from serving.server import build_service; "
        "import serving.http; from quantflow.core.params import load_params; "
        f"s = build_service(load_params(Path({str(PARAMS_FILE)!r})), Path('.'), Path({str(variant)!r})); "
        "s.slot.load_latest(); "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "", f"the service imported {done.stdout.strip()}"


def local_service(variant: Path, **limits: object) -> Service:
    slot = ModelSlot(None, "local", "staging", threads=1, folder=variant)
    slot.load_latest()
    return Service(params_with({f"serve.{key}": value for key, value in limits.items()}).serve, slot)


async def post(service: Service, path: str, payload: dict) -> httpx.Response:
    transport = httpx.ASGITransport(app=service)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.post(path, json=payload)


def test_long_texts_are_truncated_when_configured(variant: Path) -> None:
    service = local_service(variant, max_chars=10, long_texts="truncate")
    offline = OnnxClassifier(variant)
    long_text = "国家经济发展政府会议" + "很好不错" * 20
    answer = asyncio.run(post(service, "/predict", {"texts": [long_text]}))
    assert answer.status_code == 200
    assert answer.json()["predictions"][0]["label"] == offline.predict([long_text[:10]])[0] == "news"


def test_predict_command_writes_labels_for_every_row(
    variant: Path, texts: pd.DataFrame, tmp_path: Path
) -> None:
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.parquet"
    texts[["text"]].to_json(src, orient="records", lines=True, force_ascii=False)
    result = CliRunner().invoke(
        cli, ["predict", "--input", str(src), "--output", str(dst), "--model-dir", str(variant)]
    )
    assert result.exit_code == 0, result.output
    out = pd.read_parquet(dst)
    offline = OnnxClassifier(variant)
    assert out["label"].tolist() == offline.predict(texts["text"].tolist())
    assert {f"proba_{lb}" for lb in offline.labels} <= set(out.columns)
    assert set(out["model_version"]) == {"local"}


def test_predict_command_names_a_missing_column(variant: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    pd.DataFrame({"body": ["a"]}).to_csv(src, index=False)
    result = CliRunner().invoke(
        cli,
        ["predict", "--input", str(src), "--output", str(tmp_path / "o.csv"), "--model-dir", str(variant)],
    )
    assert result.exit_code == 2 and "'text'" in result.output and "--text-column" in result.output


def test_registry_polling_reads_sqlite_without_importing_mlflow(tmp_path: Path) -> None:
    """The embedded store's alias is read with one SELECT, in a process that never imports MLflow."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("m")
    for _ in range(2):
        client.create_model_version("m", source=str(tmp_path))
    client.set_registered_model_alias("m", "staging", "2")
    probe = "\n".join(
        [
            "import sys",
            "from pathlib import Path",
            "from serving.registry import Registry, RegistryError",
            f"r = Registry({uri!r}, Path('.'))",
            "print(r.resolve('m', 'staging').version)",
            "try:",
            "    r.resolve('m', 'gone')",
            "except RegistryError as e:",
            "    print('@gone' in str(e))",
            "print('mlflow' in sys.modules)",
        ]
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["2", "True", "False"]
