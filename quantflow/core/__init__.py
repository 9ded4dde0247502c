"""The core: params, layout, text cleaning + tokenizer + vocabulary, tables, models, ONNX inference, maths.

Imported by every room above it (the steps, the nightly intake, the registry, the flows, the service and the
CLI); it imports none of them, and neither Prefect nor MLflow.
"""
