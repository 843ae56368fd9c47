"""A Server-Sent Events (``text/event-stream``) parser.

It follows the WHATWG HTML specification's "event stream interpretation":

* lines end with CRLF, LF or CR (a CRLF split across two reads is still one line end);
* a UTF-8 byte order mark at the very start of the stream is skipped;
* a line starting with ``:`` is a comment (servers send them as keep-alives);
* ``field:value`` sets a field, one space after the colon is dropped, a line without a
  colon is a field with an empty value; ``event``, ``data``, ``id`` and ``retry`` are
  known, any other field is ignored;
* several ``data`` lines join with ``\\n``;
* a blank line dispatches the event; an event without any ``data`` line is not dispatched;
* an unterminated event at the end of the stream is dropped.

The parser is incremental and does no I/O: feed it bytes in chunks of any size
(:meth:`SSEParser.feed`) or hand :func:`iter_sse` an iterable of chunks.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from typing import Iterable, Iterator, List, Optional

__all__ = ["SSEEvent", "SSEParser", "iter_sse"]


@dataclass(frozen=True)
class SSEEvent:
    """One dispatched event."""

    #: The ``event:`` field, ``"message"`` when the event had none.
    event: str
    #: The ``data:`` lines joined with ``\\n``.
    data: str
    #: The last event id seen on the stream so far (the ``id:`` field persists across events).
    id: Optional[str] = None
    #: The ``retry:`` field of this event in milliseconds, if it had a valid one.
    retry: Optional[int] = None


class SSEParser:
    """Incremental SSE parser: bytes in, :class:`SSEEvent` out."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buf = ""
        self._started = False
        self._pending_cr = False
        self._event = ""
        self._data: List[str] = []
        self._has_data = False
        self._retry: Optional[int] = None
        self.last_event_id: Optional[str] = None

    def feed(self, chunk: bytes) -> List[SSEEvent]:
        """Add bytes; return the events completed by them (possibly none)."""
        text = self._decoder.decode(chunk)
        return self._feed_text(text)

    def close(self) -> List[SSEEvent]:
        """Signal the end of the stream.

        Returns the events still completed by buffered input (a final line ending
        decoded only now); an event without its terminating blank line is dropped,
        as the specification says.
        """
        text = self._decoder.decode(b"", final=True)
        events = self._feed_text(text)
        # A last line without a line ending is an incomplete line: per the spec the
        # stream ended before the event was dispatched, so it is discarded.
        self._buf = ""
        self._reset_event()
        return events

    # -- internals ---------------------------------------------------------------

    def _feed_text(self, text: str) -> List[SSEEvent]:
        if not text:
            return []
        if not self._started:
            if self._buf == "" and text.startswith("\ufeff"):
                text = text[1:]
            if text:
                self._started = True
        if self._pending_cr:
            # The previous chunk ended with CR: an LF right after belongs to that line end.
            self._pending_cr = False
            if text.startswith("\n"):
                text = text[1:]
        events: List[SSEEvent] = []
        buf = self._buf + text
        start = 0
        n = len(buf)
        i = 0
        while i < n:
            c = buf[i]
            if c == "\n" or c == "\r":
                line = buf[start:i]
                if c == "\r":
                    if i + 1 < n:
                        if buf[i + 1] == "\n":
                            i += 1
                    else:
                        self._pending_cr = True
                ev = self._line(line)
                if ev is not None:
                    events.append(ev)
                start = i + 1
            i += 1
        self._buf = buf[start:]
        return events

    def _line(self, line: str) -> Optional[SSEEvent]:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
            self._has_data = True
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif name == "retry":
            if value.isdigit() and value.isascii():
                self._retry = int(value)
        return None

    def _dispatch(self) -> Optional[SSEEvent]:
        if not self._has_data:
            self._reset_event()
            return None
        ev = SSEEvent(
            event=self._event or "message",
            data="\n".join(self._data),
            id=self.last_event_id,
            retry=self._retry,
        )
        self._reset_event()
        return ev

    def _reset_event(self) -> None:
        self._event = ""
        self._data = []
        self._has_data = False
        self._retry = None


def iter_sse(chunks: Iterable[bytes]) -> Iterator[SSEEvent]:
    """Parse an iterable of byte chunks (of any sizes) into events, lazily."""
    parser = SSEParser()
    for chunk in chunks:
        if chunk:
            yield from parser.feed(chunk)
    yield from parser.close()
