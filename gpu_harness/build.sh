#!/usr/bin/env bash
# Builds the TensorFlow-free harness library gpu_harness/build/libkbm_gpu.so:
#   cc/common/gpu/*.cu.cc and cc/*/kernels/*_gpu.cu.cc   nvcc -x cu
#   gpu_harness/shim/*.cc                               g++ -fPIC
#   link                                                 nvcc -shared
#                                                        (static cudart)
# Usage: gpu_harness/build.sh [--ptx-only] [--clean]
#   --ptx-only   compile for compute_90 PTX only (compile check on machines
#                without a GPU; the library links but has no cubins)
# Environment:
#   ARCH    nvcc -gencode flags (default: -gencode arch=compute_90,code=sm_90)
#   NVCC    the nvcc to use (default: nvcc on PATH, else /usr/local/cuda)
#   JOBS    parallel compiles (default: the number of cores)
#   CXX     host compiler for the shims (default: g++)
# A family whose kernels or shim fail to compile or link is left out of the
# library (listed in build/families.txt), so the others can still be
# checked. Exit status: 0 when everything was built, 1 when a family was
# left out, 2 when the library could not be built at all.
set -u
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
BUILD=gpu_harness/build
OBJ=$BUILD/obj
LOGS=$BUILD/logs

PTX_ONLY=0
for arg in "$@"; do
  case "$arg" in
    --ptx-only) PTX_ONLY=1 ;;
    --clean) rm -rf "$BUILD" ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

if [ -z "${NVCC:-}" ]; then
  if command -v nvcc >/dev/null 2>&1; then
    NVCC=$(command -v nvcc)
  elif [ -x /usr/local/cuda/bin/nvcc ]; then
    NVCC=/usr/local/cuda/bin/nvcc
  else
    echo "build.sh: no nvcc found (set NVCC)" >&2
    exit 2
  fi
fi
CXX=${CXX:-g++}
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}
if [ "$PTX_ONLY" = 1 ]; then
  ARCH="-gencode arch=compute_90,code=compute_90"
else
  ARCH=${ARCH:--gencode arch=compute_90,code=sm_90}
fi
NVCC_FLAGS="-std=c++17 -O3 -I$ROOT -x cu -Xcompiler -fPIC
  --expt-relaxed-constexpr -DNDEBUG $ARCH"
if [ "$PTX_ONLY" = 0 ]; then
  NVCC_FLAGS="$NVCC_FLAGS -Xptxas -v"
fi
CXX_FLAGS="-std=c++17 -O2 -fPIC -I$ROOT -Wall"

