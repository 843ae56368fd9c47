"""hiber-client: a Python client of hiber's HTTP API.

>>> from hiber_client import Client
>>> c = Client()                      # token from $HIBER_HOME/api-token
>>> s = c.create_session(image="debian", command=["python3", "/agent.py"])
>>> for entry in s.send("hello"):
...     print(entry.seq, entry.kind, entry.payload)
"""

from .client import DEFAULT_HOME, DEFAULT_URL, Client, EntryStream, Session, entries_from_events
from .errors import (
    BadRequest,
    Conflict,
    HiberConnectionError,
    HiberError,
    NotFound,
    ServerError,
    Unauthorized,
    error_from_json,
    error_from_response,
)
from .models import Entry, SessionInfo
from .sse import SSEEvent, SSEParser, iter_sse

__version__ = "0.1.0"

__all__ = [
    "Client",
    "Session",
    "SessionInfo",
    "Entry",
    "EntryStream",
    "HiberError",
    "Unauthorized",
    "NotFound",
    "BadRequest",
    "ServerError",
    "Conflict",
    "HiberConnectionError",
    "SSEEvent",
    "SSEParser",
    "iter_sse",
    "entries_from_events",
    "error_from_response",
    "error_from_json",
    "DEFAULT_URL",
    "DEFAULT_HOME",
]
