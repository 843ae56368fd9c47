#!/usr/bin/env bash
# Set-up for hiber's peer benchmarks (`hiber bench snapshot`): idempotent and cached.
# Run as root on Debian bookworm, after (or instead of) scripts/setup.sh, which it runs first.
#
#   scripts/setup-bench.sh           install / configure whatever is missing
#   scripts/setup-bench.sh --check   only report what is missing; exit 1 if anything is
#   scripts/setup-bench.sh --help
#
# What it provides:
#   * Podman 4.3.1 and runc from bookworm (apt-get install --no-install-recommends; never an
#     upgrade of an installed package, not even the siblings apt would upgrade "by source").
#   * A private Podman set-up under /opt/hiber/podman, so the host's own Podman configuration
#     and state are neither read nor touched:
#       podman            wrapper: runs /usr/bin/podman with the private configuration below
#       containers.conf   runc, cgroupfs, file events, ulimits root can set here, private tmp dir,
#                         and conmon's PATH (conmon runs `runc restore`, which runs `criu`)
#       storage.conf      storage under /var/lib/hiber-bench/podman, run state on a tmpfs
#       bin/criu          symlink to hiber's CRIU (/opt/hiber/bin/criu, from scripts/setup.sh);
#                         the wrapper and conmon put this directory first on PATH, which is how
#                         both Podman (its version check) and runc (checkpoint/restore) find it
#   * A tmpfs on /run/hiber-bench (Podman's run state must not outlive a reboot, and /run is not
#     a tmpfs on our machines), mounted again after every reboot by this script.
#
# Why these settings (see ../shared/PLATFORM.md): crun refuses hybrid cgroups, so runc; there is no
# systemd, so cgroupfs and file events; root lacks CAP_SYS_RESOURCE, so ulimits at or below the
# hard limits.
set -euo pipefail
set -E

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PREFIX=${HIBER_PREFIX:-/opt/hiber}
CRIU_BIN=$PREFIX/bin/criu
DIR=$PREFIX/podman
STATE=/var/lib/hiber-bench/podman
RUN=/run/hiber-bench
RUN_MARK=$RUN/.tmpfs # exists only on the mounted tmpfs
CACHE=${HIBER_SETUP_CACHE:-/var/cache/hiber/setup}-bench
PKGS=(podman runc)

NAME=setup-bench
# shellcheck source=scripts/lib.sh
. "$HERE/lib.sh"

usage() {
	cat <<'EOF'
usage: scripts/setup-bench.sh [--check | --help]

Idempotent set-up for hiber's peer benchmarks (Debian bookworm, run as root):
  - runs scripts/setup.sh (CRIU >= 4.2 at /opt/hiber/bin/criu, base packages);
  - installs podman and runc with apt-get (never upgrading installed packages);
  - writes a private Podman configuration and wrapper to /opt/hiber/podman
    (storage in /var/lib/hiber-bench/podman, run state on a tmpfs at /run/hiber-bench),
    with `criu` on Podman's and conmon's PATH pointing at /opt/hiber/bin/criu.
A second run changes nothing and needs no network.
Use Podman through the wrapper: /opt/hiber/podman/podman ps -a

  --check   report what is missing, exit 1 if anything is (changes nothing)
  --help    show this text
EOF
}

# ---------------------------------------------------------------- packages

# ---------------------------------------------------------------- configuration files

# The files this script owns under $DIR, one function each, printing the wanted content.

containers_conf() {
	cat <<EOF
# Written by hiber's scripts/setup-bench.sh: Podman configuration for peer benchmarks only.
# Read instead of the host's containers.conf files (CONTAINERS_CONF, set by $DIR/podman).
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
log_driver = "k8s-file"
# No bridge: it would add interfaces and iptables rules to the host (and cost time).
netns = "none"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "$RUN/podman/libpod"
conmon_env_vars = ["PATH=$DIR/bin:$PATH"]

[network]
network_config_dir = "$STATE/networks"
EOF
}

storage_conf() {
	cat <<EOF
# Written by hiber's scripts/setup-bench.sh: Podman storage for peer benchmarks only.
[storage]
driver = "overlay"
graphroot = "$STATE/storage"
runroot = "$RUN/podman/storage"
EOF
}

