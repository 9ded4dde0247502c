"""quantflow: retrain, compress and ship a text classifier every night.

Rooms, imports pointing down only: ``quantflow.cli`` (the command) → ``flows`` → ``tasks`` (the steps) →
``quantflow.intake`` (nightly batches, data versions) and ``quantflow.registry`` (MLflow) → ``quantflow.core``;
``serving`` → ``quantflow.core``. This package's ``__init__`` imports nothing.
"""

__version__ = "0.1.0"
