"""Fixtures: a real `hiber serve` process on a private HIBER_HOME.

The integration tests need root and a `hiber` binary that has the `serve` command
(`cargo build --workspace` at the repository's root). Without them they are skipped with
the reason, except when the environment variable CI is set: then a missing
prerequisite is a failure, as in the project's other end-to-end tests.

HIBER_BIN overrides the binary (default: the repository's
target/x86_64-unknown-linux-gnu/debug/hiber, else target/debug/hiber).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, NoReturn, Optional

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from hiber_client import Client, HiberError  # noqa: E402

REPO = Path(__file__).resolve().parents[3]


def skip_or_fail(reason: str) -> NoReturn:
    """Skip with ``reason``, or fail when CI is set (a missing prerequisite is a failure there)."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}, and CI is set: a missing prerequisite is a failure", pytrace=False)
    pytest.skip(reason)


def hiber_binary() -> Optional[Path]:
    env = os.environ.get("HIBER_BIN")
    if env:
        return Path(env)
    for rel in ("target/x86_64-unknown-linux-gnu/debug/hiber", "target/debug/hiber"):
        p = REPO / rel
        if p.is_file():
            return p
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mounts_below(d: Path) -> List[str]:
    out = []
    with open("/proc/mounts") as f:
        for line in f:
            fields = line.split(" ")
            if len(fields) > 1:
                m = fields[1].replace("\\040", " ")
                if m == str(d) or m.startswith(str(d) + "/"):
                    out.append(m)
    return out


