"""Exceptions raised by the client, and the mapping from HTTP responses to them."""

from __future__ import annotations

import json
from typing import Any, Dict, Optional, Type

__all__ = [
    "HiberError",
    "Unauthorized",
    "NotFound",
    "BadRequest",
    "ServerError",
    "Conflict",
    "HiberConnectionError",
    "error_from_response",
    "error_from_json",
]


class HiberError(Exception):
    """An error from hiber's API, or from talking to it.

    ``status`` is the HTTP status code (``None`` when no response came back at all),
    ``code`` the server's machine-readable error code (e.g. ``"not_found"``) and
    ``message`` its human-readable explanation.
    """

    def __init__(self, status: Optional[int], code: str, message: str) -> None:
        self.status = status
        self.code = code
        self.message = message
        super().__init__(status, code, message)

    def __str__(self) -> str:
        where = f"HTTP {self.status}" if self.status is not None else "no response"
        return f"{self.message} ({where}, {self.code})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, message={self.message!r})"


class Unauthorized(HiberError):
    """401: no bearer token, or a wrong one."""


class NotFound(HiberError):
    """404: no such session (or route)."""


class BadRequest(HiberError):
    """400, 413 or 422: the request was malformed, too large, or not acceptable."""


class Conflict(HiberError):
    """409: the request conflicts with the session's state."""


class ServerError(HiberError):
    """5xx: the server failed to do what was asked."""


class HiberConnectionError(HiberError):
    """The server could not be reached, or the connection broke mid-response.

    ``status`` is ``None`` and ``code`` is ``"connection_error"``.
    """


def _class_for(status: int) -> Type[HiberError]:
    if status == 401:
        return Unauthorized
    if status == 404:
        return NotFound
    if status in (400, 413, 422):
        return BadRequest
    if status == 409:
        return Conflict
    if 500 <= status <= 599:
        return ServerError
    return HiberError


def _default_code(status: int) -> str:
    return {
        400: "bad_request",
        401: "unauthorized",
        403: "forbidden",
        404: "not_found",
        405: "method_not_allowed",
        409: "conflict",
        413: "payload_too_large",
        415: "unsupported_media_type",
        422: "unprocessable_entity",
        429: "too_many_requests",
        500: "internal",
        502: "bad_gateway",
        503: "unavailable",
        504: "gateway_timeout",
    }.get(status, f"http_{status}")


def error_from_json(status: Optional[int], obj: Any) -> Optional[HiberError]:
    """Build the exception for an already-decoded JSON error body.

    Accepts ``{"error": {"code": ..., "message": ...}}`` (hiber's shape) and, leniently,
    ``{"error": "message"}`` or ``{"code": ..., "message": ...}``. Returns ``None`` when
    ``obj`` does not look like an error.
    """
    if not isinstance(obj, dict):
        return None
    err: Any = obj.get("error", obj)
    code: Optional[str] = None
    message: Optional[str] = None
    if isinstance(err, dict):
        c, m = err.get("code"), err.get("message")
        code = str(c) if c is not None else None
        message = str(m) if m is not None else None
    elif isinstance(err, str):
        message = err
    if code is None and message is None:
        return None
    if status is None:
        cls: Type[HiberError] = HiberError
        code = code or "error"
    else:
        cls = _class_for(status)
        code = code or _default_code(status)
    return cls(status, code, message or code)


def error_from_response(status: int, body: bytes, reason: str = "") -> HiberError:
    """Map an HTTP error response (status >= 400) to the matching exception.

    The body is parsed as hiber's JSON error ``{"error":{"code":"...","message":"..."}}``;
    anything else (an empty body, plain text, HTML from a proxy) still gives an exception
    of the right class, with a code derived from the status and the body's text (or the
    reason phrase) as the message.
    """
    text = body.decode("utf-8", errors="replace").strip() if body else ""
    if text:
        try:
            obj: Dict[str, Any] = json.loads(text)
        except ValueError:
            obj = {}
        err = error_from_json(status, obj)
        if err is not None:
            return err
    message = text[:500] if text else (reason or f"HTTP {status}")
    return _class_for(status)(status, _default_code(status), message)
