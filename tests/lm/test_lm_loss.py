"""Next-token loss: masks, packing with segment ids equals separate documents, training lowers loss."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxllm.data import pipeline as P
from jaxllm.data import synthetic
from jaxllm.data.tokenizers import CharTokenizer
from jaxllm.models import Model, get_preset, init_params
from jaxllm.models import transformer as tfm
from jaxllm.train import TrainerConfig, train
from jaxllm.train.lm import eval_loss, lm_task, next_token_loss

CFG = get_preset("tiny_mobilellm", vocab_size=128, n_layers=1)


_logits = jax.jit(lambda p, t: tfm.forward(CFG, p, t).logits)
_loss = jax.jit(lambda p, b: next_token_loss(Model(CFG), p, b))


def _doc_nll(params, doc):
    logits = _logits(params, jnp.asarray(doc[None, :-1]))
    logp = jax.nn.log_softmax(logits, -1)[0]
    return -np.asarray(logp[np.arange(len(doc) - 1), doc[1:]])


def test_packed_loss_equals_separate_documents():
    params = init_params(CFG, jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    docs = [rng.integers(3, 128, size=n).astype(np.int32) for n in (5, 7, 4)]
    packed, _ = P.pack_examples([(d, np.ones(len(d), np.float32)) for d in docs], seq_len=16)
    batch = {k: jnp.asarray(v) for k, v in packed.items()}
    loss, metrics = _loss(params, batch)
    want = np.concatenate([_doc_nll(params, d) for d in docs])
    assert float(metrics["tokens"]) == len(want)
    np.testing.assert_allclose(float(loss), want.mean(), rtol=1e-5)


def test_masked_tokens_carry_no_gradient_signal():
    params = init_params(CFG, jax.random.PRNGKey(0))
    tokens = jnp.asarray(np.random.default_rng(1).integers(3, 128, size=(2, 9)), jnp.int32)
    mask = jnp.asarray(np.r_[np.zeros(5), np.ones(4)][None].repeat(2, 0), jnp.float32)
    base = _loss(params, {"tokens": tokens, "loss_mask": mask})[0]
    logits = _logits(params, tokens[:, :-1])
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits, -1), tokens[:, 1:, None], -1)[..., 0]
    np.testing.assert_allclose(float(base), float(nll[:, 4:].mean()), rtol=1e-6)


def test_lm_task_lowers_held_out_loss_on_generated_corpus(tmp_path):
    tok = CharTokenizer()
    cfg = get_preset("tiny_mobilellm", vocab_size=tok.vocab_size, n_layers=1, d_model=32, head_dim=8, d_ff=64)
    train_rows = P.pack_documents(synthetic.generate("copy", 300, seed=0), tok, seq_len=32)
    eval_rows = P.pack_documents(synthetic.generate("copy", 40, seed=1), tok, seq_len=32)
    task = lm_task(cfg, optax.adam(3e-3), P.mixed_batches({"copy": train_rows}, 16, seed=0),
                   P.fixed_batches(eval_rows, 32))
    res = train(TrainerConfig(steps=60, log_every=60, checkpoint_every=60, progress=False), task, str(tmp_path))
    first = eval_loss(Model(cfg), init_params(cfg, jax.random.split(jax.random.PRNGKey(0))[0]), task.eval_fn and
                      P.fixed_batches(eval_rows, 32))
    last = res.history[-1]["eval/loss"]
    assert res.history[0]["eval/loss"] == first or abs(res.history[0]["eval/loss"] - first) < 1e-4
    assert last < 0.75 * first, (first, last)


def test_training_batch_with_out_of_vocabulary_ids_is_refused_before_the_step(tmp_path):
    """A tokenizer / model vocabulary mismatch is named at the batch, not clamped inside the jitted gather."""
    import pytest

    tok = CharTokenizer()
    cfg = get_preset("tiny_mobilellm", vocab_size=tok.vocab_size, n_layers=1, d_model=32, head_dim=8, d_ff=64)
    rows = P.pack_documents(synthetic.generate("copy", 40, seed=0), tok, seq_len=16)
    rows["tokens"][3, 5] = tok.vocab_size + 7  # one bad id in one row
    task = lm_task(cfg, optax.adam(1e-3), P.mixed_batches({"copy": rows}, 64, seed=0))
    with pytest.raises(ValueError, match=rf"outside the vocabulary \[0, {tok.vocab_size}\)"):
        train(TrainerConfig(steps=2, log_every=1, checkpoint_every=10, progress=False), task, str(tmp_path))
