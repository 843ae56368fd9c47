"""hiber: the in-sandbox SDK of a durable agent session.

Inside a hiber sandbox, the agent's code talks to its session through
hiber-init's Unix socket (``/run/hiber/sdk.sock``, or ``$HIBER_SDK_SOCKET``),
which relays every call to the hiber server::

    import hiber

    while True:
        message = hiber.next_message()        # blocks; may span a snapshot
        hiber.append("assistant", {"text": "you said: " + str(message)})

Each call opens its own connection, sends one JSON object on one line and
reads one JSON line back, so the functions are safe to use from any number
of threads. A call that blocks (``next_message``, ``sleep``) just waits on its
socket: the connection lives inside the sandbox, so it is carried through a
snapshot and the call returns after the restore.

Every failure reported by the server or hiber-init raises :class:`Error`.
Pure Python, standard library only, Python 3.9+.
"""

import json
import os
import socket

__all__ = [
    "Error",
    "next_message",
    "append",
    "history",
    "sleep",
    "session_id",
    "SOCKET_ENV",
    "DEFAULT_SOCKET",
]

#: Environment variable naming the SDK socket.
SOCKET_ENV = "HIBER_SDK_SOCKET"
#: The SDK socket inside every hiber sandbox.
DEFAULT_SOCKET = "/run/hiber/sdk.sock"

_READ_SIZE = 64 * 1024


class Error(Exception):
    """A call failed: the server refused it, or hiber-init cannot be reached."""


def _socket_path():
    return os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


def _call(request):
    """Sends one call and returns its result, or raises :class:`Error`."""
    line = json.dumps(request, separators=(",", ":"), allow_nan=False).encode("utf-8")
    path = _socket_path()
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError as e:
        raise Error("cannot open a socket: {}".format(e)) from e
    with sock:
        try:
            sock.connect(path)
        except OSError as e:
            raise Error("cannot reach hiber-init at {}: {}".format(path, e)) from e
        try:
            sock.sendall(line + b"\n")
            received = bytearray()
            while b"\n" not in received:
                chunk = sock.recv(_READ_SIZE)
                if not chunk:
                    raise Error("hiber-init closed the connection before answering")
                received += chunk
        except OSError as e:
            raise Error("talking to hiber-init at {}: {}".format(path, e)) from e
    answer_line = bytes(received[: received.index(b"\n")])
    try:
        answer = json.loads(answer_line.decode("utf-8"))
    except ValueError as e:
        raise Error("bad answer from hiber-init: {}".format(e)) from e
    if not isinstance(answer, dict):
        raise Error("bad answer from hiber-init: not a JSON object")
    if answer.get("ok") is True:
        return answer.get("result")
    error = answer.get("error")
    raise Error(str(error) if error else "the call failed without saying why")


def _expect(result, kind, what):
    if not isinstance(result, kind):
        raise Error("bad answer to {}: {!r}".format(what, result))
    return result


def next_message():
    """Waits for the session's next message and returns its content.

    Blocks for as long as it takes; the sandbox may be snapshotted and
    restored meanwhile, and the call returns after the restore.
    """
    result = _expect(_call({"op": "next_message"}), dict, "next_message")
    if "content" not in result:
        raise Error("bad answer to next_message: no content")
    return result["content"]


def append(kind, payload, key=None):
    """Appends an entry to the session's context log and returns it (a dict
    with at least ``seq``, ``kind`` and ``payload``).

    ``kind`` is one of system, user, assistant, tool_call, tool_result, event;
    ``payload`` is any JSON value. With ``key``, a retried append returns the
    entry already made instead of adding a second one.
    """
    request = {"op": "append", "kind": kind, "payload": payload, "key": key}
    return _expect(_call(request), dict, "append")


def history(after=0):
    """Returns the context log's entries numbered above ``after``, oldest
    first, as a list of dicts."""
    return _expect(_call({"op": "history", "after": after}), list, "history")


def sleep(seconds):
    """Sleeps for ``seconds``: the session may be snapshotted and stopped,
    and is restored when the time comes. Returns when woken."""
    _call({"op": "sleep", "seconds": seconds})


def session_id():
    """Returns the id of the session this sandbox runs."""
    return _expect(_call({"op": "session_id"}), str, "session_id")
