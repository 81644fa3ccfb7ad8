"""A black-box text encoder behind an OpenAI-compatible ``/v1/embeddings`` endpoint.

``EmbeddingAPI(base_url, model)`` turns texts into float32 vectors by POSTing batches of them to
``{base_url}/embeddings`` (``{"model": ..., "input": [...]}``; the answer's ``data[i].embedding``,
ordered by ``data[i].index``), which is what NMTune needs from a model it cannot open.

* **The key** is read from the environment variable ``api_key_env`` (default ``NML_EMBEDDING_API_KEY``)
  when a request is made; it is never an argument, never stored on the object's public state, never
  in its ``repr``, in :meth:`describe` (what exports and ``hparams.yaml`` record) or in an error.
* **Batching:** ``batch_size`` texts per request; texts longer than ``max_chars`` are truncated and
  counted (:attr:`truncated`).
* **Retries:** HTTP 429 and 5xx and every transport error (a refused or dropped connection, a body
  cut short, a garbled status line, a timeout) are retried ``max_retries`` times, waiting
  ``Retry-After`` seconds when the server sends it, else ``backoff`` doubling each try (capped at
  ``max_backoff``); the last failure is raised naming the URL. 4xx other than 429 (a wrong key: 401)
  fail at once, naming the status.
* **Deadline:** ``timeout`` bounds each request as a whole, from connecting to the answer's last
  byte (a server that trickles its answer is cut off and retried), not only each socket read.
* **Caps:** ``max_requests`` requests and ``max_tokens`` tokens (the answers' ``usage.total_tokens``,
  else characters / 4) per object; reaching one stops with an error naming it, before the request.
* **The cache:** every vector is stored in a SQLite file under ``cache_dir``
  (:class:`~nml.models.embedding_cache.VectorCache`), keyed by (URL, model, dimension, the text's
  sha256), so a second run asks only for texts it has not seen. A batch is cached only once its whole
  answer was checked (its ``index`` values a permutation of 0..n-1, one vector per text, of one
  dimension, finite); a failed batch leaves nothing behind.
* **Bad answers** (HTML or other non-JSON, too few or too many vectors, repeated or missing indices,
  vectors of another dimension than earlier ones or than ``dim``) raise :class:`EmbeddingAPIError`
  naming the URL and the cause.

Stdlib only (``urllib``, ``sqlite3``); the tests run it against stub servers on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import math
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from email.utils import parsedate_to_datetime
from pathlib import Path

import numpy as np

from nml.models.embedding_cache import CacheFileError, VectorCache

log = logging.getLogger(__name__)

DEFAULT_KEY_ENV = "NML_EMBEDDING_API_KEY"
RETRIED = (429, 500, 502, 503, 504)


class EmbeddingAPIError(RuntimeError):
    """A request or an answer the encoder cannot use (the message names the URL and the cause)."""


class _Deadline:
    """One request's overall deadline: when it passes, the connection's socket is shut down, so that
    a read blocked on a server that trickles bytes returns at once (per-read timeouts never fire
    against a byte a second)."""

    def __init__(self, seconds: float) -> None:
        self.sock: socket.socket | None = None
        self.expired = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def _expire(self) -> None:
        self.expired = True
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def opener(self) -> urllib.request.OpenerDirector:
        """An opener (proxies and HTTPS as urllib's own) whose connections report their socket here."""
        deadline = self

        class Connection(http.client.HTTPConnection):
            def connect(self):
                super().connect()
                deadline.sock = self.sock

        class SecureConnection(http.client.HTTPSConnection):
            def connect(self):
                super().connect()
                deadline.sock = self.sock

        class Handler(urllib.request.HTTPHandler):
            def http_open(self, req):
                return self.do_open(Connection, req)

        class SecureHandler(urllib.request.HTTPSHandler):
            def https_open(self, req):
                return self.do_open(SecureConnection, req, context=self._context)

        return urllib.request.build_opener(Handler, SecureHandler)

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()


class EmbeddingAPI:
    """Texts -> float32 vectors through an OpenAI-compatible embeddings endpoint (module docstring).

    Args:
        base_url: The API's base, e.g. ``https://api.example.com/v1`` (``/embeddings`` is appended).
        model: The embedding model's name, sent with every request and part of the cache key.
        api_key_env: The environment variable holding the key (none set: no Authorization header).
        dim: The expected dimension (default: whatever the first answer has, then fixed).
        batch_size: Texts per request.
        max_chars: Longer texts are cut to this many characters (counted in :attr:`truncated`).
        max_retries / backoff / max_backoff: Retries of 429, 5xx, dropped connections and timeouts.
        timeout: Seconds per request, from connecting to the answer's last byte.
        max_requests / max_tokens: Caps for this object's lifetime (None: no cap).
        cache_dir: Directory of the vector cache (None: no cache).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = DEFAULT_KEY_ENV,
        dim: int | None = None,
        batch_size: int = 64,
        max_chars: int = 8000,
        max_retries: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        timeout: float = 60.0,
        max_requests: int | None = None,
        max_tokens: int | None = None,
        cache_dir: str | None = None,
    ):
        if batch_size < 1 or max_chars < 1 or max_retries < 0:
            raise ValueError(
                f"EmbeddingAPI: batch_size and max_chars must be >= 1 and max_retries >= 0, got "
                f"{batch_size}, {max_chars}, {max_retries}"
            )
        self.url = base_url.rstrip("/") + "/embeddings"
        self.model, self.api_key_env, self.dim = model, api_key_env, dim
        self.batch_size, self.max_chars = batch_size, max_chars
        self.max_retries, self.backoff, self.max_backoff, self.timeout = (
            max_retries,
            backoff,
            max_backoff,
            timeout,
        )
        self.max_requests, self.max_tokens = max_requests, max_tokens
        self.requests = self.tokens = self.truncated = self.cached_hits = 0
        self._cache = None
        if cache_dir is not None:
            try:
                self._cache = VectorCache(Path(cache_dir) / "embeddings.sqlite", self.url, model)
            except CacheFileError as e:
                raise EmbeddingAPIError(str(e)) from None

    def __repr__(self) -> str:  # no key: it is read from the environment at request time only
        return f"EmbeddingAPI(url={self.url!r}, model={self.model!r}, key from ${self.api_key_env})"

    def describe(self) -> dict:
        """What an export or ``hparams.yaml`` records about this encoder (never the key)."""
        return {
            "library": "embedding_api",
            "url": self.url,
            "model": self.model,
            "api_key_env": self.api_key_env,
            "dim": self.dim,
            "max_chars": self.max_chars,
        }

    # -- the cache -----------------------------------------------------------------------------
    def _key(self, text: str) -> str:
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def _cached(self, keys: list[str]) -> dict[str, np.ndarray]:
        if self._cache is None or not keys:
            return {}
        try:
            return self._cache.get(keys, self.dim)
        except CacheFileError as e:
            raise EmbeddingAPIError(str(e)) from None

    def _store(self, keys: list[str], vectors: np.ndarray) -> None:
        if self._cache is not None:
            try:
                self._cache.put(keys, vectors)
            except CacheFileError as e:
                raise EmbeddingAPIError(str(e)) from None

    # -- requests ------------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _check_caps(self, texts: Sequence[str]) -> None:
        if self.max_requests is not None and self.requests >= self.max_requests:
            raise EmbeddingAPIError(
                f"{self.url}: the request cap max_requests={self.max_requests} is reached; raise it to embed more"
            )
        estimate = sum(len(t) for t in texts) // 4
        if self.max_tokens is not None and self.tokens + estimate > self.max_tokens:
            raise EmbeddingAPIError(
                f"{self.url}: the token cap max_tokens={self.max_tokens} would be passed "
                f"({self.tokens} used, ~{estimate} in the next batch); raise it to embed more"
            )

    def _wait(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(float(retry_after), self.max_backoff)
            except ValueError:
                try:
                    return min(
                        max(0.0, parsedate_to_datetime(retry_after).timestamp() - time.time()),
                        self.max_backoff,
                    )
                except (TypeError, ValueError):
                    pass
        return min(self.backoff * 2**attempt, self.max_backoff)

    def _post(self, texts: list[str]) -> dict:
        body = json.dumps({"model": self.model, "input": texts}).encode()
        for attempt in range(self.max_retries + 1):
            self._check_caps(texts)
            self.requests += 1
            request = urllib.request.Request(self.url, data=body, headers=self._headers(), method="POST")
            deadline = _Deadline(self.timeout)
            try:
                with deadline, deadline.opener().open(request, timeout=self.timeout) as response:
                    raw = response.read()
                    kind = response.headers.get("Content-Type", "")
                if deadline.expired:  # the socket was shut down under a read that then "ended"
                    raise TimeoutError(f"no complete answer within timeout={self.timeout:g} s")
                break
            except urllib.error.HTTPError as e:
                if e.code not in RETRIED or attempt == self.max_retries:
                    hint = " (check the key in $" + self.api_key_env + ")" if e.code in (401, 403) else ""
                    raise EmbeddingAPIError(f"{self.url}: HTTP {e.code} {e.reason}{hint}") from None
                wait = self._wait(attempt, e.headers.get("Retry-After"))
                log.warning(
                    "%s: HTTP %d, retry %d/%d in %.1f s",
                    self.url,
                    e.code,
                    attempt + 1,
                    self.max_retries,
                    wait,
                )
            except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
                # refused, reset or dropped connections, bodies cut short (IncompleteRead), garbled
                # status lines (BadStatusLine), timeouts and the deadline: all retried
                reason = getattr(e, "reason", None) or f"{type(e).__name__}: {e}"
                if deadline.expired:
                    reason = f"no complete answer within timeout={self.timeout:g} s"
                if attempt == self.max_retries:
                    raise EmbeddingAPIError(
                        f"{self.url}: no answer after {self.max_retries + 1} tries ({reason})"
                    ) from None
                wait = self._wait(attempt, None)
                log.warning(
                    "%s: %s, retry %d/%d in %.1f s", self.url, reason, attempt + 1, self.max_retries, wait
                )
            time.sleep(wait)
        try:
            answer = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            start = raw[:60].decode("utf-8", "replace")
            raise EmbeddingAPIError(
                f"{self.url}: the answer is not JSON (Content-Type {kind or 'none'!r}, starts {start!r})"
            ) from None
        if not isinstance(answer, dict) or not isinstance(answer.get("data"), list):
            raise EmbeddingAPIError(f"{self.url}: the answer has no 'data' list of embeddings")
        return answer

    def _vectors(self, texts: list[str], answer: dict) -> np.ndarray:
        data = answer["data"]
        if len(data) != len(texts):
            raise EmbeddingAPIError(f"{self.url}: {len(data)} vectors for {len(texts)} texts")
        try:
            indices = [d.get("index") for d in data]
            if all(i is None for i in indices):  # no indices at all: the answer's order is the input's
                indices = list(range(len(data)))
            if sorted(i if isinstance(i, int) else -1 for i in indices) != list(range(len(texts))):
                raise EmbeddingAPIError(
                    f"{self.url}: the answer's indices are not each of 0..{len(texts) - 1} once "
                    f"(got {indices[:8]}{' ...' if len(indices) > 8 else ''}): vectors cannot be matched to texts"
                )
            ordered = [d for _, d in sorted(zip(indices, data, strict=True), key=lambda p: p[0])]
            vectors = np.asarray([d["embedding"] for d in ordered], dtype=np.float32)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise EmbeddingAPIError(f"{self.url}: malformed embeddings in the answer ({e})") from None
        if vectors.ndim != 2:
            raise EmbeddingAPIError(f"{self.url}: the vectors of one answer differ in length")
        if self.dim is not None and vectors.shape[1] != self.dim:
            raise EmbeddingAPIError(
                f"{self.url}: vectors of dimension {vectors.shape[1]}, expected {self.dim}"
            )
        if not np.isfinite(vectors).all():
            raise EmbeddingAPIError(f"{self.url}: the answer holds NaN or infinite values")
        usage = answer.get("usage") or {}
        self.tokens += int(usage.get("total_tokens") or math.ceil(sum(len(t) for t in texts) / 4))
        return vectors

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(N, D) float32 vectors of ``texts``, from the cache where it has them."""
        if any(not isinstance(t, str) for t in texts):
            raise TypeError("EmbeddingAPI.encode: expected a sequence of str")
        cut = []
        for t in texts:
            if len(t) > self.max_chars:
                self.truncated += 1
                t = t[: self.max_chars]
            if not t.strip():
                raise ValueError(f"EmbeddingAPI.encode: text {len(cut)} is empty; remove or fill it")
            cut.append(t)
        keys = [self._key(t) for t in cut]
        found = self._cached(list(dict.fromkeys(keys)))
        self.cached_hits += sum(k in found for k in keys)
        missing = list(dict.fromkeys(k for k in keys if k not in found))
        text_of = dict(zip(keys, cut, strict=True))
        for i in range(0, len(missing), self.batch_size):
            batch_keys = missing[i : i + self.batch_size]
            batch = [text_of[k] for k in batch_keys]
            vectors = self._vectors(batch, self._post(batch))
            if self.dim is None:
                self.dim = int(vectors.shape[1])
            self._store(batch_keys, vectors)
            found.update(zip(batch_keys, vectors, strict=True))
        if not keys:
            return np.zeros((0, self.dim or 0), dtype=np.float32)
        dims = {found[k].shape[0] for k in keys}
        if len(dims) != 1:
            raise EmbeddingAPIError(
                f"{self.url}: cached and new vectors differ in dimension ({sorted(dims)})"
            )
        return np.stack([found[k] for k in keys])

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
            self._cache = None
