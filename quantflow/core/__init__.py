"""The core: params, layout, text cleaning + tokenizer + vocabulary, corpora, splits and features on disk, GX
suites and reports, models, the training pieces (single process and DDP), ONNX export, variants and inference,
measurement, maths.

Imported by every room above it (the steps, the nightly intake, the registry, the flows, the service and the
CLI); it imports none of them, and neither Prefect nor MLflow.
"""
