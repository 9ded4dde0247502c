"""quantflow's own log lines in the Prefect flow run's logs (the UI's Logs tab, the API's ``/logs/filter``).

Prefect sends to its API what its own loggers and the run logger write, plus the loggers named in
``PREFECT_LOGGING_EXTRA_LOGGERS``: the steps' ``logging.getLogger(__name__)`` lines (rows, epochs, variants,
the gate) reach a flow run only through that. :data:`PREFECT_ENV` is set where the project's processes start:
the CLI before it imports Prefect (``quantflow run``, ``quantflow schedule``, whose served runs inherit it),
the deployment's ``job_variables`` (infra/prefect.yaml, flows/schedule.py) for a worker's runs. Lines written
outside a flow run (``quantflow stage`` under DVC) stay on the terminal without a warning.

:func:`send_step_logs` runs when a flow starts: it does the same for a process started some other way, and lets
the step loggers' INFO lines through where nothing configured logging (a served run's process starts at
WARNING). Prefect's API handler only sends; the terminal keeps printing each line once, from the root logger.
"""

from __future__ import annotations

import logging

STEP_LOGGERS = ("quantflow", "tasks", "flows")
PREFECT_ENV = {
    "PREFECT_LOGGING_EXTRA_LOGGERS": ",".join(STEP_LOGGERS),
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
}


def send_step_logs() -> None:
    """Give each step logger Prefect's API handler (once) and an INFO level when it would drop INFO lines."""
    from prefect.logging.handlers import APILogHandler

    for name in STEP_LOGGERS:
        log = logging.getLogger(name)
        if log.getEffectiveLevel() > logging.INFO:
            log.setLevel(logging.INFO)
        if not any(isinstance(handler, APILogHandler) for handler in log.handlers):
            log.addHandler(APILogHandler())
