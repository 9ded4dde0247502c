"""The register step against a real ``mlflow server``: run, model version, aliases, gate, pyfunc round trip.

The project state is fake but real: a tiny TextCNN trained for a few steps on synthetic Chinese texts and
exported to ONNX, hand-written reports, a test split. Only the numbers in the reports are made up.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import mlflow
import mlflow.artifacts
import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
import torch

from quantflow.core.bundle import ARTIFACT_KEY, Manifest
from quantflow.core.errors import QuantflowError
from quantflow.core.models import ModelConfig, build_model
from quantflow.core.onnx_model import OnnxClassifier
from quantflow.core.params import Params
from quantflow.core.text import Tokenizer, TokenizerConfig, build_vocab
from quantflow.registry.pipeline_run import end_run, open_run
from quantflow.registry.promotion import CHALLENGER, STAGING
from quantflow.registry.runlog import curve_metrics
from tasks.register import RegisterResult, register
from tests.mlflow_server import ServerProcess, mlflow_server, mlflow_server_process  # noqa: F401
from tests.params_helpers import params_with

pytestmark = pytest.mark.slow

LABELS = ["news", "comment"]
CHARS = {"news": "国家经济发展政府会议人民代表工作改革", "comment": "很好不错满意喜欢质量服务推荐失望价格"}
FP32_ACCURACY = 0.99
MakeProject = Callable[..., Path]


def synthetic_split(per_class: int = 30) -> pd.DataFrame:
    rng = random.Random(0)
    rows = [
        ("".join(rng.choices(CHARS[label], k=rng.randint(4, 12))), label)
        for label in LABELS
        for _ in range(per_class)
    ]
    return pd.DataFrame(
        {
            "text": [t for t, _ in rows],
            "label": [lb for _, lb in rows],
            "key": [f"k{i}" for i in range(len(rows))],
        }
    )


def train_tiny(tokenizer: Tokenizer, cfg: ModelConfig, split: pd.DataFrame) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(cfg)
    ids = torch.from_numpy(tokenizer.encode(split["text"].tolist()))  # (N, T)
    target = torch.tensor([LABELS.index(lb) for lb in split["label"]])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(20):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(ids), target).backward()
        optimizer.step()
    return model.eval()


def build_variant(folder: Path, split: pd.DataFrame) -> None:
    """tokenizer + TextCNN → folder/{model.onnx, model.json, tokenizer.json, vocab.json}."""
    tok_cfg = TokenizerConfig(max_len=32, min_len=3)
    vocab = build_vocab(Tokenizer(tok_cfg, {"<pad>": 0, "<unk>": 1}).iter_tokens(split["text"]), 1, 100)
    tokenizer = Tokenizer(tok_cfg, vocab)
    cfg = ModelConfig(
        arch="textcnn",
        vocab_size=len(vocab),
        num_classes=len(LABELS),
        embed_dim=8,
        num_filters=4,
        kernel_sizes=(2, 3),
        dropout=0.0,
        max_len=32,
    )
    model = train_tiny(tokenizer, cfg, split)
    folder.mkdir(parents=True)
    example = torch.from_numpy(tokenizer.encode(split["text"].tolist()[:2]))  # (2, T)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=32)
    torch.onnx.export(
        model,
        (example,),
        str(folder / "model.onnx"),
        dynamo=True,
        external_data=False,
        input_names=["ids"],
        output_names=["logits"],
        dynamic_shapes=({0: batch, 1: seq},),
    )
    Manifest(labels=LABELS, config=cfg.to_dict(), variant="onnx-int8").save(folder)
    tokenizer.save(folder)


def scores(value: float) -> dict:
    per_class = {lb: {"precision": value, "recall": value, "f1": value, "support": 30} for lb in LABELS}
    return {
        "accuracy": value,
        "macro_f1": value,
        "macro_precision": value,
        "macro_recall": value,
        "per_class": per_class,
    }


def calibrated(ece_before: float, ece_after: float) -> dict:
    """One model's entry of calibration.json: test metrics before and after calibration."""
    return {
        "role": "shipped",
        "calibration": {"method": "temperature", "temperature": 1.5},
        **{
            stage: {"ece": ece, "brier": 0.02, "nll": 0.05, "accuracy": 0.985}
            for stage, ece in (("before", ece_before), ("after", ece_after))
        },
    }


