"""A webhook receiver for bench/run_bench.py --webhooks: answers every POST 204 at once and
counts them (printed when it stops). It does not verify signatures: the tests do; here it is
the server's cost of sending that is measured, not the receiver's.

    python bench/webhook_sink.py --port PORT
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType


class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the server's pooled connections stay open
    received = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        with Sink.lock:
            Sink.received += 1
        self.send_response(204)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Silent: a line per request would cost more than the request."""


class SinkServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        """Quiet: the server under test resets its pooled connections when it stops."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    port = parser.parse_args().port
    server = SinkServer(("127.0.0.1", port), Sink)

    def stop(_signal: int, _frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    server.serve_forever()
    print(f"webhook sink: {Sink.received} requests", file=sys.stderr)


if __name__ == "__main__":
    main()
