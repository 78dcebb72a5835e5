#!/usr/bin/env bash
# Cross-build the on-device timing program `rebirth-time` (device/) from source into one executable:
# OpenBLAS, gflags, glog, protobuf (with a host protoc of the same version), the Boost libraries
# Caffe needs and Caffe itself (CPU only, from the same brocolli-caffe sdist as the engine; no
# OpenCV, LMDB, LevelDB, HDF5 or Python), all static.
#
#   scripts/build_device.sh --ndk DIR [--abi arm64-v8a|armeabi-v7a] [--api 24]   Android phone
#   scripts/build_device.sh --cross aarch64-linux-gnu                           Debian cross compiler
#   scripts/build_device.sh --host                                               this machine
#
# With --engine ncnn it builds `rebirth-time-ncnn` (device/ncnn_time.cpp) instead: ncnn as a static
# library (from the PyPI sdist of the ncnn version the Python binding has: no Vulkan, tools,
# examples, benchmark or Python; OpenMP linked statically; float32 kernels only: no int8, bf16 or
# Armv8.2+ fp16 variants, no runtime CPU dispatch; all of ncnn's layers), and the program linked
# against it. Same targets, same cache.
#
# Other options:
#   --engine E      caffe (default: rebirth-time) or ncnn (rebirth-time-ncnn)
#   --sources DIR   release tarballs (or Debian .orig tarballs) to build from; each is checked
#                   against the sha256 sums pinned below. Without it the script uses Debian's
#                   `apt-get source --download-only` (adds a deb-src entry when run as root), and
#                   downloads the release tarballs where the host has internet.
#   --jobs N        parallel compile jobs (default: nproc)
#   --clean         forget this target's cached build first
#
# Output: ~/.cache/deeprebirth/device-<target>/bin/rebirth-time[-ncnn] (DEEPREBIRTH_CACHE moves the
# cache root). Every stage leaves a stamp there, so an interrupted build resumes where it stopped
# and a finished one only re-links the timing program when device/ changed. Stage times are
# appended to device-<target>/build-times.txt.
#
# Pitfalls handled (the Caffe-on-Android projects meet the same ones):
#  - OpenBLAS cannot detect a CPU it does not run on: TARGET=ARMV8 (ARMV7 for armeabi-v7a) is given.
#  - Caffe's sources include HDF5 unconditionally (net.cpp, the HDF5 layers, the solvers): the
#    program is built without them, against stub HDF5 headers (device/hdf5_stub/) that fail loudly
#    if a .h5 weight file is ever given.
#  - glog writes log files to /tmp, which Android does not have: rebirth-time logs to stderr.
#  - One executable: static libraries throughout, the NDK's c++_static C++ runtime on Android and
#    a fully static binary (-static) for Linux targets.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
CACHE_ROOT=${DEEPREBIRTH_CACHE:-$HOME/.cache/deeprebirth}
JOBS=${JOBS:-$(nproc)}
CAFFE_VERSION=9.0.2

