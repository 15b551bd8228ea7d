#!/usr/bin/env bash
# The GPU check of issue 18, unattended, on one GPU, in under 8 minutes:
#   (a) the machine: nvidia-smi, python / jax / torch / timm versions, jax.devices()
#   (b) wheels the image lacks (grain, pytest, ...) from shared/wheels/ or wheels/, offline
#   (c) the parity suite's `gpu` tests (conftest pins jax "highest" and torch TF32 off)
#   (d) scripts/devtools/gpu_bench.py: vit_base_patch16_224, bf16, batch 256, training and
#       inference, vitjax against torch AMP eager (SDPA) and torch.compile: images/s, ratios, MFU
#   (e) everything in "${OUT:-gpu_out}": env.txt, pytest_gpu.log, parity_gpu.md, bench/*.json|md
#       (+ each worker's log), SUMMARY.md
# Every step is bounded by `timeout`; a failed step does not stop the next; the exit status is
# non-zero if any step failed, and SUMMARY.md says which and why.
#
#   bash scripts/gpu_check.sh                       # results in ./gpu_out
#   OUT=/some/dir bash scripts/gpu_check.sh
#   GPU_CHECK_XLA_FLAGS="--xla_gpu_enable_triton_gemm=false;--xla_gpu_enable_cublaslt=true" \
#       bash scripts/gpu_check.sh     # XLA flag sets to try, ';' between sets ("": none)
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
OUT="${OUT:-gpu_out}"
mkdir -p "$OUT/bench" || exit 2
PY="${PYTHON:-$(command -v python || command -v python3)}"
BUDGET_S="${GPU_CHECK_BUDGET_S:-450}"            # the whole script; the benchmark gets the rest
PYTEST_S="${GPU_CHECK_PYTEST_S:-180}"
BENCH_MAX_S="${GPU_CHECK_BENCH_S:-270}"
DEFAULT_XLA_SETS="--xla_gpu_enable_triton_gemm=false"  # cuBLAS for every GEMM: to be measured
XLA_SETS="${GPU_CHECK_XLA_FLAGS-$DEFAULT_XLA_SETS}"
# A CPU dry run of this script: GPU_CHECK_REQUIRE_GPU=0 GPU_CHECK_BENCH_ARGS="--model
# vit_tiny_patch16_224 --batch-size 4 --img-size 32 --depth 1 --steps 1 --rounds 2" (appended
# to the benchmark's arguments; the last occurrence of a flag wins).
read -r -a BENCH_EXTRA <<< "${GPU_CHECK_BENCH_ARGS:-}"
# parallel: every mode builds at once (fits the budget; compile times overlap, see gpu_bench.py)
SCHEDULE="${GPU_CHECK_SCHEDULE:-parallel}"
REQUIRE_GPU=(--require-gpu); [ "${GPU_CHECK_REQUIRE_GPU:-1}" = 0 ] && REQUIRE_GPU=()
START=$(date +%s)
STEPS=()   # "name|status|detail"
FAILED=0

elapsed() { echo $(( $(date +%s) - START )); }
record() {  # name status detail
  STEPS+=("$1|$2|$3")
  [ "$2" = ok ] || FAILED=$((FAILED + 1))
  echo "=== [$1] $2 ($(elapsed) s): $3"
}
# ---------------------------------------------------------------------------------------- (a)
echo "=== gpu_check: repo $(pwd), out $OUT, python $PY, budget ${BUDGET_S} s"
{
  echo "# date: $(date -u +%FT%TZ)"
  echo "# commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  echo "# nvidia-smi"
  timeout 20 nvidia-smi 2>&1 || echo "nvidia-smi failed (rc $?)"
  timeout 20 nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.sm,power.limit \
    --format=csv 2>&1 || true
  echo "# python"
} > "$OUT/env.txt" 2>&1
timeout -k 5 90 "$PY" - >> "$OUT/env.txt" 2>&1 <<'EOF'
import importlib, platform, sys
print("python", sys.version.replace("\n", " "), platform.platform())
for name in ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "torch", "timm", "numpy",
             "grain", "pytest", "sklearn", "safetensors", "huggingface_hub"):
    try:
        m = importlib.import_module(name)
        print(f"{name} {getattr(m, '__version__', '?')}")
    except Exception as e:
        print(f"{name} MISSING ({type(e).__name__}: {e})")
import jax, torch
print("jax.devices()", jax.devices())
print("jax.default_backend()", jax.default_backend())
print("torch.cuda.is_available()", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
print("torch.version.cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
ok = jax.default_backend() == "gpu" and torch.cuda.is_available()
print("GPU_SEEN_BY_BOTH", ok)
sys.exit(0 if ok else 3)
EOF
rc=$?
cat "$OUT/env.txt"
case $rc in
  0) record env ok "$(grep -m1 '^jax.devices()' "$OUT/env.txt")" ;;
  3) record env failed "jax and torch do not both see a GPU (see env.txt)" ;;
  *) record env failed "the environment probe exited $rc (see env.txt)" ;;
