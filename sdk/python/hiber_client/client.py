"""The HTTP client: :class:`Client`, :class:`Session` and :class:`EntryStream`."""

from __future__ import annotations

import http.client
import json
import math
import os
import socket
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import quote, urlencode, urlsplit

from .errors import HiberConnectionError, HiberError, Unauthorized, error_from_json, error_from_response
from .models import Entry, SessionInfo
from .sse import SSEEvent, iter_sse

__all__ = ["Client", "Session", "EntryStream", "DEFAULT_URL", "DEFAULT_HOME"]

DEFAULT_URL = "http://127.0.0.1:7070"
DEFAULT_HOME = "/var/lib/hiber"
USER_AGENT = "hiber-client-python/0.1.0"

# Event names that end a stream, and the one that carries an error.
_END_EVENTS = frozenset({"done", "end", "close"})
_ERROR_EVENT = "error"

_Timeout = Optional[float]


def _read_token(home: str) -> Optional[str]:
    try:
        with open(os.path.join(home, "api-token"), encoding="utf-8") as f:
            token = f.read().strip()
    except OSError:
        return None
    return token or None


def _items(obj: Any, key: str) -> List[Any]:
    """A JSON list, either bare or wrapped as ``{key: [...]}``."""
    if isinstance(obj, list):
        return obj
    if isinstance(obj, dict):
        inner = obj.get(key)
        if isinstance(inner, list):
            return inner
    raise HiberError(None, "bad_response", f"expected a JSON list of {key}, got {json.dumps(obj)[:200]}")


