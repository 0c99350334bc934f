#!/bin/bash
# Second device call: config M (d 256, 10-16 nodes, 3-4 hops) with a shorter curriculum, latent modes only.
cd "$(dirname "$0")/../../../.."  # the repo root; runs/devsite (not in git) holds a grain stub and tensorboardX for the device image
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:$PWD/runs/devsite
python3 -c "import grain" 2>/dev/null || export PYTHONPATH=$PYTHONPATH:$PWD/runs/devsite/stub
export XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2
PY=${PY:-python3}; SCALE=${SCALE:-1}; OUT=${OUT:-/tmp/out}; R=${RUNS:-runs/g2}; mkdir -p $OUT $R/logs
s() { echo $(( $1 / SCALE > 2 ? $1 / SCALE : 2 )); }
T0=$(date +%s)
M="relabel=true batch_size=128 n_test=500 analysis_samples=200 trainer.log_every=100 trainer.eval_every=$(s 500) trainer.checkpoint_every=100000 trainer.async_checkpoint=false graphs.min_nodes=10 graphs.max_nodes=16 graphs.hops=(3,4) graphs.max_edges=30 max_latent=4 n_train=14785 d_model=256 n_heads=8 lr=5e-4 first_stage_steps=$(s 3000) steps_per_stage=$(s 800) final_extra_steps=$(s 2000)"
for m in ${MODES:-bfs_frontier bfs_uniform coconut}; do
  timeout ${TRAIN_TIMEOUT:-200} $PY -m jaxllm.train coconut_reachability run_dir=$R/M_$m modes=$m $M > $R/logs/log_$m.txt 2>&1 &
done
wait
echo "train wall $(( $(date +%s) - T0 )) s"
mkdir -p $R/M; for m in ${MODES:-bfs_frontier bfs_uniform coconut}; do cp -r $R/M_$m/$m $R/M/ 2>/dev/null; done
ms=$(ls -d $R/M/*/ | xargs -n1 basename | tr '\n' ',' | sed 's/,$//')
timeout 45 $PY -m jaxllm.train coconut_reachability run_dir=$R/M modes=$ms analyze_only=true $M > $R/logs/analyze.txt 2>&1
echo "all wall $(( $(date +%s) - T0 )) s"
tar czf $OUT/runs.tgz --exclude=checkpoints --exclude=tensorboard --exclude='*.npz' $R
grep -v "^WARNING\|absl" $R/logs/analyze.txt | tail -30