wrapper() {
	cat <<EOF
#!/bin/sh
# Written by hiber's scripts/setup-bench.sh: Podman with hiber's private benchmark set-up
# (configuration in $DIR, storage in $STATE, \`criu\` = $CRIU_BIN).
if [ ! -e $RUN_MARK ]; then
	echo "podman (hiber bench): $RUN is not mounted; run scripts/setup-bench.sh as root" >&2
	exit 125
fi
export CONTAINERS_CONF=$DIR/containers.conf
export CONTAINERS_STORAGE_CONF=$DIR/storage.conf
export PATH=$DIR/bin:$PATH
exec /usr/bin/podman "\$@"
EOF
}

# put_file PATH MODE GENERATOR: (re)write PATH only when its content or mode differs.
# Prints the path when it changed (or would change, with --check).
put_file() {
	local path=$1 mode=$2 gen=$3 want
	want=$("$gen")
	if [[ -f $path && ! -L $path && $(<"$path") == "$want" && $(stat -c %a "$path") == "$mode" ]]; then
		return 0
	fi
	printf '%s\n' "$path"
	((CHECK)) && return 0
	printf '%s\n' "$want" >"$path.new"
	chmod "$mode" "$path.new"
	mv -f "$path.new" "$path"
}

# put_link PATH TARGET: like put_file, for a symlink.
put_link() {
	[[ -L $1 && $(readlink "$1") == "$2" ]] && return 0
	printf '%s\n' "$1"
	((CHECK)) && return 0
	ln -sfn "$2" "$1.new"
	mv -Tf "$1.new" "$1"
}

# Print every file under $DIR that is missing or out of date (and fix it unless CHECK=1).
sync_files() {
	((CHECK)) || mkdir -p "$DIR/bin"
	put_link "$DIR/bin/criu" "$CRIU_BIN"
	put_file "$DIR/containers.conf" 644 containers_conf
	put_file "$DIR/storage.conf" 644 storage_conf
	put_file "$DIR/podman" 755 wrapper
}

# ---------------------------------------------------------------- run-state tmpfs

run_ok() { [[ -e $RUN_MARK ]] && on_tmpfs "$RUN"; }

ensure_run_tmpfs() {
	if run_ok; then
		STEP_NOTE="present on $RUN"
		return 0
	fi
	ensure_tmpfs "$RUN" hiber-bench mode=0700,size=64m,nosuid,nodev "Podman's run state"
	touch "$RUN_MARK"
}

# ---------------------------------------------------------------- modes

CHECK=0

check_only() {
	CHECK=1
	local -a miss files
	local p f n=0
	mapfile -t miss < <(missing_pkgs "${PKGS[@]}")
	for p in "${miss[@]}"; do
		log "missing: package $p"
		n=$((n + 1))
	done
	[[ -x $CRIU_BIN ]] || {
		log "missing: $CRIU_BIN (scripts/setup.sh builds it)"
		n=$((n + 1))
	}
	mapfile -t files < <(sync_files)
	for f in "${files[@]}"; do
		log "missing or out of date: $f"
		n=$((n + 1))
	done
	run_ok || {
		log "missing: tmpfs on $RUN (Podman's run state)"
		n=$((n + 1))
	}
	if ((n)); then
		log "$n thing(s) missing; run scripts/setup-bench.sh as root"
		exit 1
	fi
	log "everything present (podman wrapper: $DIR/podman)"
}

# Writes the private configuration where it is missing or out of date, and checks that Podman
# takes it.
configure_podman() {
	mkdir -p "$STATE"
	local -a changed
	mapfile -t changed < <(sync_files)
	if ((${#changed[@]} == 0)); then
		STEP_NOTE="up to date in $DIR"
		return 0
	fi
	local out
	out=$("$DIR/podman" info --format '{{.Host.OCIRuntime.Name}} {{.Host.CgroupManager}} {{.Store.GraphRoot}}' 2>&1) ||
		die "podman does not work with the new configuration: $out"
	STEP_NOTE="wrote ${changed[*]}; podman runs with $out"
}

set_up() {
	"$HERE/setup.sh" || die "scripts/setup.sh failed"
	step "packages" apt_install "${PKGS[@]}"
	step "Podman's run state (tmpfs)" ensure_run_tmpfs
	step "private Podman configuration" configure_podman
	log "podman $(/usr/bin/podman --version | awk '{ print $3 }') with runc and criu $("$CRIU_BIN" --version | awk '$1 == "Version:" { print $2; exit }'); use $DIR/podman"
}

run_main "$@"
