#!/usr/bin/env bash
# Stops the local cluster deploy/local/up.sh started: the strata workers first (SIGTERM: they
# drain, commit and leave their groups), then the broker and the S3 server. Anything still
# running after its grace time is killed. Logs stay in DIR/logs; `--purge` removes DIR.
#
#   bash deploy/local/down.sh [--dir DIR] [--purge]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
RUN=$ROOT/strata-local
PURGE=0
while [ $# -gt 0 ]; do
  case $1 in
    --dir) RUN=${2:?--dir needs a value}; shift 2 ;;
    --purge) PURGE=1; shift ;;
    -h|--help) sed -n '2,6p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument \`$1\`" >&2; echo "hint: bash deploy/local/down.sh --help" >&2; exit 2 ;;
  esac
done
[ -d "$RUN/pids" ] || { echo "nothing to stop: no cluster state in $RUN" >&2; exit 0; }
if ! ls "$RUN"/pids/*.pid >/dev/null 2>&1; then echo "nothing to stop: no process recorded in $RUN/pids" >&2; exit 0; fi

stop() { # name, grace seconds
  local file=$RUN/pids/$1.pid pid
  [ -f "$file" ] || return 0
  pid=$(cat "$file")
  if ! kill -0 "$pid" 2>/dev/null; then
    rm -f "$file"
    echo "$1 was not running" >&2
    return 0
  fi
  # The whole process group: `env` and anything a service started.
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 $(( $2 * 10 ))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "$1 did not stop within $2 s: killing it" >&2
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
  echo "stopped $1" >&2
}
# Workers first, in parallel (each drains for up to its drain timeout, 30 s by default).
for file in "$RUN"/pids/*.pid; do
  name=$(basename "$file" .pid)
  case $name in s3|broker) ;; *) stop "$name" 40 & ;; esac
done
wait
stop broker 10
stop s3 10
if [ "$PURGE" = 1 ]; then rm -rf "$RUN"; fi
