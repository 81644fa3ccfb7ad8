"""Remote shards against servers on 127.0.0.1: http(s) (also one that drops connections mid-file,
one that ignores Range, one that 404s), pipe: commands, and s3:// through moto in server mode."""

from __future__ import annotations

import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers import free_port, write_shards
from torchvision.transforms import ToTensor

from nml.data.pipeline import ShardLoader, StreamConfig
from nml.shards.manifest import read_info
from nml.shards.members import MemberSpec
from nml.shards.remote import ShardReadError, open_shard
from nml.shards.spec import resolve_shards

SIZES = [5, 7, 3]


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.root``; ``server.mode``: "ok", "drop" (the first GET of each tar sends half of
    it and hangs up), "drop-norange" (the same, and Range headers are ignored), "die" (the first GET of
    each tar sends half of it and hangs up, later ones get 503: the shard is cut off mid-way); names in
    ``server.missing`` 404."""

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        srv, name = self.server, self.path.lstrip("/")
        srv.requests.append((name, self.headers.get("Range")))
        path = srv.root / name
        if name in srv.missing or not path.is_file():
            self.send_error(404, "Not Found")
            return
        if srv.mode == "die" and name.endswith(".tar") and sum(1 for n, _ in srv.requests if n == name) > 1:
            self.send_error(503, "Service Unavailable")  # gone after the first hang-up
            return
        data = path.read_bytes()
        start = 0
        rng = self.headers.get("Range")
        if rng and srv.mode != "drop-norange":
            start = int(rng.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        first = sum(1 for n, _ in srv.requests if n == name) == 1
        if (srv.mode.startswith("drop") or srv.mode == "die") and name.endswith(".tar") and first:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)  # hang up mid-file
            return
        self.wfile.write(body)


@pytest.fixture
def shards(tmp_path) -> tuple[Path, str]:
    spec = write_shards(tmp_path / "shards", SIZES)
    return tmp_path / "shards", spec


@pytest.fixture
def serve(shards, monkeypatch):
    monkeypatch.setenv("NML_SHARD_BACKOFF", "0.01")
    monkeypatch.setenv("NML_SHARD_TIMEOUT", "10")
    servers = []

    def start(mode="ok", missing=()):
        srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        srv.root, srv.mode, srv.missing, srv.requests = shards[0], mode, set(missing), []
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv, f"http://127.0.0.1:{srv.server_port}/train-{{0000..0002}}.tar"

    yield start
    for s in servers:
        s.shutdown()


def _samples(spec, strict=False) -> list[tuple[str, int]]:
    cfg = StreamConfig(
        shards=resolve_shards(spec),
        members=MemberSpec(num_classes=5),
        transform=ToTensor(),
        mode="eval",
        batch_size=4,
        strict=strict,
    )
    return [
        (k, int(t))
        for b in ShardLoader(cfg)
        for k, t, v in zip(b["key"], b["target"], b["valid"], strict=True)
        if v
    ]


def test_http_shards_stream_as_the_local_ones_with_sizes_from_the_server(shards, serve):
    srv, url = serve()
    assert [s.size for s in resolve_shards(url)] == SIZES
    assert ("sizes.json", None) in srv.requests or ("_info.json", None) in srv.requests
    assert _samples(url) == _samples(shards[1])
    # the class list of _info.json comes from the server too: a data module on URLs knows its classes
    from nml.data.modules import ClassificationShards

    assert read_info(url)["classes"] == [f"c{c}" for c in range(5)]
    assert ClassificationShards(train=url, val=url, loader={"num_workers": 0}).num_classes == 5


@pytest.mark.parametrize("mode", ["drop", "drop-norange"])
def test_a_connection_dropped_mid_file_resumes_where_it_broke_off(shards, serve, mode, caplog):
    srv, url = serve(mode)
    with caplog.at_level(logging.WARNING):
        assert _samples(url) == _samples(shards[1])
    assert caplog.text.count("retry 1 of 3") == len(SIZES)
    resumed = [r for n, r in srv.requests if n.endswith(".tar") and r]
    assert len(resumed) == len(SIZES) and all(r.startswith("bytes=") and r != "bytes=0-" for r in resumed)


def test_a_404_is_not_retried_and_is_skipped_with_a_count_or_stops_in_strict(shards, serve, caplog):
    srv, url = serve(missing={"train-0001.tar"})
    with caplog.at_level(logging.WARNING):
        got = _samples(url)
    local = _samples(shards[1])
    assert got == local[:5] + local[12:]  # the 7 samples of shard 1 are skipped ...
    assert (
        "train-0001.tar: HTTP 404" in caplog.text and "skipped 7 unreadable sample(s)" in caplog.text
    )  # ... counted
    assert sum(1 for n, _ in srv.requests if n == "train-0001.tar") == 1  # not retried
    with pytest.raises(FileNotFoundError, match=r"http://127\.0\.0\.1:\d+/train-0001\.tar: HTTP 404"):
        _samples(url, strict=True)


def test_samples_lost_when_a_server_dies_mid_shard_are_counted_as_samples(shards, serve, caplog):
    """data/skipped counts lost samples, not errors: a shard cut off mid-way after its retries loses
    every sample it did not deliver (it used to count 1 error against dozens of samples)."""
    srv, url = serve("die")
    with caplog.at_level(logging.WARNING):
        got = _samples(url)
    lost = sum(SIZES) - len(got)
    assert lost > len(SIZES)  # more than one sample per shard went missing
    assert f"skipped {lost} unreadable sample(s)" in caplog.text and "train-0000.tar" in caplog.text


def test_an_unreachable_server_fails_after_bounded_retries_naming_the_url(monkeypatch):
    monkeypatch.setenv("NML_SHARD_BACKOFF", "0.05")
    url = f"http://127.0.0.1:{free_port()}/train-0000.tar"  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(ShardReadError, match=r"127\.0\.0\.1:\d+/train-0000\.tar: open failed after 4 tries"):
        open_shard(url)
    assert time.monotonic() - t0 < 5  # 0.05 + 0.1 + 0.2 s of backoff
    with pytest.raises(ShardReadError, match=r"/(_info|sizes)\.json: open failed"):
        resolve_shards(url)  # its size index cannot be read either


def test_pipe_commands_stream_their_output_and_a_failing_command_is_named(shards, monkeypatch):
    directory, spec = shards
    pipe = f"pipe:cat {directory}/train-{{0000..0002}}.tar"
    assert [s.size for s in resolve_shards(pipe)] == SIZES  # sizes.json beside the .tar it names
    assert _samples(pipe) == _samples(spec)
    with pytest.raises(
        ShardReadError, match=r"pipe:cat /nonexistent/x\.tar: the command exited with status 1"
    ):
        with open_shard("pipe:cat /nonexistent/x.tar") as f:
            f.read()


@pytest.mark.slow
def test_s3_shards_through_fsspec_against_moto(shards, monkeypatch):
    """s3:// via s3fs against moto's server on 127.0.0.1: same samples as the local shards; a
    missing bucket is named."""
    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        for k, v in {
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "NML_SHARD_BACKOFF": "0.01",
        }.items():
            monkeypatch.setenv(k, v)
        import boto3

        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}")
        s3.create_bucket(Bucket="nml-shards")
        for p in shards[0].iterdir():
            s3.upload_file(str(p), "nml-shards", f"glyphs/{p.name}")
        spec = "s3://nml-shards/glyphs/train-{0000..0002}.tar"
        assert [s.size for s in resolve_shards(spec)] == SIZES
        assert _samples(spec) == _samples(shards[1])
        with pytest.raises(FileNotFoundError, match="s3://no-such-bucket/train-0000.tar"):
            open_shard("s3://no-such-bucket/train-0000.tar")
    finally:
        server.stop()