def write_reports(reports: Path, int8_accuracy: float, int8_ece: float = 0.02) -> None:
    (reports / "plots").mkdir(parents=True)
    (reports / "validation").mkdir()
    (reports / "quality.md").write_text("# Model quality\n")  # committed by `make quality`, not by a run
    metrics = {"fp32": scores(FP32_ACCURACY), "baseline": scores(0.97)}
    (reports / "metrics.json").write_text(json.dumps(metrics))
    history = [
        {"epoch": e, "train_loss": 1 / e, "val_accuracy": 0.9 + e / 100, "val_macro_f1": 0.9 + e / 200}
        for e in (1, 2, 3)
    ]
    (reports / "train_history.json").write_text(json.dumps(history))
    variants = {
        name: {
            "path": f"artifacts/variants/{name}/model.onnx",
            "accuracy": acc,
            "macro_f1": acc,
            "size_bytes": size,
            "accuracy_drop": round(FP32_ACCURACY - acc, 6),
        }
        for name, acc, size in (("fp32", FP32_ACCURACY, 4000), ("int8", int8_accuracy, 1000))
    }
    compression = {
        "chosen": "int8",
        "parity": {"max_abs_diff": 1e-6, "atol": 1e-4, "samples": 60},
        "decision": {"chosen": "int8", "max_drop_pp": 1.0},
        "measurement": {"latency_texts": 300, "threads": 1, "batch": 64},
        "size_ratio": 0.25,
        "variants": variants,
    }
    (reports / "compression.json").write_text(json.dumps(compression))
    calibration = {
        "variant": "int8",
        "calibration": {"method": "temperature", "temperature": 1.5},
        "choice": {"chosen": "temperature", "reason": "calibrate.method: temperature"},
        "bins": 15,
        "fitted_on": {"split": "val", "rows": 60},
        "measured_on": {"split": "test", "rows": 60},
        "models": {"fp32": calibrated(0.04, 0.01), "int8": calibrated(0.05, int8_ece)},
    }
    (reports / "calibration.json").write_text(json.dumps(calibration))
    (reports / "plots" / "confusion_matrix.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (reports / "validation" / "raw_dataset.json").write_text('{"success": true}')


class LegacyModel(mlflow.pyfunc.PythonModel):
    """How versions were logged before the models-from-code pyfunc: a pickled object, DataFrame in and out."""

    def predict(self, context: object, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        raise NotImplementedError("never called: the gate and the service read the variant folder")


def register_legacy(tracking_uri: str, name: str, folder: Path, experiment_id: str | None = None) -> str:
    """Register ``folder`` as the previous register step did (``artifacts={ARTIFACT_KEY: folder}`` of a pickled
    DataFrame pyfunc), in the given experiment (default: the store's default one); returns the new version."""
    mlflow.set_tracking_uri(tracking_uri)
    try:
        with mlflow.start_run(experiment_id=experiment_id):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=LegacyModel(),
                artifacts={ARTIFACT_KEY: str(folder)},
                pip_requirements=[],
                registered_model_name=name,
            )
    finally:
        mlflow.set_tracking_uri(None)
    return str(info.registered_model_version)


@pytest.fixture(scope="session")
def variant_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("template") / "int8"
    build_variant(folder, synthetic_split())
    return folder


@pytest.fixture(scope="module")
def make_project(tmp_path_factory: pytest.TempPathFactory, variant_template: Path) -> MakeProject:
    """A project root with the int8 variant, the reports (int8 accuracy as given) and the test split."""

    def make(int8_accuracy: float = 0.985, int8_ece: float = 0.02) -> Path:
        root = tmp_path_factory.mktemp("project")
        shutil.copytree(variant_template, root / "artifacts" / "variants" / "int8")
        write_reports(root / "reports", int8_accuracy, int8_ece)
        (root / "data" / "split").mkdir(parents=True)
        synthetic_split().to_parquet(root / "data" / "split" / "test.parquet")
        return root

    return make


@pytest.fixture(scope="module")
def params() -> Params:
    return params_with(
        {
            "register.model_name": "quantflow-test-register",
            "register.experiment": "quantflow-test-register",
            "compress.max_drop_pp": 1.0,  # the fake int8 trails fp32 by 0.5 points
        }
    )


@pytest.fixture(scope="module")
def first(
    mlflow_server_process: ServerProcess,  # noqa: F811
    variant_template: Path,
    mlflow_server: str,  # noqa: F811
    make_project: MakeProject,
    params: Params,
) -> Iterator[RegisterResult]:
    """Version 1: passes the gate, so it becomes the champion behind @staging. (The argument order lets the
    server start while the ONNX template is exported.)"""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        yield register(params, make_project(), tags={"git_commit": "0123abc"})


@pytest.fixture
def client(mlflow_server: str, monkeypatch: pytest.MonkeyPatch) -> mlflow.MlflowClient:  # noqa: F811
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    return mlflow.MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)


