"""quantflow serving: the MLflow pyfunc wrapper (``quantflow.registry.pyfunc``) around the ONNX classifier.

Nothing here imports torch, Prefect or a training step: a model logged with this package as code runs anywhere
ONNX Runtime and spaCy do.
"""
