# shellcheck shell=bash
# Shared by hiber's set-up scripts; sourced, not run. The sourcing script sets
# NAME (its log prefix) and CACHE (its cache directory), defines `usage`,
# `check_only` and `set_up`, and ends with `run_main "$@"`. No function here or
# there may be named like a command (scripts/lint.sh checks): a function named
# `install` once made every `install -d` re-run the whole set-up.
#
# Packages are installed with apt-get --no-install-recommends and never by
# upgrading or removing an installed package (HIBER_SETUP_ALLOW_UPGRADES=1
# lifts that); the host's apt sources are never changed.

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export DEBIAN_FRONTEND=noninteractive LC_ALL=C
# Wait for other apt/dpkg runs instead of failing; never upgrade an installed package because
# a sibling from the same source package is installed (podman's libsubid4 would otherwise
# upgrade login and passwd).
APT_OPTS=(-q -o DPkg::Lock::Timeout=300 -o APT::Get::Upgrade-By-Source-Package=false)

log() { printf '%s: %s\n' "$NAME" "$*" >&2; }

# step WHAT FUNCTION [ARGS...]: runs FUNCTION, then logs one line: WHAT, what came of it (the
# function may set STEP_NOTE, e.g. "present" or "installed x y"), and how long it took.
step() {
	local what=$1 t0=$EPOCHREALTIME
	shift
	STEP_NOTE="done"
	"$@" || die "$what failed"
	log "$what: $STEP_NOTE ($(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f s", b - a }'))"
}
die() {
	printf '%s: error: %s\n' "$NAME" "$*" >&2
	exit 1
}
# One line in the main shell; subshells (command substitutions) just pass the failure up.
trap 'if ((BASH_SUBSHELL)); then exit 1; else die "unexpected failure (line $LINENO): $BASH_COMMAND"; fi' ERR

# Print those of the given packages that are not installed.
missing_pkgs() {
	local have p
	have=$(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "$@" 2>/dev/null |
		awk '$2 == "installed" { print $1 }' || true)
	for p in "$@"; do
		grep -qxF -- "$p" <<<"$have" || printf '%s\n' "$p"
	done
}

APT_UPDATED=0
apt_update_once() {
	((APT_UPDATED)) && return 0
	APT_UPDATED=1
	local out
	if ! out=$(apt-get "${APT_OPTS[@]}" update 2>&1); then
		printf '%s\n' "$out" | tail -n 5 >&2
		log "warning: apt-get update failed; trying with the existing package lists"
	fi
}