def test_first_version_gets_both_aliases_and_gate_tags(
    first: RegisterResult, client: mlflow.MlflowClient
) -> None:
    assert (first.version, first.promoted) == ("1", True)
    assert first.tracking_uri.startswith("http://127.0.0.1:")
    assert client.get_registered_model(first.model_name).aliases == {CHALLENGER: "1", STAGING: "1"}
    version = client.get_model_version(first.model_name, "1")
    assert version.tags["gate.passed"] == "true"
    assert version.tags["gate.max_drop_pp.value"] == "0.5"
    assert version.tags["gate.max_drop_pp.threshold"] == "1"
    assert version.tags["gate.min_f1.passed"] == "true"
    assert version.tags["gate.champion.passed"] == "true"
    assert version.tags["git_commit"] == "0123abc"
    assert "Gate: passed" in version.description
    assert "gate.max_ece.passed" not in version.tags  # register.max_ece: null, no check
    assert "| **int8** (shipped) | 0.0500 → 0.0200 |" in version.description  # the card's calibration table


def test_run_holds_params_curves_metrics_and_reports(
    first: RegisterResult, client: mlflow.MlflowClient, params: Params
) -> None:
    run = client.get_run(first.run_id)
    assert run.data.params["train.lr"] == "0.002"
    assert run.data.tags["params_digest"] == params.digest()
    assert run.data.tags["gate.passed"] == "true"
    assert run.data.metrics["test_accuracy"] == FP32_ACCURACY
    assert run.data.metrics["shipped_size_bytes"] == 1000 and run.data.metrics["onnx_fp32_size_bytes"] == 4000
    assert run.data.metrics["compress_parity_max_abs_diff"] == 1e-6
    assert (
        run.data.metrics["calibration_shipped_ece_before"],
        run.data.metrics["calibration_shipped_ece_after"],
    ) == (
        0.05,
        0.02,
    )
    assert run.data.metrics["calibration_fp32_ece_after"] == 0.01
    assert (
        "calibration_temperature" not in run.data.metrics
        and "calibration_fp32_nll_after" not in run.data.metrics
    )
    assert run.data.tags["quantflow.calibration"] == "temperature T=1.500"
    settings = (
        "compress_parity_atol",
        "compress_parity_samples",
        "compress_decision",
        "compress_measurement",
    )
    assert not [k for k in run.data.metrics if k.startswith(settings)]  # configuration is params only
    assert not [k for k in run.data.metrics if "per_class" in k or "onnx_int8" in k]  # tables: in reports/
    assert [m.step for m in client.get_metric_history(first.run_id, "model/val_macro_f1")] == [1, 2, 3]
    assert run.info.status == "FINISHED"  # the step's own run: ended by it
    assert {a.path for a in client.list_artifacts(first.run_id)} >= {"reports", "gate.json"}
    logged = {a.path for a in client.list_artifacts(first.run_id, "reports")}
    assert "reports/plots" in logged and "reports/quality.md" not in logged  # make quality wrote that one


