#!/usr/bin/env bash
# GPU readiness check: run on a machine with CUDA, from the repository root.
#
#   bash benchmarks/gpu_check.sh            # uses $PY (default: .venv/bin/python, else python3)
#
# 1. the CUDA tests (every test file that mentions CUDA; none may skip for want of a GPU)
# 2. the similarity benchmark on the GPU (bench_similarity.py --quick --device cuda)
# 3. EfficientNet-B5 images/s at 1520x912, one hooked pass over all 39 blocks:
#    fp32 and bf16 autocast, channels-last (what the engine does on CUDA), batch 4, 8, 16, 32
# 4. the phantom demo study on the GPU (run --device cuda, fresh cache and database)
# then one summary table.  Without CUDA it stops at once (exit 2): no figure is invented.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=$(mktemp -d /tmp/gpu_check.XXXXXX)
SUMMARY="$OUT/summary.tsv"
: > "$SUMMARY"
row() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$SUMMARY"; }

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA device is visible to $PY (torch.cuda.is_available() is False); nothing was measured." >&2
    echo "Run this on a machine with an NVIDIA GPU and a CUDA build of torch." >&2
    exit 2
fi
GPU=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0))")
echo "gpu_check on $GPU (logs in $OUT)"

# 1. CUDA tests
mapfile -t CUDA_TESTS < <(grep -rli "cuda" tests --include='test_*.py' | sort)
if "$PY" -m pytest -q -rs "${CUDA_TESTS[@]}" > "$OUT/tests.log" 2>&1; then status=ok; else status=FAILED; fi
if grep -qi "skipped.*cuda" "$OUT/tests.log"; then status="$status (a CUDA test skipped)"; fi
row "CUDA tests (${#CUDA_TESTS[@]} files)" "$status" "$(tail -n 1 "$OUT/tests.log")"

# 2. similarity benchmark on the GPU
if "$PY" benchmarks/bench_similarity.py --quick --device cuda > "$OUT/similarity.log" 2>&1; then
    row "bench_similarity --quick (cuda)" ok "$(grep -m1 -E '^\| `soft_wpmi`|soft_wpmi' "$OUT/similarity.log" | tr -s ' ' | cut -c1-100)"
else
    row "bench_similarity --quick (cuda)" FAILED "see $OUT/similarity.log"
fi

# 3. EfficientNet-B5 images/s, one hooked pass over the 39 blocks
"$PY" - > "$OUT/b5.log" 2>&1 <<'PYEOF'
import sys, time
from pathlib import Path
sys.path.insert(0, str(Path("benchmarks").resolve()))
import torch
from bench_activations import BenchTarget, RandomProbe, build
from dissect_study.engine.passes.activations import extract_activations

torch.backends.cudnn.benchmark = True
module, names = build("b5")
target = BenchTarget(module, names)
for precision in ("fp32", "bf16"):
    for batch in (4, 8, 16, 32):
        kw = dict(pooling="avg", batch_size=batch, device="cuda", workers=8, precision=precision, progress=False)
        try:
            extract_activations(target, RandomProbe(batch * 2, 1520, 912), names, **kw)  # warm-up (cudnn autotune)
            torch.cuda.reset_peak_memory_stats()
            n = max(64, batch * 8)
            t = time.perf_counter()
            res = extract_activations(target, RandomProbe(n, 1520, 912), names, **kw)
            dt = time.perf_counter() - t
            mem = torch.cuda.max_memory_allocated() / 2**30
            print(f"B5 {precision}\tbatch {batch}\t{n / dt:.1f} images/s ({n} images, channels-last, ran {res.precision}, peak {mem:.1f} GiB)")
        except torch.cuda.OutOfMemoryError:
            print(f"B5 {precision}\tbatch {batch}\tout of GPU memory")
            torch.cuda.empty_cache()
PYEOF
if [ $? -eq 0 ]; then
    while IFS=$'\t' read -r what batch figure; do row "EfficientNet-B5 1520x912 $what $batch" ok "$figure"; done < <(grep '^B5 ' "$OUT/b5.log")
else
    row "EfficientNet-B5 1520x912" FAILED "see $OUT/b5.log"
fi

# 4. the phantom demo on the GPU
start=$SECONDS
if "$PY" -m dissect_study.engine.cli run studies/demo.study --device cuda --db "$OUT/demo.duckdb" \
        --cache-dir "$OUT/cache" --no-report > "$OUT/demo.log" 2>&1; then
    row "phantom demo (run --device cuda, cold cache)" ok "$((SECONDS - start)) s"
else
    row "phantom demo (run --device cuda)" FAILED "see $OUT/demo.log"
fi

echo
printf '%-52s %-8s %s\n' "check" "status" "figure"
while IFS=$'\t' read -r what status figure; do printf '%-52s %-8s %s\n' "$what" "$status" "$figure"; done < "$SUMMARY"
! grep -q $'\tFAILED' "$SUMMARY"
