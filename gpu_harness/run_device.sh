#!/usr/bin/env bash
# The one script for a GPU machine without TensorFlow (the H200: Python 3.12,
# PyTorch with CUDA 13, nvcc 13): builds the harness, runs every
# gpu_harness/check_<family>.py on its own, then gpu_harness/bench.py.
# Run it from anywhere; results go to $OUT (gpu_harness/out/ when unset):
#   env.txt     nvidia-smi, versions, step summary (rc and seconds per step)
#   build.log   build.sh output (nvcc -Xptxas -v: registers, spills)
#   check.log   the check modules' output, one family after another
#   bench.log   bench.py output (a table per family)
#   bench.json  bench.py results (benchmarks/report.py renders them)
# Every step runs under `timeout`; the whole script stays under
# KBM_DEVICE_BUDGET_S seconds (default 450). A failing step does not stop the
# later ones. Environment:
#   KBM_NO_GPU=1   dry run on a machine without a GPU: PTX-only build, the
#                  checks and the benchmark are listed but not run
#   KBM_QUICK=1    bench.py --quick
#   ARCH, JOBS, NVCC   passed to build.sh
#   PYTHON         the interpreter (default python3)
set -u
cd "$(dirname "$0")/.." || exit 2
OUT=${OUT:-gpu_harness/out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PYTHON=${PYTHON:-python3}
BUDGET=${KBM_DEVICE_BUDGET_S:-450}
NO_GPU=${KBM_NO_GPU:-0}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
START=$SECONDS
: > "$OUT/steps.tmp"

# The seconds a step may take: its own cap, and never past the budget minus
# `reserve` seconds kept for the steps after it.
limit() {
  local cap=$1 reserve=$2
  local left=$((BUDGET - (SECONDS - START) - reserve))
  [ "$left" -lt "$cap" ] && cap=$left
  [ "$cap" -lt 5 ] && cap=5
  echo "$cap"
}

# step <name> <seconds> <log> <command...>: runs under timeout, appends its
# output to <log>, records the exit status (124 = timed out).
step() {
  local name=$1 secs=$2 log=$3
  shift 3
  local t0=$SECONDS
  {
    echo "===== $name (limit ${secs}s): $*"
  } >> "$log"
  timeout --kill-after=10 "$secs" "$@" >> "$log" 2>&1
  local rc=$?
  echo "===== $name: rc=$rc in $((SECONDS - t0)) s" >> "$log"
  printf '%-28s rc=%-4s %4s s\n' "$name" "$rc" "$((SECONDS - t0))" \
    >> "$OUT/steps.tmp"
  echo "$name: rc=$rc ($((SECONDS - t0)) s)"
  return $rc
}

# 1. Environment.
{
  echo "date: $(date -u +%FT%TZ)"
  echo "host: $(hostname)"
  echo "git: $(git rev-parse HEAD 2>/dev/null || echo '?')"
  echo "--- nvidia-smi"
  timeout 20 nvidia-smi 2>&1 || echo "(no nvidia-smi)"
  timeout 20 nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.limit --format=csv 2>&1
  echo "--- nvcc"
  timeout 20 "${NVCC:-nvcc}" --version 2>&1 || echo "(no nvcc on PATH)"
  echo "--- python"
  timeout 60 "$PYTHON" - <<'EOF' 2>&1
import importlib, platform, sys
print("python", platform.python_version(), sys.executable)
for name in ("torch", "numpy", "pytest", "triton", "cupy"):
    try:
        m = importlib.import_module(name)
        print(name, getattr(m, "__version__", "?"))
    except Exception as e:
        print(name, "missing:", type(e).__name__, e)
try:
    import torch
    print("torch.version.cuda", torch.version.cuda)
    print("cuda available", torch.cuda.is_available())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        print("device", p.name, f"sm_{p.major}{p.minor}",
              p.multi_processor_count, "SMs",
              round(p.total_memory / 2**30, 1), "GiB")
except Exception as e:
    print("torch probe failed:", e)
EOF
  echo "--- cpu"
  nproc
} > "$OUT/env.txt" 2>&1
echo "env: done ($((SECONDS - START)) s)"
grep -E '^(name|NVIDIA|python |torch|numpy |pytest |device |cuda avail)|release' \
  "$OUT/env.txt" | cut -c1-200

# 2. Build (about 2 minutes with 16 cores; attention dominates).
: > "$OUT/build.log"
if [ "$NO_GPU" = 1 ]; then
  step build "$(limit 240 60)" "$OUT/build.log" \
    bash gpu_harness/build.sh --ptx-only
else
  step build "$(limit 240 200)" "$OUT/build.log" bash gpu_harness/build.sh
  # Vectorised loads per family object (16-byte LDG), for the record
  # (30 s at most for all of them).
  if command -v cuobjdump >/dev/null 2>&1; then
    timeout 30 bash -c 'for obj in gpu_harness/build/obj/cc_*.o; do
      [ -f "$obj" ] || continue
      echo "$(basename "$obj"): LDG.E.128 $(cuobjdump --dump-sass "$obj" \
        2>/dev/null | grep -c "LDG.E.128")"
    done' >> "$OUT/build.log" 2>&1
  fi
fi

# 3. Checks, one family at a time (a failure never hides the others).
: > "$OUT/check.log"
CHECKS=$(ls gpu_harness/check_*.py 2>/dev/null)
N_CHECKS=$(echo "$CHECKS" | grep -c . || true)
for check in $CHECKS; do
  family=$(basename "$check" .py)
  family=${family#check_}
  if [ "$NO_GPU" = 1 ]; then
    # Dry run: import the module (it skips itself without a GPU).
    step "collect $family" 60 "$OUT/check.log" \
      "$PYTHON" -m gpu_harness.run_checks --collect-only "$check"
    continue
  fi
  # Each family gets up to 100 s; 150 s stay for the benchmark.
  step "check $family" "$(limit 100 150)" "$OUT/check.log" \
    "$PYTHON" -m gpu_harness.run_checks "$check"
done
[ "$N_CHECKS" -gt 0 ] || echo "no gpu_harness/check_*.py" >> "$OUT/check.log"

# 4. Benchmark (writes bench.json after every family).
: > "$OUT/bench.log"
QUICK=""
[ "${KBM_QUICK:-0}" = 1 ] && QUICK="--quick"
if [ "$NO_GPU" = 1 ]; then
  echo "would run: $PYTHON -m gpu_harness.bench $QUICK" >> "$OUT/bench.log"
  step "bench (import only)" 60 "$OUT/bench.log" "$PYTHON" -c \
    "import importlib, gpu_harness.bench as b
for f in b.available_families():
    importlib.import_module('gpu_harness.bench_' + f)
    print('imported gpu_harness.bench_' + f)"
else
  BENCH_LIMIT=$(limit 300 5)
  step bench "$BENCH_LIMIT" "$OUT/bench.log" "$PYTHON" -m gpu_harness.bench \
    $QUICK --out "$OUT/bench.json" --budget-s $((BENCH_LIMIT > 90 ? BENCH_LIMIT - 60 : 30))
fi

{
  echo "--- steps (total $((SECONDS - START)) s of $BUDGET)"
  cat "$OUT/steps.tmp"
} >> "$OUT/env.txt"
rm -f "$OUT/steps.tmp"
# A summary on stdout (its tail is often all one sees of a remote run):
# steps, built families, check failures, then the benchmark's case lines.
echo "=== steps"
sed -n '/--- steps/,$p' "$OUT/env.txt"
echo "=== build"
cat gpu_harness/build/families.txt 2>/dev/null || echo "(no families.txt)"
echo "=== checks"
grep -E '^(FAILED|ERROR)|[0-9]+ (failed|passed)|^=====.*rc=' \
  "$OUT/check.log" | cut -c1-240 | head -n 40
echo "=== bench"
grep -E '^copy |^== |^  [a-z_]+/|^wrote ' "$OUT/bench.log" | cut -c1-200 \
  | tail -n 70
exit 0
