#!/usr/bin/env bash
# CI check of the systemd units: `systemd-analyze verify` prints nothing for either unit (nor the system unit
# with the cluster drop-in), the system
# unit's `systemd-analyze security --offline=yes` exposure is 1.5 or lower, and the sysusers file
# creates the memosd user (in a scratch root). Installs systemd's tools with apt-get when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
MAX_EXPOSURE="${MAX_EXPOSURE:-1.5}"
MEMOSD="${MEMOSD:-$PWD/.venv/bin/memosd}"

if ! command -v systemd-analyze >/dev/null; then
  echo "check_systemd: installing systemd (for systemd-analyze)"
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/system" "$work/user" "$work/xdg" "$work/root/etc"
chmod 700 "$work/xdg"
scripts/install_systemd.sh --memosd "$MEMOSD" --dest "$work/system"
scripts/install_systemd.sh --user --memosd "$MEMOSD" --dest "$work/user"

fail=0
out="$(systemd-analyze verify "$work/system/memosd.service" 2>&1)" || fail=1
if [ -n "$out" ] || [ $fail = 1 ]; then
  echo "check_systemd: systemd-analyze verify systemd/memosd.service:"; echo "$out"; exit 1
fi
# The cluster drop-in (docs/cluster.md) next to the unit: systemd-analyze reads drop-ins beside the units it verifies.
mkdir -p "$work/cluster/memosd.service.d"
cp "$work/system/memosd.service" "$work/cluster/"
cp systemd/cluster.conf "$work/cluster/memosd.service.d/"
out="$(systemd-analyze verify "$work/cluster/memosd.service" 2>&1)" || fail=1
if [ -n "$out" ] || [ $fail = 1 ]; then
  echo "check_systemd: systemd-analyze verify systemd/memosd.service with systemd/cluster.conf:"; echo "$out"; exit 1
fi
out="$(XDG_RUNTIME_DIR="$work/xdg" systemd-analyze --user verify "$work/user/memosd.service" 2>&1)" || fail=1
if [ -n "$out" ] || [ $fail = 1 ]; then
  echo "check_systemd: systemd-analyze --user verify systemd/user/memosd.service:"; echo "$out"; exit 1
fi

report="$(systemd-analyze security --offline=yes "$work/system/memosd.service" 2>&1 || true)"
score="$(printf '%s\n' "$report" | sed -n 's/.*Overall exposure level for memosd.service: \([0-9.]*\).*/\1/p')"
if [ -z "$score" ]; then
  echo "check_systemd: no exposure level in the report:"; echo "$report"; exit 1
fi
if ! awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s <= m) }'; then
  printf '%s\n' "$report" | grep -v '✓' || true
  echo "check_systemd: exposure $score is above $MAX_EXPOSURE"; exit 1
fi

out="$(systemd-sysusers --root="$work/root" "$work/system/memosd.sysusers" 2>&1)" || { echo "$out"; exit 1; }
grep -q '^memosd:' "$work/root/etc/passwd" || { echo "check_systemd: sysusers did not create memosd"; exit 1; }
echo "check_systemd: units verify cleanly; system unit exposure $score (<= $MAX_EXPOSURE); sysusers ok"
