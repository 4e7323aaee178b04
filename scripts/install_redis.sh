#!/usr/bin/env bash
# redis-server for the pub/sub comparison benchmark (bench/pubsub.py); Debian's package.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends redis-server >/dev/null
# The package starts a system redis on :6379 where it can; the benchmark runs its own on a private socket.
