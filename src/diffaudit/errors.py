"""Errors written for the user. Library code raises these; only the CLI prints them."""


class DiffauditError(Exception):
    """Base class: the message is meant to be shown to a user as one line."""


class InputError(DiffauditError, ValueError):
    """Bad arguments or tensors handed to a library function (wrong shape, NaN, out of range)."""


class DataError(DiffauditError):
    """An image, array or split file that cannot be used (names the file and the problem)."""


class ModelError(DiffauditError):
    """A model folder or checkpoint that cannot be loaded or used."""


class ConfigError(DiffauditError):
    """A configuration with unknown keys or invalid values."""


class NonFiniteError(DiffauditError):
    """A model or decoder produced NaN/Inf (names the samples)."""


class MissingExtraError(DiffauditError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""
