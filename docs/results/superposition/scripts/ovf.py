import sys, time, dataclasses
from pathlib import Path
import experiments.coconut_reachability as E
from jaxllm.data.tasks import reachability as rd
mode = sys.argv[1]; steps = int(sys.argv[2]); n = int(sys.argv[3])
kw = dict(a.split("=") for a in sys.argv[4:])
cfg = E.Config(n_train=n, n_test=64, analysis_samples=64, batch_size=min(32, n), **{k: type(getattr(E.Config, k))(v) for k, v in kw.items()})
if mode in ("cot", "nocot"):
    cfg = dataclasses.replace(cfg, baseline_steps=steps)
else:
    cfg = dataclasses.replace(cfg, first_stage_steps=steps//4, steps_per_stage=steps//8, final_extra_steps=steps - steps//4 - cfg.max_latent*(steps//8))
tr, _, te = rd.split_problems(cfg.n_train, 0, cfg.n_test, cfg.graphs, seed=0)
t=time.time()
rd_ = Path(f"/tmp/ovf_{mode}_{n}_{steps}_{time.time_ns()}")
if mode == "cot":
    params, rows = E.train_cot(cfg, tr, tr[:64], rd_)
else:
    params, rows = E.train_latent(cfg, mode, tr, tr[:64], rd_)
for r in rows:
    if "eval/test_acc" in r or r["step"] % 200 == 0:
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items() if k in ("global_step","loss","acc","answer_acc","eval/test_acc","eval/test_acc_candidates")})
print("train-set acc (eval path):", [ (r.get("eval/test_acc"), r.get("eval/test_acc_candidates")) for r in rows if "eval/test_acc" in r][-1], "time", time.time()-t)