# apt_install PKG...: install those not yet installed; refuse to upgrade or remove anything.
apt_install() {
	local -a need
	mapfile -t need < <(missing_pkgs "$@")
	if ((${#need[@]} == 0)); then
		STEP_NOTE=present
		return 0
	fi
	apt_update_once
	local sim changes out
	sim=$(apt-get "${APT_OPTS[@]}" install -s -y --no-install-recommends "${need[@]}" 2>&1) || {
		printf '%s\n' "$sim" | tail -n 10 >&2
		die "apt-get cannot install: ${need[*]}"
	}
	# "Inst pkg [old-version] (...)" is an upgrade; "Remv pkg" a removal.
	changes=$(awk '/^Inst [^ ]+ \[/ || /^Remv / { printf "%s ", $2 }' <<<"$sim")
	if [[ -n $changes && ${HIBER_SETUP_ALLOW_UPGRADES:-0} != 1 ]]; then
		die "installing ${need[*]} would upgrade or remove installed host packages (${changes% }); refusing (set HIBER_SETUP_ALLOW_UPGRADES=1 to allow)"
	fi
	out=$(apt-get "${APT_OPTS[@]}" install -y --no-install-recommends "${need[@]}" 2>&1) || {
		printf '%s\n' "$out" | tail -n 20 >&2
		die "apt-get install failed: ${need[*]}"
	}
	STEP_NOTE="installed ${need[*]}"
}

# on_tmpfs DIR: whether DIR exists on a tmpfs (so it does not outlive a reboot).
# The Debian archive root the host already uses: the first http(s) URI serving suite
# 'bookworm' with component 'main' that is not a -security archive.
derive_mirror() {
	local -a files=()
	local f uri
	[[ -f /etc/apt/sources.list ]] && files+=(/etc/apt/sources.list)
	for f in /etc/apt/sources.list.d/*; do
		[[ -f $f ]] || continue
		case $f in *.list | *.sources) files+=("$f") ;; esac
	done
	for f in "${files[@]}"; do
		case $f in
		*.sources)
			uri=$(awk '
				function trim(s) { gsub(/^[ \t]+|[ \t]+$/, "", s); gsub(/[ \t]+/, " ", s); return s }
				function flush(   i, ns, nc, nu, s, c, u, hs, hc) {
					if (!found && enabled != "no" && (" " types " ") ~ / deb(-src)? /) {
						ns = split(suites, s, " "); nc = split(comps, c, " "); nu = split(uris, u, " ")
						for (i = 1; i <= ns; i++) if (s[i] == "bookworm") hs = 1
						for (i = 1; i <= nc; i++) if (c[i] == "main") hc = 1
						if (hs && hc)
							for (i = 1; i <= nu; i++)
								if (u[i] ~ /^https?:\/\// && u[i] !~ /-security/) { print u[i]; found = 1; break }
					}
					types = uris = suites = comps = enabled = key = ""
				}
				/^[ \t]*#/ { next }
				/^[ \t]*$/ { flush(); next }
				/^[ \t]/ {
					v = trim($0)
					if (key == "types") types = types " " v
					else if (key == "uris") uris = uris " " v
					else if (key == "suites") suites = suites " " v
					else if (key == "components") comps = comps " " v
					next
				}
				{
					i = index($0, ":"); if (!i) next
					key = tolower(trim(substr($0, 1, i - 1))); v = trim(substr($0, i + 1))
					if (key == "types") types = v
					else if (key == "uris") uris = v
					else if (key == "suites") suites = v
					else if (key == "components") comps = v
					else if (key == "enabled") enabled = tolower(v)
				}
				END { flush() }' "$f")
			;;
		*)
			uri=$(awk '
				{ sub(/#.*/, "") }
				$1 != "deb" && $1 != "deb-src" { next }
				{
					line = $0
					sub(/^[ \t]*deb(-src)?[ \t]+/, "", line)
					if (line ~ /^\[/) sub(/^\[[^]]*\][ \t]*/, "", line)
					n = split(line, a, /[ \t]+/)
					if (a[1] !~ /^https?:\/\// || a[1] ~ /-security/ || a[2] != "bookworm") next
					for (i = 3; i <= n; i++) if (a[i] == "main") { print a[1]; exit }
				}' "$f")
			;;
		esac
		if [[ -n $uri ]]; then
			printf '%s\n' "${uri%/}"
			return 0
		fi
	done
	return 1
}

on_tmpfs() { [[ -d $1 && $(stat -f -c %T "$1") == tmpfs ]]; }

# ensure_tmpfs DIR SOURCE OPTIONS WHAT: mounts a tmpfs (named SOURCE, with OPTIONS) on DIR unless
# DIR is on one already; what a previous boot left in DIR is removed first, as it must not be
# mistaken for live state.
ensure_tmpfs() {
	local dir=$1 source=$2 options=$3 what=$4
	if on_tmpfs "$dir"; then
		STEP_NOTE="present on $dir"
		return 0
	fi
	mkdir -p "$dir"
	find "$dir" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
	mount -t tmpfs -o "$options" "$source" "$dir" || die "cannot mount a tmpfs on $dir ($what)"
	STEP_NOTE="mounted on $dir"
}

# run_main ARGS: --help, --check, or (as root, on Debian, holding $CACHE/.lock) set_up.
run_main() {
	case ${1:-} in
	-h | --help)
		usage
		return 0
		;;
	--check)
		check_only
		return 0
		;;
	'') ;;
	*)
		usage >&2
		die "unknown argument: $1"
		;;
	esac
	((EUID == 0)) || die "must run as root"
	command -v dpkg-query >/dev/null || die "not a Debian system (no dpkg-query)"
	mkdir -p "$CACHE"
	exec 9>"$CACHE/.lock"
	flock 9 || die "cannot lock $CACHE/.lock"
	set_up
}
