"""The SSE parser, against in-memory byte streams."""

from __future__ import annotations

from typing import List

import pytest

from hiber_client.sse import SSEEvent, SSEParser, iter_sse


def parse(data: bytes, chunk: int = 0) -> List[SSEEvent]:
    """Parse ``data`` whole, or in chunks of ``chunk`` bytes."""
    if chunk <= 0:
        return list(iter_sse([data]))
    return list(iter_sse(data[i : i + chunk] for i in range(0, len(data), chunk)))


def test_single_event() -> None:
    assert parse(b"data: hello\n\n") == [SSEEvent("message", "hello")]


def test_named_event_and_id() -> None:
    evs = parse(b"event: entry\nid: 7\ndata: {\"seq\": 7}\n\n")
    assert evs == [SSEEvent("entry", '{"seq": 7}', id="7")]


def test_multiline_data_joined_with_newline() -> None:
    evs = parse(b"data: one\ndata: two\ndata:\ndata: four\n\n")
    assert [e.data for e in evs] == ["one\ntwo\n\nfour"]


def test_comments_are_ignored() -> None:
    evs = parse(b": keep-alive\n:\ndata: a\n: in the middle\ndata: b\n\n: trailing\n\n")
    assert [e.data for e in evs] == ["a\nb"]


def test_only_comments_dispatch_nothing() -> None:
    assert parse(b": ping\n\n: ping\n\n") == []


def test_event_without_data_is_not_dispatched_and_resets_event_name() -> None:
    evs = parse(b"event: ignored\n\ndata: x\n\n")
    assert evs == [SSEEvent("message", "x")]


def test_empty_data_line_dispatches_empty_string() -> None:
    assert parse(b"data\n\n") == [SSEEvent("message", "")]
    assert parse(b"data:\n\n") == [SSEEvent("message", "")]


def test_only_one_space_after_colon_is_removed() -> None:
    evs = parse(b"data:  two spaces\ndata:none\n\n")
    assert evs[0].data == " two spaces\nnone"


def test_colon_in_value_kept() -> None:
    evs = parse(b'data: {"a": "b:c"}\n\n')
    assert evs[0].data == '{"a": "b:c"}'


def test_field_without_colon_has_empty_value() -> None:
    evs = parse(b"event\ndata: x\n\n")
    assert evs == [SSEEvent("message", "x")]


def test_unknown_fields_ignored() -> None:
    evs = parse(b"foo: bar\ndata: x\nDATA: y\n\n")
    assert [e.data for e in evs] == ["x"]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_line_endings(eol: bytes) -> None:
    stream = eol.join([b"event: e", b"data: 1", b"data: 2", b"", b"data: 3", b"", b""])
    for chunk in (0, 1, 2, 3, 5):
        evs = parse(stream, chunk)
        assert [(e.event, e.data) for e in evs] == [("e", "1\n2"), ("message", "3")], chunk


def test_mixed_line_endings() -> None:
    evs = parse(b"data: a\rdata: b\r\ndata: c\n\r\n")
    assert [e.data for e in evs] == ["a\nb\nc"]


def test_crlf_split_across_chunks_is_one_line_end() -> None:
    p = SSEParser()
    assert p.feed(b"data: a\r") == []
    # The LF completes the CR's line end: it must not count as a blank line.
    assert p.feed(b"\n") == []
    assert p.feed(b"data: b\r") == []
    assert p.feed(b"\n\r") == [SSEEvent("message", "a\nb")]
    assert p.feed(b"\n") == []
    assert p.close() == []


def test_cr_cr_is_a_blank_line() -> None:
    assert parse(b"data: a\r\r") == [SSEEvent("message", "a")]


def test_every_split_point_gives_the_same_events() -> None:
    stream = (
        b"\xef\xbb\xbf: hello\r\nevent: entry\r\nid: 1\r\ndata: {\"seq\":1,\"text\":\"h\xc3\xa9\xe2\x82\xac\"}\r\n\r\n"
        b"retry: 1500\ndata: line1\ndata: line2\n\n"
        b"event: end\rdata: {}\r\r"
    )
    expected = parse(stream)
    assert [(e.event, e.data, e.id, e.retry) for e in expected] == [
        ("entry", '{"seq":1,"text":"h\u00e9\u20ac"}', "1", None),
        ("message", "line1\nline2", "1", 1500),
        ("end", "{}", "1", None),
    ]
    for cut in range(1, len(stream)):
        assert list(iter_sse([stream[:cut], stream[cut:]])) == expected, cut
    assert parse(stream, 1) == expected


def test_bom_skipped_only_at_start() -> None:
    assert parse(b"\xef\xbb\xbfdata: x\n\n") == [SSEEvent("message", "x")]
    # A BOM split across reads is still skipped.
    assert list(iter_sse([b"\xef", b"\xbb", b"\xbfdata: x\n\n"])) == [SSEEvent("message", "x")]
    # Later, U+FEFF is data (here it makes the field name unknown, so nothing is dispatched).
    assert parse(b"data: x\n\n\xef\xbb\xbfdata: y\n\n") == [SSEEvent("message", "x")]


def test_id_persists_and_nul_id_is_ignored() -> None:
    evs = parse(b"id: 1\ndata: a\n\ndata: b\n\nid: 2\x00\ndata: c\n\nid\ndata: d\n\n")
    assert [(e.data, e.id) for e in evs] == [("a", "1"), ("b", "1"), ("c", "1"), ("d", "")]


def test_retry_only_ascii_digits() -> None:
    evs = parse(b"retry: 10\ndata: a\n\nretry: 1x\ndata: b\n\nretry: \xc2\xb2\ndata: c\n\n")
    assert [e.retry for e in evs] == [10, None, None]


def test_incomplete_event_at_end_of_stream_is_dropped() -> None:
    assert parse(b"data: a\n\ndata: b\n") == [SSEEvent("message", "a")]
    assert parse(b"data: a\n\ndata: b") == [SSEEvent("message", "a")]


def test_multibyte_utf8_split_across_chunks() -> None:
    text = "data: \u00e9t\u00e9 \U0001f600\n\n".encode("utf-8")
    assert parse(text, 1) == [SSEEvent("message", "\u00e9t\u00e9 \U0001f600")]


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    assert parse(b"data: a\xffb\n\n") == [SSEEvent("message", "a\ufffdb")]


def test_empty_stream_and_empty_chunks() -> None:
    assert parse(b"") == []
    assert list(iter_sse([b"", b"data: x\n", b"", b"\n", b""])) == [SSEEvent("message", "x")]


def test_incremental_feed_returns_events_as_soon_as_complete() -> None:
    p = SSEParser()
    assert p.feed(b"data: 1\n") == []
    assert p.feed(b"\ndata: 2\n\nda") == [SSEEvent("message", "1"), SSEEvent("message", "2")]
    assert p.feed(b"ta: 3\n\n") == [SSEEvent("message", "3")]
    assert p.last_event_id is None


def test_iter_sse_is_lazy() -> None:
    def chunks():
        yield b"data: first\n\n"
        raise AssertionError("read past the first event")

    it = iter_sse(chunks())
    assert next(it) == SSEEvent("message", "first")


def test_many_events() -> None:
    stream = b"".join(b"id: %d\ndata: {\"seq\": %d}\n\n" % (i, i) for i in range(1, 1001))
    evs = parse(stream, 4096)
    assert len(evs) == 1000
    assert evs[-1].id == "1000"
