#!/usr/bin/env bash
# R-Sparse on a GPU machine, one command from the repository root: `bash bench/gpu_rsparse.sh [PYTHON]`.
# Runs the GPU-marked kernel tests (Pallas Triton lowering + jax-triton vs the jnp reference) and the decode-GEMV
# benchmark (writes docs/results/rsparse_bench_gpu.md). jax-triton is installed from .whl/jt031 or .whl/jt041 when
# present (wheels fetched beforehand with `pip download jax-triton==0.3.1` / `==0.4.1`), else from the environment.
# Logs and the results file are copied to $OUT when that variable is set.
set -u
PY=${1:-python3}
OUT=${OUT:-/tmp/rsparse_gpu_out}
mkdir -p "$OUT"
export JAX_PLATFORMS= PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import jax, sys; print('python', sys.version.split()[0], 'jax', jax.__version__, jax.devices())"
  $PY -c "import triton; print('triton', triton.__version__)" || true
} 2>&1 | tee "$OUT/env.txt"

# jax-triton: the first wheel that imports against this jax wins.
for d in .whl/jt031 .whl/jt041; do
  if ls $d/*.whl >/dev/null 2>&1; then
    rm -rf /tmp/jt_site && $PY -m pip install -q --no-index --no-deps --target /tmp/jt_site $d/*.whl \
      && PYTHONPATH=/tmp/jt_site $PY -c "import jax_triton as jt; print('jax_triton', jt.__version__)" \
      >>"$OUT/env.txt" 2>&1 && export PYTHONPATH=/tmp/jt_site && break
  fi
done
echo "PYTHONPATH=${PYTHONPATH:-}" | tee -a "$OUT/env.txt"

timeout 110 $PY -m pytest -q -m gpu -s -p no:cacheprovider -k "${RSPARSE_TEST_K:-}" tests/sparse/test_rsparse_kernels.py 2>&1 \
  | tee "$OUT/gpu_tests.txt" | tail -40
timeout 200 $PY -m bench.bench_rsparse --device gpu --repeats 20 ${RSPARSE_BENCH_ARGS:-} 2>&1 | tee "$OUT/gpu_bench_log.txt" | tail -40
cp docs/results/rsparse_bench_gpu.md "$OUT/" 2>/dev/null || true
