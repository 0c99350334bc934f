"""The RL loop: rollouts as the one trainer's batch source, μ updates per rollout batch (SPG Algorithm 1).

There is no second trainer. One RL iteration is one batch of `jaxllm.train.train` with
`TrainerConfig.updates_per_batch = μ`:

    RolloutSource(state, key):                     # host side, at the start of every μ updates
        prompts  = n_prompts drawn from the prompt set (from the batch key alone)
        tokens   = sample_fn(state.params, prompts repeated group_size times, key)      # the sampler
        rewards  = reward_fn(prompt index, completion ids) for each row  (host; NaN / raise → 0, counted)
        A        = r − mean_group(r)                                       (`group_advantages`)
        extras   = d1's φ_old (and φ_ref) under each inner step's masks, SPG's ELBO / EUBO of the rollouts
    μ × trainer step: loss_fn(params, batch, update key) of `make_loss` (SPG / d1 / wd1), AdamW

so checkpoints (parameters, optimizer, RNG and the source's counters), resume after kill -9, the NaN stop,
per-phase seconds and sharding over a data×fsdp mesh are the trainer's. The sampler and the reward are
parameters of the source: IGPO (inpainted regrouping: a `regroup_fn`, called after scoring and before the
advantages, that re-samples all-wrong groups with `fixed` hint tokens, swaps correct ones in and returns a
per-token loss weight in the batch; `jaxllm.rl.igpo`) and Language Self-Play (an
autoregressive `sample_fn` with a sequence log-prob loss) plug in as another `sample_fn` / `extras_fn` / loss,
not another loop.

Inner-step randomness. Update t of the trainer draws the key `update_key(state.rng, t)`; the source runs at
t = b·μ and computes per-inner-step quantities (d1's φ_old, φ_ref) under `update_key(state.rng, b·μ + i)`,
stacking them batch-major as [B, μ, G] with the μ keys in `batch["inner_keys"]`; the loss picks the row whose key is its
own (`select_inner_step`), so the old, reference and current policies are scored under the same masks
(the reference's `mask_seeds[step % μ]`, dllm_rl.md §2).

Rewards are host-side Python (`jaxllm.rewards`), never executing model output.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
import traceback
import warnings
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.config import check
from jaxllm.models.model import left_padding_layout
from jaxllm.rl import losses as rl_losses
from jaxllm.rl.advantages import check_groups, group_advantages
from jaxllm.sampling.diffusion import DiffusionSamplerConfig, generate
from jaxllm.train.source import SourceBatch, host_rng, update_key
from jaxllm.train.trainer import Task

# sample_fn(params, prompts [B, P] int32, key, prompt_lengths [B] int32 | None) -> tokens [B, P + G] int32
SampleFn = Callable[[Any, jax.Array, jax.Array, Optional[jax.Array]], jax.Array]
# reward_fn(prompt index into the PromptSet, completion token ids [G] numpy int) -> float
RewardFn = Callable[[int, np.ndarray], float]


def diffusion_sampler(model, config: DiffusionSamplerConfig) -> SampleFn:
    """The LLaDA sampler (`jaxllm.sampling.diffusion.generate`) as a rollout `sample_fn`: temperature, steps,
    block length and remasking from `config`; prompts left-padded when `prompt_lengths` is given."""

    def sample(params, prompts_BP, key, prompt_lengths_B=None):
        return generate(model, params, prompts_BP, key, config, prompt_lengths=prompt_lengths_B).tokens

    return sample


class PromptSet(NamedTuple):
    """The RL prompts: tokens [N, P] int32 (left-padded), and lengths [N] (None: every row is a full-length
    prompt, the model sees the pad tokens, as in SFT without an attention mask)."""

    tokens: np.ndarray
    lengths: Optional[np.ndarray] = None


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """batch_size: completions per rollout batch (n_prompts · group_size; SPG: 96 = 16 prompts × 6).
    group_size: completions per prompt; must divide batch_size. eos_id: the completion ends at (and includes)
    the first EOS (None: the whole generation counts)."""

    batch_size: int
    group_size: int
    eos_id: Optional[int] = None

    def __post_init__(self):
        check(self.batch_size >= 1, f"rollout batch_size must be ≥ 1, got {self.batch_size}")
        check_groups(self.batch_size, self.group_size, "rollout batch")

    @property
    def prompts_per_batch(self) -> int:
        return self.batch_size // self.group_size


def completion_mask(gen_BG: np.ndarray, eos_id: Optional[int]) -> np.ndarray:
    """[B, G] bool: tokens up to and including the first EOS (all of them when there is none)."""
    gen = np.asarray(gen_BG)
    if eos_id is None:
        return np.ones(gen.shape, bool)
    is_eos = gen == eos_id
    before = np.cumsum(is_eos, axis=1) - is_eos  # EOS tokens strictly before position i
    return before == 0


def safe_rewards(reward_fn: RewardFn, indices: np.ndarray, completions_BG: np.ndarray) -> tuple[np.ndarray, int, str]:
    """Rewards [B] float32; a reward that raises or is not finite counts as 0. Returns (rewards, number of
    such failures, the first failure's message)."""
    out = np.zeros(len(indices), np.float32)
    errors, first = 0, ""
    for b, (i, comp) in enumerate(zip(indices, completions_BG)):
        try:
            r = float(reward_fn(int(i), comp))
            if not math.isfinite(r):
                raise ValueError(f"reward is {r}")
            out[b] = r
        except Exception as e:  # noqa: BLE001 - a bad reward must never stop the loop
            errors += 1
            if not first:
                first = f"{type(e).__name__}: {e} (prompt {int(i)}); " + traceback.format_exc(limit=2).splitlines()[-1]
    return out, errors, first


ExtrasFn = Callable[[Any, dict, jax.Array], dict]  # extras_fn(state, batch, rollout key) -> more batch arrays
# regroup_fn(state, tokens [B, P+G] np.int32, rewards [B] np.float32, rows [B] prompt indices, key)
#   -> (tokens, rewards, extra batch arrays {name: [B, ...]}, metrics {name: float}); see RolloutSource
RegroupFn = Callable[[Any, np.ndarray, np.ndarray, np.ndarray, jax.Array], tuple[np.ndarray, np.ndarray, dict, dict]]


class RolloutSource:
    """The trainer's batch source for RL: sample, score on the host, advantages, extras (see the module doc).

    sample_fn / reward_fn: see `SampleFn` / `RewardFn`. prompts: a `PromptSet`. loss_cfg: the `RLLossConfig`
    (group size, advantage normalisation, μ). model: needed for the logged ELBO / EUBO of each rollout batch
    and d1's φ_old / φ_ref. ref_params: the frozen reference of d1's KL (kl_beta > 0), e.g. the SFT start.
    extras_fn: more per-batch arrays (replaces the built-in d1 / bounds extras when given).
    regroup_fn: called after scoring and before the advantages (IGPO's inpainted regrouping,
    `jaxllm.rl.igpo.IGPORegrouper`): it may replace rows of the batch (tokens and their rewards, same shapes)
    and add per-row arrays to the batch (e.g. a per-token loss weight) and metrics (logged under its own names).
    The completion mask and the advantages are computed on what it returns.

    Host state (checkpointed with the parameters): the number of batches drawn and of failed rewards.
    """

    def __init__(self, sample_fn: SampleFn, reward_fn: RewardFn, prompts: PromptSet, rollout: RolloutConfig,
                 loss_cfg: rl_losses.RLLossConfig, *, model=None, ref_params=None,
                 extras_fn: Optional[ExtrasFn] = None, log_bounds: bool = True,
                 regroup_fn: Optional[RegroupFn] = None):
        tokens = np.asarray(prompts.tokens)
        if tokens.ndim != 2 or tokens.shape[0] < 1:
            raise ValueError(f"PromptSet.tokens must be [N ≥ 1, P], got shape {tokens.shape}")
        if prompts.lengths is not None and np.shape(prompts.lengths) != (tokens.shape[0],):
            raise ValueError(f"PromptSet.lengths must be [N={tokens.shape[0]}], got {np.shape(prompts.lengths)}")
        if rollout.group_size != loss_cfg.group_size:
            raise ValueError(f"rollout group_size={rollout.group_size} differs from the loss's "
                             f"group_size={loss_cfg.group_size}")
        if rollout.prompts_per_batch > tokens.shape[0]:
            raise ValueError(f"{rollout.prompts_per_batch} prompts per batch but the PromptSet has {tokens.shape[0]}")
        ratio_loss = loss_cfg.loss in rl_losses.ONE_STEP_RATIO_LOSSES  # reads φ_old (and φ_ref) per inner step
        needs_model = extras_fn is None and (log_bounds or ratio_loss)
        if needs_model and model is None:
            raise ValueError("RolloutSource needs `model` for the ELBO / EUBO metrics and d1's old log-probs "
                             "(or log_bounds=False with a loss other than d1)")
        if ratio_loss and loss_cfg.kl_beta > 0 and ref_params is None and extras_fn is None:
            raise ValueError(f"loss={loss_cfg.loss!r} with kl_beta={loss_cfg.kl_beta} needs ref_params (the frozen reference)")
        self.sample_fn, self.reward_fn, self.prompts, self.rollout = sample_fn, reward_fn, prompts, rollout
        self.loss_cfg, self.model, self.ref_params = loss_cfg, model, ref_params
        self.extras_fn, self.log_bounds, self.regroup_fn = extras_fn, log_bounds, regroup_fn
        self.batches, self.reward_errors = 0, 0
        self._tokens = tokens.astype(np.int32)

    # host state -------------------------------------------------------------------------------------------
    def get_state(self) -> dict:
        return {"batches": self.batches, "reward_errors": self.reward_errors}

    def set_state(self, state: dict) -> None:
        state = state or {}
        self.batches, self.reward_errors = int(state.get("batches", 0)), int(state.get("reward_errors", 0))

    # one rollout batch ------------------------------------------------------------------------------------
    def __call__(self, state, key: jax.Array) -> SourceBatch:
        cfg, G = self.rollout, self.rollout.group_size
        k_prompts, k_sample, k_extra = jax.random.split(key, 3)
        n = cfg.prompts_per_batch
        idx = host_rng(k_prompts).permutation(self._tokens.shape[0])[:n]
        rows = np.repeat(idx, G)  # each prompt's group_size completions contiguous
        prompts = jnp.asarray(self._tokens[rows])
        lengths = None if self.prompts.lengths is None else jnp.asarray(np.asarray(self.prompts.lengths)[rows], jnp.int32)

        t0 = time.perf_counter()
        tokens = np.asarray(jax.device_get(self.sample_fn(state.params, prompts, k_sample, lengths)))
        t1 = time.perf_counter()
        P = prompts.shape[1]
        gen_len = tokens.shape[1] - P
        if tokens.ndim != 2 or tokens.shape[0] != cfg.batch_size or tokens.shape[1] <= P:
            raise ValueError(f"sample_fn returned tokens of shape {tokens.shape}; expected [B={cfg.batch_size}, "
                             f"P+G] with P={P} and G ≥ 1")
        rewards, errors, first = safe_rewards(self.reward_fn, rows, tokens[:, P:])
        regroup_batch, regroup_metrics = {}, {}
        if self.regroup_fn is not None:  # e.g. IGPO: all-wrong groups re-sampled with hints, rows replaced
            tokens, rewards, regroup_batch, regroup_metrics = self.regroup_fn(
                state, tokens, rewards, rows, jax.random.fold_in(k_sample, 1))
            tokens, rewards = np.asarray(tokens, np.int32), np.asarray(rewards, np.float32)
            if tokens.shape != (cfg.batch_size, P + gen_len) or rewards.shape != (cfg.batch_size,):
                raise ValueError(f"regroup_fn returned tokens {tokens.shape} and rewards {rewards.shape}; expected "
                                 f"{(cfg.batch_size, P + gen_len)} and {(cfg.batch_size,)}")
        gen = tokens[:, P:]
        comp = completion_mask(gen, cfg.eos_id)
        t2 = time.perf_counter()
        if errors:
            warnings.warn(f"RL batch {self.batches}: {errors}/{len(rows)} rewards failed and count as 0; first: {first}",
                          RuntimeWarning, stacklevel=2)
        self.batches += 1
        self.reward_errors += errors

        adv = group_advantages(jnp.asarray(rewards), G, self.loss_cfg.advantage_norm)
        batch = {"tokens": jnp.asarray(tokens, jnp.int32), "completion_mask": jnp.asarray(comp),
                 "advantages": adv, **{k: jnp.asarray(v) for k, v in regroup_batch.items()}}
        if lengths is not None:
            mask, pos = left_padding_layout(lengths, P, tokens.shape[1])
            batch["attention_mask"], batch["positions"] = mask, pos
        if self.extras_fn is not None:
            batch.update(self.extras_fn(state, batch, k_extra))
            bounds = {}
        else:
            batch, bounds = self._builtin_extras(state, batch, k_extra)
        jax.block_until_ready(batch)
        t3 = time.perf_counter()

        r = rewards.reshape(n, G)
        a = np.asarray(adv)
        metrics = {"rollout/reward_mean": float(r.mean()), "rollout/reward_max": float(r.max()),
                   "rollout/reward_min": float(r.min()), "rollout/reward_group_std": float(r.std(axis=1).mean()),
                   "rollout/zero_std_frac": float(np.mean(r.std(axis=1) < 1e-6)),
                   "rollout/adv_mean": float(a.mean()), "rollout/adv_std": float(a.std()),
                   "rollout/adv_max": float(a.max()), "rollout/adv_min": float(a.min()),
                   "rollout/completion_len": float(comp.sum(axis=1).mean()),
                   "rollout/reward_errors": float(errors), "rollout/reward_errors_total": float(self.reward_errors),
                   "rollout/sample_s": t1 - t0, "rollout/reward_s": t2 - t1, "rollout/extras_s": t3 - t2, **bounds,
                   **regroup_metrics}
        return SourceBatch(batch, metrics)

    def _builtin_extras(self, state, batch: dict, key: jax.Array) -> tuple[dict, dict]:
        cfg, mu = self.loss_cfg, self.loss_cfg.inner_steps
        bounds = {}
        if self.log_bounds:  # the bounds SPG optimises, of this batch under the current policy, for every loss
            b = _rollout_bounds(self.model, cfg, state.params, batch, key)
            bounds = {"rollout/elbo": float(b.elbo), "rollout/eubo": float(b.eubo)}
        if cfg.loss in rl_losses.ONE_STEP_RATIO_LOSSES:
            keys = jnp.stack([update_key(state.rng, state.step + i) for i in range(mu)])  # [μ, 2]
            B = batch["tokens"].shape[0]
            # batch-major ([B, μ, ...]) so that the trainer can shard every leaf along the data axis
            batch = {**batch, "inner_keys": jnp.broadcast_to(keys[None], (B, *keys.shape)),
                     "old_logps_all": _inner_logps(self.model, cfg, state.params, batch, keys)}
            if cfg.kl_beta > 0:
                batch["ref_logps_all"] = _inner_logps(self.model, cfg, self.ref_params, batch, keys)
        return batch, bounds


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class _Static:
    model: Any
    cfg: Any


def _rollout_bounds(model, cfg, params, batch, key):
    out = _bounds_jit(_Static(model, cfg), params, batch, key)
    return jax.device_get(out)


@jax.jit
def _bounds_jit(static: _Static, params, batch, key):
    cfg = dataclasses.replace(static.cfg, beta=max(static.cfg.beta, 1.0))
    b, _ = rl_losses.spg_bounds(static.model, params, _core(batch), key, cfg, with_eubo=True)
    return rl_losses.SequenceBounds(jnp.mean(b.elbo), jnp.mean(b.eubo))


def _inner_logps(model, cfg, params, batch, keys_K2):
    return _inner_logps_jit(_Static(model, cfg), params, _core(batch), keys_K2)


@jax.jit
def _inner_logps_jit(static: _Static, params, batch, keys_K2):
    out_KBG = jax.lax.map(lambda k: rl_losses.one_step_token_logps(static.model, params, batch, k, static.cfg), keys_K2)
    return jnp.swapaxes(out_KBG, 0, 1)  # [B, μ, G]


def _core(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k in ("tokens", "completion_mask", "advantages", "attention_mask",
                                                     "positions")}


def select_inner_step(batch: dict, rng: jax.Array) -> dict:
    """The batch as the loss of one inner update sees it: `old_logps` / `ref_logps` [B, G] = inner step k of
    `old_logps_all` / `ref_logps_all` [B, μ, G], k the entry of `inner_keys` [B, μ, 2] (equal rows) that equals
    this update's key `rng`."""
    if "inner_keys" not in batch:
        return batch
    data = jax.random.key_data(rng) if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng
    match = jnp.all(batch["inner_keys"][0] == data[None], axis=1)  # exactly one True (fold_in of distinct steps)
    k = jnp.argmax(match)
    out = {n: v for n, v in batch.items() if n not in ("inner_keys", "old_logps_all", "ref_logps_all")}
    out["old_logps"] = batch["old_logps_all"][:, k]
    if "ref_logps_all" in batch:
        out["ref_logps"] = batch["ref_logps_all"][:, k]
    return out


def rl_loss_fn(model, cfg: rl_losses.RLLossConfig) -> Callable:
    """The trainer's loss_fn(params, batch, rng): `make_loss(model, cfg)` on the inner step's view of the batch.
    Cached per (model, cfg) so equal runs in one process reuse the compiled step."""
    return _rl_loss_fn(model, cfg)



@functools.lru_cache(maxsize=16)
def _rl_loss_fn(model, cfg):
    loss = rl_losses.make_loss(model, cfg)

    def loss_fn(params, batch, rng):
        return loss(params, select_inner_step(batch, rng), rng)

    return loss_fn


def make_rl_task(model, loss_cfg: rl_losses.RLLossConfig, optimizer, source: RolloutSource,
                 init_params: Callable[[jax.Array], Any], *, logical_axes=None, eval_fn=None, log_fn=None,
                 loss_fn: Optional[Callable] = None) -> Task:
    """The RL `Task` for `jaxllm.train.train` (run it with TrainerConfig.updates_per_batch = loss_cfg.inner_steps).

    init_params(key) -> the starting parameters (the SFT checkpoint; LoRA adds its factors there, see
    `jaxllm.rl.lora`). eval_fn(params) -> held-out metrics. loss_fn overrides the loss (a model-specific one).
    """
    return Task(init_params=init_params, loss_fn=loss_fn or rl_loss_fn(model, loss_cfg), optimizer=optimizer,
                batches=source, eval_fn=eval_fn, log_fn=log_fn, logical_axes=logical_axes)


def check_trainer(trainer_cfg, loss_cfg: rl_losses.RLLossConfig) -> None:
    """The trainer settings an RL run needs: μ = loss_cfg.inner_steps updates per batch, no gradient
    accumulation for d1 (its per-inner-step φ_old is looked up by the update key, which accumulation alters)."""
    check(trainer_cfg.updates_per_batch == loss_cfg.inner_steps,
          f"trainer.updates_per_batch={trainer_cfg.updates_per_batch} must equal the loss's inner_steps="
          f"{loss_cfg.inner_steps} (μ updates per rollout batch)")
    check(loss_cfg.loss not in rl_losses.ONE_STEP_RATIO_LOSSES or trainer_cfg.grad_accum == 1,
          f"loss={loss_cfg.loss!r} needs trainer.grad_accum=1 (its old log-probs are indexed by the update key)")
