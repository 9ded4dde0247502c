"""The ``quantflow`` command: thin, each command parses its arguments and calls one thing.

This module is the top layer (it imports flows and steps, lazily so that ``--help`` stays instant); nothing in
the core imports it.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from quantflow.core.errors import QuantflowError
from quantflow.core.ports import MLFLOW_UI

app = typer.Typer(
    help="Retrain, compress and ship a text classifier.", no_args_is_help=True, pretty_exceptions_enable=False
)

QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "true",
    "GIT_PYTHON_REFRESH": "quiet",
    # the first start of the local Prefect API migrates its database: 20 s is not always enough
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}

ParamsOpt = Annotated[Path, typer.Option("--params", help="params.yaml of the project")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="override a param: --set train.epochs=2")]


def _setup() -> None:
    """Environment before Prefect is imported (its logging reads it then), and the terminal's log format."""
    from flows.logs import PREFECT_ENV

    for key, value in {**QUIET_ENV, **PREFECT_ENV}.items():
        os.environ.setdefault(key, value)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    # httpx/httpcore: one line per Prefect API call; great_expectations: lines per context and datasource
    for noisy in ("httpx", "httpcore", "great_expectations"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``["train.epochs=2"]`` → ``{"train.epochs": 2}`` (values parsed as YAML)."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(
                f"expected KEY=VALUE, e.g. train.epochs=2 (got: {pair!r})", param_hint="--set"
            )
        out[key.strip()] = yaml.safe_load(value)
    return out


BUSY_EXIT = 3  # another run holds the project (WorkspaceBusy); 2: any other error a user can act on


def _fail(exc: QuantflowError) -> None:
    from quantflow.core.workspace import WorkspaceBusy

    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(BUSY_EXIT if isinstance(exc, WorkspaceBusy) else 2)


class _NoExpectedTraceback(logging.Formatter):
    """A terminal formatter that leaves out the traceback of an error a user can act on (a QuantflowError: a
    blocked batch, bad data, bad params, a busy workspace, a registry outage): the CLI prints its message once.

    The traceback stays in the flow run's log (Prefect's API handler) and in the failure summary."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, QuantflowError):
            return self.inner.format(record)
        saved = record.exc_info, record.exc_text
        record.exc_info, record.exc_text = None, None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text = saved


def _quiet_expected_tracebacks() -> None:
    """Wrap the terminal handlers' formatters (call after Prefect set up logging, i.e. after importing flows)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(
            handler.formatter, _NoExpectedTraceback
        ):
            handler.setFormatter(_NoExpectedTraceback(handler.formatter))


def _night(project: Path, params: Path, overrides: dict[str, Any]) -> None:
    """One nightly flow run (the caller holds the workspace lock); prints the summary."""
    from flows.nightly import BatchesBlocked, nightly_retrain, render_summary

    _quiet_expected_tracebacks()
    try:
        summary = nightly_retrain(root=str(project), params_file=str(params), overrides=overrides)
    except BatchesBlocked as exc:  # the summary first, then the failure (exit 2)
        print(render_summary(exc.summary))
        raise
    print(render_summary(summary))
    reg = summary.registered
    if reg is not None:
        print(f"\nMLflow: {reg.tracking_uri}  (run {reg.run_id})")
        print(f"Open the UI with `make ui` (or `quantflow ui`), then http://127.0.0.1:{MLFLOW_UI}")


@app.command()
def run(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    root: Annotated[Path, typer.Option(help="project folder (holds dvc.yaml)")] = Path("."),
) -> None:
    """Run the nightly flow once: ingest → … → compress, dvc commit + push, register in MLflow.

    Holds the project's workspace lock: a second run in the same folder stops at once (exit 3) naming the first."""
    _setup()
    from quantflow.core.params import load_params
    from quantflow.core.workspace import workspace_lock

    overrides, project = parse_overrides(set_), root.resolve()
    try:
        load_params(project / params, overrides)  # before the temporary Prefect API starts (seconds)
        with workspace_lock(project, "quantflow run"):
            _night(project, params, overrides)
    except QuantflowError as exc:
        _fail(exc)


