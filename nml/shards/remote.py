"""Opening a shard (or an index file beside it) wherever it lives.

- local paths and ``file:`` URLs;
- ``http://`` / ``https://`` (the standard library): a connection that drops mid-file is reopened at
  the byte it stopped at (a ``Range`` request; a server that ignores it is read past that byte);
- ``pipe:COMMAND`` (as open_clip users write them, e.g. ``pipe:aws s3 cp s3://b/x.tar -``): the
  command's stdout; a command that exits non-zero is an error naming it and its stderr;
- any other scheme through fsspec (``s3://``, ``gs://``: ``pip install 'noisy-model-learning[cloud]'``).

A failed read is retried ``NML_SHARD_RETRIES`` times (default 3), waiting ``NML_SHARD_BACKOFF``
seconds (default 1) doubled after each try; each request times out after ``NML_SHARD_TIMEOUT``
seconds (default 60). What is certainly not there (HTTP 4xx, a missing key or bucket) is not retried.
After the last try, :class:`ShardReadError` names the URL; the pipeline then skips and counts the
shard's samples, or stops (``strict``).
"""

from __future__ import annotations

import http.client
import io
import logging
import os
import shlex
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from functools import lru_cache
from typing import BinaryIO

log = logging.getLogger(__name__)

_BUFFER = 1 << 20
_RETRY_HTTP = {408, 425, 429, 500, 502, 503, 504}


class ShardReadError(OSError):
    """A shard or index file that could not be read, after the retries, naming its URL."""


def _settings() -> tuple[int, float, float]:
    """(retries, first backoff s, request timeout s), read when a file is opened (workers inherit
    the environment)."""
    try:
        return (
            int(os.environ.get("NML_SHARD_RETRIES", 3)),
            float(os.environ.get("NML_SHARD_BACKOFF", 1.0)),
            float(os.environ.get("NML_SHARD_TIMEOUT", 60.0)),
        )
    except ValueError as e:
        raise ValueError(
            f"NML_SHARD_RETRIES / NML_SHARD_BACKOFF / NML_SHARD_TIMEOUT: expected numbers ({e})"
        ) from e


def scheme(url: str) -> str:
    """``http``, ``pipe``, ``s3``, ... or ``""`` for a local path (``file:`` included)."""
    head, sep, _ = url.partition(":")
    if not sep or len(head) < 2 or not head.replace("+", "").replace("-", "").replace(".", "").isalnum():
        return ""  # a plain path (a one-letter "scheme" is a Windows drive)
    return "" if head == "file" else head.lower()


# -- byte streams that resume where they broke off ---------------------------------------------------
class _Resuming(io.RawIOBase):
    """A read-only stream over ``open_at(offset)`` that reopens at the current offset when a read
    fails, up to ``retries`` times in a row."""

    def __init__(self, url: str, open_at: Callable[[int], BinaryIO]):
        super().__init__()
        self.url, self.open_at = url, open_at
        self.retries, self.backoff, _ = _settings()
        self.pos, self._f = 0, None
        self._f = self._retry(lambda: open_at(0), "open")

    def readable(self) -> bool:
        return True

    def _retry(self, attempt: Callable, what: str):
        for i in range(self.retries + 1):
            try:
                return attempt()
            except _Missing as e:
                raise FileNotFoundError(f"{self.url}: {e}") from e
            except _Refused as e:
                raise ShardReadError(f"{self.url}: {e}") from e
            except (OSError, http.client.HTTPException) as e:
                if i == self.retries:
                    raise ShardReadError(
                        f"{self.url}: {what} failed after {self.retries + 1} tries at byte {self.pos} "
                        f"({type(e).__name__}: {e})"
                    ) from e
                wait = self.backoff * 2**i
                log.warning(
                    "%s: %s failed at byte %d (%s: %s); retry %d of %d in %.2g s",
                    self.url,
                    what,
                    self.pos,
                    type(e).__name__,
                    e,
                    i + 1,
                    self.retries,
                    wait,
                )
                time.sleep(wait)
                self._close_inner()  # the next try reopens at self.pos

    def readinto(self, b) -> int:
        def attempt():
            if self._f is None:  # after a failure: reopen where it broke off
                self._f = self.open_at(self.pos)
            return self._f.readinto(b)

        n = self._retry(attempt, "read")
        self.pos += n
        return n

    def _close_inner(self):
        f, self._f = self._f, None
        if f is not None:
            try:
                f.close()
            except (OSError, http.client.HTTPException):
                pass

    def close(self):
        self._close_inner()
        super().close()


