#!/usr/bin/env bash
# hiber host set-up: idempotent and cached. Run as root on Debian bookworm.
#
#   scripts/setup.sh           install whatever is missing (a no-op when all is present)
#   scripts/setup.sh --check   only report what is missing; exit 1 if anything is
#   scripts/setup.sh --help
#
# What it provides:
#   * Debian packages (apt-get install --no-install-recommends, never an upgrade of an
#     installed package): busybox-static debootstrap iptables iproute2 tmux xz-utils curl
#     ca-certificates python3.
#   * CRIU >= 4.2 at /opt/hiber/bin/criu. Bookworm's CRIU 3.17 does not work on this kernel
#     and sid's binary package needs glibc >= 2.38 (bookworm has 2.36), so CRIU is built
#     from the upstream tarball of Debian sid's source package (the signed sid InRelease ->
#     Sources.xz -> .orig.tar.* chain is checked with the bookworm archive keyring). The
#     host's apt sources are never changed; the mirror is read from the apt configuration.
#     Build dependencies come from bookworm; libcap-dev (headers only, and installing it
#     would upgrade libcap2) is unpacked privately instead of installed.
#   * CRIU is built with RUNDIR=/run/hiber/criu, where it keeps its kernel-feature cache
#     (criu.kdat). CRIU only keeps that cache on a tmpfs, and /run is not a tmpfs on our
#     machines, so a small tmpfs is mounted there (again after every reboot, by this script).
#     Without it every criu call re-probes the kernel (~35-45 ms more per dump or restore).
#
# Caches: downloads and the build log under /var/cache/hiber/setup/.
# Environment: HIBER_SETUP_ALLOW_UPGRADES=1 lets apt upgrade installed packages when a
# needed package requires it (refused by default); HIBER_PREFIX (default /opt/hiber) and
# HIBER_SETUP_CACHE (default /var/cache/hiber/setup) move the install and the cache (hiber
# itself looks for CRIU at /opt/hiber/bin/criu unless HIBER_CRIU says otherwise).
set -euo pipefail
set -E

PREFIX=${HIBER_PREFIX:-/opt/hiber}
CRIU_BIN=$PREFIX/bin/criu
CRIU_MIN=4.2
KDAT_DIR=/run/hiber/criu
CACHE=${HIBER_SETUP_CACHE:-/var/cache/hiber/setup}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

BASE_PKGS=(busybox-static debootstrap iptables iproute2 tmux xz-utils curl ca-certificates python3)
# Only needed while CRIU is built (the runtime libraries they pull in are then marked manual).
BUILD_PKGS=(gcc make libc6-dev pkg-config gpgv debian-archive-keyring
	libprotobuf-c-dev protobuf-c-compiler protobuf-compiler libprotobuf-dev
	libnl-3-dev libnet1-dev libbsd-dev libnftables-dev uuid-dev)
# Needed for headers only: unpacked privately with dpkg-deb -x, never installed.
HEADER_PKGS=(libcap-dev)
# Programs CRIU runs while dumping / restoring network namespaces.
TOOLS=(ip iptables iptables-save iptables-restore)

NAME=setup
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
	cat <<'EOF'
usage: scripts/setup.sh [--check | --help]

Idempotent host set-up for hiber (Debian bookworm, run as root):
  - installs busybox-static debootstrap iptables iproute2 tmux xz-utils curl
    ca-certificates python3 with apt-get (never upgrading installed packages);
  - builds CRIU >= 4.2 from Debian sid's source into /opt/hiber/bin/criu
    (downloads cached in /var/cache/hiber/setup/; host apt sources untouched);
  - mounts a small tmpfs on /run/hiber/criu for CRIU's kernel-feature cache.
A second run does nothing (no network) and takes a few milliseconds.

  --check   report what is missing, exit 1 if anything is (changes nothing)
  --help    show this text

HIBER_SETUP_ALLOW_UPGRADES=1 allows apt to upgrade installed packages if needed.
EOF
}

