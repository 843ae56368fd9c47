#!/usr/bin/env bash
# Set-up for hiber's tests: idempotent and cached. Run as root on Debian bookworm; runs
# scripts/setup.sh first.
#
#   scripts/setup-test.sh           install whatever is missing
#   scripts/setup-test.sh --check   only report what is missing; exit 1 if anything is
#   scripts/setup-test.sh --help
#
# What it provides: shellcheck (Debian) and a Python virtual environment for the SDKs' tests
# at /var/cache/hiber/test-venv (Debian's python3 with python3-venv; pytest from the package
# index, as Debian's python3 refuses pip installs outside a venv). scripts/test.sh uses it.
set -euo pipefail
set -E

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${HIBER_SETUP_CACHE:-/var/cache/hiber/setup}-test
VENV=${HIBER_TEST_VENV:-/var/cache/hiber/test-venv}
PKGS=(shellcheck python3-venv)
PIP_PKGS=(pytest)

NAME=setup-test
# shellcheck source=scripts/lib.sh
. "$HERE/lib.sh"

usage() {
	cat <<'EOF_USAGE'
usage: scripts/setup-test.sh [--check | --help]

Idempotent set-up for hiber's tests (Debian bookworm, run as root):
  - runs scripts/setup.sh;
  - installs shellcheck and python3-venv with apt-get (never upgrading installed packages);
  - makes the tests' Python environment /var/cache/hiber/test-venv (pytest).

  --check   report what is missing, exit 1 if anything is (changes nothing)
  --help    show this text
EOF_USAGE
}

venv_ok() { "$VENV/bin/python" -c 'import pytest' >/dev/null 2>&1; }

ensure_venv() {
	if venv_ok; then
		STEP_NOTE="present at $VENV"
		return 0
	fi
	local out
	rm -rf "$VENV"
	out=$(/usr/bin/python3 -m venv "$VENV" 2>&1) || die "python3 -m venv $VENV failed: $out"
	out=$("$VENV/bin/python" -m pip install -q "${PIP_PKGS[@]}" 2>&1) || die "pip install ${PIP_PKGS[*]} failed: $out"
	STEP_NOTE="made $VENV with ${PIP_PKGS[*]}"
}

check_only() {
	local -a miss
	local p n=0
	mapfile -t miss < <(missing_pkgs "${PKGS[@]}")
	for p in "${miss[@]}"; do
		log "missing: package $p"
		n=$((n + 1))
	done
	venv_ok || {
		log "missing: the tests' Python environment $VENV"
		n=$((n + 1))
	}
	"$HERE/setup.sh" --check || n=$((n + 1))
	if ((n)); then
		log "something is missing; run scripts/setup-test.sh as root"
		exit 1
	fi
	log "everything present"
}

set_up() {
	"$HERE/setup.sh" || die "scripts/setup.sh failed"
	step "packages" apt_install "${PKGS[@]}"
	step "tests' Python environment" ensure_venv
}

run_main "$@"
