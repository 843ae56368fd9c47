"""Tests of the in-sandbox SDK against the real hiber-init binary.

hiber-init runs as an ordinary process with its run directory in a temp dir
(HIBER_INIT_RUNDIR); the test plays the host's relay by speaking hiber's
protocol on the control socket (frames: u32 LE length, tag byte, payload;
tag 0 is a JSON control message).

Run from the repository root after `cargo build -p hiber-init`:

    python3 -m unittest sdk/agent/test_hiber.py     (or python3 -m pytest sdk/agent)

HIBER_INIT_BIN overrides the binary's path.
"""

import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import hiber  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(HERE))
INIT_BIN = os.environ.get("HIBER_INIT_BIN") or os.path.join(
    ROOT, "target", "x86_64-unknown-linux-gnu", "debug", "hiber-init"
)
TIMEOUT = 10.0


def frame(payload, tag=0):
    return struct.pack("<IB", len(payload), tag) + payload


def read_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None if not data else data
        data += chunk
    return data


class Relay:
    """The host's side of a Serve connection."""

    def __init__(self, socket_path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(socket_path)
        self.sock.sendall(frame(b'{"op":"serve"}'))

    def next_frame(self):
        header = read_exact(self.sock, 5)
        if header is None:
            return None
        length, tag = struct.unpack("<IB", header)
        return tag, read_exact(self.sock, length)

    def next_call(self):
        """The next call as (number, request)."""
        got = self.next_frame()
        assert got is not None, "relay closed"
        tag, payload = got
        assert tag == 0, tag
        reply = json.loads(payload)
        assert reply["reply"] == "call", reply
        return reply["call"], reply["request"]

    def answer(self, call, response):
        body = json.dumps({"call": call, "response": response}).encode()
        self.sock.sendall(frame(body))

    def close(self):
        self.sock.close()


class Background:
    """Runs an SDK function in a thread (SDK calls block)."""

    def __init__(self, fn, *args, **kwargs):
        self.result = None
        self.error = None
        self.thread = threading.Thread(target=self._run, args=(fn, args, kwargs), daemon=True)
        self.thread.start()

    def _run(self, fn, args, kwargs):
        try:
            self.result = fn(*args, **kwargs)
        except BaseException as e:  # handed to the test
            self.error = e

    def wait(self):
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "the SDK call did not return"
        if self.error is not None:
            raise self.error
        return self.result

    def running(self):
        return self.thread.is_alive()


@unittest.skipUnless(
    os.path.isfile(INIT_BIN), "hiber-init not built at {} (cargo build -p hiber-init)".format(INIT_BIN)
)
class SdkAgainstHiberInit(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        env = dict(os.environ, HIBER_INIT_RUNDIR=self.dir.name)
        self.init = subprocess.Popen(
            [INIT_BIN], env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.control = os.path.join(self.dir.name, "init.sock")
        self.sdk_socket = os.path.join(self.dir.name, "sdk.sock")
        deadline = time.monotonic() + TIMEOUT
        while not (os.path.exists(self.control) and os.path.exists(self.sdk_socket)):
            self.assertIsNone(self.init.poll(), "hiber-init exited")
            self.assertLess(time.monotonic(), deadline, "hiber-init never listened")
            time.sleep(0.01)
        self.saved_env = os.environ.get(hiber.SOCKET_ENV)
        os.environ[hiber.SOCKET_ENV] = self.sdk_socket
        self.relays = []

    def tearDown(self):
        for relay in self.relays:
            relay.close()
        if self.saved_env is None:
            os.environ.pop(hiber.SOCKET_ENV, None)
        else:
            os.environ[hiber.SOCKET_ENV] = self.saved_env
        self.init.kill()
        self.init.wait()
        self.dir.cleanup()

    def relay(self):
        relay = Relay(self.control)
        self.relays.append(relay)
        return relay

    def roundtrip(self, fn, args, expected_request, response, kwargs=None):
        """Runs fn, checks the call the relay gets, answers it, returns fn's result."""
        call = Background(fn, *args, **(kwargs or {}))
        relay = self.relay()
        number, request = relay.next_call()
        self.assertEqual(request, expected_request)
        relay.answer(number, response)
        try:
            return call.wait()
        finally:
            relay.close()
            self.relays.remove(relay)

    def test_each_function_sends_its_op_and_returns_its_result(self):
        content = self.roundtrip(
            hiber.next_message, (), {"op": "next_message"},
            {"ok": True, "result": {"seq": 4, "content": {"text": "hi"}}},
        )
        self.assertEqual(content, {"text": "hi"})
        entry = {"seq": 5, "kind": "assistant", "payload": {"text": "yo"}, "key": None}
        got = self.roundtrip(
            hiber.append, ("assistant", {"text": "yo"}),
            {"op": "append", "kind": "assistant", "payload": {"text": "yo"}, "key": None},
            {"ok": True, "result": entry},
        )
        self.assertEqual(got, entry)
        self.roundtrip(
            hiber.append, ("tool_call", [1, 2]),
            {"op": "append", "kind": "tool_call", "payload": [1, 2], "key": "k1"},
            {"ok": True, "result": {"seq": 6}}, kwargs={"key": "k1"},
        )
        entries = [{"seq": 3}, {"seq": 4}]
        got = self.roundtrip(
            hiber.history, (), {"op": "history", "after": 0}, {"ok": True, "result": entries}
        )
        self.assertEqual(got, entries)
        self.roundtrip(
            hiber.history, (2,), {"op": "history", "after": 2}, {"ok": True, "result": []}
        )
        got = self.roundtrip(
            hiber.sleep, (1.5,), {"op": "sleep", "seconds": 1.5}, {"ok": True, "result": None}
        )
        self.assertIsNone(got)
        got = self.roundtrip(
            hiber.session_id, (), {"op": "session_id"}, {"ok": True, "result": "s-123"}
        )
        self.assertEqual(got, "s-123")

    def test_errors_raise_hiber_error(self):
        with self.assertRaises(hiber.Error) as caught:
            self.roundtrip(
                hiber.append, ("nonsense", 1),
                {"op": "append", "kind": "nonsense", "payload": 1, "key": None},
                {"ok": False, "error": "unknown kind 'nonsense'"},
            )
        self.assertEqual(str(caught.exception), "unknown kind 'nonsense'")
        with self.assertRaises(hiber.Error):
            self.roundtrip(hiber.session_id, (), {"op": "session_id"}, {"ok": True, "result": 7})
        with self.assertRaises(hiber.Error):
            self.roundtrip(hiber.next_message, (), {"op": "next_message"}, {"weird": True})

    def test_no_socket_is_an_error(self):
        os.environ[hiber.SOCKET_ENV] = os.path.join(self.dir.name, "nowhere.sock")
        with self.assertRaises(hiber.Error) as caught:
            hiber.session_id()
        self.assertIn("cannot reach hiber-init", str(caught.exception))

    def test_a_call_waits_for_a_relay_and_survives_the_relay_going_away(self):
        call = Background(hiber.next_message)
        time.sleep(0.2)
        self.assertTrue(call.running(), "no relay yet: the call waits")
        first = self.relay()
        number, _ = first.next_call()
        # The host detaches (as before a snapshot): the call stays pending.
        first.close()
        time.sleep(0.2)
        self.assertTrue(call.running())
        second = self.relay()
        again, request = second.next_call()
        self.assertEqual((again, request), (number, {"op": "next_message"}))
        second.answer(number, {"ok": True, "result": {"seq": 1, "content": "after restore"}})
        self.assertEqual(call.wait(), "after restore")

    def test_concurrent_calls_get_their_own_answers(self):
        calls = [Background(hiber.append, "event", {"n": n}) for n in range(8)]
        relay = self.relay()
        received = [relay.next_call() for _ in calls]
        for number, request in reversed(received):
            relay.answer(number, {"ok": True, "result": {"echo": request["payload"]["n"]}})
        self.assertEqual([c.wait()["echo"] for c in calls], list(range(8)))


if __name__ == "__main__":
    unittest.main()
