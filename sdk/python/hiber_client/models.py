"""Plain data classes for what the API returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional

__all__ = ["Entry", "SessionInfo"]

ENTRY_KINDS = ("system", "user", "assistant", "tool_call", "tool_result", "event")


@dataclass(frozen=True)
class Entry:
    """One entry of a session's append-only context log."""

    #: Position in the session's log: 1 for the first entry, then dense.
    seq: int
    #: When it was appended, in milliseconds since the Unix epoch.
    time_ms: int
    #: One of ``system``, ``user``, ``assistant``, ``tool_call``, ``tool_result``, ``event``.
    kind: str
    #: Any JSON value.
    payload: Any
    #: The idempotency key it was appended with, if any.
    key: Optional[str] = None

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "Entry":
        """Build an entry from its JSON object; raises ``ValueError`` on a malformed one."""
        if not isinstance(obj, Mapping):
            raise ValueError(f"an entry must be a JSON object, got {type(obj).__name__}")
        try:
            seq = int(obj["seq"])
            kind = str(obj["kind"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"malformed entry {dict(obj)!r}: {e}") from None
        time_ms = obj.get("time_ms", obj.get("time", 0))
        key = obj.get("key")
        return cls(
            seq=seq,
            time_ms=int(time_ms) if time_ms is not None else 0,
            kind=kind,
            payload=obj.get("payload"),
            key=str(key) if key is not None else None,
        )

    def to_json(self) -> Dict[str, Any]:
        """The entry as a JSON-ready dict."""
        d: Dict[str, Any] = {
            "seq": self.seq,
            "time_ms": self.time_ms,
            "kind": self.kind,
            "payload": self.payload,
        }
        if self.key is not None:
            d["key"] = self.key
        return d


@dataclass
class SessionInfo:
    """What the server says about a session (``GET /v1/sessions/{id}``)."""

    #: The session's id.
    id: str
    #: ``running``, ``idle``, ``suspended``, ``sleeping`` or ``failed``.
    state: str
    #: The seq of the last entry of its context log (0 when empty).
    last_seq: int = 0
    #: The id of its latest snapshot, if it has one.
    snapshot: Optional[str] = None
    #: Every field of the server's JSON object, including those not named above.
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "SessionInfo":
        """Build it from the server's JSON object; raises ``ValueError`` on a malformed one."""
        if not isinstance(obj, Mapping) or "id" not in obj:
            raise ValueError(f"malformed session object: {obj!r}")
        last_seq = obj.get("last_seq")
        snapshot = obj.get("snapshot")
        return cls(
            id=str(obj["id"]),
            state=str(obj.get("state", "")),
            last_seq=int(last_seq) if last_seq is not None else 0,
            snapshot=str(snapshot) if snapshot is not None else None,
            raw=dict(obj),
        )
