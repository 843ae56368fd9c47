#!/usr/bin/env bash
# Runs every test of hiber: sets the machine up (idempotent, cached), builds,
# then runs the Rust unit and end-to-end tests (real sandboxes, so as root)
# and the Python SDKs' tests (the in-sandbox `hiber` module against the real
# hiber-init, the client against a real `hiber serve`).
#
#   scripts/test.sh [extra cargo test-runner arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
python3 -m pytest --version >/dev/null 2>&1 || python3 -m pip install -q pytest
# The end-to-end tests run the hiber and hiber-init binaries.
cargo build --workspace --locked 2>&1 | tail -n 3

status=0
if cargo nextest --version >/dev/null 2>&1; then
	cargo nextest run --workspace --locked --no-fail-fast "$@" || status=$?
else
	cargo test --workspace --locked --no-fail-fast "$@" || status=$?
fi
python3 -m pytest -q sdk/agent sdk/python/tests || status=$?
exit "$status"