def test_register_logs_into_the_pipeline_run_and_leaves_it_running(
    mlflow_server: str,  # noqa: F811
    make_project: MakeProject,
    params: Params,
    client: mlflow.MlflowClient,
) -> None:
    """A flow's run (pipeline_run.open_run) gets the model and the rest of the curve, keeps its start and stays
    RUNNING (the flow ends it); the epoch drawn live is not logged twice."""
    params = params_with(  # a model of its own: the other tests' aliases stay as they expect
        {"register.model_name": "quantflow-test-pipeline-run", "compress.max_drop_pp": 1.0}
    )
    run = open_run(params, make_project(), {"prefect_flow_run_name": "test"}, None, "test")
    client.log_batch(run.run_id, metrics=curve_metrics("model", [{"epoch": 1, "val_macro_f1": 0.905}]))
    started = client.get_run(run.run_id).info.start_time
    result = register(params, make_project(), tags={"git_commit": "0123abc"}, run_id=run.run_id)
    after = client.get_run(run.run_id)
    assert result.run_id == run.run_id and after.info.status == "RUNNING"
    assert after.info.start_time == started and after.info.run_name.startswith(params.ingest.dataset)
    assert [m.step for m in client.get_metric_history(run.run_id, "model/val_macro_f1")] == [1, 2, 3]
    assert client.get_model_version(result.model_name, result.version).run_id == run.run_id
    end_run(make_project(), run.run_id, "FINISHED", "test over")
    assert client.get_run(run.run_id).info.status == "FINISHED"


def test_run_name_descriptions_and_the_staging_history_table(
    first: RegisterResult, client: mlflow.MlflowClient, params: Params, tmp_path: Path
) -> None:
    """The run's name says dataset, candidate, variant, when and which params; the experiment and the registered
    model carry descriptions; the run holds the staging history as a table, newest move first."""
    run = client.get_run(first.run_id)
    pattern = rf"{params.ingest.dataset}-[\w.]+-int8-\d{{8}}-\d{{4}}-{params.digest()[:6]}"
    assert re.fullmatch(pattern, run.info.run_name), run.info.run_name
    note = client.get_experiment(run.info.experiment_id).tags["mlflow.note.content"]
    assert params.model_name in note and "lineage/dvc.lock" in note
    assert "@staging" in client.get_registered_model(first.model_name).description
    table = Path(client.download_artifacts(first.run_id, "staging_history.md", str(tmp_path))).read_text()
    rows = [line for line in table.splitlines() if re.match(r"\| \d+ \|", line)]
    assert rows and rows[0].startswith("| 1 | 1 |  | gate |"), table


TEXTS = ["国家经济发展，政府工作改革。", "质量很好，服务不错！", "  ＮＥＷＳ 会议 "]


def test_staging_model_predicts_raw_text(
    first: RegisterResult, client: mlflow.MlflowClient, variant_template: Path
) -> None:
    """The type-hinted pyfunc: a list of texts (or a DataFrame with a text column) → label + probabilities."""
    model = mlflow.pyfunc.load_model(f"models:/{first.model_name}@{STAGING}")
    offline = OnnxClassifier(variant_template)
    out = model.predict(TEXTS)
    assert [p.label for p in out] == offline.predict(TEXTS)
    assert [p.label for p in out][:2] == ["news", "comment"]
    proba = [[p.probabilities[label] for label in offline.labels] for p in out]
    np.testing.assert_allclose(proba, offline.predict_proba(TEXTS), rtol=0, atol=1e-7)
    framed = model.predict(pd.DataFrame({"text": TEXTS}))
    assert [p.model_dump() for p in framed] == [p.model_dump() for p in out]


