"""The `tools.serve` web server: the page's files, its JSON API, and draws streamed as JSON lines.

    GET  /                        the page (page.html, page.js, run_tab.js, page.css: this package's files)
    GET  /api/run                 what the run has: levels, sizes, classes, guidance, what is missing
    GET  /api/info                configs, figures, training curves (`run_info`)
    GET  /api/recon               test images above their reconstructions
    GET  /api/test-image?index=I  one test image and its class
    POST /api/sample, /api/classes, /api/complete   a JSON body of controls -> a stream of JSON lines (`draws`)

A bad control is a 400 with {"error": one line}; a problem during a draw is an {"event": "error"} line. A draw
runs in its request's thread, inside a slot of `draws.Slots`; before each event it looks whether its page
closed the connection, and stops the draw if so. Started by `python -m tools.serve`.
"""

import functools
import json
import select
import socket
import sys
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from urllib.parse import parse_qsl, urlsplit

from foundation.cli import UserError
from tools.serve import draws, run_info, session as controls

STATIC = {"/": "page.html", "/page.js": "page.js", "/run_tab.js": "run_tab.js", "/page.css": "page.css"}
KINDS = {"html": "text/html", "js": "text/javascript", "css": "text/css"}
INTERNAL = "internal error (the server's output has the details)"
MAX_BODY = controls.MAX_UPLOAD_BYTES * 4 // 3 + 64 * 1024  # an upload, base64-encoded, and the other controls


class HttpError(Exception):
    """A request the server cannot take, with its status code."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def run_summary(session, query):
    return session.summary()


def info(session, query):
    return session.once("info", lambda: run_info.describe(session))


def reconstructions(session, query):
    return session.once("recon", lambda: run_info.reconstructions(session))


def test_image(session, query):
    return run_info.test_image(session, controls.integer(query, "index", 0))


GETS = {"/api/run": run_summary, "/api/info": info, "/api/recon": reconstructions, "/api/test-image": test_image}
# path -> (the controls checked into arguments, the draw that takes them and `emit`)
STREAMS = {"/api/sample": (controls.sample_controls, draws.draw_samples),
           "/api/classes": (controls.class_controls, draws.draw_classes),
           "/api/complete": (controls.completion_controls, draws.draw_completions)}


class Server(ThreadingHTTPServer):
    """A thread per request; the run and the draw slots are shared."""

    daemon_threads = True  # Ctrl-C does not wait for open pages

    def __init__(self, address, session, slots: draws.Slots):
        super().__init__(address, Handler)
        self.session, self.slots = session, slots

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"


class Handler(BaseHTTPRequestHandler):
    server_version = "vqvae-serve"

    def log_message(self, format, *args):  # one line per request would drown the address the command prints
        pass

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path in STATIC:
            name = STATIC[url.path]
            kind = KINDS[name.rpartition(".")[2]] + "; charset=utf-8"
            return self.send(200, (files(__package__) / name).read_bytes(), kind)
        query = dict(parse_qsl(url.query))
        result = self.attempt(lambda: (GETS.get(url.path) or not_found(url.path))(self.server.session, query))
        if result is not None:
            self.send_json(200, result)

    def do_POST(self):
        draw = self.attempt(lambda: self.prepared_draw(urlsplit(self.path).path))
        if draw is not None:
            self.stream(draw)

    def attempt(self, work):
        """work()'s result, or None after answering with the error it raised."""
        try:
            return work()
        except HttpError as err:
            self.send_json(err.status, {"error": str(err)})
        except UserError as err:
            self.send_json(400, {"error": str(err)})
        except Exception:
            traceback.print_exc(file=sys.stderr)
            self.send_json(500, {"error": INTERNAL})
        return None

    def prepared_draw(self, path: str):
        """The draw the request asks for, its controls checked: a function of `emit`."""
        check, draw = STREAMS.get(path) or not_found(path)
        arguments = check(self.server.session, self.read_body())
        return functools.partial(draw, self.server.session, *arguments)

    def read_body(self) -> dict:
        """The request's JSON object."""
        length = self.headers.get("Content-Length") or "0"
        if not length.isdigit():
            raise HttpError(411, "the request needs a valid Content-Length")
        length = int(length)
        if length > MAX_BODY:
            raise HttpError(413, f"the request is over {MAX_BODY >> 20} MiB")
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            raise UserError("the request is not JSON") from None
        if not isinstance(body, dict):
            raise UserError("the request must be a JSON object of controls")
        return body

    def stream(self, draw) -> None:
        """Run draw(emit) in a slot, sending each event as a JSON line; count how it ended."""
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        slots = self.server.slots
        try:
            with slots.turn(self.emit):
                draw(self.emit)
            slots.count("finished")
        except draws.Cancelled:
            slots.count("cancelled")
        except Exception as err:
            slots.count("failed")
            if not isinstance(err, UserError):
                traceback.print_exc(file=sys.stderr)
            message = str(err) if isinstance(err, UserError) else INTERNAL
            try:
                self.emit({"event": "error", "message": message})
            except draws.Cancelled:
                pass

    def emit(self, event: dict) -> None:
        """Send one event line; draws.Cancelled when the page has gone away."""
        if not client_connected(self.connection):
            raise draws.Cancelled()
        try:
            self.wfile.write((json.dumps(event) + "\n").encode())
            self.wfile.flush()
        except OSError:
            raise draws.Cancelled() from None

    def send_json(self, status: int, obj) -> None:
        self.send(status, json.dumps(obj).encode(), "application/json")

    def send(self, status: int, payload: bytes, kind: str) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(payload)
        except OSError:  # the page went away before the answer
            pass


def not_found(path: str):
    raise HttpError(404, f"no such page: {path}")


def client_connected(connection: socket.socket) -> bool:
    """False once the client has closed its end (a page sends nothing after its request, so readable means EOF)."""
    try:
        readable, _, _ = select.select([connection], [], [], 0)
        return not readable or connection.recv(1, socket.MSG_PEEK) != b""
    except (OSError, ValueError):
        return False


def make_server(session, host: str = "127.0.0.1", port: int = 0, running: int = 2, waiting: int = 8) -> Server:
    """A server for `session` bound to (host, port) (port 0: any free one); call serve_forever() to serve."""
    return Server((host, port), session, draws.Slots(running, waiting))
