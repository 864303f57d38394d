#!/usr/bin/env bash
# Brings this machine to the state Strata builds, runs and tests in. Idempotent: every step
# checks before it works, so a second run takes seconds.
#
#   1. Debian packages: GDAL (headers + tools), cmake for librdkafka's bundled build.
#   2. A project-local venv (.venv, git-ignored) with libtorch (torch 2.11.0 CPU-minimal),
#      ONNX Runtime 1.31.1 and moto_server. .cargo/config.toml points tch and ort at it.
#   3. The tansu Kafka-protocol broker, built once into a cache outside the checkout
#      ($STRATA_CACHE, default ~/.cache/strata) and reused by every clone.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${STRATA_CACHE:-$HOME/.cache/strata}
TANSU_VERSION=0.6.0
TANSU_BIN=$CACHE/tools/tansu-$TANSU_VERSION/bin/tansu
VENV=$ROOT/.venv

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
took() { printf '    done in %ss\n' "$(( $(date +%s) - $1 ))" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# --- 1. Debian packages -------------------------------------------------------------------
APT_PACKAGES=(libgdal-dev gdal-bin cmake pkg-config python3-venv)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  t=$(date +%s)
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  took "$t"
fi

# --- 2. Project venv ------------------------------------------------------------------------
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "error: Python 3.11 is required for the project venv (.cargo/config.toml names python3.11); found $("$PYTHON" --version 2>&1)" >&2
  echo "hint: set PYTHON=/path/to/python3.11" >&2
  exit 2
fi
stamp_want=$(cat "$ROOT"/scripts/requirements-*.txt "$ROOT"/scripts/requirements-services.lock | sha256sum | cut -c1-16)
stamp_file=$VENV/.strata-setup
if [ "$(cat "$stamp_file" 2>/dev/null)" != "$stamp_want" ]; then
  say "creating the project venv in .venv (libtorch, onnxruntime, moto)"
  t=$(date +%s)
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check \
    -r "$ROOT/scripts/requirements-services.txt" -c "$ROOT/scripts/requirements-services.lock"
  # Last and without dependencies: only the shared libraries are wanted, not torch's Python
  # stack (CUDA, triton), so pip's resolver must not see torch's requirements.
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --no-warn-conflicts \
    -r "$ROOT/scripts/requirements-native.txt"
  echo "$stamp_want" > "$stamp_file"
  took "$t"
fi

# --- 3. Test services -------------------------------------------------------------------------
if [ ! -x "$TANSU_BIN" ]; then
  say "building the tansu $TANSU_VERSION broker into $CACHE (once per machine, ~15 min on 2 cores)"
  t=$(date +%s)
  mkdir -p "$CACHE/tools"
  CARGO_TARGET_DIR="$CACHE/tansu-build" cargo install "tansu@$TANSU_VERSION" --locked \
    --features dynostore --root "$CACHE/tools/tansu-$TANSU_VERSION" --quiet
  rm -rf "$CACHE/tansu-build"
  took "$t"
fi