@app.command()
def schedule(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    root: Annotated[Path, typer.Option(help="project folder (holds dvc.yaml)")] = Path("."),
    cron: Annotated[str | None, typer.Option(help="cron expression (default: schedule.cron)")] = None,
    timezone: Annotated[str | None, typer.Option(help="IANA time zone (default: schedule.timezone)")] = None,
    name: Annotated[str | None, typer.Option(help="deployment name (default: schedule.deployment)")] = None,
) -> None:
    """Serve the nightly flow on its cron schedule until Ctrl-C (a deployment in the Prefect UI)."""
    _setup()
    from flows.schedule import build_deployment, serve_nightly
    from quantflow.core.params import load_params

    overrides = parse_overrides(set_)
    for key, value in {
        "schedule.cron": cron,
        "schedule.timezone": timezone,
        "schedule.deployment": name,
    }.items():
        if value is not None:
            overrides[key] = value
    try:
        loaded = load_params(root / params, overrides)
    except QuantflowError as exc:
        _fail(exc)
    if not os.environ.get("PREFECT_API_URL"):
        typer.secho(
            "PREFECT_API_URL is not set: serving against a temporary local Prefect API that no UI shows. "
            "Run `prefect server start` and export PREFECT_API_URL=http://127.0.0.1:4200/api to see the "
            "deployment and its runs.",
            fg=typer.colors.YELLOW,
            err=True,
        )
    # every override travels with the runs too: their params digest and failure hook see what was served
    serve_nightly(build_deployment(loaded.schedule, root, str(params), overrides or None))


@app.command()
def stage(
    name: Annotated[
        str, typer.Argument(help="ingest, validate, split, preprocess, train, evaluate, compress")
    ],
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    workers: Annotated[
        int | None, typer.Option(help="train: DDP processes under torchrun (sets train.workers)")
    ] = None,
) -> None:
    """Run one step as dvc.yaml does (no Prefect): `dvc repro` calls this."""
    _setup()
    from quantflow.core.layout import Layout
    from quantflow.core.params import load_params
    from tasks.stages import run_stage

    overrides = parse_overrides(set_)
    if workers is not None:
        overrides["train.workers"] = workers
    try:
        loaded = load_params(params, overrides)
        run_stage(name, loaded, Layout.of(loaded, Path(".")))
    except QuantflowError as exc:
        _fail(exc)
    except ValueError as exc:
        if "unknown stage" not in str(exc):
            raise
        raise typer.BadParameter(str(exc), param_hint="NAME") from None


