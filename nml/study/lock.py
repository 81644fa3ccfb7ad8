"""One ``nml study`` at a time per study directory: an advisory lock (``fcntl.flock``) on
``OUT/.lock``, which names its holder (pid, host, start time). The kernel drops it when the holder
exits, however it exits, so a killed study never leaves a stale lock behind."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

LOCK = ".lock"


class StudyLocked(RuntimeError):
    """Another process runs a study in this directory."""


@contextmanager
def study_lock(out: Path):
    """Hold the study directory's lock for the body; StudyLocked naming the holder otherwise."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK
    fh = open(path, "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            try:
                holder = json.loads(fh.read() or "{}")
            except ValueError:
                holder = {}
            who = ", ".join(f"{k} {v}" for k, v in holder.items()) or "another process"
            raise StudyLocked(
                f"the study directory {str(out)!r} is in use ({who}): wait for that study to finish, or give "
                "another --out"
            ) from None
        fh.seek(0)
        fh.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": started}) + "\n")
        fh.flush()
        yield
    finally:
        fh.close()  # releases the lock
