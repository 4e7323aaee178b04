#!/usr/bin/env bash
# Install memosd's systemd units.
#   scripts/install_systemd.sh [--memosd PATH] [--dest DIR]           the system service (as root)
#   scripts/install_systemd.sh --user [--memosd PATH] [--dest DIR]    a per-user service
# PATH is the installed `memosd` executable that ExecStart runs (default: `command -v memosd`).
# For the system service it must be readable by the memosd user outside /home (ProtectHome=yes), e.g.
#   python3 -m venv /opt/memosd && /opt/memosd/bin/pip install . && scripts/install_systemd.sh --memosd /opt/memosd/bin/memosd
# --dest renders the units into DIR and stops there (no users created, no systemctl): CI uses it.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=system memosd="" dest=""
while [ $# -gt 0 ]; do
  case "$1" in
    --user) mode=user ;;
    --memosd) memosd="$2"; shift ;;
    --dest) dest="$2"; shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "install_systemd.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
memosd="${memosd:-$(command -v memosd || true)}"
if [ -z "$memosd" ] || [ ! -x "$memosd" ]; then
  echo "install_systemd.sh: no memosd executable found; pass --memosd PATH" >&2
  exit 1
fi
memosd="$(cd "$(dirname "$memosd")" && pwd)/$(basename "$memosd")"

render() {  # render UNIT OUT: the unit with ExecStart pointing at $memosd
  sed -e "s#^ExecStart=[^ ]*memosd #ExecStart=${memosd} #" "$1" > "$2"
}

if [ "$mode" = user ]; then
  target="${dest:-${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user}"
  mkdir -p "$target"
  render systemd/user/memosd.service "$target/memosd.service"
  [ -n "$dest" ] && exit 0
  systemctl --user daemon-reload
  echo "installed $target/memosd.service; start it with: systemctl --user enable --now memosd"
  exit 0
fi

target="${dest:-/etc/systemd/system}"
mkdir -p "$target"
render systemd/memosd.service "$target/memosd.service"
[ -n "$dest" ] && { cp systemd/memosd.sysusers "$target/memosd.sysusers"; exit 0; }
install -D -m 0644 systemd/memosd.sysusers /usr/lib/sysusers.d/memosd.conf
install -D -m 0644 docs/systemd.md /usr/local/share/doc/memosd/systemd.md
systemd-sysusers /usr/lib/sysusers.d/memosd.conf
systemctl daemon-reload
echo "installed $target/memosd.service; start it with: systemctl enable --now memosd"
echo "let a user's agents reach the socket with: usermod -aG memosd USER"
