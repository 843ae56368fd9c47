"""The client against a real `hiber serve` (see conftest.py for when these skip)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from hiber_client import BadRequest, Client, HiberConnectionError, HiberError, NotFound, Session, Unauthorized

pytestmark = pytest.mark.integration

STATES = {"running", "idle", "suspended", "sleeping", "failed"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_healthz(server) -> None:
    assert server.client().healthz() is not None
    # /healthz needs no token.
    assert Client(server.url, token="wrong").healthz() is not None


def test_openapi(server) -> None:
    doc = server.client().openapi()
    assert "paths" in doc
    assert any(p.startswith("/v1/sessions") for p in doc["paths"])


def test_bad_token_is_unauthorized(server) -> None:
    with pytest.raises(Unauthorized) as info:
        Client(server.url, token="not-the-token").sessions()
    err = info.value
    assert err.status == 401 and err.code == "unauthorized" and err.message


def test_missing_token_is_unauthorized(server, tmp_path) -> None:
    # A home without an api-token file: the client sends no token at all.
    c = Client(server.url, home=str(tmp_path))
    assert c.token is None
    with pytest.raises(Unauthorized) as info:
        c.sessions()
    assert "api-token" in info.value.message


def test_token_read_from_the_servers_home(server) -> None:
    c = Client(server.url, home=str(server.home))
    assert c.token == server.token
    assert isinstance(c.sessions(), list)


def test_unknown_session_is_not_found(server) -> None:
    c = server.client()
    with pytest.raises(NotFound) as info:
        c.session("no-such-session")
    assert info.value.status == 404 and info.value.code == "not_found"
    with pytest.raises(NotFound):
        c.context("no-such-session")
    with pytest.raises(NotFound):
        c.delete_session("no-such-session")
    with pytest.raises(NotFound):
        c.send("no-such-session", "hello")


def test_bad_requests(server) -> None:
    c = server.client()
    with pytest.raises(BadRequest) as info:
        c.create_session(image="busybox", command=[])
    assert info.value.status in (400, 422)
    with pytest.raises(BadRequest):
        c.create_session(command=["sleep", "1"])  # neither image nor snapshot


def test_connection_refused(server) -> None:
    with pytest.raises(HiberConnectionError):
        Client(f"http://127.0.0.1:{free_port()}", token=server.token).sessions()


def test_session_lifecycle(server) -> None:
    c = server.client()
    s = c.create_session(image="busybox", command=["sleep", "1000"], env={"HELLO": "world"}, idle_timeout_s=60)
    try:
        assert isinstance(s, Session)
        assert s.id
        assert s.state in STATES

        listed = {x.id: x for x in c.sessions()}
        assert s.id in listed
        assert listed[s.id].state in STATES

        shown = c.session(s.id)
        assert shown.id == s.id
        assert shown.state in STATES - {"failed"}, shown.raw
        assert shown.last_seq == 0
        assert s.refresh() is s and s.state == shown.state

        assert s.context() == []
        assert s.context(after=0, limit=10) == []
    finally:
        s.delete()
    with pytest.raises(NotFound):
        c.session(s.id)
    assert s.id not in {x.id for x in c.sessions()}


# A counting agent speaking the in-sandbox SDK's wire protocol directly (one JSON line
# per call on hiber-init's socket), so these tests need nothing but python3 in the image.
AGENT = r'''
import json, socket
def call(req):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect("/run/hiber/sdk.sock")
    s.sendall(json.dumps(req).encode() + b"\n")
    buf = b""
    while not buf.endswith(b"\n"):
        d = s.recv(65536)
        if not d:
            raise SystemExit("the SDK socket closed")
        buf += d
    s.close()
    answer = json.loads(buf)
    if not answer.get("ok"):
        raise SystemExit("SDK call failed: %r" % (answer,))
    return answer["result"]
n = 0
while True:
    message = call({"op": "next_message"})
    n += 1
    call({"op": "append", "kind": "assistant", "payload": {"count": n, "echo": message["content"]}})
    call({"op": "append", "kind": "event", "payload": {"turn": n}})
'''


def agent_session(server, image: str, idle_timeout_s: int) -> Session:
    c = server.client(stream_timeout=120)
    return c.create_session(image=image, command=["python3", "-c", AGENT], idle_timeout_s=idle_timeout_s)


def test_turns_stream_and_the_log_keeps_them(server, debian) -> None:
    s = agent_session(server, debian, idle_timeout_s=600)
    try:
        with s.send({"text": "one"}) as stream:
            first = next(stream)
            assert (first.seq, first.kind, first.payload) == (1, "user", {"text": "one"})
            rest = list(stream)
        assert [(e.seq, e.kind) for e in rest] == [(2, "assistant"), (3, "event")]
        assert rest[0].payload == {"count": 1, "echo": {"text": "one"}}
        assert stream.done == {"last_seq": 3} and stream.last_seq == 3

        turn2 = s.send_and_wait("two")
        assert [(e.seq, e.kind) for e in turn2] == [(4, "user"), (5, "assistant"), (6, "event")]
        assert turn2[1].payload == {"count": 2, "echo": "two"}

        log = s.context()
        assert [e.seq for e in log] == [1, 2, 3, 4, 5, 6]
        assert [e.kind for e in log] == ["user", "assistant", "event"] * 2
        assert log[:3] == [first, *rest]
        assert all(e.time_ms > 1_600_000_000_000 for e in log)
        assert [e.seq for e in s.context(after=2, limit=3)] == [3, 4, 5]
        assert s.context(after=6) == []

        with s.follow(after=4) as live:
            assert [next(live).seq, next(live).seq] == [5, 6]
        assert live.closed

        s.refresh()
        assert s.last_seq == 6 and s.state in ("idle", "suspended")
    finally:
        s.delete()


def test_a_suspended_session_is_restored_by_send(server, debian, criu) -> None:
    s = agent_session(server, debian, idle_timeout_s=1)
    try:
        assert [e.payload for e in s.send_and_wait("a") if e.kind == "assistant"] == [{"count": 1, "echo": "a"}]
        deadline = time.monotonic() + 60
        while s.refresh().state != "suspended":
            assert s.state in ("running", "idle"), s.raw
            assert time.monotonic() < deadline, f"not suspended after 60 s: {s.raw}"
            time.sleep(0.1)
        assert s.snapshot
        turn = s.send_and_wait("b")
        # The agent's in-memory counter carried on across the snapshot and restore.
        assert [e.payload for e in turn if e.kind == "assistant"] == [{"count": 2, "echo": "b"}]
        assert [e.seq for e in s.context()] == [1, 2, 3, 4, 5, 6]
    finally:
        s.delete()


def test_more_bad_requests(server) -> None:
    c = server.client()
    before = {x.id for x in c.sessions()}
    with pytest.raises(BadRequest):
        c.create_session(image="no-such-image", command=["sleep", "1"])
    with pytest.raises(BadRequest):
        c.create_session(image="busybox", command=["sleep", "1"], idle_timeout_s=0)
    with pytest.raises(BadRequest):
        c.create_session(image="busybox", command=["sleep", "1"], env={"A=B": "1"})
    with pytest.raises(BadRequest):
        c.create_session(snapshot="no-such-snapshot")
    # None of them left a session behind.
    assert {x.id for x in c.sessions()} == before


def test_oversized_message_is_rejected(server) -> None:
    c = server.client()
    s = c.create_session(image="busybox", command=["sleep", "1000"], idle_timeout_s=600)
    try:
        with pytest.raises(BadRequest) as info:
            s.send("x" * (2 << 20))
        assert info.value.status == 413 and info.value.code == "payload_too_large"
        assert s.context() == []
    finally:
        s.delete()


def test_deleting_a_session_mid_turn_ends_its_stream_with_an_error(server) -> None:
    c = server.client(stream_timeout=60)
    # `sleep` never asks for a message: the turn would wait for ever.
    s = c.create_session(image="busybox", command=["sleep", "1000"], idle_timeout_s=600)
    stream = s.send("hello")
    assert next(stream).kind == "user"
    t = threading.Timer(0.3, s.delete)
    t.start()
    with pytest.raises(HiberError) as info:
        next(stream)
    t.join()
    assert info.value.code == "incomplete_turn"
    with pytest.raises(NotFound):
        s.refresh()


def test_server_killed_mid_turn_then_restarted(own_home) -> None:
    """kill -9 of the server during a turn: the stream raises HiberConnectionError; a new
    server on the same home has the session and its user entry."""
    from conftest import prerequisites, start_server, stop

    binary = prerequisites()
    first = start_server(binary, own_home)
    try:
        c = first.client(stream_timeout=60)
        s = c.create_session(image="busybox", command=["sleep", "1000"], idle_timeout_s=600)
        stream = s.send({"text": "are you there?"})
        assert next(stream).seq == 1
        stop(first, kill=True)
        with pytest.raises(HiberConnectionError) as info:
            next(stream)
        assert info.value.status is None and "broke" in info.value.message
        with pytest.raises(HiberConnectionError):
            c.session(s.id)
    finally:
        stop(first, kill=True)

    second = start_server(binary, own_home)
    try:
        c2 = second.client()
        assert c2.token == c.token  # the token file is kept
        again = c2.session(s.id)
        assert again.last_seq == 1
        assert [(e.seq, e.kind, e.payload) for e in again.context()] == [(1, "user", {"text": "are you there?"})]
        again.delete()
        assert s.id not in {x.id for x in c2.sessions()}
    finally:
        stop(second)


def test_the_readme_example_runs(server, debian, monkeypatch, capsys) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.setenv("HIBER_SERVER", server.url)
    monkeypatch.setenv("HIBER_HOME", str(server.home))
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "1 user {'text': 'hello'}"
    assert out[1] == "2 assistant {'echo': {'text': 'hello'}}"
    assert out[2] in ("idle 2", "suspended 2")
    assert out[3] == "['user', 'assistant']"
    assert out[4].startswith("404 not_found no session")
