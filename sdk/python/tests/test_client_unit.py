"""The client's HTTP plumbing, against a tiny standard-library HTTP server in this process.

These check what the real server cannot be made to do on demand: chunked SSE arriving in
pieces, a connection that breaks, an HTML error page, a refused connection.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List

import pytest

from hiber_client import (
    BadRequest,
    Client,
    HiberConnectionError,
    HiberError,
    NotFound,
    ServerError,
    Session,
    Unauthorized,
)

TOKEN = "secret-token"


def entry(seq: int, kind: str = "assistant", payload: Any = None) -> Dict[str, Any]:
    return {"seq": seq, "time_ms": 1000 + seq, "kind": kind, "payload": payload, "key": None}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    requests: List[Dict[str, Any]] = []
    gate = threading.Event()

    def log_message(self, *args: Any) -> None:
        pass

    def _body(self) -> Any:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        return json.loads(raw) if raw else None

    def _send_json(self, status: int, obj: Any) -> None:
        raw = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _handle(self, method: str) -> None:
        body = self._body()
        Handler.requests.append(
            {"method": method, "path": self.path, "auth": self.headers.get("Authorization"), "body": body,
             "accept": self.headers.get("Accept")}
        )
        if self.path == "/healthz":
            return self._send_json(200, {"ok": True})
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._send_json(401, {"error": {"code": "unauthorized", "message": "bad or missing token"}})
        if self.path == "/v1/sessions" and method == "POST":
            if not body or "command" not in body:
                return self._send_json(400, {"error": {"code": "bad_request", "message": "command is required"}})
            return self._send_json(201, {"id": "s1", "state": "running", "last_seq": 0, "snapshot": None})
        if self.path == "/v1/sessions" and method == "GET":
            return self._send_json(200, {"sessions": [{"id": "s1", "state": "idle", "last_seq": 2, "snapshot": "snap1"}]})
        if self.path == "/v1/sessions/s1" and method == "GET":
            return self._send_json(200, {"id": "s1", "state": "suspended", "last_seq": 3, "snapshot": "snap2",
                                         "image": "busybox"})
        if self.path == "/v1/sessions/s1" and method == "DELETE":
            self.send_response(204)
            self.end_headers()
            return
        if self.path.startswith("/v1/sessions/s1/context?") and "follow=true" not in self.path:
            return self._send_json(200, {"entries": [entry(1, "user", "hi"), entry(2)]})
        if self.path == "/v1/sessions/s1/messages":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self._chunk(b": ok\n\n")
            self._chunk(b"event: entry\nid: 1\ndata: " + json.dumps(entry(1, "user", body["content"])).encode()[:10])
            self._chunk(json.dumps(entry(1, "user", body["content"])).encode()[10:] + b"\n\n")
            # The client must see entry 1 before the server goes on.
            Handler.gate.wait(5)
            self._chunk(b"event: entry\r\ndata: " + json.dumps(entry(2, "assistant", "pong")).encode() + b"\r\n\r\n")
            self._chunk(b'event: done\ndata: {"last_seq":2}\n\n')
            self._chunk(b"")
            return
        if self.path == "/v1/sessions/cut/messages":
            # One entry, then a clean end of the stream without `done`.
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self._chunk(b"event: entry\ndata: " + json.dumps(entry(1, "user", "x")).encode() + b"\n\n")
            self._chunk(b"")
            return
        if self.path == "/v1/sessions/json/messages":
            return self._send_json(200, {"entries": [entry(1, "user", "x"), entry(2)]})
        if "follow=true" in self.path:
            # Two entries, then the connection breaks mid-event.
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self._chunk(b"data: " + json.dumps(entry(3)).encode() + b"\n\n")
            self._chunk(b"data: " + json.dumps(entry(4)).encode() + b"\n\n")
            self._chunk(b"data: {\"seq\"")
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        if self.path == "/v1/sessions/html":
            raw = b"<html>oops</html>"
            self.send_response(502)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)
            return
        if self.path == "/v1/sessions/big":
            return self._send_json(413, {"error": {"code": "payload_too_large", "message": "body too large"}})
        if self.path == "/v1/sessions/crash":
            return self._send_json(500, {"error": {"code": "internal", "message": "boom"}})
        return self._send_json(404, {"error": {"code": "not_found", "message": f"no session at {self.path}"}})

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def client(server: str) -> Client:
    Handler.requests.clear()
    return Client(server, token=TOKEN, timeout=5)


def test_token_read_from_home(tmp_path, monkeypatch) -> None:
    (tmp_path / "api-token").write_text("abc123\n")
    assert Client(home=str(tmp_path)).token == "abc123"
    monkeypatch.setenv("HIBER_HOME", str(tmp_path))
    assert Client().token == "abc123"
    assert Client(token="explicit").token == "explicit"
    monkeypatch.setenv("HIBER_TOKEN", "from-env")
    assert Client().token == "from-env"
    assert Client(token="explicit").token == "explicit"
    monkeypatch.delenv("HIBER_TOKEN")
    assert Client(home=str(tmp_path / "missing")).token is None


def test_token_file_written_after_the_client_was_made(server: str, tmp_path) -> None:
    c = Client(server, home=str(tmp_path))
    assert c.token is None
    (tmp_path / "api-token").write_text(TOKEN + "\n")
    assert [x.id for x in c.sessions()] == ["s1"]
    assert Handler.requests[-1]["auth"] == f"Bearer {TOKEN}"


def test_base_url_forms(monkeypatch) -> None:
    assert Client(token="t").base_url == "http://127.0.0.1:7070"
    monkeypatch.setenv("HIBER_SERVER", "http://10.0.0.1:9000/")
    assert Client(token="t").base_url == "http://10.0.0.1:9000"
    assert Client("127.0.0.1:7070/", token="t").base_url == "http://127.0.0.1:7070"
    assert Client("http://h:1/prefix/", token="t").base_url == "http://h:1/prefix"
    with pytest.raises(ValueError):
        Client("ftp://h", token="t")


def test_create_list_show_delete(client: Client) -> None:
    s = client.create_session(image="busybox", command=["sleep", "1000"], env={"A": "1"}, idle_timeout_s=5)
    assert isinstance(s, Session)
    assert (s.id, s.state) == ("s1", "running")
    req = Handler.requests[-1]
    assert req["body"] == {"image": "busybox", "command": ["sleep", "1000"], "env": {"A": "1"}, "idle_timeout_s": 5}
    assert req["auth"] == f"Bearer {TOKEN}"
    assert [(x.id, x.snapshot) for x in client.sessions()] == [("s1", "snap1")]
    assert s.refresh() is s
    assert (s.state, s.last_seq, s.snapshot, s.raw["image"]) == ("suspended", 3, "snap2", "busybox")
    assert s.info().id == "s1"
    s.delete()
    assert Handler.requests[-1]["method"] == "DELETE"


def test_create_session_validates_arguments(client: Client) -> None:
    with pytest.raises(ValueError):
        client.create_session(image="a", snapshot="b", command=["x"])
    with pytest.raises(TypeError):
        client.create_session(image="a", command="sleep 10")  # type: ignore[arg-type]
    with pytest.raises(BadRequest) as info:
        client.create_session(image="busybox")
    assert info.value.message == "command is required"


def test_context(client: Client) -> None:
    s = client.session("s1")
    entries = s.context(after=0, limit=10)
    assert [(e.seq, e.kind) for e in entries] == [(1, "user"), (2, "assistant")]
    assert Handler.requests[-1]["path"] == "/v1/sessions/s1/context?after=0&limit=10"


def test_send_streams_entries_as_they_arrive(client: Client) -> None:
    Handler.gate.clear()
    s = client.session("s1")
    stream = s.send({"text": "ping"})
    assert Handler.requests[-1]["body"] == {"content": {"text": "ping"}}
    assert Handler.requests[-1]["accept"] == "text/event-stream"
    first = next(stream)  # arrives while the server is still holding the turn open
    assert (first.seq, first.kind, first.payload) == (1, "user", {"text": "ping"})
    assert stream.last_seq == 1
    Handler.gate.set()
    rest = list(stream)
    assert [(e.seq, e.payload) for e in rest] == [(2, "pong")]
    assert stream.closed and stream.last_seq == 2
    assert stream.done == {"last_seq": 2}


def test_send_and_wait(client: Client) -> None:
    Handler.gate.set()
    entries = client.session("s1").send_and_wait("ping")
    assert [e.seq for e in entries] == [1, 2]


def test_broken_stream_raises_connection_error(client: Client) -> None:
    stream = client.follow("s1", after=2)
    assert Handler.requests[-1]["path"] == "/v1/sessions/s1/context?after=2&follow=true"
    assert next(stream).seq == 3
    assert next(stream).seq == 4
    with pytest.raises(HiberConnectionError) as info:
        next(stream)
    assert "broke" in info.value.message
    assert stream.last_seq == 4 and stream.closed and stream.done is None


def test_closing_a_stream_early(client: Client) -> None:
    Handler.gate.clear()
    with client.session("s1").send("x") as stream:
        assert next(stream).seq == 1
    assert stream.closed
    assert list(stream) == []
    Handler.gate.set()


def test_error_statuses(client: Client) -> None:
    with pytest.raises(NotFound) as info:
        client.session("nope")
    assert info.value.code == "not_found" and info.value.status == 404
    with pytest.raises(ServerError) as info2:
        client.session("html")
    assert info2.value.message == "<html>oops</html>"
    with pytest.raises(BadRequest):
        client.session("big")
    with pytest.raises(ServerError):
        client.session("crash")


def test_session_id_is_quoted(client: Client) -> None:
    with pytest.raises(NotFound):
        client.session("a/b?c")
    assert Handler.requests[-1]["path"] == "/v1/sessions/a%2Fb%3Fc"


def test_bad_and_missing_token(server: str, tmp_path) -> None:
    with pytest.raises(Unauthorized):
        Client(server, token="wrong").sessions()
    with pytest.raises(Unauthorized) as info:
        Client(server, home=str(tmp_path)).sessions()
    assert "api-token" in info.value.message
    assert Client(server, token="wrong").healthz() == {"ok": True}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connection_refused() -> None:
    c = Client(f"http://127.0.0.1:{free_port()}", token="t")
    with pytest.raises(HiberConnectionError) as info:
        c.sessions()
    err = info.value
    assert isinstance(err, HiberError) and err.status is None and err.code == "connection_error"
    assert "cannot reach hiber at http://127.0.0.1:" in err.message
    assert "refused" in err.message


def test_timeout_is_a_connection_error() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # accepts nothing: the request hangs until the timeout
        c = Client(f"http://127.0.0.1:{listener.getsockname()[1]}", token="t", timeout=0.3)
        t0 = time.monotonic()
        with pytest.raises(HiberConnectionError) as info:
            c.sessions()
        assert time.monotonic() - t0 < 5
        assert "timed out" in info.value.message


def test_early_error_answer_beats_a_broken_pipe() -> None:
    """A server that answers 413 and closes before reading a large body: the 413 wins."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(4096)  # the headers and a little of the body
                raw = json.dumps({"error": {"code": "payload_too_large", "message": "too big"}}).encode()
                conn.sendall(
                    b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\n"
                    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(raw), raw)
                )
                conn.shutdown(socket.SHUT_WR)
                time.sleep(0.2)
                # Closing with unread data makes the kernel reset the connection.

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        c = Client(f"http://127.0.0.1:{listener.getsockname()[1]}", token="t", timeout=5)
        with pytest.raises(BadRequest) as info:
            c.send("s1", "x" * (8 << 20))
        t.join(5)
        assert info.value.status == 413 and info.value.message == "too big"


def test_a_turn_cut_short_raises(client: Client) -> None:
    stream = client.send("cut", "x")
    assert next(stream).seq == 1
    with pytest.raises(HiberError) as info:
        next(stream)
    assert info.value.code == "incomplete_turn"
    assert "after seq 1" in info.value.message
    assert stream.closed and stream.done is None


def test_a_turn_answered_as_json(client: Client) -> None:
    stream = client.send("json", "x")
    assert [e.seq for e in stream] == [1, 2]
    assert stream.done == {"last_seq": 2}
