"""deepconf_arith end to end at a tiny size: the trained decoder beats chance, and the real online run's traces are
the pool's traces cut where the simulation cuts them."""

import json

from experiments import _registry as registry
from jaxllm.config import apply_overrides

TINY = ["modulus=11", "chain_steps=2", "ops=+", "max_operand=3", "d_model=32", "d_ff=64", "n_heads=2",
        "problems=4", "pool=16", "slots=16", "budgets=4,8", "repeats=4", "warmup=4", "window=2", "tail=2", "k=10",
        "trainer.steps=120", "stage_steps=120", "trainer.checkpoint_every=120", "target_pass_at_1=1.0", "lr=1e-2", "warmup_steps=20", "online_check_problems=1", "online_check_slots=4",
        "train_chains=2000"]


def test_tiny_run_beats_chance_and_the_real_online_run_matches_the_pool(tmp_path):
    mod = registry.load("deepconf_arith")
    s = mod.run(apply_overrides(mod.Config(), [f"run_dir={tmp_path}"] + TINY))
    assert s["pass_at_1"] > 3 * s["chance"], s  # 120 steps learn "+ x mod 11" well beyond guessing (1/11)
    assert s["online_real_traces_equal_pool"] is True
    for key in ("majority_acc", "deepconf_low_acc", "deepconf_low_tokens_saved", "deepconf_high_acc",
                "deepconf_high_tokens_saved"):
        assert key in s
    tables = json.loads((tmp_path / "tables.json").read_text())
    assert set(tables["offline"]) >= {"majority", "lowest@0.1", "tail@0.9", "mean@1"}
    assert (tmp_path / "plots" / "confidence_histograms.png").exists()


def test_modular_chains_follow_the_recurrence_and_decode_to_their_boxed_answer():
    from jaxllm.data.tasks import modular_chain as mc
    from jaxllm.inference.deepconf import extract_answer

    M, L = 31, 5
    ch = mc.generate(50, L, M, seed=3, ops="+-*", max_operand=9)
    v = mc.ChainVocab(M)
    for p, t, a in zip(ch.prompts, ch.traces, ch.answers):
        acc = int(p[1]) - len(mc.SYMBOLS)
        for i in range(L):
            op, x = int(p[3 + 3 * i]), int(p[4 + 3 * i]) - len(mc.SYMBOLS)
            assert int(t[3 * i]) == op and int(t[3 * i + 1]) - len(mc.SYMBOLS) == x  # the trace copies the step
            assert 1 <= x <= 9
            acc = {mc.PLUS: acc + x, mc.MINUS: acc - x, mc.TIMES: acc * x}[op] % M
            assert int(t[3 * i + 2]) - len(mc.SYMBOLS) == acc
        assert acc == int(a) and extract_answer(v.decode(t)) == str(acc) and t[-1] == mc.EOS
    rows = mc.training_rows(ch)
    assert rows["loss_mask"][:, :ch.prompts.shape[1]].sum() == 0 and rows["loss_mask"][:, ch.prompts.shape[1]:].all()
