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
# and Debian root filesystems with PostgreSQL, Chromium and ffmpeg, an IPython kernel and Node with vite under
# /var/cache/hiber/test-*
# (made by debootstrap from the host's apt mirror, their services never started), which the
# workload tests import as images.
set -euo pipefail
set -E

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${HIBER_SETUP_CACHE:-/var/cache/hiber/setup}-test
VENV=${HIBER_TEST_VENV:-/var/cache/hiber/test-venv}
PG_ROOTFS=${HIBER_TEST_PG_ROOTFS:-/var/cache/hiber/test-postgres/rootfs}
CHROMIUM_ROOTFS=${HIBER_TEST_CHROMIUM_ROOTFS:-/var/cache/hiber/test-chromium/rootfs}
JUPYTER_ROOTFS=${HIBER_TEST_JUPYTER_ROOTFS:-/var/cache/hiber/test-jupyter/rootfs}
NODE_ROOTFS=${HIBER_TEST_NODE_ROOTFS:-/var/cache/hiber/test-node/rootfs}
PKGS=(shellcheck python3-venv skopeo)
PIP_PKGS=(pytest)

NAME=setup-test
# shellcheck source=scripts/lib.sh
. "$HERE/lib.sh"

usage() {
	cat <<'EOF_USAGE'
usage: scripts/setup-test.sh [--check | --help]

Idempotent set-up for hiber's tests (Debian bookworm, run as root):
  - runs scripts/setup.sh;
  - installs shellcheck, python3-venv and skopeo with apt-get (never upgrading installed packages);
  - makes the tests' Python environment /var/cache/hiber/test-venv (pytest);
  - unpacks Debian's docker-registry (the CNCF distribution server) into
    /var/cache/hiber/test-registry, without installing it as a service;
  - debootstraps Debian roots with PostgreSQL (/var/cache/hiber/test-postgres/rootfs) and
    with Chromium and ffmpeg (/var/cache/hiber/test-chromium/rootfs) and with an IPython kernel
    (/var/cache/hiber/test-jupyter/rootfs), and with Node and a vite project
    (/var/cache/hiber/test-node/rootfs), one to three minutes each the first time.

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

# The test roots: directory, a file that shows it is whole, the packages apt adds to minbase,
# and a command run in the root after them.
TEST_ROOTS=(
	"$PG_ROOTFS" usr/lib/postgresql/15/bin/postgres "postgresql python3" true
	"$CHROMIUM_ROOTFS" usr/bin/ffmpeg "chromium python3 fonts-dejavu-core ffmpeg" true
	"$JUPYTER_ROOTFS" usr/lib/python3/dist-packages/ipykernel/__init__.py "python3-ipykernel python3-jupyter-client" true
	"$NODE_ROOTFS" srv/app/node_modules/vite/package.json "nodejs npm python3"
	"mkdir -p /srv/app && cd /srv/app && npm init -y >/dev/null && npm install --no-audit --no-fund vite@5 && rm -rf /root/.npm"
)

# The CNCF distribution registry from Debian's docker-registry package, unpacked rather than
# installed (the package would start a registry service on the host); tests start their own.
REGISTRY_DIR=${HIBER_TEST_REGISTRY_DIR:-/var/cache/hiber/test-registry}
registry_ok() { [[ -x $REGISTRY_DIR/usr/bin/docker-registry ]]; }

ensure_registry() {
	if registry_ok; then
		STEP_NOTE="present at $REGISTRY_DIR"
		return 0
	fi
	local tmp=$REGISTRY_DIR.tmp out
	rm -rf "$tmp"
	mkdir -p "$tmp/deb"
	out=$(cd "$tmp/deb" && apt-get download -q docker-registry 2>&1) || die "apt-get download docker-registry failed: $out"
	dpkg-deb -x "$tmp"/deb/docker-registry_*.deb "$tmp" || die "cannot unpack docker-registry"
	rm -rf "$tmp/deb" "$REGISTRY_DIR"
	mv "$tmp" "$REGISTRY_DIR"
	STEP_NOTE="unpacked docker-registry into $REGISTRY_DIR"
}

test_root_ok() { [[ -e $1/$2 ]]; }

# ensure_test_root DIR FILE PACKAGES COMMAND: debootstrap of minbase in two stages, with a policy-rc.d
# between them so that no package's maintainer script starts a service on the host, then apt in
# the new root adds PACKAGES (apt, unlike debootstrap, picks providers of virtual packages) and
# COMMAND runs there (npm installs from the package registry, trusting the host's certificate
# authorities, which a proxy of the host's may need); in
# a private mount namespace, so the /proc mounted inside goes with it. Built next to the result
# and renamed into place when whole.
ensure_test_root() {
	local root=$1 file=$2 packages=$3 command=$4 mirror tmp=$1.tmp out
	if test_root_ok "$root" "$file"; then
		STEP_NOTE="present at $root"
		return 0
	fi
	mirror=$(derive_mirror) || die "no http(s) bookworm 'main' archive found in /etc/apt/sources.list{,.d}"
	rm -rf "$tmp"
	mkdir -p "$(dirname "$root")"
	# shellcheck disable=SC2016 # expanded by the inner shell
	out=$(unshare --mount --propagation private -- sh -c '
		debootstrap --variant=minbase --foreign bookworm "$1" "$2" &&
		printf "#!/bin/sh\nexit 101\n" > "$1/usr/sbin/policy-rc.d" &&
		chmod 755 "$1/usr/sbin/policy-rc.d" &&
		chroot "$1" /debootstrap/debootstrap --second-stage &&
		mount -t proc proc "$1/proc" &&
		chroot "$1" apt-get -q update &&
		chroot "$1" env DEBIAN_FRONTEND=noninteractive apt-get -q install -y --no-install-recommends $3 &&
		cp /etc/ssl/certs/ca-certificates.crt "$1/tmp/host-ca.crt" &&
		chroot "$1" env npm_config_cafile=/tmp/host-ca.crt sh -c "$4" &&
		rm "$1/tmp/host-ca.crt"' \
		sh "$tmp" "$mirror" "$packages" "$command" 2>&1) ||
		die "debootstrap of $packages failed: $(tail -n 3 <<<"$out")"
	rm -f "$tmp/usr/sbin/policy-rc.d"
	rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/*
	rm -rf "$root" # one made before its packages changed
	mv "$tmp" "$root"
	STEP_NOTE="made $root ($(du -sh "$root" | cut -f1))"
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
	registry_ok || {
		log "missing: the tests' registry $REGISTRY_DIR"
		n=$((n + 1))
	}
	local i
	for ((i = 0; i < ${#TEST_ROOTS[@]}; i += 4)); do
		test_root_ok "${TEST_ROOTS[i]}" "${TEST_ROOTS[i + 1]}" || {
			log "missing: the tests' root filesystem ${TEST_ROOTS[i]}"
			n=$((n + 1))
		}
	done
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
	step "tests' registry" ensure_registry
	local i
	for ((i = 0; i < ${#TEST_ROOTS[@]}; i += 4)); do
		step "tests' root ${TEST_ROOTS[i]}" ensure_test_root "${TEST_ROOTS[i]}" "${TEST_ROOTS[i + 1]}" "${TEST_ROOTS[i + 2]}" \
			"${TEST_ROOTS[i + 3]}"
	done
}

run_main "$@"
