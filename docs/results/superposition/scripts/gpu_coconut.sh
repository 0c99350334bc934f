#!/bin/bash
# One device call: 8 coconut_reachability trainings in parallel (2 configs x 4 modes), then analyses.
# SCALE divides every step count (CPU dry run: SCALE=100). TRAIN_TIMEOUT bounds the training phase.
cd "$(dirname "$0")/../../../.."  # the repo root; runs/devsite (not in git) holds a grain stub and tensorboardX for the device image
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:$PWD/runs/devsite
python3 -c "import grain" 2>/dev/null || export PYTHONPATH=$PYTHONPATH:$PWD/runs/devsite/stub
export XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2
PY=${PY:-python3}; SCALE=${SCALE:-1}; OUT=${OUT:-/tmp/out}; R=${RUNS:-runs/g}; mkdir -p $OUT $R
s() { echo $(( $1 / SCALE > 2 ? $1 / SCALE : 2 )); }
nvidia-smi -L 2>/dev/null; $PY -c "import jax; print(jax.__version__, jax.devices())"
T0=$(date +%s)
COMMON="relabel=true batch_size=128 n_test=500 analysis_samples=200 trainer.log_every=100 trainer.eval_every=$(s 500) trainer.checkpoint_every=100000 trainer.async_checkpoint=false"
S="$COMMON graphs.min_nodes=8 graphs.max_nodes=12 graphs.hops=(2,3) graphs.max_edges=18 max_latent=3 n_train=8000 d_model=64 n_heads=4 lr=1e-3 first_stage_steps=$(s 6000) steps_per_stage=$(s 1500) final_extra_steps=$(s 3000)"
M="$COMMON graphs.min_nodes=10 graphs.max_nodes=16 graphs.hops=(3,4) graphs.max_edges=30 max_latent=4 n_train=14785 d_model=256 n_heads=8 lr=5e-4 first_stage_steps=$(s 6000) steps_per_stage=$(s 1500) final_extra_steps=$(s 2000)"
for cfg in S M; do for m in coconut bfs_frontier cot nocot; do
  timeout ${TRAIN_TIMEOUT:-430} $PY -m jaxllm.train coconut_reachability run_dir=$R/${cfg}_$m modes=$m ${!cfg} \
    > $OUT/log_${cfg}_$m.txt 2>&1 &
done; done
wait
echo "train wall $(( $(date +%s) - T0 )) s"
for cfg in S M; do
  mkdir -p $R/$cfg; for m in coconut bfs_frontier cot nocot; do cp -r $R/${cfg}_$m/$m $R/$cfg/ 2>/dev/null; done
  ms=$(ls $R/$cfg | tr '\n' ',' | sed 's/,$//')
  timeout 60 $PY -m jaxllm.train coconut_reachability run_dir=$R/$cfg modes=$ms analyze_only=true ${!cfg} > $OUT/analyze_$cfg.txt 2>&1 &
done
[ -n "$GPU_TESTS" ] && timeout 60 $PY -m pytest -q -p no:cacheprovider -m gpu -k float32 tests/sparse/test_rsparse_kernels.py > $OUT/gpu_tests.txt 2>&1
wait
echo "all wall $(( $(date +%s) - T0 )) s"
tar czf $OUT/runs.tgz --exclude=checkpoints --exclude=tensorboard --exclude='*.npz' $R
for f in $OUT/log_*; do echo "== $f"; grep -v "^WARNING\|absl" $f | tail -4; done; cat $OUT/analyze_*.txt | tail -30
