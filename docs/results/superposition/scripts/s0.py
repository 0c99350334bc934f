import sys, time
from pathlib import Path
import experiments.coconut_reachability as E
from jaxllm.data.tasks import reachability as rd
lr = float(sys.argv[1]); steps = int(sys.argv[2])
g = rd.GraphConfig(min_nodes=6, max_nodes=9, hops=(2,), max_edges=12)
cfg = E.Config(graphs=g, d_model=128, relabel=True, n_train=4000, max_latent=2, lr=lr,
               first_stage_steps=steps, steps_per_stage=1, final_extra_steps=0)
tr, _, te = rd.split_problems(cfg.n_train, 0, cfg.n_test, cfg.graphs, seed=0)
d = Path(f"/tmp/s0_{lr}_{time.time_ns()}"); print(d, flush=True)
E.train_latent(cfg, "bfs_frontier", tr, te, d)
