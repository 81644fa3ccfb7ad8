"""The embedding API's vector cache: a SQLite file of checked answers.

A vector is stored under everything that determines it: the endpoint's URL, the model's name, the
vector's dimension and the text's sha256. Two endpoints that share a model name, or one model asked
for two dimensions, never serve each other's vectors, and a lookup for a known dimension returns
only vectors of that dimension.

Several processes may share one file (a study's feature stages side by side): a writer that finds
the file locked waits (SQLite's busy timeout), then retries; if the file stays locked, the answer is
kept in memory and used, and the warning names the file (a paid answer is never thrown away). A
file that is not a SQLite database is named in the error.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

TABLE = "embeddings"  # (url, model, dim, text_sha256) -> vector
BUSY_TIMEOUT_S = 10.0  # SQLite waits this long for another writer's lock ...
WRITE_RETRIES = 3  # ... this many times, backing off between tries


class CacheFileError(RuntimeError):
    """The cache file cannot be read or written (the message names it)."""


class VectorCache:
    """Vectors of one endpoint and model in the SQLite file ``path``."""

    def __init__(self, path: Path, url: str, model: str, busy_timeout: float = BUSY_TIMEOUT_S):
        self.path, self.url, self.model = Path(path), url, model
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, timeout=busy_timeout)
            self._db.execute(
                f"CREATE TABLE IF NOT EXISTS {TABLE} (url TEXT, model TEXT, dim INTEGER, text_sha256 TEXT, "
                "vector BLOB, PRIMARY KEY (url, model, dim, text_sha256))"
            )
        except sqlite3.DatabaseError as e:
            raise CacheFileError(
                f"{self.path}: not a usable embedding cache ({e}); delete it or give another cache_dir"
            ) from None

    def get(self, keys: list[str], dim: int | None) -> dict[str, np.ndarray]:
        """``{key: vector}`` of the cached ``keys`` (of dimension ``dim`` when given)."""
        found: dict[str, np.ndarray] = {}
        for i in range(0, len(keys), 500):  # SQLite's parameter limit
            chunk = keys[i : i + 500]
            where = f"url = ? AND model = ? AND text_sha256 IN ({','.join('?' * len(chunk))})"
            params: list = [self.url, self.model, *chunk]
            if dim is not None:
                where, params = where + " AND dim = ?", [*params, dim]
            try:
                rows = self._db.execute(f"SELECT text_sha256, dim, vector FROM {TABLE} WHERE {where}", params)
                rows = rows.fetchall()
            except sqlite3.DatabaseError as e:
                raise CacheFileError(f"{self.path}: the embedding cache cannot be read ({e})") from None
            for key, d, blob in rows:
                vector = np.frombuffer(blob, dtype=np.float32)
                if vector.shape[0] != d:
                    raise CacheFileError(
                        f"{self.path}: a cached vector has {vector.shape[0]} values, its row says {d}; "
                        "delete the file"
                    )
                found[key] = vector
        return found

    def put(self, keys: list[str], vectors: np.ndarray) -> bool:
        """Store a checked batch in one transaction (whole or not at all); False when the file
        stayed locked (the batch is then not cached, and the warning names the file)."""
        rows = [
            (self.url, self.model, int(v.shape[0]), k, v.astype(np.float32).tobytes())
            for k, v in zip(keys, vectors, strict=True)
        ]
        for attempt in range(WRITE_RETRIES + 1):
            try:
                with self._db:
                    self._db.executemany(f"INSERT OR REPLACE INTO {TABLE} VALUES (?, ?, ?, ?, ?)", rows)
                return True
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    raise CacheFileError(
                        f"{self.path}: the embedding cache cannot be written ({e})"
                    ) from None
                if attempt < WRITE_RETRIES:
                    time.sleep(0.5 * 2**attempt)
            except sqlite3.DatabaseError as e:
                raise CacheFileError(f"{self.path}: the embedding cache cannot be written ({e})") from None
        log.warning(
            "%s stayed locked by another writer: %d vectors used but not cached (a later run asks for them again)",
            self.path,
            len(rows),
        )
        return False

    def close(self) -> None:
        self._db.close()
