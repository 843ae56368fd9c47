"""Mapping of HTTP error responses to exceptions."""

from __future__ import annotations

import json

import pytest

from hiber_client import BadRequest, Conflict, HiberConnectionError, HiberError, NotFound, ServerError, Unauthorized
from hiber_client.errors import error_from_json, error_from_response


def body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


@pytest.mark.parametrize(
    "status,cls",
    [
        (400, BadRequest),
        (401, Unauthorized),
        (403, HiberError),
        (404, NotFound),
        (405, HiberError),
        (409, Conflict),
        (413, BadRequest),
        (422, BadRequest),
        (429, HiberError),
        (500, ServerError),
        (502, ServerError),
        (503, ServerError),
        (599, ServerError),
    ],
)
def test_status_to_class(status: int, cls: type) -> None:
    err = error_from_response(status, body("some_code", "what went wrong"))
    assert type(err) is cls
    assert isinstance(err, HiberError)
    assert (err.status, err.code, err.message) == (status, "some_code", "what went wrong")


def test_str_and_repr_name_everything() -> None:
    err = error_from_response(404, body("not_found", "no session abc"))
    assert str(err) == "no session abc (HTTP 404, not_found)"
    assert repr(err) == "NotFound(status=404, code='not_found', message='no session abc')"
    with pytest.raises(NotFound) as info:
        raise err
    assert info.value.status == 404


def test_non_json_body_keeps_class_and_text() -> None:
    err = error_from_response(502, b"<html>Bad Gateway</html>", "Bad Gateway")
    assert type(err) is ServerError
    assert err.code == "bad_gateway"
    assert err.message == "<html>Bad Gateway</html>"


def test_empty_body_uses_reason_phrase() -> None:
    err = error_from_response(401, b"", "Unauthorized")
    assert type(err) is Unauthorized
    assert (err.code, err.message) == ("unauthorized", "Unauthorized")
    err = error_from_response(404, b"")
    assert (err.code, err.message) == ("not_found", "HTTP 404")


def test_json_without_error_shape_falls_back_to_text() -> None:
    err = error_from_response(400, b'{"detail": "nope"}')
    assert type(err) is BadRequest
    assert err.code == "bad_request"
    assert err.message == '{"detail": "nope"}'


def test_lenient_error_shapes() -> None:
    err = error_from_response(404, b'{"error": "no such session"}')
    assert (type(err), err.code, err.message) == (NotFound, "not_found", "no such session")
    err = error_from_response(422, b'{"code": "bad_command", "message": "command is empty"}')
    assert (type(err), err.code, err.message) == (BadRequest, "bad_command", "command is empty")
    err = error_from_response(500, b'{"error": {"code": "internal"}}')
    assert (type(err), err.code, err.message) == (ServerError, "internal", "internal")
    err = error_from_response(400, b'{"error": {"message": "bad json"}}')
    assert (type(err), err.code, err.message) == (BadRequest, "bad_request", "bad json")


def test_long_text_body_truncated() -> None:
    err = error_from_response(500, b"x" * 10_000)
    assert len(err.message) == 500


def test_invalid_utf8_body() -> None:
    err = error_from_response(400, b"\xff\xfe oops")
    assert type(err) is BadRequest
    assert "oops" in err.message


def test_error_from_json_without_status() -> None:
    err = error_from_json(None, {"error": {"code": "sandbox_failed", "message": "agent exited"}})
    assert err is not None and type(err) is HiberError
    assert (err.status, err.code, err.message) == (None, "sandbox_failed", "agent exited")
    assert error_from_json(None, {"seq": 1}) is None
    assert error_from_json(None, [1, 2]) is None


def test_connection_error_is_a_hiber_error() -> None:
    err = HiberConnectionError(None, "connection_error", "cannot reach hiber")
    assert isinstance(err, HiberError)
    assert str(err) == "cannot reach hiber (no response, connection_error)"
