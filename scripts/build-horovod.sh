#!/usr/bin/env bash
# Build Horovod 0.28.1 (CPU, Gloo controller, PyTorch only) against the installed torch and
# install it into the active Python environment, caching the wheel.
#
# Why a source build: Horovod's last release (0.28.1) pins C++14 in its CMake files, and
# torch >= 2.1 headers need C++17, so neither its wheels nor a plain `pip install horovod`
# work with a current torch. We patch the pin to 17 and build a wheel once; the wheel is
# cached under a key of (horovod, torch, python, platform) so CI and later runs install it
# in seconds instead of compiling for minutes.
#
# Usage:  scripts/build-horovod.sh [--force-rebuild]
# Env:    PYTHON                the interpreter to build for and install into
#                               (default: the active virtualenv's python, else python3)
#         RESOLUTE_WHEEL_CACHE  wheel cache directory (default ~/.cache/resolute/wheels)
#         HOROVOD_VERSION       default 0.28.1
#         BUILD_JOBS            parallel compile jobs (default: number of CPUs, at most 8)
#
# Installs plain `horovod`, never `horovod[ray]`: that extra pins old aioredis and
# google-api-core, which conflict with Ray 2.x.
set -euo pipefail

HOROVOD_VERSION="${HOROVOD_VERSION:-0.28.1}"
CACHE_ROOT="${RESOLUTE_WHEEL_CACHE:-$HOME/.cache/resolute/wheels}"
FORCE_REBUILD=0

for arg in "$@"; do
    case "$arg" in
        --force-rebuild) FORCE_REBUILD=1 ;;
        -h | --help)
            sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "build-horovod: unknown argument '$arg' (try --help)" >&2
            exit 2
            ;;
    esac
done

log() { echo "build-horovod: $*" >&2; }
die() {
    echo "build-horovod: ERROR: $*" >&2
    exit 1
}

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -n "${VIRTUAL_ENV:-}" && -x "$VIRTUAL_ENV/bin/python" ]]; then
        PYTHON="$VIRTUAL_ENV/bin/python"
    else
        PYTHON="$(command -v python3 || true)"
    fi
fi
[[ -n "$PYTHON" && -x "$PYTHON" ]] ||
    die "no Python interpreter found; activate the virtualenv or set PYTHON=/path/to/python"

# --- prerequisites --------------------------------------------------------------------------
"$PYTHON" -c "import torch" 2>/dev/null ||
    die "torch is not importable from $PYTHON; install torch first (pip install torch)"

TORCH_VERSION="$("$PYTHON" -c 'import torch; print(torch.__version__)')"
PY_TAG="$("$PYTHON" -c 'import sys; print(f"cp{sys.version_info.major}{sys.version_info.minor}")')"
PLATFORM="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_platform().replace("-", "_").replace(".", "_"))')"
CACHE_KEY="horovod-${HOROVOD_VERSION}-torch-${TORCH_VERSION}-${PY_TAG}-${PLATFORM}"
CACHE_DIR="${CACHE_ROOT}/${CACHE_KEY}"

log "python  $PYTHON ($PY_TAG, $PLATFORM)"
log "torch   $TORCH_VERSION"
log "cache   $CACHE_DIR"

# Horovod's runtime dependencies (its setup.py require_list); installing them here keeps the
# wheel install itself offline-safe with --no-deps.
ensure_runtime_deps() {
    if ! "$PYTHON" -c "import cloudpickle, psutil, yaml, packaging" 2>/dev/null; then
        log "installing Horovod's runtime dependencies (cloudpickle psutil pyyaml packaging)"
        "$PYTHON" -m pip install --quiet cloudpickle psutil pyyaml packaging
    fi
}

verify() {
    log "verifying: import horovod.torch; hvd.init() in a single process"
    local size
    # A lone process with no rendezvous env forms a world of one through Gloo.
    size="$(env -u HOROVOD_GLOO_RENDEZVOUS_ADDR -u HOROVOD_RANK -u HOROVOD_SIZE \
        "$PYTHON" -c 'import horovod.torch as hvd; hvd.init(); print(hvd.size()); hvd.shutdown()' |
        tail -n 1)"
    [[ "$size" == "1" ]] || die "horovod.torch initialised with size '$size', expected 1"
    local bindir
    bindir="$(dirname "$PYTHON")"
    if [[ -x "$bindir/horovodrun" ]]; then
        local report
        report="$("$bindir/horovodrun" --check-build)"
        echo "$report" >&2
        grep -q '\[X\] PyTorch' <<<"$report" ||
            die "horovodrun --check-build does not list PyTorch as built"
        grep -q '\[X\] Gloo' <<<"$report" ||
            die "horovodrun --check-build does not list Gloo as built"
    else
        log "horovodrun not found next to $PYTHON; skipped --check-build"
    fi
    log "OK: horovod $HOROVOD_VERSION with PyTorch $TORCH_VERSION and Gloo is installed"
}

install_wheel() {
    local wheel="$1"
    ensure_runtime_deps
    log "installing $(basename "$wheel")"
    # --force-reinstall: the same Horovod version built against another torch must be replaced.
    "$PYTHON" -m pip install --quiet --no-deps --force-reinstall "$wheel"
}

find_cached_wheel() {
    compgen -G "${CACHE_DIR}/horovod-${HOROVOD_VERSION}-*.whl" | head -n 1 || true
}

# --- cached path ----------------------------------------------------------------------------
WHEEL="$(find_cached_wheel)"
if [[ -n "$WHEEL" && "$FORCE_REBUILD" == 0 ]]; then
    log "cached wheel found; skipping the build"
    start=$SECONDS
    install_wheel "$WHEEL"
    verify
    log "cached install took $((SECONDS - start)) s"
    exit 0
