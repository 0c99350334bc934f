import sys, time, dataclasses, ast
from pathlib import Path
import experiments.coconut_reachability as E
from jaxllm.data.tasks import reachability as rd
steps = int(sys.argv[1]); kw = dict(a.split("=", 1) for a in sys.argv[2:])
g = rd.GraphConfig(min_nodes=int(kw.pop("min_nodes", 6)), max_nodes=int(kw.pop("max_nodes", 9)),
                   hops=ast.literal_eval(kw.pop("hops", "(2,)")), max_edges=int(kw.pop("max_edges", 12)))
mode = kw.pop("mode", "bfs_frontier")
conv = lambda k, v: (v == "true") if isinstance(getattr(E.Config, k), bool) else type(getattr(E.Config, k))(v)
base = {"d_model": "128", "relabel": "true", "n_train": "4000", "max_latent": "2", **kw}
cfg = E.Config(graphs=g, **{k: conv(k, v) for k, v in base.items()}, first_stage_steps=steps, steps_per_stage=1, final_extra_steps=0)
cfg = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, log_every=100))
tr, _, te = rd.split_problems(cfg.n_train, 0, cfg.n_test, cfg.graphs, seed=0)
d = Path(f"/tmp/s0_{time.time_ns()}"); print(d, kw, flush=True)
t = time.time()
_, rows = E.train_latent(cfg, mode, tr, te, d)
for r in rows:
    if r.get("stage") == 0 and "acc" in r: print(r["global_step"], round(r["loss"], 3), round(r["acc"], 3), round(time.time()-t), flush=True)