# name | Debian source package | upstream tarball (name sha256 url) | Debian .orig tarball (name sha256)
OPENBLAS_VERSION=0.3.21
GFLAGS_VERSION=2.2.2
GLOG_VERSION=0.6.0
PROTOBUF_VERSION=3.21.12
BOOST_VERSION=1.74.0
read -r -d '' PINS <<'EOF' || true
openblas OpenBLAS-0.3.21.tar.gz f36ba3d7a60e7c8bcc54cd9aaa9b1223dd42eaf02c811791c37e8ca707c241ca https://github.com/xianyi/OpenBLAS/releases/download/v0.3.21/OpenBLAS-0.3.21.tar.gz
openblas openblas_0.3.21+ds.orig.tar.xz bbec5cca61c8033b2d57aaecde205d709323a0b35a5f193290081dbb3826848a -
gflags gflags-2.2.2.tar.gz 34af2f15cf7367513b352bdcd2493ab14ce43692d2dcd9dfc499492966c64dcf https://github.com/gflags/gflags/archive/v2.2.2.tar.gz
gflags gflags_2.2.2.orig.tar.gz 34af2f15cf7367513b352bdcd2493ab14ce43692d2dcd9dfc499492966c64dcf -
glog glog-0.6.0.tar.gz 8a83bf982f37bb70825df71a9709fa90ea9f4447fb3c099e1d720a439d88bad6 https://github.com/google/glog/archive/v0.6.0.tar.gz
glog google-glog_0.6.0.orig.tar.gz 8a83bf982f37bb70825df71a9709fa90ea9f4447fb3c099e1d720a439d88bad6 -
protobuf protobuf-3.21.12.tar.gz 930c2c3b5ecc6c9c12615cf5ad93f1cd6e12d0aba862b572e076259970ac3a53 https://github.com/protocolbuffers/protobuf/archive/v3.21.12.tar.gz
protobuf protobuf_3.21.12.orig.tar.gz 930c2c3b5ecc6c9c12615cf5ad93f1cd6e12d0aba862b572e076259970ac3a53 -
boost boost_1_74_0.tar.bz2 83bfc1507731a0906e387fc28b7ef5417d591429e51e788417fe9ff025e116b1 https://boostorg.jfrog.io/artifactory/main/release/1.74.0/source/boost_1_74_0.tar.bz2
boost boost1.74_1.74.0+ds1.orig.tar.xz 192f5df504d282cb81288f88232d8af45b64a9ab531e1c7cf8ae955f16f6bb28 -
caffe brocolli-caffe-9.0.2.tar.gz c6410cc60bdd6db685d441b66be7df05410f8850ac88d6b75d48ef9b2315c08a -
ncnn ncnn-1.0.20261020.tar.gz ad8cdd63e9755cfa8e23b9b6d9ce46156077d80298a89e7c3ba325ffccfca200 -
EOF
# ncnn: the version of the Python binding (`import ncnn; ncnn.__version__`), so that --device cpu
# and the devices run the same ncnn. Its sdist's setup.py names itself after today's date, so
# `pip download ncnn==VERSION` rejects it ("inconsistent version"); scripts/fetch_sdist.py takes the
# file from the simple page of the index pip uses instead, and the sha256 is checked.
NCNN_VERSION=1.0.20261020
# Debian source package of each component (apt-get source --download-only NAME).
declare -A DEBIAN_SRC=([openblas]=openblas [gflags]=gflags [glog]=google-glog [protobuf]=protobuf [boost]=boost1.74)

log() { echo "[build_device] $*" >&2; }
die() { echo "[build_device] error: $*" >&2; exit 1; }
usage() { sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

MODE="" NDK="" ABI=arm64-v8a API=24 CROSS="" SOURCES="" CLEAN=0 ENGINE=caffe
while [ $# -gt 0 ]; do
  case "$1" in
    --ndk) MODE=ndk; NDK=${2:?--ndk needs a directory}; shift 2 ;;
    --abi) ABI=${2:?}; shift 2 ;;
    --api) API=${2:?}; shift 2 ;;
    --cross) MODE=cross; CROSS=${2:?--cross needs a triple, e.g. aarch64-linux-gnu}; shift 2 ;;
    --host) MODE=host; shift ;;
    --sources) SOURCES=$(cd "${2:?}" && pwd); shift 2 ;;
    --jobs) JOBS=${2:?}; shift 2 ;;
    --engine) ENGINE=${2:?--engine needs caffe or ncnn}; shift 2 ;;
    --clean) CLEAN=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "unknown option: $1" >&2; usage 1 >&2 ;;
  esac
done
[ -n "$MODE" ] || { echo "give one of --ndk DIR, --cross TRIPLE, --host" >&2; usage 1 >&2; }
case "$ENGINE" in caffe|ncnn) ;; *) echo "--engine $ENGINE: expected caffe or ncnn" >&2; usage 1 >&2 ;; esac

# Host tools (installed with apt-get when missing and run as root on Debian/Ubuntu).
ensure_tools() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    log "apt-get install ${missing[*]}"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    log "missing host packages (install them first): ${missing[*]}"
  fi
}