fi

# --- build prerequisites --------------------------------------------------------------------
command -v g++ >/dev/null ||
    die "g++ not found; install a C++17 compiler (Debian/Ubuntu: apt-get install -y g++)"
command -v make >/dev/null ||
    die "make not found; install it (Debian/Ubuntu: apt-get install -y make)"
cmake_ok() {
    command -v cmake >/dev/null &&
        "$PYTHON" - "$(cmake --version | head -n 1 | awk '{print $3}')" <<'EOF'
import sys
from packaging.version import Version
sys.exit(0 if Version(sys.argv[1]) >= Version("3.13") else 1)
EOF
}
if ! cmake_ok; then
    log "cmake >= 3.13 not found; installing cmake from PyPI into $(dirname "$PYTHON")"
    "$PYTHON" -m pip install --quiet "cmake>=3.13"
    export PATH="$(dirname "$PYTHON"):$PATH"
    cmake_ok || die "cmake is still unavailable after pip install cmake; install cmake >= 3.13"
fi
"$PYTHON" -c "import sysconfig, os, sys; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')) else 1)" ||
    die "Python headers (Python.h) missing; install them (Debian/Ubuntu: apt-get install -y python3-dev)"
ensure_runtime_deps

# --- download, patch, build -----------------------------------------------------------------
WORK_DIR="$(mktemp -d "${TMPDIR:-/tmp}/horovod-build.XXXXXX")"
trap 'rm -rf "$WORK_DIR"' EXIT
start=$SECONDS

log "downloading the horovod==$HOROVOD_VERSION sdist"
"$PYTHON" -m pip download --quiet --no-deps --no-binary :all: "horovod==$HOROVOD_VERSION" \
    -d "$WORK_DIR" ||
    die "could not download horovod==$HOROVOD_VERSION from PyPI; check network access"
SDIST="$WORK_DIR/horovod-${HOROVOD_VERSION}.tar.gz"
[[ -f "$SDIST" ]] || die "expected sdist $SDIST was not downloaded"
tar -xzf "$SDIST" -C "$WORK_DIR"
SRC="$WORK_DIR/horovod-${HOROVOD_VERSION}"

log "patching CMAKE_CXX_STANDARD 14 -> 17 (torch >= 2.1 headers need C++17)"
# Only Horovod's own CMake files: third_party code (gloo, eigen, flatbuffers) sets its own.
mapfile -t pinned < <(grep -rlE 'CMAKE_CXX_STANDARD[[:space:]]+14' "$SRC" \
    --include=CMakeLists.txt --include='*.cmake' --exclude-dir=third_party || true)
[[ ${#pinned[@]} -gt 0 ]] ||
    die "no 'CMAKE_CXX_STANDARD 14' found in the sdist; the patch does not apply to this version"
for f in "${pinned[@]}"; do
    sed -i -E 's/CMAKE_CXX_STANDARD([[:space:]]+)14/CMAKE_CXX_STANDARD\117/' "$f"
    log "  patched ${f#"$SRC"/}"
done
if grep -rnE 'CMAKE_CXX_STANDARD[[:space:]]+14|-std=c\+\+14' "$SRC" \
    --include=CMakeLists.txt --include='*.cmake' --exclude-dir=third_party; then
    die "a C++14 pin is still present after patching (listed above)"
fi
for required in "$SRC/CMakeLists.txt" "$SRC/horovod/torch/CMakeLists.txt"; do
    grep -qE 'CMAKE_CXX_STANDARD[[:space:]]+17' "$required" ||
        die "expected C++17 in ${required#"$SRC"/} after patching"
done

JOBS="${BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}"
((JOBS > 8)) && JOBS=8
log "building the wheel with $JOBS parallel jobs (several minutes)"
mkdir -p "$CACHE_DIR"
BUILD_OUT="$WORK_DIR/wheel"
(
    cd "$SRC"
    HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 \
        HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 \
        HOROVOD_CPU_OPERATIONS=GLOO \
        MAKEFLAGS="-j${JOBS}" \
        "$PYTHON" -m pip wheel --no-build-isolation --no-deps --no-cache-dir -v . -w "$BUILD_OUT" \
        >"$WORK_DIR/build.log" 2>&1
) || {
    tail -n 60 "$WORK_DIR/build.log" >&2
    cp "$WORK_DIR/build.log" "${CACHE_ROOT}/${CACHE_KEY}.failed-build.log" 2>/dev/null || true
    die "the Horovod build failed (last lines above; full log: ${CACHE_ROOT}/${CACHE_KEY}.failed-build.log)"
}
BUILT="$(compgen -G "$BUILD_OUT/horovod-${HOROVOD_VERSION}-*.whl" | head -n 1 || true)"
[[ -n "$BUILT" ]] || die "pip wheel finished but produced no horovod wheel in $BUILD_OUT"

# Publish atomically so a concurrent or interrupted run never sees a half-written wheel.
rm -f "$CACHE_DIR"/horovod-"${HOROVOD_VERSION}"-*.whl
cp "$BUILT" "$CACHE_DIR/.$(basename "$BUILT").tmp"
mv "$CACHE_DIR/.$(basename "$BUILT").tmp" "$CACHE_DIR/$(basename "$BUILT")"
WHEEL="$CACHE_DIR/$(basename "$BUILT")"
log "built and cached $WHEEL in $((SECONDS - start)) s"

install_wheel "$WHEEL"
verify