def test_mlflow_scoring_server_takes_inputs_lists(first: RegisterResult) -> None:
    """The signature comes from the type hints: MLflow's scoring app (what `mlflow models serve` runs) takes
    ``{"inputs": [...]}`` as the list itself, without DataFrame parsing."""
    from mlflow.pyfunc.scoring_server import init

    model = mlflow.pyfunc.load_model(f"models:/{first.model_name}/{first.version}")
    assert model.metadata._is_signature_from_type_hint()

    async def invoke() -> httpx.Response:
        transport = httpx.ASGITransport(app=init(model))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return await http.post("/invocations", json={"inputs": TEXTS})

    answer = asyncio.run(invoke())
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert [p["label"] for p in predictions] == [p.label for p in model.predict(TEXTS)]
    assert set(predictions[0]["probabilities"]) == {"news", "comment"}


CLEAN_LOAD = """
import json, sys
sys.path = [p for p in sys.path if p]  # -I -S: the stdlib only, no site-packages, no editable finder
for folder in json.loads(sys.argv[3]):
    sys.path.append(folder)  # site-packages without their .pth files: quantflow's editable finder stays out
for name in ("tasks", "quantflow"):
    try:
        __import__(name)
        sys.exit(f"{name} is importable before the model is loaded")
    except ImportError:
        pass
import mlflow.pyfunc
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[2])
out = model.predict(json.loads(sys.argv[4]))
import quantflow.core.onnx_model as onnx_model
print(json.dumps({"labels": [p.label for p in out], "code": onnx_model.__file__,
                  "heavy": sorted(m for m in ("torch", "prefect", "tasks", "flows") if m in sys.modules)}))
"""


def test_model_loads_in_a_clean_interpreter_without_the_project(
    first: RegisterResult,
    mlflow_server: str,  # noqa: F811
    tmp_path: Path,
    variant_template: Path,
) -> None:
    """``python -I -S`` with site-packages but no project on sys.path: the model's own code folder suffices."""
    site_packages = [p for p in sys.path if p.endswith("site-packages")]
    uri = f"models:/{first.model_name}/{first.version}"
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", CLEAN_LOAD, mlflow_server, uri]
        + [json.dumps(site_packages), json.dumps(TEXTS)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={
            **os.environ,
            "MLFLOW_TRACKING_URI": mlflow_server,
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        },
    )
    assert done.returncode == 0, "\n".join(done.stderr.splitlines()[-15:])
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["labels"] == OnnxClassifier(variant_template).predict(TEXTS)
    assert "/code/quantflow/core/onnx_model.py" in answer["code"]
    assert answer["heavy"] == []


def test_model_code_folder_holds_only_what_prediction_imports(
    first: RegisterResult, client: mlflow.MlflowClient, tmp_path: Path
) -> None:
    local = Path(
        mlflow.artifacts.download_artifacts(
            f"models:/{first.model_name}/{first.version}", dst_path=str(tmp_path)
        )
    )
    files = {p.relative_to(local / "code").as_posix() for p in (local / "code").rglob("*.py")}
    assert (local / "pyfunc.py").is_file()  # the models-from-code file sits at the model's root
    assert {"quantflow/__init__.py", "quantflow/core/__init__.py", "quantflow/core/onnx_model.py"} <= files
    for unwanted in (
        "quantflow/cli.py",
        "quantflow/registry",
        "quantflow/intake",
        "tasks/",
        "flows/",
        "serving/",
    ):
        assert not any(f.startswith(unwanted) for f in files), (
            f"{unwanted} in the model's code: {sorted(files)}"
        )
    assert not (local / "python_model.pkl").exists()  # models-from-code: nothing pickled


def test_worse_candidate_stays_challenger(
    first: RegisterResult, client: mlflow.MlflowClient, make_project: MakeProject, params: Params
) -> None:
    result = register(params, make_project(int8_accuracy=0.9))
    assert not result.promoted and result.version != first.version
    aliases = client.get_registered_model(first.model_name).aliases
    assert aliases == {CHALLENGER: result.version, STAGING: first.version}
    tags = client.get_model_version(first.model_name, result.version).tags
    assert (tags["gate.passed"], tags["gate.max_drop_pp.passed"]) == ("false", "false")
    assert tags["gate.max_drop_pp.value"] == "9"
    assert tags["gate.champion.passed"] == "true"  # re-evaluated on the same split: same model, same score
    assert tags["gate.verdict"] == f"held at @{CHALLENGER}: max_drop_pp failed"


