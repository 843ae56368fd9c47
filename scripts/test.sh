#!/usr/bin/env bash
# Runs every test of hiber: sets the machine up (idempotent, cached), builds,
# then runs the unit and end-to-end tests (real sandboxes, so as root).
#
#   scripts/test.sh [extra test-runner arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
# The e2e tests run the hiber and hiber-init binaries.
cargo build --workspace --locked 2>&1 | tail -n 3
if cargo nextest --version >/dev/null 2>&1; then
	exec cargo nextest run --workspace --locked --no-fail-fast "$@"
else
	exec cargo test --workspace --locked --no-fail-fast "$@"
fi