def _http_open_at(url: str, timeout: float) -> Callable[[int], BinaryIO]:
    def open_at(offset: int) -> BinaryIO:
        req = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
        try:
            resp = urllib.request.urlopen(req, timeout=timeout)
        except urllib.error.HTTPError as e:
            if e.code in _RETRY_HTTP:
                raise OSError(f"HTTP {e.code} {e.reason}") from e
            raise (_Missing if e.code in (404, 410) else _Refused)(f"HTTP {e.code} {e.reason}") from e
        if offset and resp.status != 206:  # the server ignored the Range: read up to the offset
            skipped = 0
            while skipped < offset:
                chunk = resp.read(min(_BUFFER, offset - skipped))
                if not chunk:
                    raise OSError(f"the reopened response ended at byte {skipped}, before {offset}")
                skipped += len(chunk)
        return _Whole(resp)

    return open_at


class _Whole:
    """An HTTP response whose early end (fewer bytes than its Content-Length: the connection
    dropped) raises instead of reading as the end of the file, as http.client's readinto does."""

    def __init__(self, resp: http.client.HTTPResponse):
        self.resp = resp

    def readinto(self, b) -> int:
        expected = self.resp.length  # bytes still due, None without a Content-Length
        n = self.resp.readinto(b)
        if n == 0 and len(b) and expected:
            raise http.client.IncompleteRead(b"", expected)
        return n

    def close(self):
        self.resp.close()


class _Missing(Exception):
    """Not there (HTTP 404, a missing key or bucket): not retried, raised as FileNotFoundError."""


class _Refused(Exception):
    """Refused for good (HTTP 401/403, access denied): not retried."""


def _fsspec_open_at(url: str) -> Callable[[int], BinaryIO]:
    try:
        import fsspec
    except ImportError as e:  # pragma: no cover - fsspec comes with lightning
        raise ValueError(
            f"{url}: reading {scheme(url)}:// shards needs fsspec: pip install 'noisy-model-learning[cloud]'"
        ) from e
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:
        raise ValueError(
            f"{url}: no filesystem for {scheme(url)}:// ({e}); pip install 'noisy-model-learning[cloud]'"
        ) from e

    def open_at(offset: int) -> BinaryIO:
        try:
            f = fs.open(path, "rb")
        except FileNotFoundError as e:
            raise _Missing(f"not found ({e})") from e
        except PermissionError as e:
            raise _Refused(f"access denied ({e})") from e
        if offset:
            f.seek(offset)
        return f

    return open_at


class _Pipe(io.RawIOBase):
    """stdout of a shell command; EOF with a non-zero exit status raises, naming the command."""

    def __init__(self, url: str, command: str):
        super().__init__()
        self.url, self.command = url, command
        self._err = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE, stderr=self._err)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self._proc.stdout.readinto(b)
        if n == 0:
            rc = self._proc.wait()
            if rc != 0:
                self._err.seek(0)
                tail = self._err.read()[-500:].decode(errors="replace").strip()
                raise ShardReadError(
                    f"{self.url}: the command exited with status {rc}" + (f": {tail}" if tail else "")
                )
        return n

    def close(self):
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.stdout.close()
        self._proc.wait()
        self._err.close()
        super().close()


def open_shard(url: str) -> BinaryIO:
    """A buffered binary stream of ``url`` (see the module docstring for what is supported)."""
    kind = scheme(url)
    if kind == "":
        return open(url[5:] if url.startswith("file:") else url, "rb")
    if kind == "pipe":
        return io.BufferedReader(_Pipe(url, url[5:]), _BUFFER)
    if kind in ("http", "https"):
        open_at = _http_open_at(url, _settings()[2])
    else:
        open_at = _fsspec_open_at(url)
    return io.BufferedReader(_Resuming(url, open_at), _BUFFER)


@lru_cache(maxsize=256)
def read_index_file(url: str) -> bytes | None:
    """The bytes of an index file (``sizes.json``, ``_info.json``), or None if there is none there;
    read once per process (the shard sizes and the class list both come from ``_info.json``)."""
    try:
        with open_shard(url) as f:
            return f.read()
    except FileNotFoundError:
        return None


def index_directory(url: str) -> tuple[str, str]:
    """(directory, basename) of a shard URL: where its ``sizes.json`` / ``_info.json`` live. For a
    ``pipe:`` command, the last argument that names a ``.tar`` (``pipe:curl -s URL``)."""
    if scheme(url) == "pipe":
        tars = [t for t in shlex.split(url[5:]) if ".tar" in t]
        if not tars:
            return "", ""
        url = tars[-1]
    directory, _, name = url.rpartition("/")
    return (directory or "."), name
