"""Serve a checkpoint over the OpenAI API, with a chat page: python serve.py --ckpt=out_chat [--host=127.0.0.1] [--port=8000]

  POST /v1/chat/completions   chat (streamed as server-sent events with "stream": true), the official openai client works
  POST /v1/completions        plain completion of a prompt
  GET  /v1/models             the one model served
  GET  /health                {"status": "ok"} and how busy the server is
  GET  /                      the chat page (one HTML file, works offline)

Concurrent requests share each decode step (gptkit/batching.py): up to --max_batch sequences run in one forward, each
at its own position, and a conversation that comes back with the same history reuses its cached keys and values.
Binds 127.0.0.1 unless told otherwise; --api_key requires `Authorization: Bearer KEY`. Ctrl-C or SIGTERM stops
accepting, ends the requests in flight (their streams end properly) and exits.
"""
import json
import queue
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch

import gptkit
from gptkit.batching import BatchEngine, small_batch_linears
from gptkit.chat_session import CHAT_TEMPERATURE
from gptkit.checkpoint import build_model
from gptkit.devices import pick_device
from gptkit.errors import UsageError, run_cli
from gptkit.loading import checkpoint_name, default_chat_checkpoint, load_any_checkpoint
from gptkit.openai_api import ApiError, chunk, completion, generation_request, new_id, usage
from gptkit.options import option, parse_options
from gptkit.precision import DTYPES, for_generation
from gptkit.precision import HELP as DTYPE_HELP

PAGE = Path(gptkit.__file__).resolve().parent / "web" / "chat.html"  # package data, in a checkout and in a wheel
LOOPBACK = ("127.0.0.1", "localhost", "::1")
DRAIN_LIMIT = 64 << 20  # a too-large body up to this size is read and dropped before the 413; a larger one is cut off
# The page's script and styles are inline; nothing else may load, and the model's text is never markup (see chat.html).
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
                "X-Content-Type-Options": "nosniff"}


@dataclass
class ServeConfig:
    ckpt: str = option("", "a checkpoint file or folder (empty: out_chat/ when it holds one, else out/), or a Hugging Face folder")
    host: str = option("127.0.0.1", "the address to listen on (0.0.0.0: every interface; then set --api_key)")
    port: int = option(8000, "the port to listen on (0: any free port, printed at start)", bounds="[0, 65535]")
    api_key: str = option("", "require `Authorization: Bearer KEY` on the API (empty: no key)")
    model_name: str = option("", "the model id clients name (empty: the checkpoint folder's name)")
    max_batch: int = option(8, "the most requests decoded together; more wait their turn", bounds="[1, 256]")
    max_tokens: int = option(0, "the most tokens a request may ask for (0: the model's context)", bounds=">=0")
    max_messages: int = option(512, "the most messages a chat request may hold", bounds=">=1")
    max_body_kb: int = option(1024, "the largest request body, in KiB", bounds=">=1")
    temperature: float = option(CHAT_TEMPERATURE, "the temperature of a request that names none (0: greedy)", bounds="[0, 2]")
    top_k: int = option(50, "the top_k of a request that names none (0: all tokens)", bounds=">=0")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")
    stream_interval_ms: int = option(20, "send a stream's new text at most this often, what came meanwhile in one event (0: each piece "
                                     "at once); fewer events leave more of the CPU to the model", bounds="[0, 1000]")
    threads: int = option(0, "CPU threads for the model (0: torch's default, one per core); on cores that other busy work shares, 1 "
                          "keeps each step's pace", bounds=">=0")
    dtype: str = option("auto", DTYPE_HELP, DTYPES)


# --- the model's thread ----------------------------------------------------------------------------------------------

