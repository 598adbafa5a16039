"""Keep diffusers' and transformers' own output off the user's terminal while diffaudit loads or
encodes, without losing what matters: a weight the checkpoint lacks becomes a ModelError.

Library code never prints (docs/contracts.md); the CLI prints one line per error. diffusers and
transformers log to their own stderr handlers and draw progress bars ("Loading pipeline
components", "Loading weights"); `quiet_libraries()` silences both for the duration of a block
and hands back the log records, which `missing_weights` scans for transformers' report of
newly initialized (missing) parameters.
"""
from __future__ import annotations

import contextlib
import logging
import warnings

_LIBRARIES = ("diffusers", "transformers")


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


def _progress_bars(lib: str):
    """(is_enabled, enable, disable) of a library's progress bars, or None. Also makes the
    library install its own log handler now, so that it cannot add one inside the block."""
    try:
        mod = __import__(f"{lib}.utils.logging", fromlist=["logging"])
    except ImportError:
        return None
    mod.get_logger(lib)
    fns = [getattr(mod, n, None) for n in ("is_progress_bar_enabled", "enable_progress_bar", "disable_progress_bar")]
    return fns if all(fns) else None


@contextlib.contextmanager
def quiet_libraries():
    """Silence diffusers/transformers logging, progress bars and Python warnings; yield the
    list the log records (WARNING and above) are collected into."""
    handler = _Collect()
    bars = [(b, b[0]()) for b in map(_progress_bars, _LIBRARIES) if b is not None]
    saved = []
    for lib in _LIBRARIES:
        logger = logging.getLogger(lib)
        saved.append((logger, logger.handlers[:], logger.level, logger.propagate))
        logger.handlers = [handler]
        logger.propagate = False
        logger.setLevel(logging.WARNING)
    for b, _ in bars:
        b[2]()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield handler.records
    finally:
        for logger, handlers, level, propagate in saved:
            logger.handlers, logger.level, logger.propagate = handlers, level, propagate
        for b, was_on in bars:
            if was_on:
                b[1]()


def missing_weights(records) -> str | None:
    """The first line of a report of parameters left at their random initialization, if any.

    transformers (4.x and 5.x) reports them as "newly initialized"; diffusers raises instead.
    """
    for r in records:
        msg = r.getMessage()
        if "newly initialized" in msg or "MISSING" in msg:
            lines = [ln.strip() for ln in msg.splitlines() if "MISSING" in ln or "newly initialized" in ln]
            return (lines[0] if lines else msg.splitlines()[0])[:200]
    return None