class Client:
    """A client of one hiber server's HTTP API.

    ``base_url`` is where ``hiber serve`` listens (default ``$HIBER_SERVER``, else
    ``http://127.0.0.1:7070``, as for the CLI). ``token`` is the bearer token; when it
    is not given it is ``$HIBER_TOKEN``, else the contents of ``<home>/api-token``,
    where ``home`` defaults to ``$HIBER_HOME`` or ``/var/lib/hiber`` (the server writes
    that file on its first start; a client made before that reads it at its first
    request). ``timeout`` bounds each plain request, in seconds; streams (``send``,
    ``follow``) wait as long as the turn takes unless ``stream_timeout`` is set.

    Every method raises :class:`~hiber_client.HiberError` (or a subclass) on failure.
    The client keeps no connection open between calls and is safe to share between
    threads.
    """

    def __init__(
        self,
        base_url: Optional[str] = None,
        token: Optional[str] = None,
        home: Optional[str] = None,
        *,
        timeout: _Timeout = 30.0,
        stream_timeout: _Timeout = None,
    ) -> None:
        if base_url is None:
            base_url = os.environ.get("HIBER_SERVER") or DEFAULT_URL
        parts = urlsplit(base_url if "://" in base_url else "http://" + base_url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"unsupported URL scheme {parts.scheme!r} in {base_url!r}: use http or https")
        if not parts.hostname:
            raise ValueError(f"no host in URL {base_url!r}")
        self.base_url = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self.home = home or os.environ.get("HIBER_HOME") or DEFAULT_HOME
        if token is None:
            token = os.environ.get("HIBER_TOKEN") or None
        self._token_from_file = token is None
        self.token = token if token is not None else _read_token(self.home)
        self.timeout = timeout
        self.stream_timeout = stream_timeout

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"

    # -- sessions ------------------------------------------------------------------

    def create_session(
        self,
        image: Optional[str] = None,
        snapshot: Optional[str] = None,
        command: Optional[Sequence[str]] = None,
        env: Optional[Mapping[str, str]] = None,
        idle_timeout_s: Optional[float] = None,
    ) -> "Session":
        """Start a session: a sandbox from ``image`` (or restored from ``snapshot``)
        running ``command`` (a list of strings: the agent), with ``env`` added to its
        environment. ``idle_timeout_s`` is how long the agent may wait for a message
        before the server snapshots and stops the sandbox, in whole seconds (a fraction
        is rounded up; the server's default, 3 s, when ``None``)."""
        if image is not None and snapshot is not None:
            raise ValueError("give an image or a snapshot, not both")
        if isinstance(command, (str, bytes)):
            raise TypeError("command must be a list of strings, e.g. ['python3', 'agent.py']")
        body: Dict[str, Any] = {}
        if image is not None:
            body["image"] = image
        if snapshot is not None:
            body["snapshot"] = snapshot
        if command is not None:
            body["command"] = [str(a) for a in command]
        if env is not None:
            body["env"] = {str(k): str(v) for k, v in env.items()}
        if idle_timeout_s is not None:
            body["idle_timeout_s"] = int(math.ceil(idle_timeout_s))
        obj = self._json("POST", "/v1/sessions", body=body)
        if isinstance(obj, dict) and isinstance(obj.get("session"), dict):
            obj = obj["session"]
        info = self._session_info(obj)
        return Session._make(self, info)

    def sessions(self) -> List["Session"]:
        """Every session the server knows (``GET /v1/sessions``)."""
        obj = self._json("GET", "/v1/sessions")
        return [Session._make(self, self._session_info(o)) for o in _items(obj, "sessions")]

    def session(self, id: str) -> "Session":
        """One session by id (``GET /v1/sessions/{id}``); :class:`NotFound` if there is none."""
        return Session._make(self, self._session_info(self._json("GET", self._session_path(id))))

    def delete_session(self, id: str) -> None:
        """Delete a session: its sandbox, snapshots and log (``DELETE /v1/sessions/{id}``)."""
        self._json("DELETE", self._session_path(id), allow_empty=True)

    def send(self, id: str, content: Any) -> "EntryStream":
        """Deliver a user message to session ``id``; see :meth:`Session.send`."""
        return self._stream("POST", self._session_path(id) + "/messages", body={"content": content}, turn=True)

    def context(self, id: str, after: int = 0, limit: Optional[int] = None) -> List[Entry]:
        """Entries of session ``id``'s log with ``seq > after``, at most ``limit`` of them."""
        query: Dict[str, Any] = {"after": int(after)}
        if limit is not None:
            query["limit"] = int(limit)
        obj = self._json("GET", self._session_path(id) + "/context", query=query)
        return [self._entry(o) for o in _items(obj, "entries")]

    def follow(self, id: str, after: int = 0) -> "EntryStream":
        """Stream session ``id``'s entries with ``seq > after``, then new ones as they come."""
        query = {"after": int(after), "follow": "true"}
        return self._stream("GET", self._session_path(id) + "/context", query=query)

    # -- server --------------------------------------------------------------------

    def healthz(self) -> Any:
        """``GET /healthz``: the server's answer (parsed JSON, or its text) when it is up."""
        return self._json("GET", "/healthz", allow_empty=True, auth=False)

    def openapi(self) -> Dict[str, Any]:
        """The server's OpenAPI description (``GET /openapi.json``)."""
        obj = self._json("GET", "/openapi.json")
        if not isinstance(obj, dict):
            raise HiberError(None, "bad_response", "the OpenAPI description is not a JSON object")
        return obj

    # -- HTTP ----------------------------------------------------------------------

    def _session_path(self, id: str) -> str:
        if not id:
            raise ValueError("empty session id")
        return "/v1/sessions/" + quote(str(id), safe="")

    @staticmethod
    def _session_info(obj: Any) -> SessionInfo:
        try:
            return SessionInfo.from_json(obj)
        except ValueError as e:
            raise HiberError(None, "bad_response", str(e)) from None

    @staticmethod
    def _entry(obj: Any) -> Entry:
        try:
            return Entry.from_json(obj)
        except ValueError as e:
            raise HiberError(None, "bad_response", str(e)) from None

    def _connection(self, timeout: _Timeout) -> http.client.HTTPConnection:
        if self._scheme == "https":
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout)
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def _open(
        self,
        method: str,
        path: str,
        *,
        query: Optional[Mapping[str, Any]] = None,
        body: Any = None,
        accept: str = "application/json",
        timeout: _Timeout,
        auth: bool = True,
    ) -> Tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send a request; return the open connection and a successful response.

        Raises the mapped :class:`HiberError` for a status >= 400 and
        :class:`HiberConnectionError` when the server cannot be reached.
        """
        url = self._prefix + path
        if query:
            url += "?" + urlencode(query)
        headers = {"Accept": accept, "User-Agent": USER_AGENT}
        if self.token is None and self._token_from_file:
            self.token = _read_token(self.home)
        if auth and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data: Optional[bytes] = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        conn = self._connection(timeout)
        try:
            try:
                conn.request(method, url, body=data, headers=headers)
            except (BrokenPipeError, ConnectionResetError) as send_error:
                # The server may answer (e.g. 413) and close before reading the whole
                # body: its answer, when there is one, says more than the broken pipe.
                try:
                    resp = conn.getresponse()
                except (OSError, http.client.HTTPException):
                    raise send_error from None
            else:
                resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise HiberConnectionError(
                None, "connection_error", f"cannot reach hiber at {self.base_url} ({method} {path}): {_describe(e)}"
            ) from e
        if resp.status >= 400:
            try:
                raw = resp.read()
            except (OSError, http.client.HTTPException):
                raw = b""
            finally:
                conn.close()
            err = error_from_response(resp.status, raw, resp.reason)
            if isinstance(err, Unauthorized) and self.token is None and self._token_from_file:
                err.message += f" (no token given, and none could be read from {os.path.join(self.home, 'api-token')})"
            raise err
        return conn, resp

    def _json(
        self,
        method: str,
        path: str,
        *,
        query: Optional[Mapping[str, Any]] = None,
        body: Any = None,
        allow_empty: bool = False,
        auth: bool = True,
    ) -> Any:
        conn, resp = self._open(method, path, query=query, body=body, timeout=self.timeout, auth=auth)
        try:
            raw = resp.read()
        except (OSError, http.client.HTTPException) as e:
            raise HiberConnectionError(
                None, "connection_error", f"connection to hiber at {self.base_url} broke ({method} {path}): {_describe(e)}"
            ) from e
        finally:
            conn.close()
        text = raw.decode("utf-8", errors="replace").strip()
        if not text:
            if allow_empty:
                return None
            raise HiberError(resp.status, "bad_response", f"empty response to {method} {path}")
        try:
            return json.loads(text)
        except ValueError:
            if allow_empty:
                return text
            raise HiberError(resp.status, "bad_response", f"{method} {path} did not answer JSON: {text[:200]!r}") from None

    def _stream(
        self,
        method: str,
        path: str,
        *,
        query: Optional[Mapping[str, Any]] = None,
        body: Any = None,
        turn: bool = False,
    ) -> "EntryStream":
        conn, resp = self._open(
            method, path, query=query, body=body, accept="text/event-stream", timeout=self.stream_timeout
        )
        return EntryStream(conn, resp, f"{method} {path}", self.base_url, turn=turn)


def _describe(e: BaseException) -> str:
    if isinstance(e, socket.timeout):
        return "timed out"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused (is `hiber serve` running?)"
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class EntryStream(Iterator[Entry]):
    """The entries of a streamed response, as they arrive.

    Iterate it (it is its own iterator); it ends when the server ends the stream (for
    ``send``: when the agent waits for the next message). Use it as a context manager,
    or call :meth:`close`, to drop the connection early. ``last_seq`` is the seq of the
    last entry yielded (0 before the first), to resume with ``follow(after=last_seq)``.

    ``done`` is the data of the server's closing ``done`` event (for ``send``:
    ``{"last_seq": N}``, the log's last seq when the agent waited again), or ``None``
    while the stream runs or when it ended without one.

    An ``error`` event in the stream raises the :class:`HiberError` it carries; a
    connection that breaks mid-stream raises :class:`HiberConnectionError`. The stream
    of a turn (``send``) that ends without the server's ``done`` event raises
    :class:`HiberError` with code ``incomplete_turn`` (e.g. the session was deleted
    meanwhile); a ``follow`` stream simply ends.
    """

    def __init__(
        self,
        conn: http.client.HTTPConnection,
        resp: http.client.HTTPResponse,
        what: str = "stream",
        base_url: str = "",
        *,
        turn: bool = False,
    ) -> None:
        self._conn = conn
        self._turn = turn
        self._resp = resp
        self._what = what
        self._base_url = base_url
        self.last_seq = 0
        self.closed = False
        self.done: Optional[Dict[str, Any]] = None
        ctype = (resp.getheader("Content-Type") or "").split(";")[0].strip().lower()
        if ctype == "application/json":
            self._gen: Iterator[Entry] = self._from_json()
        else:
            self._gen = entries_from_events(iter_sse(self._chunks()), on_end=self._on_end)

    def __iter__(self) -> "EntryStream":
        return self

    def __next__(self) -> Entry:
        if self.closed:
            raise StopIteration
        try:
            entry = next(self._gen)
        except StopIteration:
            self.close()
            if self._turn and self.done is None:
                raise HiberError(
                    None,
                    "incomplete_turn",
                    f"the stream of {self._what} ended before the turn did (no `done` event after seq "
                    f"{self.last_seq}): the session was deleted, or the server stopped",
                ) from None
            raise
        except BaseException:
            self.close()
            raise
        self.last_seq = entry.seq
        return entry

    def __enter__(self) -> "EntryStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    def close(self) -> None:
        """Drop the connection; further iteration ends at once."""
        if self.closed:
            return
        self.closed = True
        try:
            self._resp.close()
        finally:
            self._conn.close()

    def _on_end(self, data: Any) -> None:
        self.done = data if isinstance(data, dict) else {"data": data}

    def _chunks(self) -> Iterator[bytes]:
        while True:
            try:
                chunk = self._resp.read1(65536)
            except (OSError, http.client.HTTPException, ValueError) as e:
                if self.closed:
                    return
                raise HiberConnectionError(
                    None,
                    "connection_error",
                    f"the stream of {self._what} from hiber at {self._base_url} broke: {_describe(e)}",
                ) from e
            if not chunk:
                return
            yield chunk

    def _from_json(self) -> Iterator[Entry]:
        # A server may answer a stream request with a plain JSON list of entries.
        raw = b"".join(self._chunks())
        try:
            obj = json.loads(raw.decode("utf-8", errors="replace") or "[]")
        except ValueError:
            raise HiberError(self._resp.status, "bad_response", f"{self._what}: not JSON: {raw[:200]!r}") from None
        for o in _items(obj, "entries"):
            yield Client._entry(o)
        self._on_end({"last_seq": self.last_seq})


def entries_from_events(
    events: Iterable[SSEEvent], on_end: Optional[Callable[[Any], None]] = None
) -> Iterator[Entry]:
    """Turn SSE events into entries.

    * an event whose data is an entry object (``{"seq", "kind", ...}``, or such an
      object under ``"entry"``) gives that entry, whatever the event's name;
    * an ``error`` event (or data ``{"error": ...}``) raises the :class:`HiberError` it carries;
    * a ``done`` (or ``end``/``close``) event ends the stream; ``on_end`` gets its
      data (parsed JSON, else the text);
    * anything else (other events, empty data) is skipped.
    """
    for ev in events:
        name = ev.event.lower()
        if name in _END_EVENTS:
            if on_end is not None:
                try:
                    on_end(json.loads(ev.data) if ev.data.strip() else None)
                except ValueError:
                    on_end(ev.data)
            return
        data = ev.data.strip()
        if not data:
            if name == _ERROR_EVENT:
                raise HiberError(None, "stream_error", "the server reported an error in the stream")
            continue
        try:
            obj = json.loads(data)
        except ValueError:
            if name == _ERROR_EVENT:
                raise HiberError(None, "stream_error", data) from None
            raise HiberError(None, "bad_response", f"an SSE event's data is not JSON: {data[:200]!r}") from None
        if isinstance(obj, dict) and (name == _ERROR_EVENT or "error" in obj):
            status = obj.get("status") if isinstance(obj.get("status"), int) else None
            err = error_from_json(status, obj)
            if err is None and name == _ERROR_EVENT:
                err = HiberError(status, "stream_error", data[:500])
            if err is not None:
                raise err
        if isinstance(obj, dict) and isinstance(obj.get("entry"), dict):
            obj = obj["entry"]
        if isinstance(obj, dict) and "seq" in obj and "kind" in obj:
            yield Client._entry(obj)


@dataclass
class Session(SessionInfo):
    """A session on a server: its info (:class:`SessionInfo` fields) plus the calls on it.

    ``id``, ``state``, ``last_seq`` and ``snapshot`` are as of the last call that
    fetched them; :meth:`refresh` fetches them again.
    """

    _client: Optional[Client] = field(default=None, repr=False, compare=False)

    @classmethod
    def _make(cls, client: Client, info: SessionInfo) -> "Session":
        return cls(
            id=info.id, state=info.state, last_seq=info.last_seq, snapshot=info.snapshot, raw=info.raw, _client=client
        )

    @property
    def client(self) -> Client:
        if self._client is None:
            raise HiberError(None, "no_client", "this Session is not attached to a Client")
        return self._client

    def info(self) -> SessionInfo:
        """The plain data, without the client."""
        return SessionInfo(id=self.id, state=self.state, last_seq=self.last_seq, snapshot=self.snapshot, raw=dict(self.raw))

    def refresh(self) -> "Session":
        """Fetch the session's state again (in place); returns ``self``."""
        fresh = self.client.session(self.id)
        self.state, self.last_seq, self.snapshot, self.raw = fresh.state, fresh.last_seq, fresh.snapshot, fresh.raw
        return self

    def delete(self) -> None:
        """Delete the session: its sandbox, snapshots and log."""
        self.client.delete_session(self.id)

    def send(self, content: Any) -> EntryStream:
        """Send a user message (any JSON value) and stream the turn.

        The message is appended to the log and handed to the agent when ``send``
        returns (a suspended session is restored first). Iterate the result to get the
        turn's entries as they are appended, the user entry itself first, until the
        agent waits for the next message.
        """
        return self.client.send(self.id, content)

    def send_and_wait(self, content: Any) -> List[Entry]:
        """Send a user message and return every entry of the turn (the user entry
        first) once the agent waits again."""
        with self.send(content) as stream:
            return list(stream)

    def context(self, after: int = 0, limit: Optional[int] = None) -> List[Entry]:
        """The log's entries with ``seq > after`` (at most ``limit`` of them), in order."""
        return self.client.context(self.id, after=after, limit=limit)

    def follow(self, after: int = 0) -> EntryStream:
        """The log's entries with ``seq > after``, then new entries live, until the server
        ends the stream or you close it."""
        return self.client.follow(self.id, after=after)


