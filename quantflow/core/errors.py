"""Errors a user can act on: each message names the file, row or field at fault and how to fix it."""


class QuantflowError(Exception):
    """Base class: the CLI prints these as one clear message, without a traceback."""


class DataError(QuantflowError):
    """Input data is unreadable, empty, or misses a column: raised before anything is written."""


class ValidationFailed(QuantflowError):
    """A Great Expectations suite failed; ``report`` holds each failed expectation and example rows."""

    def __init__(self, message: str, report: dict) -> None:
        super().__init__(message)
        self.report = report
