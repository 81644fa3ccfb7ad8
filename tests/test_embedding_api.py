"""The embedding-API encoder against stub OpenAI-compatible servers on 127.0.0.1: batching, the cache
(a second run makes no call), retries (429 with Retry-After, 503, a dropped connection), caps, bad
answers that cache nothing, and the key that never reaches a file."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
from embedding_stub import DIM, KEY, Stub, vector

from nml.models.embedding_api import EmbeddingAPI, EmbeddingAPIError


@pytest.fixture
def stub():
    servers = []

    def make(script=None, **kw):
        servers.append(Stub(script, **kw))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def _rows(cache) -> int:
    with sqlite3.connect(cache / "embeddings.sqlite") as db:
        return db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]


def test_batches_are_cached_so_a_second_run_makes_no_call_and_the_key_reaches_no_file(
    stub, tmp_path, monkeypatch
):
    monkeypatch.setenv("NML_EMBEDDING_API_KEY", KEY)
    server = stub()
    texts = [f"document number {i}" for i in range(10)] + ["document number 3"]  # a repeat: asked once
    api = EmbeddingAPI(server.url, "stub-embed", batch_size=4, cache_dir=str(tmp_path / "cache"))
    first = api.encode(texts)
    assert first.shape == (11, DIM) and first.dtype == np.float32
    assert np.allclose(first, [vector(t) for t in texts])  # ordered by index, not by the answer's order
    assert [len(r["input"]) for r in server.requests] == [4, 4, 2]
    assert all(r["auth"] == f"Bearer {KEY}" for r in server.requests) and api.tokens == 30
    again = EmbeddingAPI(server.url, "stub-embed", batch_size=4, cache_dir=str(tmp_path / "cache"))
    assert np.array_equal(again.encode(texts), first) and len(server.requests) == 3  # no call
    assert again.cached_hits == 11 and again.requests == 0
    other = EmbeddingAPI(server.url, "another-model", cache_dir=str(tmp_path / "cache"))
    other.encode(texts[:2])
    assert len(server.requests) == 4  # the cache is keyed by model
    for obj in (api, again):
        assert KEY not in repr(obj) and KEY not in json.dumps(obj.describe()) and KEY not in str(vars(obj))
        obj.close()
    other.close()
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_429_with_retry_after_503_and_a_dropped_connection_are_retried(stub, tmp_path, caplog):
    server = stub(["429", "503", "drop", "ok"])
    api = EmbeddingAPI(server.url, "m", backoff=0.01, cache_dir=str(tmp_path))
    with caplog.at_level("WARNING"):
        out = api.encode(["a", "b"])
    assert np.allclose(out, [vector("a"), vector("b")]) and api.requests == 4
    assert "HTTP 429" in caplog.text and "HTTP 503" in caplog.text and server.requests[0]["auth"] is None
    server = stub(["503", "503", "503"])
    with pytest.raises(EmbeddingAPIError, match=r"HTTP 503"):
        EmbeddingAPI(server.url, "m", backoff=0.01, max_retries=2).encode(["a"])


@pytest.mark.parametrize(
    ("script", "expected", "kw"),
    [
        (["401"], r"HTTP 401 .*check the key in \$NML_EMBEDDING_API_KEY", {}),
        (["html"], r"not JSON \(Content-Type 'text/html', starts '<html>", {}),
        (["few"], r"2 vectors for 3 texts", {}),
        (["dup"], r"indices are not each of 0\.\.2 once \(got \[0, 0, 2\]\)", {}),
        (["dim4"], r"vectors of dimension 4, expected 8", {"dim": DIM}),
    ],
    ids=["401", "html", "too-few", "repeated-index", "wrong-dim"],
)
def test_bad_answers_name_the_cause_and_cache_nothing(stub, tmp_path, script, expected, kw):
    server = stub(["ok", *script])
    api = EmbeddingAPI(server.url, "m", batch_size=3, backoff=0.01, cache_dir=str(tmp_path), **kw)
    with pytest.raises(EmbeddingAPIError, match=expected) as e:
        api.encode(["one", "two", "three", "four", "five", "six"])
    assert server.url in str(e.value)
    assert _rows(tmp_path) == 3  # the first batch, checked whole; nothing of the failed one


def test_caps_truncation_and_empty_texts(stub, tmp_path):
    server = stub()
    api = EmbeddingAPI(server.url, "m", batch_size=2, max_requests=1, cache_dir=str(tmp_path))
    with pytest.raises(EmbeddingAPIError, match="request cap max_requests=1"):
        api.encode(["a", "b", "c"])
    assert _rows(tmp_path) == 2 and len(server.requests) == 1
    capped = EmbeddingAPI(server.url, "m", max_tokens=5)
    with pytest.raises(EmbeddingAPIError, match="token cap max_tokens=5"):
        capped.encode(["x" * 100])
    assert len(server.requests) == 1  # stopped before the request
    short = EmbeddingAPI(server.url, "m", max_chars=10)
    out = short.encode(["y" * 50, "z"])
    assert short.truncated == 1 and np.allclose(out[0], vector("y" * 10))
    with pytest.raises(ValueError, match="text 1 is empty"):
        short.encode(["fine", "   "])


def test_transport_failures_are_retried_and_a_trickled_answer_is_cut_off_at_the_deadline(stub, caplog):
    """A body cut short, a garbage status line and an answer trickled a byte at a time are each
    retried (the last by the request's overall deadline, not a per-read timeout); the final
    failure names the URL."""
    import time

    server = stub(["cut", "garbage", "trickle", "ok"])
    api = EmbeddingAPI(server.url, "m", backoff=0.01, timeout=1.0)
    start = time.monotonic()
    with caplog.at_level("WARNING"):
        out = api.encode(["a", "b"])
    assert np.allclose(out, [vector("a"), vector("b")]) and api.requests == 4
    assert time.monotonic() - start < 10  # the trickle (0.2 s a byte, ~500 bytes) was cut at 1 s
    assert "IncompleteRead" in caplog.text and "BadStatusLine" in caplog.text
    assert "no complete answer within timeout=1 s" in caplog.text
    server = stub(["cut", "cut"])
    with pytest.raises(
        EmbeddingAPIError, match=rf"{server.url}/embeddings: no answer after 2 tries \(IncompleteRead"
    ):
        EmbeddingAPI(server.url, "m", backoff=0.01, max_retries=1).encode(["a"])


def test_the_cache_is_keyed_by_endpoint_model_and_dimension(stub, tmp_path):
    """Two endpoints sharing a model name and a cache never serve each other's vectors, and a
    cached vector of another dimension is never returned for a known ``dim``."""
    wide, narrow = stub(dim=8), stub(dim=4)
    cache = str(tmp_path / "cache")
    a = EmbeddingAPI(wide.url, "shared-name", cache_dir=cache)
    assert a.encode(["x", "y"]).shape == (2, 8)
    b = EmbeddingAPI(narrow.url, "shared-name", dim=4, cache_dir=cache)
    assert b.encode(["x", "y"]).shape == (2, 4) and len(narrow.requests) == 1  # asked, not served 8-d
    c = EmbeddingAPI(wide.url, "shared-name", dim=8, cache_dir=cache)
    assert np.array_equal(c.encode(["x", "y"]), a.encode(["x", "y"])) and c.requests == 0
    for api in (a, b, c):
        api.close()


def test_a_locked_cache_keeps_the_answer_and_a_corrupt_one_is_named(stub, tmp_path, caplog, monkeypatch):
    import nml.models.embedding_cache as cache_module

    server = stub()
    cache = tmp_path / "cache"
    api = EmbeddingAPI(server.url, "m", cache_dir=str(cache))
    api._cache._db.execute("PRAGMA busy_timeout = 50")
    monkeypatch.setattr(cache_module, "WRITE_RETRIES", 1)
    blocker = sqlite3.connect(cache / "embeddings.sqlite")
    blocker.execute("BEGIN IMMEDIATE")  # another writer is in the middle of a transaction
    with caplog.at_level("WARNING"):
        out = api.encode(["a", "b"])
    assert np.allclose(out, [vector("a"), vector("b")])  # the paid answer is used ...
    assert "stayed locked by another writer: 2 vectors used but not cached" in caplog.text
    assert str(cache / "embeddings.sqlite") in caplog.text  # ... and the file named
    blocker.rollback()
    blocker.close()
    api.close()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "embeddings.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(
        EmbeddingAPIError, match=rf"{bad / 'embeddings.sqlite'}: not a usable embedding cache"
    ):
        EmbeddingAPI(server.url, "m", cache_dir=str(bad))
