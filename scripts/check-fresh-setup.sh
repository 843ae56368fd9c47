#!/usr/bin/env bash
# Proves that scripts/setup.sh works on a fresh machine, without touching this one: it runs in a
# private mount namespace where /opt/hiber, /var/cache/hiber and /run/hiber are empty tmpfs
# mounts, so nothing installed or cached before is seen and nothing it makes outlives the check.
# Then `criu check` must pass with the CRIU it built, and a busybox sandbox must snapshot and
# restore with it (a counter carries on). Debian packages already on the host are not removed
# for the check (apt is the host's; only hiber's own prefix and caches start empty).
#
#   scripts/check-fresh-setup.sh HIBER_BINARY
set -euo pipefail
set -E

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
NAME=fresh-setup
# shellcheck source=scripts/lib.sh
. "$HERE/lib.sh"

FRESH_DIRS=(/opt/hiber /var/cache/hiber /run/hiber)

usage() {
	cat <<'EOF'
usage: scripts/check-fresh-setup.sh HIBER_BINARY

Runs scripts/setup.sh as on a fresh machine (empty tmpfs mounts over /opt/hiber,
/var/cache/hiber and /run/hiber in a private mount namespace), then checks the CRIU
it built with `criu check` and a snapshot + restore of a busybox sandbox.
EOF
}

# The counter a sandbox started by `run_counter` has written last.
counter() { "$HIBER" exec "$1" cat /tmp/n 2>/dev/null || echo 0; }

# Waits until sandbox $1's counter is above $2; prints it.
counter_above() {
	local n i
	for ((i = 0; i < 200; i++)); do
		n=$(counter "$1")
		if ((n > $2)); then
			printf '%s\n' "$n"
			return 0
		fi
		sleep 0.05
	done
	die "the counter of sandbox $1 stayed at $n (wanted more than $2)"
}

snapshot_and_restore() {
	local id snap restored before after
	# shellcheck disable=SC2016 # expanded by the sandbox's shell
	id=$("$HIBER" run -d busybox sh -c 'i=0; while :; do i=$((i + 1)); echo $i >/tmp/n; sleep 0.02; done')
	before=$(counter_above "$id" 5)
	snap=$("$HIBER" snapshot "$id")
	restored=$("$HIBER" restore "$snap")
	# A restart from scratch would count from 1 again; the restored tree goes on from `before`.
	after=$(counter "$restored")
	((after >= before)) || die "restored counter $after < $before: the process started over"
	after=$(counter_above "$restored" "$after")
	STEP_NOTE="counter $before before the snapshot, $after after the restore"
}

criu_check() {
	local out
	[[ -x /opt/hiber/bin/criu ]] || die "set-up finished without /opt/hiber/bin/criu"
	out=$(/opt/hiber/bin/criu check 2>&1) || die "criu check failed: $out"
	STEP_NOTE="$(/opt/hiber/bin/criu --version | awk '$1 == "Version:" { print $2; exit }'): $out"
}

# Removes what the check made in its hiber home (sandboxes first: they hold mounts and cgroups).
remove_everything() {
	local -a ids
	mapfile -t ids < <("$HIBER" ps --json | python3 -c 'import json, sys; [print(s["id"]) for s in json.load(sys.stdin)]')
	((${#ids[@]} == 0)) || "$HIBER" rm -f "${ids[@]}" >/dev/null
	rm -rf "$HIBER_HOME"
}

inside() {
	local dir
	for dir in "${FRESH_DIRS[@]}"; do
		mkdir -p "$dir"
		mount -t tmpfs -o mode=0755 hiber-fresh "$dir"
	done
	unset HIBER_CRIU HIBER_PREFIX HIBER_SETUP_CACHE
	# A broken set-up may also loop forever (it once rebuilt CRIU 104 times): bound it.
	step "set-up from nothing" timeout "${HIBER_FRESH_SETUP_TIMEOUT:-900}" bash "$HERE/setup.sh"
	step "criu check" criu_check
	HIBER_HOME=$(mktemp -d /var/tmp/hiber-fresh-XXXXXX)
	export HIBER_HOME
	trap remove_everything EXIT
	"$HIBER" image build busybox >/dev/null
	step "snapshot and restore with it" snapshot_and_restore
}

case ${1:-} in
-h | --help)
	usage
	exit 0
	;;
--inside)
	HIBER=$2
	inside
	;;
'')
	usage >&2
	die "missing HIBER_BINARY"
	;;
*)
	((EUID == 0)) || die "must run as root"
	HIBER=$(realpath "$1")
	[[ -x $HIBER ]] || die "$1 is not an executable"
	unshare --mount --propagation private -- bash "${BASH_SOURCE[0]}" --inside "$HIBER"
	log "ok: set-up from scratch works"
	;;
esac
