"""Exceptions whose message is shown to users as one line.

Every problem a user can cause (a bad file, a malformed CSV, a wrong config value) raises a
subclass of :class:`AscaError`. The CLI and the app print ``str(error)`` and nothing else, so
messages name the offending file or value and say what is wrong with it.
"""

from __future__ import annotations


class AscaError(Exception):
    """Base class of every user-facing error in ASCA Workbench."""


class AudioError(AscaError):
    """A file could not be decoded into usable audio."""


class DatasetError(AscaError):
    """A dataset folder, manifest or split is unusable."""


class ConfigError(AscaError):
    """A configuration value, key or preset is invalid."""


class CheckpointError(AscaError):
    """A run directory or checkpoint is missing, incomplete or incompatible."""


class ModelError(AscaError):
    """A model name, layout or input shape is invalid."""
