import sys, time, dataclasses, ast, numpy as np
from pathlib import Path
import experiments.coconut_reachability as E
from jaxllm.data.tasks import reachability as rd
mode = sys.argv[1]; steps = int(sys.argv[2])
kw = dict(a.split("=", 1) for a in sys.argv[3:])
g = rd.GraphConfig(min_nodes=int(kw.pop("min_nodes", 6)), max_nodes=int(kw.pop("max_nodes", 10)),
                   hops=ast.literal_eval(kw.pop("hops", "(2,3)")), max_edges=int(kw.pop("max_edges", 16)))
conv = lambda k, v: (v == "true") if isinstance(getattr(E.Config, k), bool) else type(getattr(E.Config, k))(v)
ev = int(kw.pop("eval_every", 0))
cfg = E.Config(graphs=g, **{k: conv(k, v) for k, v in kw.items()})
cfg = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, eval_every=ev))
if mode in ("cot", "nocot"):
    cfg = dataclasses.replace(cfg, baseline_steps=steps)
else:
    f = steps // 4; s = steps // 8
    cfg = dataclasses.replace(cfg, first_stage_steps=f, steps_per_stage=s, final_extra_steps=steps - f - cfg.max_latent * s)
t = time.time()
tr, _, te = rd.split_problems(cfg.n_train, 0, cfg.n_test, cfg.graphs, seed=0)
print("gen", round(time.time() - t, 1), "s; test hops", np.bincount([p.hops for p in te]))
rd_ = Path(f"/tmp/gen_{mode}_{time.time_ns()}")
fn = (lambda: E.train_cot(cfg, tr, te, rd_)) if mode == "cot" else (lambda: E.train_latent(cfg, mode, tr, te, rd_))
params, rows = fn()
for r in rows:
    if "eval/test_acc" in r:
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items() if k in ("global_step", "loss", "acc", "answer_acc", "eval/test_acc", "eval/test_acc_candidates")}, flush=True)
print("FINAL", mode, sys.argv[2:], "time", round(time.time() - t))
