#!/usr/bin/env bash
# hiber's main job on a fresh machine: set-up, build, a Debian sandbox with
# python in it, then snapshot -> restore -> the python process carries on,
# with timings.
#
#   scripts/demo.sh            (HIBER_HOME defaults to /var/lib/hiber)
set -euo pipefail
cd "$(dirname "$0")/.."

ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
step() { printf '\n== %s\n' "$*"; }

step "set-up (Debian packages, CRIU 4.2)"
t=$(date +%s%N); bash scripts/setup.sh; echo "set-up: $(ms "$t") ms"

step "build (release)"
t=$(date +%s%N); cargo build --release --locked 2>&1 | tail -n 1; echo "build: $(ms "$t") ms"
hiber=target/x86_64-unknown-linux-gnu/release/hiber

step "images"
t=$(date +%s%N); $hiber image build busybox >/dev/null; echo "busybox image: $(ms "$t") ms"
t=$(date +%s%N); $hiber image build debian >/dev/null; echo "debian image: $(ms "$t") ms (debootstrap only the first time on a machine)"
$hiber images

step "a Debian sandbox running python"
t=$(date +%s%N)
$hiber run --memory 512M --pids 256 debian python3 -c \
	'import platform, socket, os; print("python", platform.python_version(), "on", socket.gethostname(), "as pid", os.getpid())'
echo "run (create, python, remove): $(ms "$t") ms"

step "snapshot and restore: a python process keeps its memory"
agent='
import os, random, socket
secret, n = random.getrandbits(32), 0
ballast = bytearray(os.urandom(50 << 20))  # 50 MB of state
s = socket.socket(); s.bind(("127.0.0.1", 7000)); s.listen()
while True:
    c, _ = s.accept(); n += 1
    c.sendall(f"request {n}, secret {secret}\n".encode()); c.close()'
ask='import socket, time
for _ in range(100):
    try: print(socket.create_connection(("127.0.0.1", 7000)).makefile().readline().strip()); break
    except OSError: time.sleep(0.05)'
id=$($hiber run -d --name agent debian python3 -c "$agent")
echo "before:   $($hiber exec agent python3 -c "$ask")"
t=$(date +%s%N); snap=$($hiber snapshot --name agent-turn-1 agent); echo "snapshot: $(ms "$t") ms -> $snap (the sandbox is stopped)"
$hiber ps
t=$(date +%s%N); restored=$($hiber restore --name agent-2 agent-turn-1); echo "restore:  $(ms "$t") ms -> $restored"
echo "after:    $($hiber exec agent-2 python3 -c "$ask")   (same secret, the count carried on)"
t=$(date +%s%N); mapfile -t forks < <($hiber fork -n 3 agent-turn-1); echo "fork x3:  $(ms "$t") ms"
$hiber snapshots
$hiber rm -f agent agent-2 "${forks[@]}" >/dev/null
$hiber snapshot rm agent-turn-1 >/dev/null

step "a detached sandbox, exec into it, remove it"
t=$(date +%s%N); id=$($hiber run -d --name demo debian sleep infinity); echo "run -d: $(ms "$t") ms -> $id"
t=$(date +%s%N); $hiber exec demo python3 -c 'print(sum(range(10**6)))'; echo "exec python: $(ms "$t") ms"
$hiber ps
t=$(date +%s%N); $hiber rm -f demo >/dev/null; echo "rm -f: $(ms "$t") ms"
