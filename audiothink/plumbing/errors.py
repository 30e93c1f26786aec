"""The user-error types: what the entry points report as one line and exit code 2, without a traceback.

Each says what is wrong and where (config key; file, row and field; audio path and row id). Everything else
is a bug, and keeps its traceback. This module imports nothing from the package, so any module may raise
these without an import circle.
"""

from __future__ import annotations

__all__ = ["ConfigError", "DataError", "AudioError", "USER_ERRORS"]


class ConfigError(ValueError):
    """A configuration that cannot work, reported before anything expensive starts."""


class DataError(ValueError):
    """A metadata file or row that does not match the schema."""


class AudioError(ValueError):
    """A file that cannot be used as audio; the message names the file (and row id)."""


# What `python -m audiothink.train` / `.evaluate` print as `error: <message>` and exit 2.
USER_ERRORS = (ConfigError, DataError, AudioError)
