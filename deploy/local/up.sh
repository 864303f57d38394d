#!/usr/bin/env bash
# A Strata cluster on this machine, without containers: a moto S3 server, the nisshi Kafka
# broker (its log on that S3 server, so it survives its own restarts) and one `strata serve`
# process per role, with two infer workers in one consumer group. All on 127.0.0.1, on free
# ports. Stop it with deploy/local/down.sh.
#
#   bash deploy/local/up.sh [--model DIR|URL] [--dir DIR]
#
#   --model   the model artifact the infer workers serve (default: none, they pass tiles through
#             and only the tiles and scenes tables fill; `strata model init` makes one)
#   --dir     where the cluster keeps its state: strata.env, logs/, pids/ (default ./strata-local)
#
# Then, in another shell:
#   set -a; . strata-local/strata.env; set +a
#   strata submit --caption data/scenes/rmnp-rgb.tif    (with --model; without one, no task flags)
#   strata status
#   strata query --tables "$STRATA_TABLES" "SELECT * FROM scenes"
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
RUN=$ROOT/strata-local
MODEL=
while [ $# -gt 0 ]; do
  case $1 in
    --model) MODEL=${2:?--model needs a value}; shift 2 ;;
    --dir) RUN=${2:?--dir needs a value}; shift 2 ;;
    -h|--help) sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument \`$1\`" >&2; echo "hint: bash deploy/local/up.sh --help" >&2; exit 2 ;;
  esac
done
say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

mkdir -p "$RUN/logs" "$RUN/pids"
RUN=$(cd "$RUN" && pwd)
for pid in "$RUN"/pids/*.pid; do
  if alive "$pid"; then
    echo "error: a cluster is already running from $RUN ($(basename "$pid" .pid) is up)" >&2
    echo "hint: bash deploy/local/down.sh --dir $RUN" >&2
    exit 1
  fi
done
rm -f "$RUN"/pids/*.pid

# The broker and the S3 server are the test services: setup builds them once per machine.
bash "$ROOT/scripts/setup.sh" --tests
# STRATA_BIN: a strata binary already built (the tests pass theirs).
STRATA=${STRATA_BIN:-}
if [ -z "$STRATA" ]; then
  say "building strata"
  (cd "$ROOT" && cargo build --locked -q -p pipeline --bin strata)
  STRATA=${CARGO_TARGET_DIR:-$ROOT/target}/debug/strata
fi
CACHE=${STRATA_CACHE:-$HOME/.cache/strata}
NISSHI=${STRATA_NISSHI_BIN:-$CACHE/tools/nisshi-0.8.1/bin/nisshi}

free_port() { "$ROOT/.venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() { # port, name, pid file
  for _ in $(seq 1 120); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    alive "$3" || { echo "error: $2 exited; see $RUN/logs/$2.log" >&2; tail -5 "$RUN/logs/$2.log" >&2; exit 1; }
    sleep 0.5
  done
  echo "error: $2 is not listening on 127.0.0.1:$1 after 60 s; see $RUN/logs/$2.log" >&2
  exit 1
}
start() { # name, command... (its own process group, so down.sh stops its children too)
  local name=$1; shift
  setsid "$@" >"$RUN/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$RUN/pids/$name.pid"
}

S3_PORT=$(free_port)
say "starting the S3 server (moto) on 127.0.0.1:$S3_PORT"
start s3 "$ROOT/.venv/bin/moto_server" -H 127.0.0.1 -p "$S3_PORT"
wait_port "$S3_PORT" s3 "$RUN/pids/s3.pid"
for bucket in strata nisshi; do
  curl -fsS -X PUT "http://127.0.0.1:$S3_PORT/$bucket" >/dev/null
done
S3_ENV=(AWS_ENDPOINT="http://127.0.0.1:$S3_PORT" AWS_ALLOW_HTTP=true AWS_ACCESS_KEY_ID=local
  AWS_SECRET_ACCESS_KEY=local AWS_DEFAULT_REGION=us-east-1)

BROKER_PORT=$(free_port)
say "starting the broker (nisshi) on 127.0.0.1:$BROKER_PORT"
start broker env "${S3_ENV[@]}" "$NISSHI" broker \
  --listener-url "tcp://127.0.0.1:$BROKER_PORT" --advertised-listener-url "tcp://127.0.0.1:$BROKER_PORT" \
  --storage-engine s3://nisshi/
wait_port "$BROKER_PORT" broker "$RUN/pids/broker.pid"

# Every process reads the same settings (`strata config keys` lists them).
{
  echo "# The local cluster's settings: \`set -a; . $RUN/strata.env; set +a\` before strata commands."
  printf '%s\n' "${S3_ENV[@]}"
  echo "STRATA_BROKERS=127.0.0.1:$BROKER_PORT"
  echo "STRATA_TABLES=s3://strata/tables"
  echo "STRATA_TILES=s3://strata/tiles"
  if [ -n "$MODEL" ]; then echo "STRATA_MODEL=$MODEL"; fi
  echo "STRATA_DEVICE=cpu"
} > "$RUN/strata.env"
(set -a; . "$RUN/strata.env"; set +a; "$STRATA" config check >/dev/null 2>"$RUN/logs/config-check.log") || {
  cat "$RUN/logs/config-check.log" >&2
  echo "error: the cluster's settings are refused; see above" >&2; exit 1; }

ROLES=(tile infer-1 infer-2 merge)
declare -A METRICS
for name in "${ROLES[@]}"; do
  port=$(free_port)
  METRICS[$name]=$port
  say "starting strata serve --role ${name%-*} ($name, metrics on 127.0.0.1:$port)"
  # Static membership (a stable instance id per process): a restarted worker takes its
  # partitions back at once.
  start "$name" env $(grep -v '^#' "$RUN/strata.env") STRATA_LISTEN="127.0.0.1:$port" \
    "$STRATA" serve --role "${name%-*}" --instance-id "local-$name"
done
for name in "${ROLES[@]}"; do
  for _ in $(seq 1 240); do
    curl -fsS "http://127.0.0.1:${METRICS[$name]}/readyz" >/dev/null 2>&1 && break
    alive "$RUN/pids/$name.pid" || { echo "error: $name exited; see $RUN/logs/$name.log" >&2; tail -5 "$RUN/logs/$name.log" >&2; exit 1; }
    sleep 0.5
  done
  curl -fsS "http://127.0.0.1:${METRICS[$name]}/readyz" >/dev/null || { echo "error: $name is not ready after 120 s; see $RUN/logs/$name.log" >&2; exit 1; }
done
for name in "${ROLES[@]}"; do echo "METRICS_${name//-/_}=http://127.0.0.1:${METRICS[$name]}/metrics"; done > "$RUN/endpoints"

# Without a model the infer workers answer nothing: tasks would only fail (dead letters).
if [ -n "$MODEL" ]; then TASKS="--caption "; else TASKS=""; fi
cat >&2 <<MSG

The local cluster is up (state in $RUN; logs in $RUN/logs).$( [ -n "$MODEL" ] || printf '\nNo --model: tiles pass through unanswered (tiles and scenes tables only); restart with --model DIR for answers.')
The S3 server keeps everything in memory: down.sh drops the tables with it.
  set -a; . $RUN/strata.env; set +a
  $STRATA submit $TASKS$ROOT/data/scenes/rmnp-rgb.tif
  $STRATA status
  $STRATA query --tables s3://strata/tables "SELECT scene_id, tiles_written, model_version FROM scenes"
Metrics: $(tr '\n' ' ' < "$RUN/endpoints")
Stop it: bash $ROOT/deploy/local/down.sh$( [ "$RUN" = "$ROOT/strata-local" ] || echo " --dir $RUN")
MSG
