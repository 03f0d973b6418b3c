"""A download server on 127.0.0.1 for upstream source files: Range requests, and switches to
cut a transfer short, answer an HTTP error, serve wrong bytes, send slowly, drip one byte at a
time, or send a body that never ends."""
from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class SourceServer:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.gets: list[tuple[str, str | None]] = []  # (path, Range header) of every GET
        self.errors: list[int] = []  # statuses to answer, one per request, before serving normally
        self.cut_after: int | None = None  # close the connection after this many body bytes, once
        self.wrong_bytes = False
        self.seconds_per_chunk = 0.0
        self.seconds_per_byte: float | None = None  # send the body one byte at a time, this far apart
        self.endless = False  # answer every GET with 200, no Content-Length and zeros until the client leaves
        self.sent = 0  # body bytes written to sockets
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.gets.append((self.path, self.headers.get("Range")))
                if server.endless:
                    self.send_response(200)
                    self.end_headers()
                    self.close_connection = True
                    block = bytes(1 << 16)
                    try:
                        while True:
                            self.wfile.write(block)
                            server.sent += len(block)
                    except OSError:  # the client went away
                        return
                if server.errors:
                    self.send_error(server.errors.pop(0))
                    return
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                if server.wrong_bytes:
                    data = bytes(b ^ 0xFF for b in data[:64]) + data[64:]
                start = 0
                ranged = self.headers.get("Range", "")
                if ranged.startswith("bytes="):
                    start = int(ranged[6:].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut, server.cut_after = server.cut_after, None
                if server.seconds_per_byte is not None:
                    try:
                        for i in range(len(body)):
                            self.wfile.write(body[i:i + 1])
                            self.wfile.flush()
                            server.sent += 1
                            time.sleep(server.seconds_per_byte)
                    except OSError:  # the client went away
                        pass
                    return
                for i in range(0, len(body), 1 << 16):
                    if cut is not None and i >= cut:
                        self.close_connection = True
                        return  # the client sees fewer bytes than Content-Length
                    self.wfile.write(body[i:i + (1 << 16)])
                    server.sent += len(body[i:i + (1 << 16)])
                    time.sleep(server.seconds_per_chunk)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.httpd.server_close()
