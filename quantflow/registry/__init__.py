"""The registry room (MLflow), one job per module; imports the core only.

tracking.py (URI, client, experiment), candidate.py (what a registration reads), gate.py (checks, champion
test, verdict, tags), card.py (model card), model_code.py (what a registered model carries) and pyfunc.py (its
models-from-code file), runlog.py (the run), versions.py (pending version, aliases, manual moves),
registration.py (the order of it all) and promotion.py (lock, compare-and-set, history, repair, retries).
"""
