#!/usr/bin/env bash
# Build the timing program rebirth-time (device/) for this machine, against the engine's Caffe
# (libcaffe.a, libproto.a and headers that scripts/install_caffe.sh keeps in its cache), and put
# it in that cache's bin/ beside the caffe tools. `rebirth bench --device host` runs it, and the
# tests compare its JSON with `--device cpu`. Rebuilt only when device/ changes (about 30 s).
#
#   scripts/build_rebirth_time.sh [PYTHON]      (PYTHON defaults to .venv/bin/python)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PY=${1:-.venv/bin/python}
JOBS=${JOBS:-$(nproc)}
log() { echo "[build_rebirth_time] $*" >&2; }

[ -x "$PY" ] || { log "no python at $PY (run 'make venv' first)"; exit 1; }
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
[ -f "$SITE/deeprebirth_caffe.pth" ] || { log "the engine's Caffe is not installed (run 'make caffe' first)"; exit 1; }
DEST=$(dirname "$(head -1 "$SITE/deeprebirth_caffe.pth")")
[ -f "$DEST/lib/libcaffe.a" ] && [ -f "$DEST/include/CXXFLAGS" ] || {
  log "$DEST has no lib/libcaffe.a or include/CXXFLAGS (rebuild the engine: make caffe)"; exit 1; }

HASH=$(cat "$ROOT"/device/CMakeLists.txt "$ROOT"/device/rebirth_time.cpp "$ROOT"/device/timing_common.h \
  "$DEST/include/CXXFLAGS" | sha256sum | cut -c1-16)
if [ -x "$DEST/bin/rebirth-time" ] && [ "$(cat "$DEST/bin/.rebirth-time.hash" 2>/dev/null)" = "$HASH" ]; then
  log "rebirth-time is up to date: $DEST/bin/rebirth-time"
  exit 0
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/rebirth-time-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
log "building rebirth-time against $DEST"
if ! (cmake -S "$ROOT/device" -B "$WORK" -DCMAKE_BUILD_TYPE=Release -DREBIRTH_CAFFE_PREFIX="$DEST" \
      && cmake --build "$WORK" -j "$JOBS") >"$WORK/build.log" 2>&1; then
  tail -30 "$WORK/build.log" >&2
  log "build failed"
  exit 1
fi
mkdir -p "$DEST/bin"
cp "$WORK/rebirth-time" "$DEST/bin/rebirth-time.tmp"
mv "$DEST/bin/rebirth-time.tmp" "$DEST/bin/rebirth-time"
echo "$HASH" > "$DEST/bin/.rebirth-time.hash"
log "built $DEST/bin/rebirth-time"
