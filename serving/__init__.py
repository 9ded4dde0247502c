"""quantflow serving: the REST service (FastAPI + ONNX Runtime) of the model behind an MLflow alias.

No MLflow, torch or Prefect in its process, and no child process: the registry is read over the tracking
server's REST API or from the sqlite store directly (serving/stores.py, serving/registry.py).
"""
