#!/usr/bin/env bash
# Checks hiber's shell scripts: shellcheck, and no function named like a command (a function
# named `install` once shadowed /usr/bin/install and made the set-up re-run itself forever).
#
#   scripts/lint.sh
set -euo pipefail
cd "$(dirname "$0")/.."

command -v shellcheck >/dev/null || {
	echo "lint: shellcheck is not installed (scripts/setup-test.sh installs it)" >&2
	exit 1
}
shellcheck -x -P scripts scripts/*.sh .ci/run

status=0
for f in scripts/*.sh; do
	while read -r name; do
		kind=$(env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin bash -c "type -t -- '$name'" || true)
		if [[ -n $kind ]]; then
			echo "lint: $f: function '$name' shadows the $kind of that name" >&2
			status=1
		fi
	done < <(sed -n 's/^[[:space:]]*\([A-Za-z_][A-Za-z0-9_-]*\)[[:space:]]*()[[:space:]]*{.*/\1/p' "$f")
done
exit "$status"