# ---------------------------------------------------------------------------------------------
# The toolchain: compilers for make-based builds, a CMake toolchain, OpenBLAS and Boost settings.
HOST_CC=${HOST_CC:-gcc}
HOST_CXX=${HOST_CXX:-g++}
CMAKE_TC=()
case "$MODE" in
  ndk)
    [ -f "$NDK/build/cmake/android.toolchain.cmake" ] || die "$NDK is not an Android NDK (no build/cmake/android.toolchain.cmake)"
    TCBIN=$(echo "$NDK"/toolchains/llvm/prebuilt/*/bin)
    [ -d "$TCBIN" ] || die "no LLVM toolchain in $NDK/toolchains/llvm/prebuilt"
    case "$ABI" in
      arm64-v8a)   TRIPLE=aarch64-linux-android; BLAS_TARGET=ARMV8; BLAS_EXTRA="BINARY=64"; B2_ARCH="architecture=arm address-model=64" ;;
      armeabi-v7a) TRIPLE=armv7a-linux-androideabi; BLAS_TARGET=ARMV7; BLAS_EXTRA="BINARY=32 ARM_SOFTFP_ABI=1"; B2_ARCH="architecture=arm address-model=32" ;;
      *) die "--abi $ABI: expected arm64-v8a or armeabi-v7a" ;;
    esac
    TARGET="android-$ABI-api$API"
    CC="$TCBIN/$TRIPLE$API-clang"; CXX="$TCBIN/$TRIPLE$API-clang++"
    AR="$TCBIN/llvm-ar"; RANLIB="$TCBIN/llvm-ranlib"
    [ -x "$CC" ] || die "$CC not found (is --api $API supported by this NDK?)"
    CMAKE_TC=(-DCMAKE_TOOLCHAIN_FILE="$NDK/build/cmake/android.toolchain.cmake" -DANDROID_ABI="$ABI"
              -DANDROID_PLATFORM="android-$API" -DANDROID_STL=c++_static)
    B2_TOOLSET=clang; B2_OS=android; LINK_STATIC=OFF
    ;;
  cross)
    TARGET="$CROSS"
    CC="$CROSS-gcc"; CXX="$CROSS-g++"; AR="$CROSS-ar"; RANLIB="$CROSS-ranlib"
    case "$CROSS" in
      aarch64-*) BLAS_TARGET=ARMV8; BLAS_EXTRA="BINARY=64"; B2_ARCH="architecture=arm address-model=64"; PROC=aarch64 ;;
      arm-*|armv7*) BLAS_TARGET=ARMV7; BLAS_EXTRA="BINARY=32"; B2_ARCH="architecture=arm address-model=32"; PROC=arm ;;
      *) die "--cross $CROSS: only aarch64-* and arm-* triples are known" ;;
    esac
    command -v "$CXX" >/dev/null || ensure_tools "g++-$CROSS"
    command -v "$CXX" >/dev/null || die "$CXX not found (Debian: apt-get install g++-$CROSS)"
    B2_TOOLSET=gcc; B2_OS=linux; LINK_STATIC=ON
    ;;
  host)
    TARGET="host-$(uname -m)"
    CC=$HOST_CC; CXX=$HOST_CXX; AR=ar; RANLIB=ranlib
    BLAS_TARGET=""; BLAS_EXTRA=""; B2_ARCH=""; B2_TOOLSET=gcc; B2_OS=linux; LINK_STATIC=ON
    ;;
esac

if command -v dpkg-query >/dev/null; then
  TOOLS="cmake make bison xz-utils"
  [ "$MODE" = host ] && TOOLS="$TOOLS g++"
  ensure_tools $TOOLS
fi

OUT="$CACHE_ROOT/device-$TARGET"
[ "$CLEAN" = 1 ] && { log "removing $OUT"; rm -rf "$OUT"; }
PREFIX="$OUT/prefix"; BUILD="$OUT/build"; STAMPS="$OUT/stamps"
SRCDIR="$CACHE_ROOT/device-sources"
mkdir -p "$PREFIX" "$BUILD" "$STAMPS" "$SRCDIR" "$OUT/bin"
TIMES="$OUT/build-times.txt"

if [ "$MODE" = cross ]; then
  cat > "$OUT/toolchain.cmake" <<EOF
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR $PROC)
set(CMAKE_C_COMPILER $CC)
set(CMAKE_CXX_COMPILER $CXX)
set(CMAKE_FIND_ROOT_PATH $PREFIX /usr/$CROSS)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)
EOF
  CMAKE_TC=(-DCMAKE_TOOLCHAIN_FILE="$OUT/toolchain.cmake")
fi
CMAKE_COMMON=("${CMAKE_TC[@]}" -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX="$PREFIX"
              -DCMAKE_PREFIX_PATH="$PREFIX" -DCMAKE_FIND_ROOT_PATH="$PREFIX" -DBUILD_SHARED_LIBS=OFF
              -DCMAKE_POSITION_INDEPENDENT_CODE=ON -DBUILD_TESTING=OFF)

# Run one stage once: `stage NAME command...`; its time goes to build-times.txt.
stage() {
  local name=$1; shift
  if [ -f "$STAMPS/$name" ]; then log "$name: cached"; return; fi
  log "$name: building (log: $BUILD/$name.log)"
  local t0=$SECONDS rc
  # Not inside `if`: there bash would ignore `set -e` in the stage's commands.
  set +e
  ( set -e; "$@" ) >"$BUILD/$name.log" 2>&1
  rc=$?
  set -e
  if [ "$rc" -ne 0 ]; then
    tail -25 "$BUILD/$name.log" >&2
    die "$name failed after $((SECONDS - t0)) s; full log: $BUILD/$name.log"
  fi
  echo "$name $((SECONDS - t0)) s ($(date -u +%FT%TZ), jobs $JOBS)" >> "$TIMES"
  log "$name: done in $((SECONDS - t0)) s"
  touch "$STAMPS/$name"
}

# ---------------------------------------------------------------------------------------------
# Sources: a pinned tarball per component, found in --sources, fetched by apt-get source, or
# downloaded.
sha_ok() { [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

ensure_deb_src() {
  if apt-get source --download-only --print-uris gflags >/dev/null 2>&1; then return 0; fi
  [ "$(id -u)" -eq 0 ] || return 1
  log "adding a deb-src entry (/etc/apt/sources.list.d/deeprebirth-src.sources) and running apt-get update"
  local suite
  suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
  cat > /etc/apt/sources.list.d/deeprebirth-src.sources <<EOF
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  apt-get update -qq >/dev/null 2>&1 || return 1
}

# The path of a verified tarball of component $1.
tarball() {
  local comp=$1 name sum url f
  while read -r c name sum url; do
    [ "$c" = "$comp" ] || continue
    for f in ${SOURCES:+"$SOURCES/$name"} "$SRCDIR/$name" "$SRCDIR/apt/$name" "$CACHE_ROOT/$name"; do
      if [ -f "$f" ]; then
        sha_ok "$f" "$sum" || die "$f: sha256 does not match the pinned $sum"
        echo "$f"; return 0
      fi
    done
  done <<< "$PINS"
  [ -n "$SOURCES" ] && log "$comp: not in $SOURCES; trying other ways"
  local py=${PYTHON:-$ROOT/.venv/bin/python}
  [ -x "$py" ] || py=python3
  if [ "$comp" = caffe ]; then
    "$py" -m pip download -q --no-deps --no-binary :all: -d "$SRCDIR" "brocolli-caffe==$CAFFE_VERSION" >&2 \
      || die "cannot fetch the brocolli-caffe $CAFFE_VERSION sdist (pip download)"
  elif [ "$comp" = ncnn ]; then
    "$py" "$ROOT/scripts/fetch_sdist.py" ncnn "$NCNN_VERSION" "$SRCDIR" >&2 \
      || die "cannot fetch the ncnn $NCNN_VERSION sdist (scripts/fetch_sdist.py ncnn $NCNN_VERSION $SRCDIR)"
  elif command -v apt-get >/dev/null && ensure_deb_src; then
    mkdir -p "$SRCDIR/apt"
    (cd "$SRCDIR/apt" && apt-get source --download-only "${DEBIAN_SRC[$comp]}" >&2) || log "apt-get source ${DEBIAN_SRC[$comp]} failed"
  fi
  while read -r c name sum url; do
    [ "$c" = "$comp" ] || continue
    for f in "$SRCDIR/$name" "$SRCDIR/apt/$name"; do
      if [ -f "$f" ]; then sha_ok "$f" "$sum" || die "$f: sha256 does not match the pinned $sum"; echo "$f"; return 0; fi
    done
    if [ "$url" != - ] && [ "$comp" != ncnn ] && command -v curl >/dev/null; then
      log "downloading $url"
      if curl -fsSL --retry 2 -o "$SRCDIR/$name.part" "$url"; then
        sha_ok "$SRCDIR/$name.part" "$sum" || die "$url: sha256 does not match the pinned $sum"
        mv "$SRCDIR/$name.part" "$SRCDIR/$name"; echo "$SRCDIR/$name"; return 0
      fi
      rm -f "$SRCDIR/$name.part"
    fi
  done <<< "$PINS"
  die "no source tarball for $comp: put one of these in --sources DIR: $(awk -v c="$comp" '$1==c {printf "%s ", $2}' <<< "$PINS")"
}

# Unpack component $1 into $BUILD/src-$1 (one top directory, whatever the tarball calls it).
unpack() {
  local comp=$1 tb dir
  dir="$BUILD/src-$comp"
  if [ ! -f "$dir/.unpacked" ]; then
    tb=$(tarball "$comp")
    log "$comp: unpacking $(basename "$tb")"
    rm -rf "$dir" "$dir.tmp"; mkdir -p "$dir.tmp"
    tar xf "$tb" -C "$dir.tmp"
    local top
    top=$(find "$dir.tmp" -mindepth 1 -maxdepth 1 -type d | head -1)
    mv "$top" "$dir"; rm -rf "$dir.tmp"
    touch "$dir/.unpacked"
  fi
  echo "$dir"
}

# ---------------------------------------------------------------------------------------------
# Stages

build_protoc() {
  # A host protoc of the same version as the target's libprotobuf: Debian's protobuf-compiler
  # when it is that version, otherwise built from the same tarball.
  if command -v protoc >/dev/null && [ "$(protoc --version)" = "libprotoc $PROTOBUF_VERSION" ]; then
    echo "$(command -v protoc)"; return
  fi
  local dest="$CACHE_ROOT/device-host-protoc-$PROTOBUF_VERSION"
  if [ ! -x "$dest/bin/protoc" ]; then
    local src; src=$(unpack protobuf)
    log "building a host protoc $PROTOBUF_VERSION"
    mkdir -p "$BUILD/host-protoc"
    (cd "$BUILD/host-protoc" && cmake "$src/cmake" -DCMAKE_BUILD_TYPE=Release -Dprotobuf_BUILD_TESTS=OFF \
        -Dprotobuf_WITH_ZLIB=OFF -DBUILD_SHARED_LIBS=OFF -DCMAKE_INSTALL_PREFIX="$dest" \
        -DCMAKE_C_COMPILER="$HOST_CC" -DCMAKE_CXX_COMPILER="$HOST_CXX" \
      && cmake --build . --target protoc -j "$JOBS" && mkdir -p "$dest/bin" && cp protoc "$dest/bin/") \
      >"$BUILD/host-protoc.log" 2>&1 || { tail -20 "$BUILD/host-protoc.log" >&2; die "host protoc failed"; }
  fi
  echo "$dest/bin/protoc"
}

do_openblas() {
  local src; src=$(unpack openblas)
  cd "$src"
  local args=(CC="$CC" AR="$AR" RANLIB="$RANLIB" HOSTCC="$HOST_CC" NOFORTRAN=1 NO_LAPACK=1 NO_LAPACKE=1
              NO_SHARED=1 USE_OPENMP=0 USE_THREAD=1 NUM_THREADS=8 BUILD_SINGLE=1 BUILD_DOUBLE=1
              PREFIX="$PREFIX" $BLAS_EXTRA)
  [ -n "$BLAS_TARGET" ] && args+=(TARGET="$BLAS_TARGET")
  [ "$MODE" != host ] && args+=(CROSS=1)
  make -j"$JOBS" "${args[@]}" libs
  touch lib.grd
  make "${args[@]}" install
}

# Configure, build and install a CMake project: `cmake_project NAME SOURCE_DIR [cmake args]`.
cmake_project() {
  local name=$1 src=$2; shift 2
  rm -rf "$BUILD/$name" && mkdir -p "$BUILD/$name" && cd "$BUILD/$name"
  cmake "$src" "${CMAKE_COMMON[@]}" "$@"
  cmake --build . -j "$JOBS" && cmake --install .
}

do_gflags() {
  local src; src=$(unpack gflags)
  cmake_project gflags "$src" -DBUILD_gflags_LIB=ON -DBUILD_gflags_nothreads_LIB=ON \
    -DREGISTER_BUILD_DIR=OFF -DREGISTER_INSTALL_PREFIX=OFF
}

do_glog() {
  local src; src=$(unpack glog)
  cmake_project glog "$src" -DWITH_GFLAGS=ON -Dgflags_DIR="$PREFIX/lib/cmake/gflags" -DGFLAGS_NOTHREADS=OFF \
    -DWITH_UNWIND=OFF -DWITH_GTEST=OFF -DWITH_PKGCONFIG=OFF
}

do_protobuf() {
  local src; src=$(unpack protobuf)
  cmake_project protobuf "$src/cmake" -Dprotobuf_BUILD_TESTS=OFF -Dprotobuf_BUILD_PROTOC_BINARIES=OFF \
    -Dprotobuf_BUILD_SHARED_LIBS=OFF -Dprotobuf_WITH_ZLIB=OFF
}

do_boost() {
  local src; src=$(unpack boost)
  cd "$src"
  # Debian's +ds tarball drops the generated grammar of b2's engine; Debian regenerates it so.
  if [ ! -f tools/build/src/engine/jamgram.cpp ]; then
    (cd tools/build && bison -y -d -o src/engine/jamgram.cpp src/engine/jamgram.y)
  fi
  [ -x b2 ] || ./bootstrap.sh --with-toolset=gcc --with-libraries=system,thread,filesystem,regex,date_time
  local jam="$BUILD/boost-user-config.jam"
  case "$MODE" in
    ndk) echo "using clang : android : $CXX : <archiver>$AR <ranlib>$RANLIB ;" > "$jam" ;;
    cross) echo "using gcc : cross : $CXX : <archiver>$AR <ranlib>$RANLIB ;" > "$jam" ;;
    host) echo "using gcc ;" > "$jam" ;;
  esac
  local toolset=$B2_TOOLSET
  [ "$MODE" = ndk ] && toolset=clang-android
  [ "$MODE" = cross ] && toolset=gcc-cross
  ./b2 -j"$JOBS" -q --user-config="$jam" toolset="$toolset" target-os="$B2_OS" $B2_ARCH \
    link=static runtime-link=shared threading=multi variant=release cxxflags=-fPIC \
    --with-system --with-thread --with-filesystem --with-regex --with-date_time \
    --build-dir="$BUILD/boost-build" --prefix="$PREFIX" --layout=system install
}

# The timing programs' build directories are kept between builds; one configured from another
# checkout of the project (another clone or git worktree sharing this cache) is started afresh, as
# CMake refuses a cache made for another source directory.
program_build_dir() {
  local dir="$BUILD/$1"
  if [ -f "$dir/CMakeCache.txt" ] && ! grep -qxF "CMAKE_HOME_DIRECTORY:INTERNAL=$ROOT/device" "$dir/CMakeCache.txt"; then
    log "$dir was configured from another checkout: starting it afresh"
    rm -rf "$dir"
  fi
  mkdir -p "$dir"
}

do_caffe_program() {
  local src; src=$(unpack caffe)
  # The sdist ships caffe.pb.h/.cc made by another protoc: regenerate them with ours.
  rm -f "$src/include/caffe/proto/caffe.pb.h" "$src/src/caffe/proto/caffe.pb.cc"
  # Kept between builds: a change to device/ recompiles only the program, not Caffe.
  program_build_dir rebirth-time && cd "$BUILD/rebirth-time"
  cmake "$ROOT/device" "${CMAKE_COMMON[@]}" -DCAFFE_SOURCE_DIR="$src" -DDEPS_PREFIX="$PREFIX" \
    -DPROTOC="$PROTOC" -DREBIRTH_STATIC="$LINK_STATIC"
  cmake --build . -j "$JOBS"
  cp rebirth-time "$OUT/bin/rebirth-time.tmp"
  "${STRIP:-true}" "$OUT/bin/rebirth-time.tmp" 2>/dev/null || true
  mv "$OUT/bin/rebirth-time.tmp" "$OUT/bin/rebirth-time"
}

# ncnn's x86 code path: SSE2 only (what every x86-64 runs), except for --host on a CPU with AVX2,
# FMA and F16C, where it is AVX2 + FMA (its own build stage: the timing program is linked anew).
# With SSE2 only the host program ran the Fashion-MNIST GoogLeNet slower than the PyPI wheel, which
# picks its code path at run time.
NCNN_X86=(-DNCNN_AVX=OFF)
NCNN_STAGE="ncnn-$NCNN_VERSION"
if [ "$MODE" = host ] && [ "$(uname -m)" = x86_64 ] && grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo \
   && grep -qw f16c /proc/cpuinfo; then
  NCNN_X86=(-DNCNN_AVX=ON -DNCNN_FMA=ON -DNCNN_F16C=ON -DNCNN_AVX2=ON -DNCNN_AVX512=OFF -DNCNN_AVXVNNI=OFF
            -DNCNN_FMA4=OFF -DNCNN_XOP=OFF)
  NCNN_STAGE="ncnn-$NCNN_VERSION-avx2"
fi

do_ncnn() {
  local src; src=$(unpack ncnn)
  # float32 only, one code path per target (the timing program turns fp16/bf16 off, like engines/ncnn_engine.py)
  local isa=(-DNCNN_RUNTIME_CPU=OFF -DNCNN_INT8=OFF -DNCNN_BF16=OFF -DNCNN_ARM82=OFF -DNCNN_ARM84BF16=OFF
             -DNCNN_ARM84I8MM=OFF -DNCNN_ARM86SVE=OFF "${NCNN_X86[@]}")
  cmake_project ncnn "$src" "${isa[@]}" -DNCNN_VERSION="${NCNN_VERSION##*.}" \
    -DNCNN_VULKAN=OFF -DNCNN_BUILD_TOOLS=OFF -DNCNN_BUILD_EXAMPLES=OFF -DNCNN_BUILD_BENCHMARK=OFF \
    -DNCNN_BUILD_TESTS=OFF -DNCNN_PYTHON=OFF -DNCNN_SHARED_LIB=OFF -DNCNN_OPENMP=ON -DNCNN_SIMPLEOCV=OFF \
    -DNCNN_PIXEL_ROTATE=OFF -DNCNN_PIXEL_AFFINE=OFF -DNCNN_PIXEL_DRAWING=OFF -DNCNN_C_API=OFF
}

do_ncnn_program() {
  program_build_dir rebirth-time-ncnn && cd "$BUILD/rebirth-time-ncnn"
  cmake "$ROOT/device" "${CMAKE_COMMON[@]}" -DREBIRTH_NCNN_DIR="$PREFIX/lib/cmake/ncnn" \
    -DREBIRTH_STATIC="$LINK_STATIC"
  cmake --build . -j "$JOBS" --target rebirth-time-ncnn
  cp rebirth-time-ncnn "$OUT/bin/rebirth-time-ncnn.tmp"
  "${STRIP:-true}" "$OUT/bin/rebirth-time-ncnn.tmp" 2>/dev/null || true
  mv "$OUT/bin/rebirth-time-ncnn.tmp" "$OUT/bin/rebirth-time-ncnn"
}

case "$MODE" in
  ndk) STRIP="$TCBIN/llvm-strip" ;;
  cross) STRIP="$CROSS-strip" ;;
  host) STRIP=strip ;;
esac

log "target $TARGET, engine $ENGINE -> $OUT ($JOBS jobs)"
echo "--- $(date -u +%FT%TZ) build_device.sh $MODE $TARGET --engine $ENGINE" >> "$TIMES"
T_ALL=$SECONDS
if [ "$ENGINE" = ncnn ]; then
  stage "$NCNN_STAGE" do_ncnn
  HASH=$( (echo "$NCNN_STAGE"; cat "$ROOT"/device/CMakeLists.txt "$ROOT"/device/ncnn_time.cpp "$ROOT"/device/timing_common.h) \
    | sha256sum | cut -c1-16)
  stage "rebirth-time-ncnn-$HASH" do_ncnn_program
  log "all stages took $((SECONDS - T_ALL)) s in this run; times per stage: $TIMES"
  file "$OUT/bin/rebirth-time-ncnn" >&2 2>/dev/null || true
  echo "$OUT/bin/rebirth-time-ncnn"
  exit 0
fi
PROTOC=$(build_protoc)
log "host protoc: $PROTOC ($("$PROTOC" --version))"
stage openblas do_openblas
stage gflags do_gflags
stage glog do_glog
stage protobuf do_protobuf
stage boost do_boost
# The timing program is rebuilt whenever device/ changes (its sources' hash is the stamp's name).
HASH=$(cat "$ROOT"/device/CMakeLists.txt "$ROOT"/device/rebirth_time.cpp "$ROOT"/device/timing_common.h \
  "$ROOT"/device/hdf5_stub/* | sha256sum | cut -c1-16)
stage "rebirth-time-$HASH" do_caffe_program
log "all stages took $((SECONDS - T_ALL)) s in this run; times per stage: $TIMES"
file "$OUT/bin/rebirth-time" >&2 2>/dev/null || true
echo "$OUT/bin/rebirth-time"
