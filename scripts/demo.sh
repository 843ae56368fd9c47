#!/usr/bin/env bash
# hiber's main job on a fresh machine: set-up, build, a Debian sandbox with
# python in it, with timings.
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

step "a detached sandbox, exec into it, remove it"
t=$(date +%s%N); id=$($hiber run -d --name demo debian sleep infinity); echo "run -d: $(ms "$t") ms -> $id"
t=$(date +%s%N); $hiber exec demo python3 -c 'print(sum(range(10**6)))'; echo "exec python: $(ms "$t") ms"
$hiber ps
t=$(date +%s%N); $hiber rm -f demo >/dev/null; echo "rm -f: $(ms "$t") ms"
