"""The exception tree. Every error phonefair raises on purpose is a :class:`PhonefairError`; its ``exit_code`` is
what the ``phonefair`` command exits with, so the CLI maps errors by type, never by message.

* :class:`ConfigError` (2): a setting is missing, unknown or of the wrong type or range;
* :class:`DataError` (3): the data cannot be analysed as asked (corrupt corpus, too few speakers, no tokens);
* :class:`EncoderError` (1): a model could not be loaded or run;
* :class:`RunError` (1): a stage failed for another reason.

Each also derives from the built-in type callers would naturally catch (``ValueError`` for bad settings and data,
``RuntimeError`` for failures), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = ["PhonefairError", "ConfigError", "DataError", "EncoderError", "RunError", "EXIT_OK", "EXIT_RUN",
           "EXIT_USAGE", "EXIT_DATA", "exit_code"]

EXIT_OK, EXIT_RUN, EXIT_USAGE, EXIT_DATA = 0, 1, 2, 3


class PhonefairError(Exception):
    """Base of every error phonefair raises on purpose."""

    exit_code: int = EXIT_RUN


class ConfigError(PhonefairError, ValueError):
    """A setting is missing, unknown, or of the wrong type or range. The message names the file and key path."""

    exit_code = EXIT_USAGE


class DataError(PhonefairError, ValueError):
    """The data cannot be analysed as asked. The message names the file, speaker, group or field."""

    exit_code = EXIT_DATA


class EncoderError(PhonefairError, RuntimeError):
    """A model could not be loaded or run. The message says what was tried and how to fix it."""

    exit_code = EXIT_RUN


class RunError(PhonefairError, RuntimeError):
    """A stage failed for a reason that is neither a setting nor the data."""

    exit_code = EXIT_RUN


def exit_code(exc: BaseException) -> int:
    """The CLI exit code for ``exc`` (1 for anything that is not a :class:`PhonefairError`)."""
    return exc.exit_code if isinstance(exc, PhonefairError) else EXIT_RUN
