"""quantflow core: params, text cleaning and tokenizer, vocabulary, models, ONNX inference.

The core imports no Prefect, no MLflow and no step or flow: steps (``tasks/``), flows (``flows/``) and the
service (``serving/``) import it, never the other way round.
"""

__version__ = "0.1.0"
