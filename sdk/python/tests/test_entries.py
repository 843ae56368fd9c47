"""Entries and sessions from JSON, and SSE events to entries."""

from __future__ import annotations

import json

import pytest

from hiber_client import Entry, HiberError, NotFound, SessionInfo, entries_from_events, iter_sse


def stream(text: str):
    return entries_from_events(iter_sse([text.encode()]))


def entry_json(seq: int, kind: str = "assistant", payload=None, key=None) -> str:
    return json.dumps({"seq": seq, "time_ms": 1700000000000 + seq, "kind": kind, "payload": payload, "key": key})


def test_entry_from_json() -> None:
    e = Entry.from_json({"seq": 3, "time_ms": 12, "kind": "user", "payload": {"text": "hi"}, "key": "k1"})
    assert e == Entry(seq=3, time_ms=12, kind="user", payload={"text": "hi"}, key="k1")
    assert e.to_json() == {"seq": 3, "time_ms": 12, "kind": "user", "payload": {"text": "hi"}, "key": "k1"}
    e = Entry.from_json({"seq": 1, "time_ms": 5, "kind": "event", "payload": None})
    assert e.key is None and "key" not in e.to_json()


@pytest.mark.parametrize("bad", [{}, {"seq": 1}, {"kind": "user"}, {"seq": "x", "kind": "user"}, [1]])
def test_malformed_entry(bad) -> None:
    with pytest.raises(ValueError):
        Entry.from_json(bad)


def test_session_info_from_json_keeps_extra_fields() -> None:
    s = SessionInfo.from_json({"id": "s1", "state": "idle", "last_seq": 4, "snapshot": None, "image": "busybox"})
    assert (s.id, s.state, s.last_seq, s.snapshot) == ("s1", "idle", 4, None)
    assert s.raw["image"] == "busybox"
    with pytest.raises(ValueError):
        SessionInfo.from_json({"state": "idle"})


def test_entries_from_default_and_named_events() -> None:
    text = (
        f"data: {entry_json(1, 'user', 'hi')}\n\n"
        ": keep-alive\n\n"
        f"event: entry\nid: 2\ndata: {entry_json(2, 'assistant', {'text': 'hello'})}\n\n"
    )
    entries = list(stream(text))
    assert [(e.seq, e.kind, e.payload) for e in entries] == [(1, "user", "hi"), (2, "assistant", {"text": "hello"})]


def test_entry_wrapped_under_entry_key() -> None:
    text = f'event: entry\ndata: {{"entry": {entry_json(5)}}}\n\n'
    assert [e.seq for e in stream(text)] == [5]


def test_multiline_json_data() -> None:
    lines = json.dumps({"seq": 9, "time_ms": 1, "kind": "tool_call", "payload": {"a": [1, 2]}}, indent=1).splitlines()
    text = "".join(f"data: {line}\n" for line in lines) + "\n"
    assert [(e.seq, e.payload) for e in stream(text)] == [(9, {"a": [1, 2]})]


def test_done_event_stops_the_stream_and_reports_its_data() -> None:
    text = f'data: {entry_json(1)}\n\nevent: done\ndata: {{"last_seq": 1}}\n\ndata: {entry_json(2)}\n\n'
    seen = []
    assert [e.seq for e in entries_from_events(iter_sse([text.encode()]), on_end=seen.append)] == [1]
    assert seen == [{"last_seq": 1}]
    assert [e.seq for e in stream(f"data: {entry_json(1)}\n\nevent: end\ndata:\n\n")] == [1]


def test_stream_of_the_real_servers_send() -> None:
    """What axum's Sse writes for a turn: `event`, `id`, `data` lines, keep-alive comments."""
    text = (
        f"event: entry\nid: 3\ndata: {entry_json(3, 'user', {'text': 'hi'})}\n\n"
        ":\n\n"
        f"event: entry\nid: 4\ndata: {entry_json(4, 'assistant', {'count': 1})}\n\n"
        'event: done\ndata: {"last_seq":4}\n\n'
    )
    seen = []
    entries = list(entries_from_events(iter_sse([text.encode()]), on_end=seen.append))
    assert [(e.seq, e.kind) for e in entries] == [(3, "user"), (4, "assistant")]
    assert seen == [{"last_seq": 4}]


def test_unknown_events_and_non_entries_are_skipped() -> None:
    text = (
        'event: state\ndata: {"state": "running"}\n\n'
        f"data: {entry_json(1)}\n\n"
        "event: ping\ndata:\n\n"
    )
    assert [e.seq for e in stream(text)] == [1]


def test_error_event_raises_after_earlier_entries() -> None:
    text = (
        f"data: {entry_json(1)}\n\n"
        'event: error\ndata: {"error": {"code": "sandbox_failed", "message": "the agent exited with 1"}}\n\n'
    )
    it = stream(text)
    assert next(it).seq == 1
    with pytest.raises(HiberError) as info:
        next(it)
    assert (info.value.code, info.value.message) == ("sandbox_failed", "the agent exited with 1")


def test_error_event_with_status_maps_class() -> None:
    text = 'event: error\ndata: {"status": 404, "error": {"code": "not_found", "message": "gone"}}\n\n'
    with pytest.raises(NotFound):
        list(stream(text))


def test_error_event_with_plain_text() -> None:
    with pytest.raises(HiberError) as info:
        list(stream("event: error\ndata: boom\n\n"))
    assert info.value.message == "boom"


def test_non_json_data_is_an_error() -> None:
    with pytest.raises(HiberError) as info:
        list(stream("data: not json\n\n"))
    assert info.value.code == "bad_response"
