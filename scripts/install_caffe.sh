#!/usr/bin/env bash
# Build Caffe (BVLC Caffe as shipped in PyPI's brocolli-caffe sdist) from source, CPU only, with
# the data back ends a Caffe user expects (LMDB, LevelDB + snappy, HDF5, OpenCV), and install
#   - pycaffe, importable from the project's virtualenv (a .pth file),
#   - the command-line tools (caffe, convert_imageset, compute_image_mean, upgrade_*) in the
#     virtualenv's bin/,
#   - libcaffe.a, libproto.a and the headers, for C++ programs linked against the same Caffe.
# The sdist's python/CMakeLists.txt is replaced by scripts/caffe_build/CMakeLists.python.txt
# (one object library, linked into all three), and OpenCV 4 gets a compatibility header.
#
# Idempotent: the build is cached outside the work tree, keyed by Caffe version, feature set and
# recipe revision, Python version and numpy major version, so a warm machine only re-links.
#
#   scripts/install_caffe.sh [PYTHON]      (PYTHON defaults to .venv/bin/python)
#
# Environment: DEEPREBIRTH_CACHE (default ~/.cache/deeprebirth), JOBS (default: nproc).
set -euo pipefail

CAFFE_VERSION=9.0.2
PY=${1:-.venv/bin/python}
JOBS=${JOBS:-$(nproc)}
CACHE_ROOT=${DEEPREBIRTH_CACHE:-$HOME/.cache/deeprebirth}

APT_PACKAGES="cmake build-essential libboost-system-dev libboost-thread-dev libboost-filesystem-dev
libboost-python-dev libboost-regex-dev libgoogle-glog-dev libgflags-dev libprotobuf-dev protobuf-compiler
libopenblas-dev libhdf5-dev libgtest-dev liblmdb-dev libleveldb-dev libsnappy-dev libopencv-dev"
APT_PACKAGES="$APT_PACKAGES dataset-fashion-mnist"  # the built-in `fashion-mnist` SOURCE (deeprebirth/data.py)
# The feature set and the recipe's revision are part of the cache key: a build made without
# them is never reused.
FEATURES="lmdb-leveldb-hdf5-opencv-tools-r2"
HERE=$(cd "$(dirname "$0")" && pwd)

log() { echo "[install_caffe] $*" >&2; }

ensure_apt() {
  local missing=()
  for p in $APT_PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

[ -x "$PY" ] || { log "no python at $PY (run 'make venv' first)"; exit 1; }
PYVER=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
NPMAJOR=$("$PY" -c 'import numpy; print(numpy.__version__.split(".")[0])')
KEY="caffe-${CAFFE_VERSION}-${FEATURES}-py${PYVER}-np${NPMAJOR}"
DEST="$CACHE_ROOT/$KEY"
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
BINDIR=$(dirname "$PY")
TOOLS="caffe convert_imageset compute_image_mean upgrade_net_proto_text upgrade_net_proto_binary upgrade_solver_proto_text"

ensure_apt

if [ ! -f "$DEST/python/caffe/_caffe.so" ] || [ ! -f "$DEST/.complete" ]; then
  log "building Caffe $KEY (about 20 minutes on 2 cores)"
  WORK="$CACHE_ROOT/build-$KEY"
  rm -rf "$WORK"
  mkdir -p "$WORK"
  if [ ! -f "$CACHE_ROOT/brocolli-caffe-$CAFFE_VERSION.tar.gz" ]; then
    "$PY" -m pip download -q --no-deps --no-binary :all: -d "$CACHE_ROOT" "brocolli-caffe==$CAFFE_VERSION"
  fi
  tar xzf "$CACHE_ROOT/brocolli-caffe-$CAFFE_VERSION.tar.gz" -C "$WORK"
  SRC="$WORK/brocolli-caffe-$CAFFE_VERSION"
  # Debian names the Boost.Python library after the Python version.
  BOOST_PY="boost_python${PYVER/./}"
  cp "$HERE/caffe_build/CMakeLists.python.txt" "$SRC/python/CMakeLists.txt"
  DEFS="-DUSE_OPENCV -DUSE_LMDB -DUSE_LEVELDB -DUSE_HDF5"
  COMPAT="-include $HERE/caffe_build/opencv4_compat.h -I/usr/include/opencv4"
  PREFIX=$("$PY" -c 'import sys; print(sys.base_prefix)')
  PYINC=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  NPINC=$("$PY" -c 'import numpy; print(numpy.get_include())')
  mkdir -p "$WORK/build"
  (cd "$WORK/build" && cmake "$SRC" -DANACONDA_HOME="$PREFIX" -DPYTHON_VERSION="python$PYVER" \
      -DCMAKE_BUILD_TYPE=Release \
      -DREBIRTH_BOOST_PYTHON="$BOOST_PY" \
      -DCMAKE_CXX_FLAGS="$DEFS $COMPAT -I$NPINC -I$PYINC -I/usr/include/hdf5/serial" \
      -DCMAKE_EXE_LINKER_FLAGS="-L/usr/lib/x86_64-linux-gnu/hdf5/serial" \
      -DCMAKE_SHARED_LINKER_FLAGS="-L/usr/lib/x86_64-linux-gnu/hdf5/serial" >"$WORK/cmake.log" 2>&1 \
    || { tail -30 "$WORK/cmake.log" >&2; exit 1; })
  (cd "$WORK/build" && make -j"$JOBS" pycaffe caffe $(printf 'tool_%s ' $TOOLS) >"$WORK/make.log" 2>&1 \
    || { tail -30 "$WORK/make.log" >&2; exit 1; })
  rm -rf "$DEST.tmp"
  mkdir -p "$DEST.tmp/python"
  # -L: the build leaves _caffe.so as a symlink into the build tree; copy the real file.
  cp -rL "$SRC/python/caffe" "$DEST.tmp/python/caffe"
  rm -rf "$DEST.tmp/python/caffe/test" "$DEST.tmp/python/caffe/__pycache__"
  mkdir -p "$DEST.tmp/bin" "$DEST.tmp/lib" "$DEST.tmp/include"
  for t in $TOOLS; do cp "$(find "$WORK/build" -type f -name "$t" -perm -u+x | head -1)" "$DEST.tmp/bin/$t"; done
  cp "$(find "$WORK/build" -name libcaffe.a | head -1)" "$(find "$WORK/build" -name libproto.a | head -1)" "$DEST.tmp/lib/"
  cp -r "$SRC/include/caffe" "$DEST.tmp/include/caffe"
  cp -r "$WORK/build/include/caffe/proto" "$DEST.tmp/include/caffe/"
  cp "$WORK/build/caffe_config.h" "$DEST.tmp/include/"
  printf '%s\n' "$DEFS" "$COMPAT" > "$DEST.tmp/include/CXXFLAGS"
  touch "$DEST.tmp/.complete"
  rm -rf "$DEST"
  mv "$DEST.tmp" "$DEST"
  rm -rf "$WORK"
fi

echo "$DEST/python" > "$SITE/deeprebirth_caffe.pth"
for t in $TOOLS; do ln -sfn "$DEST/bin/$t" "$BINDIR/$t"; done
log "caffe tools in $BINDIR: $TOOLS"
GLOG_minloglevel=2 "$PY" -c 'import caffe; print("[install_caffe] pycaffe", caffe.__version__, "from", caffe.__file__)' >&2