# ---------------------------------------------------------------- packages

# ---------------------------------------------------------------- mirror / downloads

# Use apt's proxy for curl too, if apt has one and the environment has none.
use_apt_proxy() {
	local APT_HTTP_PROXY='' APT_HTTPS_PROXY=''
	eval "$(apt-config shell APT_HTTP_PROXY Acquire::http::Proxy APT_HTTPS_PROXY Acquire::https::Proxy 2>/dev/null)" || true
	case $APT_HTTP_PROXY in '' | DIRECT | false) ;; *) export http_proxy=${http_proxy:-$APT_HTTP_PROXY} ;; esac
	case $APT_HTTPS_PROXY in '' | DIRECT | false) ;; *) export https_proxy=${https_proxy:-$APT_HTTPS_PROXY} ;; esac
}

# fetch URL DEST
fetch() {
	curl -fsSL --retry 3 --retry-delay 1 --connect-timeout 20 -o "$2.part" "$1" ||
		die "download failed: $1"
	mv -f "$2.part" "$2"
}

sha256_ok() { [[ -f $1 ]] && [[ $(sha256sum "$1" | cut -d' ' -f1) == "$2" ]]; }

# ---------------------------------------------------------------- criu

criu_version() {
	[[ -x $CRIU_BIN ]] || return 1
	"$CRIU_BIN" --version 2>/dev/null | awk '$1 == "Version:" && !v { v = $2 } END { print v }'
}

criu_ok() {
	local v
	v=$(criu_version) || return 1
	[[ -n $v ]] && dpkg --compare-versions "$v" ge "$CRIU_MIN"
}

