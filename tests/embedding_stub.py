"""A stub OpenAI-compatible ``/v1/embeddings`` server on 127.0.0.1 for the tests: scripted answers
(429 with Retry-After, 503, a dropped connection, a body cut short, a garbage status line, an answer
trickled a byte at a time, HTML, 401, too few vectors, repeated indices, a wrong dimension), and
vectors from a hash of the text or from any function (the local sentence-embedding model)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KEY = "sk-test-DO-NOT-LEAK-1234567890"
DIM = 8


def vector(text: str, dim: int = DIM) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [b / 255.0 for b in digest[:dim]]


class Stub:
    """A server whose next answers follow ``script`` (then plain 200s): "ok", "429", "503", "drop",
    "cut", "garbage", "trickle", "html", "401", "few", "dup", "dim4"; it records each request's
    inputs and Authorization header. ``dim``: the length of its vectors."""

    def __init__(
        self,
        script: list[str] | None = None,
        embed: Callable[[list[str]], list] | None = None,
        dim: int = DIM,
    ):
        self.script, self.requests = list(script or []), []
        self.embed = embed or (lambda texts: [vector(t, dim) for t in texts])
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append({"input": body["input"], "auth": self.headers.get("Authorization")})
                action = stub.script.pop(0) if stub.script else "ok"
                if action == "drop":
                    self.connection.close()
                    return
                if action == "garbage":
                    self.wfile.write(b"SPLAT 42 nonsense\r\n\r\n")
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if action in ("429", "503", "401"):
                    self.send_response(int(action))
                    if action == "429":
                        self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if action == "html":
                    page = b"<html><body>502 Bad Gateway</body></html>"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(page)))
                    self.end_headers()
                    self.wfile.write(page)
                    return
                texts = body["input"][:-1] if action == "few" else body["input"]
                vectors = [list(map(float, v)) for v in stub.embed(texts)]
                if action == "dim4":
                    vectors = [v[:4] for v in vectors]
                data = [{"index": i, "embedding": v} for i, v in enumerate(vectors)][::-1]
                if action == "dup":  # indices [0, 0, 2, ...]: two vectors claim the first text
                    data = [{"index": 0 if i == 1 else i, "embedding": v} for i, v in enumerate(vectors)]
                answer = json.dumps({"data": data, "usage": {"total_tokens": 3 * len(texts)}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                if action == "cut":  # half the promised body, then the connection closes
                    self.wfile.write(answer[: len(answer) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if action == "trickle":  # one byte every 0.2 s: each read succeeds, the answer never ends
                    try:
                        for b in answer:
                            self.wfile.write(bytes([b]))
                            self.wfile.flush()
                            time.sleep(0.2)
                    except OSError:
                        pass
                    return
                self.wfile.write(answer)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
