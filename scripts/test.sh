#!/usr/bin/env bash
# Runs every test of hiber: sets the machine up (idempotent, cached), lints the scripts, checks
# the Rust formatting, that no two modules of a crate import each other, clippy's lints and the
# docs' links,
# builds, proves that set-up works from scratch (scripts/check-fresh-setup.sh), then runs the
# Rust unit and end-to-end tests (real sandboxes, so as root) and the Python SDKs' tests (the
# in-sandbox `hiber` module against the real hiber-init, the client against a real
# `hiber serve`). Every part runs even when an earlier one failed; the status says whether all
# passed, and the last lines name those that did not.
#
#   scripts/test.sh [extra cargo test-runner arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-test.sh

failed=()
part() {
	local what=$1 t0=$SECONDS
	shift
	if "$@"; then
		echo "test: $what passed ($((SECONDS - t0)) s)" >&2
	else
		echo "test: $what FAILED ($((SECONDS - t0)) s)" >&2
		failed+=("$what")
	fi
}

part "shell scripts (shellcheck, no shadowed commands)" bash scripts/lint.sh
part "Rust formatting (rustfmt.toml)" cargo fmt --all --check
part "no import circles between the modules of a crate" python3 scripts/check-import-circles.py
part "Rust lints (clippy, warnings are errors)" cargo clippy --workspace --all-targets --locked -- -D warnings
part "Rust docs (no broken links)" env RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet
# The end-to-end tests run the hiber and hiber-init binaries.
cargo build --workspace --locked 2>&1 | tail -n 3
part "set-up from scratch" bash scripts/check-fresh-setup.sh target/x86_64-unknown-linux-gnu/debug/hiber
if cargo nextest --version >/dev/null 2>&1; then
	part "Rust tests" cargo nextest run --workspace --locked --no-fail-fast "$@"
else
	part "Rust tests" cargo test --workspace --locked --no-fail-fast "$@"
fi
part "Python tests" "${HIBER_TEST_VENV:-/var/cache/hiber/test-venv}/bin/python" -m pytest -q sdk/agent sdk/python/tests

if ((${#failed[@]})); then
	printf 'test: failed: %s\n' "${failed[@]}" >&2
	exit 1
fi
echo "test: all passed" >&2