# Find sid's criu source in the (signed) archive index; sets SRC_VERSION, SRC_FILE, SRC_SHA256
# and SRC_URL. The result is cached in $CACHE/criu-source so a rebuild needs no index download.
locate_criu_source() {
	local rec=$CACHE/criu-source
	if [[ -f $rec ]]; then
		# shellcheck disable=SC1090
		source "$rec"
		if sha256_ok "$CACHE/$SRC_FILE" "$SRC_SHA256"; then
			return 0
		fi
	fi
	local mirror
	mirror=$(derive_mirror) || die "no http(s) bookworm 'main' archive found in /etc/apt/sources.list{,.d}"
	use_apt_proxy
	local tmp=$CACHE/sid-index
	rm -rf "$tmp"
	mkdir -p "$tmp"
	local suite
	for suite in sid unstable; do
		curl -fsSL --retry 3 --connect-timeout 20 -o "$tmp/InRelease" "$mirror/dists/$suite/InRelease" 2>/dev/null && break
	done
	[[ -s $tmp/InRelease ]] || die "cannot download dists/sid/InRelease from the apt mirror"
	gpgv --keyring "$KEYRING" --output "$tmp/Release" "$tmp/InRelease" >/dev/null 2>&1 ||
		die "dists/$suite/InRelease: signature not valid for $KEYRING"
	local idx_sha
	idx_sha=$(awk '/^SHA256:/ { s = 1; next } /^[^ ]/ { s = 0 } s && $3 == "main/source/Sources.xz" { print $1; exit }' "$tmp/Release")
	[[ -n $idx_sha ]] || die "sid Release lists no main/source/Sources.xz"
	fetch "$mirror/dists/$suite/main/source/Sources.xz" "$tmp/Sources.xz"
	sha256_ok "$tmp/Sources.xz" "$idx_sha" || die "sid Sources.xz: checksum mismatch"
	local stanza
	stanza=$(xz -dc "$tmp/Sources.xz" | awk 'BEGIN { RS = ""; FS = "\n" } !done && $1 == "Package: criu" { print; done = 1 }')
	[[ -n $stanza ]] || die "no criu source package in sid"
	local dir
	SRC_VERSION=$(awk '/^Version:/ { print $2; exit }' <<<"$stanza")
	dir=$(awk '/^Directory:/ { print $2; exit }' <<<"$stanza")
	read -r SRC_SHA256 SRC_FILE < <(awk '/^Checksums-Sha256:/ { s = 1; next } /^[^ ]/ { s = 0 }
		s && $3 ~ /\.orig\.tar\.(xz|gz|bz2)$/ { print $1, $3; exit }' <<<"$stanza")
	[[ -n $SRC_VERSION && -n $dir && -n ${SRC_FILE:-} ]] || die "cannot parse sid's criu source entry"
	dpkg --compare-versions "$SRC_VERSION" ge "$CRIU_MIN" ||
		die "sid has criu $SRC_VERSION, need >= $CRIU_MIN"
	SRC_URL=$mirror/$dir/$SRC_FILE
	if ! sha256_ok "$CACHE/$SRC_FILE" "$SRC_SHA256"; then
		fetch "$SRC_URL" "$CACHE/$SRC_FILE"
		sha256_ok "$CACHE/$SRC_FILE" "$SRC_SHA256" || die "$SRC_FILE: checksum mismatch"
	fi
	printf 'SRC_VERSION=%q\nSRC_FILE=%q\nSRC_SHA256=%q\n' "$SRC_VERSION" "$SRC_FILE" "$SRC_SHA256" >"$rec"
	rm -rf "$tmp"
}

# The cached .deb of package $1 (the last one in sort order), or nothing.
cached_deb() {
	local f last=''
	for f in "$CACHE/debs/$1"_*.deb; do
		[[ -f $f ]] && last=$f
	done
	printf '%s\n' "$last"
}

# Unpack header-only packages into $1 (their own include dirs are printed as -I flags).
header_flags() {
	local root=$1 p deb flags=''
	for p in "${HEADER_PKGS[@]}"; do
		if [[ -z $(missing_pkgs "$p") ]]; then
			continue # installed on the host anyway
		fi
		deb=$(cached_deb "$p")
		if [[ -z $deb ]]; then
			mkdir -p "$CACHE/debs"
			local out
			out=$(cd "$CACHE/debs" && apt-get download -q -o APT::Sandbox::User=root "$p" 2>&1) || {
				apt_update_once
				out=$(cd "$CACHE/debs" && apt-get download -q -o APT::Sandbox::User=root "$p" 2>&1) || {
					printf '%s\n' "$out" | tail -n 5 >&2
					die "apt-get download $p failed"
				}
			}
			deb=$(cached_deb "$p")
			[[ -n $deb ]] || die "apt-get download $p left no .deb in $CACHE/debs"
		fi
		dpkg-deb -x "$deb" "$root/$p"
		flags+=" -I$root/$p/usr/include"
	done
	printf '%s\n' "${flags# }"
}

build_criu() {
	apt_install "${BUILD_PKGS[@]}"
	locate_criu_source
	local t0=$SECONDS build=$CACHE/build
	rm -rf "$build"
	mkdir -p "$build/src"
	local hdr
	hdr=$(header_flags "$build")
	tar -xf "$CACHE/$SRC_FILE" -C "$build/src"
	local src
	src=$(find "$build/src" -mindepth 1 -maxdepth 1 -type d | head -n 1)
	[[ -f $src/Makefile ]] || die "$SRC_FILE: unexpected layout"
	local upstream=${SRC_VERSION#*:}
	log "building criu ${upstream%-*} (Debian sid source $SRC_VERSION; log: $CACHE/criu-build.log) ..."
	if ! make -C "$src" -j"$(nproc)" criu NO_GNUTLS=1 RUNDIR="$KDAT_DIR" \
		USERCFLAGS="$hdr" >"$CACHE/criu-build.log" 2>&1; then
		tail -n 25 "$CACHE/criu-build.log" >&2
		die "criu build failed (see $CACHE/criu-build.log)"
	fi
	command install -d -m 0755 "$PREFIX/bin" "$PREFIX/share/criu"
	command install -m 0755 "$src/criu/criu" "$CRIU_BIN.new"
	mv -f "$CRIU_BIN.new" "$CRIU_BIN"
	# Keep the runtime libraries even if the build dependencies are removed later.
	local -a libpkgs
	mapfile -t libpkgs < <(ldd "$CRIU_BIN" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' |
		while read -r l; do printf '*/%s/%s\n' "$(basename "$(dirname "$l")")" "$(basename "$l")"; done |
		xargs -r dpkg -S 2>/dev/null | cut -d: -f1 | sort -u)
	if ((${#libpkgs[@]})); then
		apt-mark manual "${libpkgs[@]}" >/dev/null 2>&1 || true
	fi
	{
		printf 'criu %s built %s from Debian sid source %s (sha256 %s)\n' \
			"$SRC_VERSION" "$(date -u +%FT%TZ)" "$SRC_FILE" "$SRC_SHA256"
		printf 'make criu NO_GNUTLS=1 RUNDIR=%s (kdat cache %s/criu.kdat, needs a tmpfs)\n' "$KDAT_DIR" "$KDAT_DIR"
		printf 'runtime packages: %s\n' "${libpkgs[*]}"
	} >"$PREFIX/share/criu/BUILD-INFO"
	rm -rf "$build"
	STEP_NOTE="built $(criu_version) at $CRIU_BIN (make: $((SECONDS - t0)) s)"
}

ensure_criu() {
	if criu_ok; then
		STEP_NOTE="$(criu_version) present at $CRIU_BIN"
		return 0
	fi
	if [[ -e $CRIU_BIN ]]; then
		log "criu at $CRIU_BIN is missing a library or older than $CRIU_MIN; rebuilding"
	fi
	build_criu
	criu_ok || die "$CRIU_BIN does not run or reports a version below $CRIU_MIN"
	local out
	if ! out=$("$CRIU_BIN" check 2>&1); then
		printf '%s\n' "$out" >&2
		die "'$CRIU_BIN check' failed"
	fi
}

# ---------------------------------------------------------------- kdat tmpfs

kdat_ok() { on_tmpfs "$KDAT_DIR"; }

ensure_kdat_dir() {
	ensure_tmpfs "$KDAT_DIR" hiber-criu mode=0700,size=1m,nosuid,nodev,noexec "CRIU's kernel-feature cache"
}

# ---------------------------------------------------------------- modes

check_only() {
	local -a miss
	local p t n=0
	mapfile -t miss < <(missing_pkgs "${BASE_PKGS[@]}")
	for p in "${miss[@]}"; do
		log "missing: package $p"
		n=$((n + 1))
	done
	if ! criu_ok; then
		if [[ -e $CRIU_BIN ]]; then
			log "missing: criu >= $CRIU_MIN ($CRIU_BIN does not run or is older)"
		else
			log "missing: criu >= $CRIU_MIN ($CRIU_BIN)"
		fi
		n=$((n + 1))
	fi
	for t in "${TOOLS[@]}"; do
		command -v "$t" >/dev/null || {
			log "missing: command $t"
			n=$((n + 1))
		}
	done
	if ! kdat_ok; then
		log "missing: tmpfs on $KDAT_DIR (CRIU's kernel-feature cache)"
		n=$((n + 1))
	fi
	if ((n)); then
		log "$n thing(s) missing; run scripts/setup.sh as root"
		exit 1
	fi
	log "everything present (criu $(criu_version) at $CRIU_BIN)"
}

check_tools() {
	local t
	for t in "${TOOLS[@]}"; do
		command -v "$t" >/dev/null || die "command $t not found after installing iproute2/iptables"
	done
	STEP_NOTE="${TOOLS[*]} present"
}

set_up() {
	step "packages" apt_install "${BASE_PKGS[@]}"
	step "CRIU's kernel-feature cache (tmpfs)" ensure_kdat_dir
	step "criu >= $CRIU_MIN" ensure_criu
	step "network tools CRIU runs" check_tools
}

run_main "$@"