mkdir -p "$OBJ" "$LOGS"
# A change of flags or compiler rebuilds everything.
STAMP="$NVCC $NVCC_FLAGS | $CXX $CXX_FLAGS"
if [ ! -f "$BUILD/flags" ] || [ "$(cat "$BUILD/flags")" != "$STAMP" ]; then
  rm -f "$OBJ"/*.o
  echo "$STAMP" > "$BUILD/flags"
fi

echo "nvcc: $NVCC ($("$NVCC" --version | grep -o 'release [0-9.]*'))"
echo "arch: $ARCH"
echo "jobs: $JOBS"

# The family of a source: "common" for cc/common/gpu and common_shim.cc.
family_of() {
  case "$1" in
    cc/common/*|gpu_harness/shim/common_shim.cc) echo common ;;
    cc/*/kernels/*) echo "$1" | cut -d/ -f2 ;;
    gpu_harness/shim/*_shim.cc) basename "$1" _shim.cc ;;
    *) echo other ;;
  esac
}
object_of() {
  echo "$OBJ/$(echo "$1" | tr '/' '_' | sed 's/\.cc$//').o"
}

# An object is up to date when it is newer than its source and every header
# under cc/ (cheap to check, and headers rarely change alone).
stale() {
  local src=$1 obj=$2
  [ -f "$obj" ] || return 0
  [ "$src" -nt "$obj" ] && return 0
  [ -n "$(find cc -newer "$obj" \( -name '*.h' -o -name '*.cuh' \) \
    -print -quit)" ] && return 0
  return 1
}

CU_SOURCES=$(ls cc/common/gpu/*.cu.cc cc/*/kernels/*_gpu.cu.cc 2>/dev/null)
SHIM_SOURCES=$(ls gpu_harness/shim/*.cc 2>/dev/null)

# One line per compile: "<nvcc|cxx> <source> <object>".
TODO=$BUILD/todo.txt
: > "$TODO"
for src in $CU_SOURCES; do
  obj=$(object_of "$src")
  stale "$src" "$obj" && echo "nvcc $src $obj" >> "$TODO"
done
for src in $SHIM_SOURCES; do
  obj=$(object_of "$src")
  stale "$src" "$obj" && echo "cxx $src $obj" >> "$TODO"
done

compile_one() {
  local tool=$1 src=$2 obj=$3
  local log="$LOGS/$(basename "$obj" .o).log"
  local start=$SECONDS
  rm -f "$obj"
  if [ "$tool" = nvcc ]; then
    # shellcheck disable=SC2086
    "$NVCC" $NVCC_FLAGS -c "$src" -o "$obj" > "$log" 2>&1
  else
    # shellcheck disable=SC2086
    "$CXX" $CXX_FLAGS -c "$src" -o "$obj" > "$log" 2>&1
  fi
  local rc=$?
  echo "[$tool rc=$rc $((SECONDS - start))s] $src" >> "$log"
  [ $rc = 0 ] || rm -f "$obj"
  return 0
}
export -f compile_one
export NVCC NVCC_FLAGS CXX CXX_FLAGS LOGS

START=$SECONDS
if [ -s "$TODO" ]; then
  echo "compiling $(wc -l < "$TODO") files"
  xargs -P "$JOBS" -L 1 bash -c 'compile_one "$@"' _ < "$TODO"
fi
# Logs of what was compiled now (ptxas -v register/spill lines included).
while read -r _ src obj; do
  cat "$LOGS/$(basename "$obj" .o).log"
done < "$TODO"
echo "compile wall: $((SECONDS - START)) s"

# Families whose every object exists.
declare -A FAMILY_OK
for src in $CU_SOURCES $SHIM_SOURCES; do
  fam=$(family_of "$src")
  [ -n "${FAMILY_OK[$fam]+x}" ] || FAMILY_OK[$fam]=1
  [ -f "$(object_of "$src")" ] || FAMILY_OK[$fam]=0
done
if [ "${FAMILY_OK[common]:-0}" != 1 ]; then
  echo "build.sh: the common sources failed to compile" >&2
  exit 2
fi
objects_of() {  # the objects of the families given as arguments
  local src fam want
  for src in $CU_SOURCES $SHIM_SOURCES; do
    fam=$(family_of "$src")
    for want in "$@"; do
      [ "$fam" = "$want" ] && echo "$(object_of "$src")"
    done
  done
}
link() {  # link <output> <families...>
  local out=$1
  shift
  # shellcheck disable=SC2046
  "$NVCC" -shared -Xlinker --no-undefined -o "$out" $(objects_of "$@")
}

FAMILIES=""
FAILED=""
for fam in "${!FAMILY_OK[@]}"; do
  [ "$fam" = common ] && continue
  if [ "${FAMILY_OK[$fam]}" = 1 ]; then
    FAMILIES="$FAMILIES $fam"
  else
    FAILED="$FAILED $fam(compile)"
  fi
done
FAMILIES=$(echo "$FAMILIES" | tr ' ' '\n' | sort | tr '\n' ' ')

LIB=$BUILD/libkbm_gpu.so
if ! link "$LIB.tmp" common $FAMILIES > "$LOGS/link.log" 2>&1; then
  cat "$LOGS/link.log"
  echo "link failed: linking each family alone to find the culprit"
  KEEP=""
  for fam in $FAMILIES; do
    if link "$BUILD/probe.so" common "$fam" > "$LOGS/link_$fam.log" 2>&1
    then
      KEEP="$KEEP $fam"
    else
      cat "$LOGS/link_$fam.log"
      FAILED="$FAILED $fam(link)"
    fi
  done
  rm -f "$BUILD/probe.so"
  FAMILIES=$KEEP
  if ! link "$LIB.tmp" common $FAMILIES > "$LOGS/link.log" 2>&1; then
    cat "$LOGS/link.log"
    echo "build.sh: link failed" >&2
    exit 2
  fi
fi
mv -f "$LIB.tmp" "$LIB"
{
  echo "built:$FAMILIES"
  echo "failed:$FAILED"
  echo "arch: $ARCH"
} > "$BUILD/families.txt"
cat "$BUILD/families.txt"
echo "library: $LIB ($(du -k "$LIB" | cut -f1) KB), total $((SECONDS - START)) s"
[ -z "$FAILED" ] || exit 1
exit 0
