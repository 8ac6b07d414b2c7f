"""A local OTLP/HTTP endpoint: by default it accepts and discards spans, so the tracing half of
``bench.observability`` costs the exporters their real work (serialising, sending) without a collector on this
host. Given ``on_traces`` (``on_logs``), it hands every request body (a serialised ExportTraceServiceRequest,
ExportLogsServiceRequest) to it: the tests' decoding receiver is built that way."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


class OtlpSink:
    def __init__(self, on_traces: Callable[[bytes], None] | None = None,
                 on_logs: Callable[[bytes], None] | None = None) -> None:
        self.requests = 0
        self.log_requests = 0
        handlers = {"/v1/traces": on_traces, "/v1/logs": on_logs}
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path not in handlers:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path == "/v1/traces":
                    sink.requests += 1
                else:
                    sink.log_requests += 1
                handler = handlers[self.path]
                if handler is not None:
                    handler(body)
                # An empty body is a valid, empty Export*ServiceResponse in protobuf.
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
