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

    def make(script=None):
        servers.append(Stub(script))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def _rows(cache) -> int:
    with sqlite3.connect(cache / "embeddings.sqlite") as db:
        return db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]


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
        (["dim4"], r"vectors of dimension 4, expected 8", {"dim": DIM}),
    ],
    ids=["401", "html", "too-few", "wrong-dim"],
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
