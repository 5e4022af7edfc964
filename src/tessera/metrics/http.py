"""The exporter's HTTP endpoints: `/metrics`, `/health` and an index page at `/`.

A small threaded server from the standard library. `/metrics` hands out the latest snapshot's
pre-rendered text (gzipped when the scraper accepts gzip, as Prometheus does) and never
touches a GPU; once the latest sample is older than `stale_after_s` it answers 503 instead,
so Prometheus marks the target down rather than storing old values as new. `/health` answers
200 while sampling keeps up (listing any GPU that stopped answering, with
`"status": "degraded"`) and 503 before the first sample, while sampling fails or its thread
is gone, and when sampling has stalled: a lost GPU is a node problem, not a reason to restart
the exporter; a sampler that does not sample is.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tessera.metrics.exposition import CONTENT_TYPE
from tessera.metrics.sampler import SamplerStatus, Snapshot

_INDEX = b"""<html><head><title>Tessera exporter</title></head><body>
<h1>Tessera exporter</h1><p><a href="/metrics">Metrics</a> <a href="/health">Health</a></p>
</body></html>
"""


def health_document(snapshot: Snapshot | None, stale_after_s: float,
                    sampler: SamplerStatus | None = None) -> tuple[int, bytes]:
    """The /health status code and JSON body."""
    sampler = sampler or SamplerStatus(running=True)
    if not sampler.running:
        return 503, json.dumps({"status": "not sampling",
                                "problems": ["the sampler thread is not running"]}).encode()
    if snapshot is None:
        body: dict[str, object] = {"status": "failing" if sampler.failure else "starting"}
        if sampler.failure:
            body["problems"] = [sampler.failure]
        return 503, json.dumps(body).encode()
    age = time.monotonic() - snapshot.taken_at
    health = snapshot.health
    if sampler.failure is not None:
        status = "failing"
    elif age > stale_after_s:
        status = "stalled"
    else:
        status = "degraded" if health.degraded else "ok"
    problems = list(health.problems)
    if sampler.failure is not None:
        problems.insert(0, f"{sampler.failure} ({sampler.failures_in_a_row} rounds in a row; "
                           "retrying with backoff)")
    body = {
        "status": status,
        "sample_age_seconds": round(age, 3),
        "gpus": {str(k): v for k, v in health.gpus.items()},
        "problems": problems,
        "notes": list(health.notes),
        "sampler_restarts": sampler.restarts,
    }
    code = 503 if status in ("failing", "stalled") else 200
    return code, json.dumps(body, indent=1).encode()


class MetricsServer(ThreadingHTTPServer):
    """Serves the snapshots `latest()` returns; `stale_after_s` is when /health gives up."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], latest: Callable[[], Snapshot | None],
                 stale_after_s: float,
                 sampler: Callable[[], SamplerStatus] | None = None) -> None:
        self.latest = latest
        self.stale_after_s = stale_after_s
        self.sampler = sampler or (lambda: SamplerStatus(running=True))
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer
    protocol_version = "HTTP/1.1"  # keep-alive, as Prometheus scrapes

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._metrics()
        elif path == "/health":
            code, body = health_document(self.server.latest(), self.server.stale_after_s,
                                         self.server.sampler())
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
        age = time.monotonic() - snapshot.taken_at
        if age > self.server.stale_after_s:
            why = self.server.sampler().failure or "sampling has stalled"
            self._send(503, "text/plain; charset=utf-8",
                       f"no current sample: the last is {age:.0f} s old ({why})\n".encode())
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