def test_max_ece_holds_a_badly_calibrated_candidate(
    first: RegisterResult, client: mlflow.MlflowClient, make_project: MakeProject, params: Params
) -> None:
    strict = params.with_overrides({"register.max_ece": 0.03})
    result = register(strict, make_project(int8_ece=0.04))
    assert not result.promoted
    tags = client.get_model_version(first.model_name, result.version).tags
    assert (tags["gate.max_ece.value"], tags["gate.max_ece.threshold"], tags["gate.max_ece.passed"]) == (
        "0.04",
        "0.03",
        "false",
    )
    assert "uncalibrated 0.0500" in tags["gate.max_ece.detail"]
    assert tags["gate.verdict"] == f"held at @{CHALLENGER}: max_ece failed"
    assert client.get_registered_model(first.model_name).aliases[STAGING] == first.version


def test_changed_label_set_fails_the_champion_check(
    first: RegisterResult, client: mlflow.MlflowClient, make_project: MakeProject, params: Params
) -> None:
    root = make_project()
    folder = root / "artifacts" / "variants" / "int8"
    manifest = Manifest.load(folder)
    Manifest(labels=["positive", "negative"], config=manifest.config, variant=manifest.variant).save(folder)
    result = register(params, root)
    champion = next(c for c in result.gate["checks"] if c["name"] == "champion")
    assert not champion["passed"] and "not comparable" in champion["detail"]
    assert client.get_registered_model(first.model_name).aliases[STAGING] == first.version


@pytest.mark.parametrize(
    "missing", ["reports/compression.json", "reports/calibration.json", "artifacts/variants/int8/model.onnx"]
)
def test_missing_input_raises_before_anything_is_logged(
    first: RegisterResult,
    client: mlflow.MlflowClient,
    make_project: MakeProject,
    params: Params,
    missing: str,
) -> None:
    root = make_project()
    (root / missing).unlink()
    versions = len(client.search_model_versions(f"name = '{first.model_name}'"))
    experiment = client.get_experiment_by_name(params.register.experiment)
    runs = len(client.search_runs([experiment.experiment_id]))
    with pytest.raises(QuantflowError, match=missing.rsplit("/", 1)[-1]):
        register(params, root)
    assert len(client.search_model_versions(f"name = '{first.model_name}'")) == versions
    assert len(client.search_runs([experiment.experiment_id])) == runs


def test_embedded_sqlite_default(
    make_project: MakeProject, params: Params, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = make_project()
    result = register(params, root)
    assert result.tracking_uri == f"sqlite:///{root.resolve() / 'mlflow.db'}"
    assert (result.version, result.promoted) == ("1", True)
    assert any((root / "mlartifacts").rglob("model.onnx"))
    assert "MLFLOW_TRACKING_URI" not in os.environ  # set_tracking_uri's write to os.environ is undone


def test_champion_logged_by_the_previous_code_is_compared_from_its_variant_folder(
    make_project: MakeProject, params: Params, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A champion registered with the DataFrame pyfunc (before models-from-code) is evaluated like any other:
    the gate reads its variant folder, never its pickled pyfunc."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = make_project()
    uri = f"sqlite:///{root.resolve() / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    (root / "mlartifacts").mkdir()
    experiment = client.create_experiment("legacy", artifact_location=(root / "mlartifacts").as_uri())
    legacy = register_legacy(uri, params.model_name, root / "artifacts" / "variants" / "int8", experiment)
    client.set_registered_model_alias(params.model_name, STAGING, legacy)
    result = register(params, root)
    champion = next(c for c in result.gate["checks"] if c["name"] == "champion")
    assert champion["passed"] and f"vs champion v{legacy}" in champion["detail"]
    assert result.gate["paired"]["version"] == legacy
    assert result.gate["paired"]["difference"] == 0  # the same variant folder on both sides
    assert (
        str(client.get_registered_model(params.model_name).aliases[STAGING]) == result.version
    )  # int: sqlite
