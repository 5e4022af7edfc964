"""The exporter's HTTP endpoints: `/metrics`, `/health` and an index page at `/`.

A small threaded server from the standard library. `/metrics` hands out the latest snapshot's
pre-rendered text (gzipped when the scraper accepts gzip, as Prometheus does) and never
touches a GPU. `/health` answers 200 while sampling keeps up (listing any GPU that stopped
answering, with `"status": "degraded"`) and 503 before the first sample or when sampling has
stalled: a lost GPU is a node problem, not a reason to restart the exporter.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tessera.metrics.exposition import CONTENT_TYPE
from tessera.metrics.sampler import Snapshot

_INDEX = b"""<html><head><title>Tessera exporter</title></head><body>
<h1>Tessera exporter</h1><p><a href="/metrics">Metrics</a> <a href="/health">Health</a></p>
</body></html>
"""


def health_document(snapshot: Snapshot | None, stale_after_s: float) -> tuple[int, bytes]:
    """The /health status code and JSON body."""
    if snapshot is None:
        return 503, json.dumps({"status": "starting"}).encode()
    age = time.monotonic() - snapshot.taken_at
    health = snapshot.health
    status = "stalled" if age > stale_after_s else ("degraded" if health.degraded else "ok")
    body = {
        "status": status,
        "sample_age_seconds": round(age, 3),
        "gpus": {str(k): v for k, v in health.gpus.items()},
        "problems": list(health.problems),
        "notes": list(health.notes),
    }
    return (503 if status == "stalled" else 200), json.dumps(body, indent=1).encode()


class MetricsServer(ThreadingHTTPServer):
    """Serves the snapshots `latest()` returns; `stale_after_s` is when /health gives up."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], latest: Callable[[], Snapshot | None],
                 stale_after_s: float) -> None:
        self.latest = latest
        self.stale_after_s = stale_after_s
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer
    protocol_version = "HTTP/1.1"  # keep-alive, as Prometheus scrapes

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._metrics()
        elif path == "/health":
            code, body = health_document(self.server.latest(), self.server.stale_after_s)
            self._send(code, "application/json", body)
        elif path == "/":
            self._send(200, "text/html; charset=utf-8", _INDEX)
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found: try /metrics\n")

    def _metrics(self) -> None:
        snapshot = self.server.latest()
        if snapshot is None:
            self._send(503, "text/plain; charset=utf-8", b"no sample yet\n")
            return
        if "gzip" in self.headers.get("Accept-Encoding", ""):
            self._send(200, CONTENT_TYPE, snapshot.gzipped, encoding="gzip")
        else:
            self._send(200, CONTENT_TYPE, snapshot.body)

    def _send(self, code: int, content_type: str, body: bytes, encoding: str | None = None) -> (
        None
    ):
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if encoding is not None:
            self.send_header("Content-Encoding", encoding)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # a scrape every few seconds is not news
