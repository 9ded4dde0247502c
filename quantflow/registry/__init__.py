"""The registry room: tracking set-up, the promotion gate, the model card, the MLflow pyfunc wrapper, and
the promotion lock, compare-and-set and history of the ``staging`` alias. Imports the core only.
"""
