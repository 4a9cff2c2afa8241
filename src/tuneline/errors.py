"""Typed errors. The CLI turns each into a one-screen message and a non-zero exit code."""


class TunelineError(Exception):
    """Base class of every error tuneline raises on purpose (bad config, bad data, failed gate)."""

    exit_code = 2


class ConfigError(TunelineError):
    """params.yaml or a --set override is invalid; the message lists every problem at once."""


class InputFileError(TunelineError):
    """A whole input file cannot be used (missing, unreadable, unknown format); names the file."""


class DataValidationError(TunelineError):
    """A data contract (Great Expectations suite) failed a critical expectation."""

    exit_code = 3


class OutputPathError(TunelineError):
    """An output path tuneline must not write: outside the workspace, holding inputs, or someone else's."""