class Scheduler(threading.Thread):
    """Owns the model: admits waiting requests into free rows and steps the batch while any request runs."""

    def __init__(self, engine):
        super().__init__(name="scheduler", daemon=True)
        self.engine, self.inbox, self.stopping = engine, queue.Queue(), threading.Event()
        self.waiting = []
        self.counts = {"finished": 0, "cancelled": 0}  # requests so far, for /health

    def submit(self, request):
        if self.stopping.is_set():
            raise ApiError(503, "the server is shutting down")
        done = request.on_done
        request.on_done = lambda: (self.count(request), done and done())
        self.inbox.put(request)

    def count(self, request):
        self.counts["cancelled" if request.finish_reason == "cancelled" else "finished"] += 1

    def load(self):
        return {"running": self.engine.running, "waiting": len(self.waiting) + self.inbox.qsize(), "max_batch": len(self.engine.slots),
                **self.counts}

    def run(self):
        while True:
            idle = not self.engine.running and not self.waiting
            if idle and self.stopping.is_set():
                return
            try:
                self.waiting.append(self.inbox.get(timeout=0.05) if idle else self.inbox.get_nowait())
                continue  # take everything that arrived before stepping
            except queue.Empty:
                pass
            if self.stopping.is_set():  # shutting down: what has not started is cancelled, what runs is stopped
                for request in self.waiting + [slot.request for slot in self.engine.slots[:self.engine.running]]:
                    request.cancel()
            try:
                self.admit_waiting()
                self.engine.step()
            except Exception as e:  # a bug must not take the server down with it: fail what runs, keep serving
                print(f"error in generation: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                for slot in self.engine.slots[:self.engine.running]:
                    slot.request.error = f"generation failed ({type(e).__name__})"
                self.engine.cancel_all()

    def admit_waiting(self):
        while self.waiting and self.engine.free_rows:
            request = self.waiting.pop(0)
            if request.cancelled:
                request.finish("cancelled")
                continue
            try:
                self.engine.admit(request)
            except Exception as e:  # its prefill failed: this request fails, the others go on
                print(f"error in a prefill: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                request.error = f"generation failed ({type(e).__name__})"
                request.finish("cancelled")


# --- HTTP ------------------------------------------------------------------------------------------------------------

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "gptkit"
    timeout = 120  # seconds an idle keep-alive connection is kept

    def log_message(self, format, *args):  # one line per request, on stderr
        sys.stderr.write(f"{self.address_string()} {format % args}\n")

    @property
    def app(self):
        return self.server.app

    def do_GET(self):
        self.handle_errors(self.get)

    def do_POST(self):
        self.handle_errors(self.post)

    def do_OPTIONS(self):
        self.send_response(204)
        self.send_header("Allow", "GET, POST, OPTIONS")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def handle_errors(self, method):
        try:
            method()
        except ApiError as e:
            self.send_json(e.status, e.body())
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away
        except Exception as e:  # never a traceback to the client, never a dead server
            print(f"error serving {self.command} {self.path}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            self.send_json(500, ApiError(500, f"internal error: {type(e).__name__}").body())

    def get(self):
        path = self.path.split("?")[0]
        if path in ("/", "/index.html"):
            return self.send_body(200, PAGE.read_bytes(), "text/html; charset=utf-8", PAGE_HEADERS)
        if path == "/health":
            return self.send_json(200, {"status": "ok", **self.app.scheduler.load()})
        self.check_key()
        if path == "/v1/models":
            return self.send_json(200, {"object": "list", "data": [self.app.model_card()]})
        if path == f"/v1/models/{self.app.model_name}":
            return self.send_json(200, self.app.model_card())
        raise ApiError(404, f"no such endpoint: GET {path}")

    def post(self):
        with self.app.lock:
            self.app.in_flight += 1
        try:
            self.generate()
        finally:
            with self.app.lock:
                self.app.in_flight -= 1

    def generate(self):
        path = self.path.split("?")[0]
        if path not in ("/v1/chat/completions", "/v1/completions"):
            raise ApiError(404, f"no such endpoint: POST {path}")
        self.check_key()
        body = self.read_json()
        chat = path == "/v1/chat/completions"
        model = body.get("model") if isinstance(body, dict) else None
        if model not in (None, self.app.model_name):
            raise ApiError(404, f"the model {model!r} does not exist; this server serves {self.app.model_name!r} (GET /v1/models)", "model",
                           "model_not_found")
        request, prompt_tokens, stream, include_usage = generation_request(body, self.app.tokenizer, self.app.block_size, self.app.limits, chat)
        events, ended = queue.Queue(), threading.Event()
        request.on_text = events.put
        request.on_done = lambda: (events.put(None), ended.set())
        self.app.scheduler.submit(request)
        rid = new_id(chat)
        if not stream:
            while events.get() is not None:
                pass
            if request.error:
                raise ApiError(500, request.error)
            if request.finish_reason == "cancelled":
                raise ApiError(503, "the server is shutting down; the reply was cut short")
            return self.send_json(200, completion(chat, rid, self.app.model_name, request, prompt_tokens))
        self.stream(chat, rid, request, events, ended, prompt_tokens, include_usage)

    def stream(self, chat, rid, request, events, ended, prompt_tokens, include_usage):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        model = self.app.model_name
        try:
            if chat:
                self.send_event(chunk(chat, rid, model, role=True))
            for text in pieces(events, ended, self.app.stream_interval):
                self.send_event(chunk(chat, rid, model, text))
            if request.error:
                self.send_event(ApiError(500, request.error).body())
            self.send_event(chunk(chat, rid, model, finish_reason=request.finish_reason if request.finish_reason != "cancelled" else "stop"))
            if include_usage:
                self.send_event(chunk(chat, rid, model, usage_of=usage(prompt_tokens, request)))
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            request.cancel()  # the client went away: its row is freed at the next step

    def send_event(self, obj):
        self.wfile.write(b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n")
        self.wfile.flush()

    def check_key(self):
        key = self.app.api_key
        if key and self.headers.get("Authorization", "") != f"Bearer {key}":
            raise ApiError(401, "a valid API key is required: send `Authorization: Bearer KEY`", code="invalid_api_key")

    def read_json(self):
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise ApiError(411, "the request needs a Content-Length header")
        if int(length) > self.app.max_body:
            self.close_connection = True
            if int(length) <= DRAIN_LIMIT:  # read it away, so that the client sees the answer rather than a reset connection
                left = int(length)
                while left > 0 and (piece := self.rfile.read(min(1 << 16, left))):
                    left -= len(piece)
            raise ApiError(413, f"the request body is {int(length):,} bytes; this server takes at most {self.app.max_body:,}")
        raw = self.rfile.read(int(length))
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the request body is not valid JSON ({e})") from None

    def send_json(self, status, obj):
        self.send_body(status, json.dumps(obj, ensure_ascii=False).encode(), "application/json")

    def send_body(self, status, data, content_type, headers=None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def pieces(events, ended, interval_s=0.0):
    """The text a request's queue delivers until its end (None), at most one piece per interval_s (the first at once):
    what arrived meanwhile is joined, so a client gets fewer, larger chunks rather than one event per token, and a
    client that reads slower than tokens come gets no growing backlog. The wait is cut short when the request has
    `ended`, so the last text and the end go out at once."""
    sent = float("-inf")
    while (text := events.get()) is not None:
        wait = sent + interval_s - time.monotonic()
        if wait > 0:
            ended.wait(wait)
        more = []
        while True:
            try:
                following = events.get_nowait()
            except queue.Empty:
                break
            if following is None:
                events.put(None)  # seen by the outer loop next
                break
            more.append(following)
        yield text + "".join(more)
        sent = time.monotonic()


class App:
    """What the handlers share: the model's scheduler, the tokenizer, the limits and the served name."""

    def __init__(self, cfg, model, tokenizer, name):
        self.tokenizer, self.block_size, self.model_name, self.api_key = tokenizer, model.config.block_size, name, cfg.api_key
        self.scheduler = Scheduler(BatchEngine(small_batch_linears(model), tokenizer, cfg.max_batch))
        self.limits = {"max_tokens": cfg.max_tokens or self.block_size, "max_messages": cfg.max_messages,
                       "defaults": {"temperature": cfg.temperature, "top_k": cfg.top_k}}
        self.max_body = cfg.max_body_kb * 1024
        self.stream_interval = cfg.stream_interval_ms / 1000
        self.created = int(time.time())
        self.in_flight, self.lock = 0, threading.Lock()  # POST requests being answered

    def model_card(self):
        return {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "gptkit", "context_length": self.block_size}


class Server(ThreadingHTTPServer):
    """The HTTP server; it knows its open connections, so that stopping can close the idle keep-alive ones (a thread
    left reading one would outlive the interpreter's shutdown)."""

    def __init__(self, address, app):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, Handler)
        self.app, self.connections, self.connections_lock = app, set(), threading.Lock()

    def process_request(self, request, client_address):
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self):
        with self.connections_lock:
            for connection in self.connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)  # its handler's read returns, and the handler ends
                except OSError:
                    pass


def start(cfg, model, tokenizer, name):
    """Bind, start the scheduler and the HTTP loop in threads; returns the server (server.server_address has the port)."""
    app = App(cfg, model, tokenizer, name)
    try:
        server = Server((cfg.host, cfg.port), app)
    except OSError as e:
        raise UsageError(f"cannot listen on {cfg.host}:{cfg.port} ({e.strerror or e}); pick another --port or --host") from None
    app.scheduler.start()
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="http", daemon=True).start()
    return server


def stop(server, grace_s=30):
    """Stop accepting, end the requests in flight (their streams close with [DONE]), wait for the model's thread and for
    the handlers to send their last words."""
    server.shutdown()
    server.app.scheduler.stopping.set()
    server.app.scheduler.join(timeout=grace_s)
    deadline = time.monotonic() + grace_s
    while server.app.in_flight and time.monotonic() < deadline:
        time.sleep(0.02)
    server.close_connections()
    server.server_close()  # joins the handlers' threads


def main():
    cfg = parse_options(ServeConfig, description=__doc__, positional=None)
    if cfg.host not in LOOPBACK and not cfg.api_key:
        print(f"warning: --host={cfg.host} lets other machines reach this server and --api_key is empty: anyone who can reach it "
              "can use it; set --api_key=SECRET", file=sys.stderr, flush=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ckpt = load_any_checkpoint(default_chat_checkpoint(cfg.ckpt))
    device = pick_device(cfg.device)
    model, tokenizer = build_model(ckpt, device)
    precision = for_generation(model, cfg.dtype, device)
    name = cfg.model_name or checkpoint_name(ckpt["path"])
    server = start(cfg, model, tokenizer, name)
    host, port = server.server_address[:2]
    print(f"serving {name} ({model.num_params() / 1e6:.1f}M parameters, context {model.config.block_size} tokens, {precision}) at "
          f"http://{host if ':' not in host else f'[{host}]'}:{port}/ : the chat page there, the OpenAI API under /v1; Ctrl-C stops",
          flush=True)
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    while not stopping.wait(0.5):
        pass
    print("stopping: no new requests; ending the ones in flight", file=sys.stderr, flush=True)
    stop(server)
    print("stopped", file=sys.stderr, flush=True)


def cli():
    """The gptkit-serve command, and `python serve.py`."""
    torch.set_grad_enabled(False)
    run_cli(main)


if __name__ == "__main__":
    cli()