esac
# ---------------------------------------------------------------------------------------- (b)
WHEELS=""
for d in shared/wheels wheels; do [ -d "$d" ] && WHEELS="$WHEELS $d"; done
missing=()
for pair in grain:grain pytest:pytest sklearn:scikit-learn scipy:scipy PIL:pillow \
            safetensors:safetensors tqdm:tqdm; do
  mod=${pair%%:*}; dist=${pair#*:}
  timeout 60 "$PY" -c "import $mod" >/dev/null 2>&1 || missing+=("$dist")
done
if [ ${#missing[@]} -eq 0 ]; then
  record wheels ok "nothing missing"
elif [ -z "$WHEELS" ]; then
  record wheels failed "missing ${missing[*]}; no shared/wheels/ or wheels/ to install from"
else
  links=(); for d in $WHEELS; do links+=(--find-links "$d"); done
  bad=()
  for dist in "${missing[@]}"; do
    PIP_BREAK_SYSTEM_PACKAGES=1 timeout -k 5 90 "$PY" -m pip install --no-index \
      --disable-pip-version-check -q "${links[@]}" "$dist" > "$OUT/pip_$dist.log" 2>&1 \
      || bad+=("$dist")
  done
  if [ ${#bad[@]} -eq 0 ]; then
    record wheels ok "installed ${missing[*]} from$WHEELS"
  else
    record wheels failed "could not install ${bad[*]} from$WHEELS (pip_*.log)"
  fi
fi
# ---------------------------------------------------------------------------------------- (c)
mapfile -t GPU_FILES < <(grep -l -E 'mark\.gpu' parity_tests/test_*.py 2>/dev/null)
[ ${#GPU_FILES[@]} -gt 0 ] || GPU_FILES=(parity_tests)
echo "=== pytest -m gpu on ${GPU_FILES[*]} (timeout ${PYTEST_S} s)"
NVIDIA_TF32_OVERRIDE=0 JAX_DEFAULT_MATMUL_PRECISION=highest \
  timeout -k 10 "$PYTEST_S" "$PY" -m pytest "${GPU_FILES[@]}" -m gpu -q -rA \
  -p no:cacheprovider --continue-on-collection-errors \
  --junitxml "$OUT/pytest_gpu.xml" --parity-report "$OUT/parity_gpu.md" 2>&1 \
  | tee "$OUT/pytest_gpu.log"
rc=${PIPESTATUS[0]}
last=$(grep -E '[0-9]+ (passed|failed|error|skipped)' "$OUT/pytest_gpu.log" | tail -1)
passed=$(echo "$last" | grep -Eo '[0-9]+ passed' | grep -Eo '[0-9]+' || echo 0)
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
  record pytest failed "timed out after ${PYTEST_S} s; $last"
elif [ "$rc" -ne 0 ]; then
  record pytest failed "exit $rc: $last"
elif [ "${passed:-0}" -eq 0 ]; then
  record pytest failed "no gpu test passed (all skipped: no GPU seen?): $last"
else
  record pytest ok "$last"
fi
# ---------------------------------------------------------------------------------------- (d)
left=$(( BUDGET_S - $(elapsed) ))
BENCH_S=$(( left < BENCH_MAX_S ? left : BENCH_MAX_S ))
flag_args=()
IFS=';' read -r -a sets <<< "$XLA_SETS"
for s in "${sets[@]}"; do [ -n "${s// /}" ] && flag_args+=("--xla-flags=$s"); done
if [ "$BENCH_S" -lt 60 ]; then
  record bench failed "not run: only $BENCH_S s left of the ${BUDGET_S} s budget"
else
  echo "=== gpu_bench (timeout ${BENCH_S} s, XLA flag sets: ${#flag_args[@]})"
  timeout -k 15 "$BENCH_S" "$PY" scripts/devtools/gpu_bench.py \
    --model vit_base_patch16_224 --batch-size 256 --dtype bf16 --steps 10 --rounds 5 \
    --warmup 1 --schedule "$SCHEDULE" --deadline-s $(( BENCH_S - 20 )) --out "$OUT/bench" \
    ${REQUIRE_GPU[@]+"${REQUIRE_GPU[@]}"} ${flag_args[@]+"${flag_args[@]}"} \
    ${BENCH_EXTRA[@]+"${BENCH_EXTRA[@]}"} 2>&1 | tee "$OUT/bench.log"
  rc=${PIPESTATUS[0]}
  case $rc in
    0) record bench ok "every mode ran (targets: see the table)" ;;
    3) record bench failed "exit 3: only an XLA flag variant failed or was skipped" ;;
    124|137) record bench failed "killed by timeout after ${BENCH_S} s (partial JSON if any)" ;;
    *) record bench failed "exit $rc (see bench.log and bench/worker_*.log)" ;;
  esac
fi
# ---------------------------------------------------------------------------------------- (e)
{
  echo "# GPU check ($(date -u +%FT%TZ), $(elapsed) s)"
  echo
  grep -m1 '^jax.devices()' "$OUT/env.txt" || true
  echo
  echo "| step | status | detail |"
  echo "|---|---|---|"
  for s in "${STEPS[@]}"; do
    IFS='|' read -r n st d <<< "$s"
    echo "| $n | $st | ${d//|//} |"
  done
  echo
  for md in "$OUT"/bench/*.md; do [ -f "$md" ] && cat "$md"; done
} > "$OUT/SUMMARY.md"
echo
cat "$OUT/SUMMARY.md"
echo "=== gpu_check done in $(elapsed) s: $FAILED step(s) failed; outputs in $OUT"
[ "$FAILED" -eq 0 ]
