"""nml's log handler: ``[nml LEVEL] message`` lines on stderr (stdout is for JSON results)."""

from __future__ import annotations

import logging
import sys


class _Stderr(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is when a record is emitted (not the stream of
    the moment it was made: an in-process caller may swap and close its stderr)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(level: int = logging.INFO) -> None:
    """Install the handler on the root logger once (idempotent) and set the level."""
    root = logging.getLogger()
    if not any(getattr(h, "_nml", False) for h in root.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("[nml %(levelname)s] %(message)s"))
        handler._nml = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    # Lightning's package logger prints through its own handler ("INFO: ..."): stop it there
    # instead of also through ours (every Lightning line twice)
    logging.getLogger("lightning").propagate = False