@app.command()
def scale(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    workers: Annotated[
        int | None, typer.Option(help="LocalCluster worker processes, 1 thread each (default: scale.workers)")
    ] = None,
    dask_address: Annotated[
        str | None, typer.Option(help="use this Dask scheduler instead of a LocalCluster: tcp://host:8786")
    ] = None,
    root: Annotated[Path, typer.Option(help="project folder")] = Path("."),
) -> None:
    """Scaling study: train, compress and score every size of scale.grid in parallel on Dask; MLflow + plots."""
    _setup()
    from flows.scale import run_scale

    try:
        result = run_scale(root, str(params), parse_overrides(set_), workers, dask_address)
    except QuantflowError as exc:
        _fail(exc)
    print("| size | params | accuracy fp32 | accuracy int8 | p50 ms fp32 | p50 ms int8 |")
    print("|---|---|---|---|---|---|")
    for r in sorted(result.rows, key=lambda row: row["params"]):
        print(
            f"| {r['size']} | {r['params']:,} | {r['accuracy_fp32']:.4f} | {r['accuracy_int8']:.4f} "
            f"| {r['latency_p50_ms_fp32']:.3f} | {r['latency_p50_ms_int8']:.3f} |"
        )
    print(f"\n{len(result.rows)} sizes on {result.workers} Dask worker(s) in {result.seconds:.1f} s")
    print(f"MLflow parent run {result.parent_run_id}; files: {', '.join(str(f) for f in result.files)}")


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="port (default: quantflow/core/ports.py MLFLOW_UI)")] = MLFLOW_UI,
    host: str = "127.0.0.1",
    root: Annotated[Path, typer.Option(help="project folder")] = Path("."),
) -> None:
    """Open the MLflow UI on the embedded store (sqlite:///mlflow.db, artifacts in mlartifacts/)."""
    _setup()
    project = root.resolve()
    from quantflow.core.layout import artifact_root, tracking_uri

    backend = tracking_uri(project)
    args = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        backend,
        "--artifacts-destination",
        str(artifact_root(project)),
    ]
    # no background job runner (it starts ~7 consumer processes) and no AI gateway: a UI over the store
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    os.environ.setdefault("MLFLOW_ENABLE_AI_GATEWAY", "false")
    print(f"MLflow UI on http://{host}:{port}  (store: {backend}); Ctrl-C stops it")
    os.execv(sys.executable, args)


ModelDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--model-dir", help="a local variant folder (model.onnx + model.json) instead of the registry"
    ),
]


