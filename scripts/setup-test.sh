#!/usr/bin/env bash
# Set-up for hiber's tests: idempotent and cached. Run as root on Debian bookworm; runs
# scripts/setup.sh first.
#
#   scripts/setup-test.sh           install whatever is missing
#   scripts/setup-test.sh --check   only report what is missing; exit 1 if anything is
#   scripts/setup-test.sh --help
#
# What it provides: shellcheck (Debian), a Python virtual environment for the SDKs' tests
# at /var/cache/hiber/test-venv (Debian's python3 with python3-venv; pytest from the package
# index, as Debian's python3 refuses pip installs outside a venv), which scripts/test.sh uses,
# and a Debian root filesystem with PostgreSQL at /var/cache/hiber/test-postgres/rootfs (made
# by debootstrap from the host's apt mirror, its services never started), which the
# non-root-workload tests import as an image.
set -euo pipefail
set -E

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${HIBER_SETUP_CACHE:-/var/cache/hiber/setup}-test
VENV=${HIBER_TEST_VENV:-/var/cache/hiber/test-venv}
PG_ROOTFS=${HIBER_TEST_PG_ROOTFS:-/var/cache/hiber/test-postgres/rootfs}
PG_PACKAGES=postgresql,python3
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
  - makes the tests' Python environment /var/cache/hiber/test-venv (pytest);
  - debootstraps a Debian root with PostgreSQL at /var/cache/hiber/test-postgres/rootfs.

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

pg_rootfs_ok() { [[ -x $PG_ROOTFS/usr/lib/postgresql/15/bin/postgres ]]; }

# debootstrap in two stages, with a policy-rc.d between them so that no package's
# maintainer script starts a service on the host; in a private mount namespace, so the /proc
# it mounts inside goes with it. Built next to the result and renamed into place when whole.
ensure_pg_rootfs() {
	if pg_rootfs_ok; then
		STEP_NOTE="present at $PG_ROOTFS"
		return 0
	fi
	local mirror tmp=$PG_ROOTFS.tmp out
	mirror=$(derive_mirror) || die "no http(s) bookworm 'main' archive found in /etc/apt/sources.list{,.d}"
	rm -rf "$tmp"
	mkdir -p "$(dirname "$PG_ROOTFS")"
	# shellcheck disable=SC2016 # expanded by the inner shell
	out=$(unshare --mount --propagation private -- sh -c '
		debootstrap --variant=minbase --include="$3" --foreign bookworm "$1" "$2" &&
		printf "#!/bin/sh\nexit 101\n" > "$1/usr/sbin/policy-rc.d" &&
		chmod 755 "$1/usr/sbin/policy-rc.d" &&
		chroot "$1" /debootstrap/debootstrap --second-stage' sh "$tmp" "$mirror" "$PG_PACKAGES" 2>&1) ||
		die "debootstrap of $PG_PACKAGES failed: $(tail -n 3 <<<"$out")"
	rm -f "$tmp/usr/sbin/policy-rc.d"
	rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/*
	mv "$tmp" "$PG_ROOTFS"
	STEP_NOTE="made $PG_ROOTFS ($(du -sh "$PG_ROOTFS" | cut -f1))"
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
	pg_rootfs_ok || {
		log "missing: the tests' PostgreSQL root filesystem $PG_ROOTFS"
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
	step "tests' PostgreSQL root filesystem" ensure_pg_rootfs
}

run_main "$@"
