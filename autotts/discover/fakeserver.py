"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1, for the tests and the bench:
a real HTTP server (http.server, one thread per connection) that the real `openai` client talks to.

Each POST /v1/chat/completions consumes the next step of the script:
    {"content": "..."}                 a normal completion with that message text
    {"status": 429}                    an error status (any code), optional "retry_after" seconds
    {"sleep": 2.0}                     answer only after `sleep` seconds (a client timeout), then
                                       fall through to the rest of the step (e.g. a content)
    {"raw": "not json"}                a 200 whose body is this text
    {"json": {...}}                    a 200 whose body is this JSON object (malformed responses)
A script may also be a function body -> step. Requests (parsed bodies) are recorded in
`requests`; `count` is their number. Usage is reported as len(text) // 4 tokens each way, so
costs are deterministic.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Step = dict[str, Any]


class FakeOpenAI:
    def __init__(self, script: Sequence[Step] | Callable[[dict[str, Any]], Step],
                 model: str = "fake-model") -> None:
        self.script = script if callable(script) else list(script)
        self.model = model
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self._pos = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def count(self) -> int:
        return len(self.requests)

    @property
    def url(self) -> str:
        assert self._server is not None, "server not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def _next(self, body: dict[str, Any]) -> Step:
        with self.lock:
            self.requests.append(body)
            if callable(self.script):
                return self.script(body)
            if self._pos >= len(self.script):
                return {"status": 500, "message": "fake server: script exhausted"}
            step = self.script[self._pos]
            self._pos += 1
            return step

    def completion(self, body: dict[str, Any], content: str) -> dict[str, Any]:
        prompt_chars = sum(len(str(m.get("content", ""))) for m in body.get("messages", []))
        n = self.count
        return {
            "id": f"chatcmpl-fake-{n}",
            "object": "chat.completion",
            "created": 1700000000 + n,
            "model": body.get("model", self.model),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": prompt_chars // 4, "completion_tokens": len(content) // 4,
                      "total_tokens": prompt_chars // 4 + len(content) // 4},
        }

    def start(self) -> FakeOpenAI:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, payload: bytes, headers: dict[str, str] | None = None,
                      ctype: str = "application/json") -> None:
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(payload)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout step)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, b'{"error": {"message": "not found"}}')
                    return
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError:
                    self._send(400, b'{"error": {"message": "bad json"}}')
                    return
                step = fake._next(body)
                if step.get("sleep"):
                    time.sleep(float(step["sleep"]))
                if "status" in step and step["status"] != 200:
                    err = {"error": {"message": step.get("message", f"HTTP {step['status']}"),
                                     "type": "fake", "code": step["status"]}}
                    headers = {}
                    if "retry_after" in step:
                        headers["Retry-After"] = str(step["retry_after"])
                    self._send(int(step["status"]), json.dumps(err).encode(), headers)
                elif "raw" in step:
                    self._send(200, str(step["raw"]).encode(), ctype="text/plain")
                elif "json" in step:
                    self._send(200, json.dumps(step["json"]).encode())
                else:
                    payload = fake.completion(body, str(step.get("content", "")))
                    self._send(200, json.dumps(payload).encode())

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
