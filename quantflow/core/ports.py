"""The default port of every server the README starts: written here once, no two alike, so they can run side
by side on one machine (tests/unit/test_ports.py checks the README, the Makefile and the CLI against them).

| server | port | started by |
|---|---|---|
| MLflow UI and tracking server | :data:`MLFLOW_UI` | ``make ui`` / ``quantflow ui`` (embedded store); the ``mlflow server`` of infra/ |
| MLflow's model server | :data:`MLFLOW_MODELS` | ``mlflow models serve ... -p 5001`` (MLflow's own default is 5000) |
| Prefect server and UI | :data:`PREFECT` | ``prefect server start`` |
| the quantflow REST service | params.yaml ``serve.port`` (8000) | ``quantflow serve`` (a knob of the service) |
| MinIO (S3 API) | :data:`MINIO` | infra/docker-compose.yml |

The infra stack's MLflow server takes :data:`MLFLOW_UI` too: it is the same role (the tracking UI), used instead
of ``make ui`` once tracking moves to a server.
"""

from __future__ import annotations

MLFLOW_UI = 5000
MLFLOW_MODELS = 5001
PREFECT = 4200
MINIO = 9000
