"""Errors the command line reports as one line.

`BadInputError` is anything the user can fix by changing an argument, a file or a key (exit code 2);
other `HgadError`s are failures of the work itself (exit code 1).
"""

from __future__ import annotations


class HgadError(Exception):
    """A failure with a message fit to show a line engineer as is."""


class BadInputError(HgadError):
    """Bad input: a path, file, key or value. The message names it and says what would be valid."""


class ModelFormatError(BadInputError):
    """A model directory that is not ours, is truncated, or has another format version."""


class DataError(BadInputError):
    """A dataset or image that cannot be used as given."""


class TrainingDivergedError(HgadError):
    """A loss became NaN or infinite; training stops rather than save a broken model."""