@app.command()
def serve(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    model_dir: ModelDirOpt = None,
    host: Annotated[str | None, typer.Option(help="bind address (default: serve.host)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default: serve.port)")] = None,
    root: Annotated[Path, typer.Option(help="project folder (holds mlflow.db)")] = Path("."),
) -> None:
    """Serve the model behind serve.alias (default @staging) over REST: /predict, /explain, /model, /metrics."""
    _setup()
    from quantflow.core.params import load_params
    from serving.server import build_service, run

    try:
        loaded = load_params(params, parse_overrides(set_))
        service = build_service(loaded, root, model_dir)
    except (QuantflowError, FileNotFoundError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    run(service, host or loaded.serve.host, port or loaded.serve.port)


@app.command()
def predict(
    input_: Annotated[
        Path,
        typer.Option("--input", help="CSV, Parquet or JSONL with a text column; a Parquet folder on Dask"),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output", help="where to write the predictions (.csv/.parquet/.jsonl; a folder on Dask)"
        ),
    ],
    text_column: Annotated[str, typer.Option(help="the column holding the texts")] = "text",
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    model_dir: ModelDirOpt = None,
    root: Annotated[Path, typer.Option(help="project folder (holds mlflow.db)")] = Path("."),
    batch_size: Annotated[int, typer.Option(min=1, help="texts per ONNX Runtime call")] = 64,
    workers: Annotated[
        int | None, typer.Option(min=1, help="score a Parquet dataset on a LocalCluster of N processes")
    ] = None,
    dask_address: Annotated[
        str | None, typer.Option(help="score a Parquet dataset on this Dask scheduler: tcp://host:8786")
    ] = None,
) -> None:
    """Batch prediction with the served model (same resolution and inference code as `quantflow serve`)."""
    _setup()
    from quantflow.core.params import load_params
    from serving.server import load_model

    try:
        loaded = load_params(params, parse_overrides(set_))
        model = load_model(loaded, root, model_dir)
        if workers or dask_address:
            from serving.cluster import predict_on_cluster

            run = predict_on_cluster(
                model, input_, output, text_column, workers, dask_address, loaded.serve.threads
            )
            rows = f"{run.rows} predictions on {run.workers} Dask workers ({run.partitions} partitions)"
        else:
            from serving.scoring import predict_path

            rows = f"{predict_path(model, input_, output, text_column, batch_size)} predictions"
    except (QuantflowError, ValueError, FileNotFoundError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    print(f"{rows} by {model.name} v{model.version} ({model.variant}) -> {output}")


VersionOpt = Annotated[str, typer.Option("--version", help="model version number in the registry")]


RegistryRootOpt = Annotated[Path, typer.Option("--root", help="project folder (holds mlflow.db)")]


def _move_staging(params: Path, root: Path, version: str | None) -> None:
    """Move @staging (to ``version``, or back one step when None) and print the audit entry."""
    _setup()
    from quantflow.core.params import load_params
    from quantflow.registry.versions import manual_move

    try:
        entry = manual_move(load_params(params), root, version)
    except QuantflowError as exc:
        _fail(exc)
    print(f"@staging: v{entry['previous']} -> v{entry['version']} ({entry['reason']}, {entry['at']})")


@app.command()
def promote(
    version: VersionOpt, params: ParamsOpt = Path("params.yaml"), root: RegistryRootOpt = Path(".")
) -> None:
    """Move @staging to version N by hand (serialized, recorded in the staging history)."""
    _move_staging(params, root, version)


@app.command()
def rollback(params: ParamsOpt = Path("params.yaml"), root: RegistryRootOpt = Path(".")) -> None:
    """Move @staging back to the version that held it before the current one (from the staging history)."""
    _move_staging(params, root, None)


@app.command()
def reproduce(
    version: VersionOpt,
    params: ParamsOpt = Path("params.yaml"),
    root: Annotated[Path, typer.Option(help="the git + DVC project folder")] = Path("."),
    keep: Annotated[bool, typer.Option(help="keep the temporary worktree")] = False,
) -> None:
    """Rebuild version N from its recorded commit and data (git worktree, dvc pull, dvc repro); compare."""
    _setup()
    from flows.reproduce import reproduce as rebuild
    from quantflow.core.params import load_params
    from quantflow.core.workspace import workspace_lock

    try:
        loaded = load_params(params)
        with workspace_lock(root.resolve(), f"quantflow reproduce --version {version}"):
            result = rebuild(loaded, root.resolve(), version, keep)
    except QuantflowError as exc:
        _fail(exc)
    print(result.render())
    if not result.passed:
        raise typer.Exit(1)


@app.command("simulate-nights")
def simulate_nights(
    nights: Annotated[int, typer.Option(min=1, help="nights to run")] = 3,
    bad_night: Annotated[int, typer.Option(help="the night whose batch is made bad (0: none)")] = 2,
    batch_rows_per_class: Annotated[int, typer.Option(min=1, help="rows per class in each batch")] = 150,
    rows_per_class: Annotated[int, typer.Option(min=1, help="base rows per class (ingest cap)")] = 1000,
    holdout: Annotated[float, typer.Option(help="share of the corpus held back for the batches")] = 0.1,
    workdir: Annotated[Path, typer.Option(help="the sandbox project (re-created)")] = Path("simulation"),
    traffic: Annotated[
        int,
        typer.Option(
            min=0, help="texts sent through the sandbox's service before each night after the first"
        ),
    ] = 0,
    shift_night: Annotated[
        int, typer.Option(help="the night whose traffic comes from another corpus (0: none)")
    ] = 0,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Release held-back built-in rows as nightly batches (one bad) and run the nightly flow per night; with
    --traffic, serve the night's model and send it texts between nights (prediction log, live drift)."""
    _setup()
    from flows.simulate import Traffic, render_table, simulate

    _quiet_expected_tracebacks()
    try:
        rows = simulate(
            params.resolve().parent,
            workdir,
            nights,
            batch_rows_per_class,
            rows_per_class,
            bad_night,
            holdout,
            parse_overrides(set_),
            Traffic(traffic, shift_night),
        )
    except QuantflowError as exc:
        _fail(exc)
    print(render_table(rows))
    print(f"\nsandbox: {workdir}  (git log, dvc.lock per night; `quantflow ui --root {workdir}`)")


if __name__ == "__main__":
    app()