@dataclass
class Server:
    """A running `hiber serve`."""

    binary: Path
    home: Path
    url: str
    token: str
    process: Optional[subprocess.Popen]  # type: ignore[type-arg]
    log: Path

    def client(self, **kw) -> Client:
        kw.setdefault("token", self.token)
        return Client(self.url, **kw)

    def hiber(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run the hiber CLI on the server's home."""
        env = dict(os.environ, HIBER_HOME=str(self.home))
        r = subprocess.run(
            [str(self.binary), *args], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120
        )
        if check and r.returncode != 0:
            raise AssertionError(f"hiber {' '.join(args)} failed ({r.returncode}): {r.stdout}{r.stderr}")
        return r

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


def prerequisites() -> Path:
    """The hiber binary, once root, hiber-init and the `serve` command are known to be there."""
    if os.geteuid() != 0:
        skip_or_fail("integration tests need root (hiber serve starts sandboxes: namespaces, mounts, cgroups)")
    binary = hiber_binary()
    if binary is None or not binary.is_file():
        skip_or_fail(f"no hiber binary (looked for HIBER_BIN and under {REPO}/target): run cargo build --workspace")
    if not binary.with_name("hiber-init").is_file():
        skip_or_fail(f"no hiber-init next to {binary}: run cargo build --workspace")
    try:
        probe = subprocess.run(
            [str(binary), "serve", "--help"], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        skip_or_fail(f"{binary} serve --help could not run: {e}")
    if probe.returncode != 0:
        first = (probe.stderr or probe.stdout).strip().splitlines()[:1]
        skip_or_fail(f"{binary} has no `serve` command yet ({first[0] if first else probe.returncode})")
    return binary


def new_home(binary: Path) -> Path:
    """A fresh HIBER_HOME under /var/tmp with the busybox image built."""
    home = Path(tempfile.mkdtemp(prefix="hiber-sdk-test-", dir="/var/tmp"))
    build = subprocess.run(
        [str(binary), "image", "build", "busybox"],
        env=dict(os.environ, HIBER_HOME=str(home)), stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=300,
    )
    if build.returncode != 0:
        shutil.rmtree(home, ignore_errors=True)
        pytest.fail(f"hiber image build busybox failed: {build.stdout}{build.stderr}", pytrace=False)
    return home


def start_server(binary: Path, home: Path) -> Server:
    """Start `hiber serve` on a free port of 127.0.0.1 over `home`; wait for /healthz."""
    log = home.parent / (home.name + ".serve.log")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log, "ab") as logf:
        proc = subprocess.Popen(
            [str(binary), "serve", "--listen", f"127.0.0.1:{port}"],
            env=dict(os.environ, HIBER_HOME=str(home)), stdin=subprocess.DEVNULL, stdout=logf,
            stderr=subprocess.STDOUT,
        )
    srv = Server(binary=binary, home=home, url=url, token="", process=proc, log=log)
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            pytest.fail(f"hiber serve exited with {proc.returncode} at start:\n{srv.log_tail()}", pytrace=False)
        token_file = home / "api-token"
        if token_file.is_file() and token_file.read_text().strip():
            try:
                Client(url, token="-", timeout=2).healthz()
                break
            except HiberError:
                pass
        if time.monotonic() > deadline:
            stop(srv)
            pytest.fail(f"hiber serve did not answer /healthz within 30 s:\n{srv.log_tail()}", pytrace=False)
        time.sleep(0.05)
    srv.token = (home / "api-token").read_text().strip()
    return srv


@pytest.fixture(autouse=True)
def _no_hiber_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests choose server, token and home themselves."""
    for var in ("HIBER_HOME", "HIBER_TOKEN", "HIBER_SERVER"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    """One `hiber serve` shared by the integration tests, on its own home."""
    binary = prerequisites()
    home = new_home(binary)
    try:
        srv = start_server(binary, home)
    except BaseException:
        shutil.rmtree(home, ignore_errors=True)
        raise
    try:
        yield srv
    finally:
        stop(srv)
        clean_home(srv)


@pytest.fixture
def own_home() -> Iterator[Path]:
    """A home of its own, for a test that kills and restarts servers; every server the
    test started on it must be stopped by the test (``stop``); the home is cleaned after."""
    binary = prerequisites()
    home = new_home(binary)
    try:
        yield home
    finally:
        clean_home(Server(binary=binary, home=home, url="", token="", process=None, log=home.parent / (home.name + ".serve.log")))  # type: ignore[arg-type]


def stop(srv: Server, kill: bool = False) -> None:
    """Stop a server this harness started (SIGTERM, or SIGKILL with ``kill``)."""
    proc = srv.process
    if proc is None or proc.poll() is not None:
        return
    if kill:
        proc.kill()
        proc.wait(10)
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def clean_home(srv: Server) -> None:
    """Remove whatever is left in a home: sandboxes, mounts, then the files."""
    ps = srv.hiber("ps", "--json", check=False)
    try:
        sandboxes = json.loads(ps.stdout or "[]")
    except ValueError:
        sandboxes = []
    for s in sandboxes:
        srv.hiber("rm", "-f", str(s.get("id", "")), check=False)
    for m in sorted(mounts_below(srv.home), key=len, reverse=True):
        subprocess.run(["umount", "-l", m], check=False)
    if mounts_below(srv.home):
        print(f"warning: mounts left under {srv.home}; not removing it", file=sys.stderr)
        return
    shutil.rmtree(srv.home, ignore_errors=True)
    if os.environ.get("HIBER_KEEP_LOG") is None:
        try:
            srv.log.unlink()
        except OSError:
            pass


@pytest.fixture(scope="session")
def debian(server: Server) -> str:
    """The debian image (python3) built in the server's home; its name."""
    r = server.hiber("image", "build", "debian", check=False)
    if r.returncode != 0:
        skip_or_fail(f"hiber image build debian failed (scripts/setup.sh installs debootstrap): {r.stderr.strip()}")
    return "debian"


@pytest.fixture(scope="session")
def criu(server: Server) -> None:
    """CRIU >= 4.2 is there (suspending a session snapshots it)."""
    r = server.hiber("check", "--json", check=False)
    try:
        ok = any(c.get("what") == "criu" and c.get("ok") is True for c in json.loads(r.stdout))
    except ValueError:
        ok = False
    if not ok:
        skip_or_fail("needs CRIU >= 4.2 (scripts/setup.sh) to suspend sessions")
