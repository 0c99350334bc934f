"""Language Self-Play (arXiv 2509.07414): one model as Challenger and Solver, zero-sum (LSP-Zero) or with a
quality self-reward (LSP), on the autoregressive decoder; deepconf_lsp.md Part B.

One parameter set θ plays two roles through two prompts: the Challenger π_θ(q | <cp>) writes N queries, the
Solver π_θ(a | q) writes G answers to each. With R(q_i, a_i^j) the task reward (scaled by `reward_scale`),
R_Q the self-reward (LSP only, scaled by `self_reward_scale`, 0 for LSP-Zero):

    V(q_i)   = (1/G) Σ_j R(q_i, a_i^j)               V_Q(q_i) = (1/G) Σ_j R_Q(q_i, a_i^j)        (Eq. 2)
    A_Sol    = (R + R_Q) − mean_j (R + R_Q)                                                          (Eq. 2)
    A_Ch(q_i) = [V_Q(q_i) − V(q_i)] − mean_i [V_Q − V]   = V̄ − V(q_i) for LSP-Zero                  (Eq. 3)
    L_Sol = −(1/NG) Σ_ij [ π/⊥π(a_i^j | q_i) · A_Sol − β·KL-term ],  L_Ch = −(1/N) Σ_i [ π/⊥π(q_i) · A_Ch − β·KL-term ]
    L     = L_Sol + α_Ch · L_Ch, one gradient step per self-play iteration (Algorithm 1)

π are sequence probabilities: log π = Σ_t log π(token_t | prefix) over the generated tokens only (the
Challenger's <cp> prompt and the query inside the Solver's context are context, not actions; padding after
the end token counts for nothing). Advantages are centred, never divided by a std (Eqs. 2–3).

The KL term (`kl_estimator`), with ℓ = log π_θ(seq) − log π_Ref(seq) and π_Ref the frozen initial model:
    "k1_reward" (default): ⊥ℓ subtracted from the advantage, inside the ratio: gradient ⊥ℓ·∇log π, whose
                 expectation under π_θ is ∇KL(π_θ‖π_Ref), the KL the paper says it penalises.
    "k3_token":  β Σ_t [exp(r_t) − r_t − 1], r_t = log π_Ref − log π_θ per token (TRL's GRPO), a pathwise
                 term; its expected gradient is that of KL(π_Ref‖π_θ) (the reverse direction).
    "literal":   β ℓ as the equation reads, outside the ratio. Its gradient β∇log π_θ has zero expectation on
                 on-policy samples (E_π[∇log π] = 0): it regularises nothing in expectation, only adds noise
                 (tests/rl/test_lsp.py shows it numerically). Kept for that oracle, not for training.

The rollout is a batch source of the one trainer (`jaxllm.train.train`), like `jaxllm.rl.loop.RolloutSource`,
built from that module's helpers (`completion_mask`, `safe_rewards`, `make_rl_task`) and
`advantages.group_advantages`; only the two-stage sampling (challenger, then solver on its queries) and the
sequence log-prob loss are LSP's own. The sampler is `jaxllm.sampling.autoregressive.generate`.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import warnings
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.config import check
from jaxllm.rl.advantages import group_advantages
from jaxllm.rl.loop import completion_mask, safe_rewards
from jaxllm.sampling.autoregressive import SamplingConfig, generate, pad_prompts
from jaxllm.train.lm import token_losses
from jaxllm.train.source import SourceBatch, host_rng

KL_ESTIMATORS = ("k1_reward", "k3_token", "literal")


@dataclasses.dataclass(frozen=True)
class LSPConfig:
    """The choices the paper leaves open (deepconf_lsp.md B3), each with the reason for its default.

    n_queries: N, Challenger queries per iteration. 8: App. C Table 1 lists "#queries 8".
    group_size: G, Solver answers per query. 8: the same Table's 8 may be G instead of N (we cannot tell), so
        both are 8; G ≥ 2 is needed for a non-zero Solver advantage.
    challenger_weight: α_Ch in L = L_Sol + α_Ch·L_Ch. 1.0: the paper gives no value; 1 weighs one query like
        one answer group (L_Ch is a mean over N queries, L_Sol over N·G answers).
    kl_beta: β. 0.05: App. C Table 1, for GRPO, LSP-Zero and LSP alike.
    kl_estimator: see the module doc. "k1_reward": the only one of the three whose expected gradient is that
        of KL(π_θ‖π_Ref); the literal reading has zero expected gradient (test_literal_kl_has_zero_expected_gradient).
    self_reward: True for LSP (R_Q added to both players before the advantages), False for LSP-Zero.
    reward_scale / self_reward_scale: R ← reward_scale·R, R_Q ← self_reward_scale·R_Q. 1.0 / 1.0: the paper
        adds the judge's 0–7 integer score to the reward model's score unscaled (§3, Box 3; the RM is an
        unbounded Bradley–Terry score there). On the toy, R ∈ {0, 1} and R_Q ∈ [0, 7], so with 1.0 the judge
        dominates; 1/7 puts both on [0, 1]. Recorded with every run.
    """

    n_queries: int = 8
    group_size: int = 8
    challenger_weight: float = 1.0
    kl_beta: float = 0.05
    kl_estimator: str = "k1_reward"
    self_reward: bool = True
    reward_scale: float = 1.0
    self_reward_scale: float = 1.0

    def __post_init__(self):
        check(self.n_queries >= 1, f"lsp.n_queries must be ≥ 1, got {self.n_queries}")
        check(self.group_size >= 1, f"lsp.group_size must be ≥ 1, got {self.group_size}")
        check(self.challenger_weight >= 0, f"lsp.challenger_weight must be ≥ 0, got {self.challenger_weight}")
        check(self.kl_beta >= 0, f"lsp.kl_beta must be ≥ 0, got {self.kl_beta}")
        check(self.kl_estimator in KL_ESTIMATORS,
              f"lsp.kl_estimator={self.kl_estimator!r} is not one of {list(KL_ESTIMATORS)}")


# ------------------------------------------------------------------------------------------------------------
# Advantages (Eqs. 2–3)

class LSPAdvantages(NamedTuple):
    solver: jax.Array  # [N, G] A_Sol
    challenger: jax.Array  # [N] A_Ch
    values: jax.Array  # [N] V(q_i) of R
    self_values: jax.Array  # [N] V_Q(q_i) of R_Q (zeros for LSP-Zero)


def group_values(rewards_NG: jax.Array) -> jax.Array:
    """V(q_i) = (1/G) Σ_j R(q_i, a_i^j): [N, G] -> [N] (Eq. 2)."""
    return jnp.mean(jnp.asarray(rewards_NG, jnp.float32), axis=1)


def lsp_advantages(rewards_NG: jax.Array, self_rewards_NG: Optional[jax.Array] = None) -> LSPAdvantages:
    """A_Sol [N, G] and A_Ch [N] from R [N, G] and, for LSP, R_Q [N, G] (None: LSP-Zero).

    Solver: R + R_Q centred within each query's group. Challenger: its reward −V(q_i) + V_Q(q_i) centred over
    the N queries (one group of N), so for LSP-Zero A_Ch = V̄ − V(q_i) exactly. Both through
    `advantages.group_advantages` ("mean": no std, Eqs. 2–3)."""
    r = jnp.asarray(rewards_NG, jnp.float32)
    if r.ndim != 2:
        raise ValueError(f"rewards must be [N, G], got shape {r.shape}")
    N, G = r.shape
    rq = jnp.zeros_like(r) if self_rewards_NG is None else jnp.asarray(self_rewards_NG, jnp.float32)
    if rq.shape != r.shape:
        raise ValueError(f"self-rewards have shape {rq.shape}, rewards {r.shape}")
    v, vq = group_values(r), group_values(rq)
    solver = group_advantages((r + rq).reshape(-1), G, "mean").reshape(N, G)
    challenger = group_advantages(vq - v, N, "mean")
    return LSPAdvantages(solver, challenger, v, vq)


# ------------------------------------------------------------------------------------------------------------
# Losses (Eqs. 4–5)

def sg_ratio(logp: jax.Array) -> jax.Array:
    """π/⊥π = exp(log π − ⊥log π): value 1, gradient ∇log π (the DiCE form of REINFORCE)."""
    return jnp.exp(logp - jax.lax.stop_gradient(logp))


class PolicyLoss(NamedTuple):
    loss: jax.Array  # () the weighted loss
    pg: jax.Array  # [B] −sg_ratio · A' per row (A' = A − β⊥ℓ for k1_reward)
    kl: jax.Array  # [B] ℓ = Σ_t mask (log π_θ − log π_Ref), the sequence log-ratio (k1 KL estimate)
    kl_penalty: jax.Array  # [B] the pathwise penalty per row before β (k3 sum or ℓ; 0 for k1_reward)


def policy_loss(logp_BT: jax.Array, ref_logp_BT: jax.Array, mask_BT: jax.Array, adv_B: jax.Array,
                weight_B: jax.Array, beta: float, estimator: str = "k1_reward") -> PolicyLoss:
    """Σ_b w_b · [−(π/⊥π)(seq_b)·A'_b + β·penalty_b], the stop-gradient-ratio REINFORCE loss on sequences.

    logp_BT / ref_logp_BT: [B, T] float32 token log-probs under π_θ / π_Ref; mask_BT: [B, T] (1 on the
    generated tokens, 0 on prompt and padding: they enter no sum); adv_B: [B] advantages; weight_B: [B] row
    weights (1/(NG) for solver rows, α_Ch/N for challenger rows; probabilities for an exact expectation).
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl estimator {estimator!r} is not one of {list(KL_ESTIMATORS)}")
    m = mask_BT.astype(jnp.float32)
    logp = jnp.where(m > 0, logp_BT, 0.0)
    ref = jnp.where(m > 0, ref_logp_BT, 0.0)
    seq_logp = jnp.sum(logp * m, axis=-1)
    log_ratio = jnp.sum((logp - ref) * m, axis=-1)
    adv = adv_B.astype(jnp.float32)
    if estimator == "k1_reward":
        adv = adv - beta * jax.lax.stop_gradient(log_ratio)
        penalty = jnp.zeros_like(log_ratio)
    elif estimator == "k3_token":
        r = ref - logp
        penalty = jnp.sum((jnp.exp(r) - r - 1.0) * m, axis=-1)
    else:  # literal
        penalty = log_ratio
    pg = -sg_ratio(seq_logp) * adv
    w = weight_B.astype(jnp.float32)
    loss = jnp.sum(w * (pg + beta * penalty))
    return PolicyLoss(loss, pg, log_ratio, penalty)


def sequence_token_logps(model, params, batch: dict) -> tuple[jax.Array, jax.Array]:
    """(log π(token_{t+1} | tokens_≤t) [R, T-1], mask [R, T-1]) of right-padded rows: `batch["tokens"]` [R, T]
    int32, `batch["loss_mask"]` [R, T] (1 on the generated tokens). Through `jaxllm.train.lm.token_losses`,
    the LM loss's own forward; positions 0.. from each row's first token, as the sampler's."""
    nll, w = token_losses(model, params, {"tokens": batch["tokens"], "loss_mask": batch["loss_mask"]})
    return -nll, w


def lsp_loss_fn(model, cfg: LSPConfig) -> Callable:
    """The trainer's loss_fn(params, batch, rng) for an LSP batch (see `LSPSource`): L_Sol + α_Ch·L_Ch with
    the row weights in the batch, plus metrics per role. Cached per (model, cfg)."""
    return _lsp_loss_fn(model, cfg.kl_beta, cfg.kl_estimator)


@functools.lru_cache(maxsize=16)
def _lsp_loss_fn(model, beta: float, estimator: str):
    def loss_fn(params, batch, rng):
        logp, mask = sequence_token_logps(model, params, batch)
        out = policy_loss(logp, batch["ref_logps"], mask, batch["advantages"], batch["row_weight"], beta, estimator)
        ch = batch["is_challenger"].astype(jnp.float32)
        sol = 1.0 - ch
        w = batch["row_weight"].astype(jnp.float32)

        def mean(x, sel):
            return jnp.sum(x * sel) / jnp.maximum(jnp.sum(sel), 1.0)

        metrics = {"lsp/loss_sol": jnp.sum(w * sol * (out.pg + beta * out.kl_penalty)),
                   "lsp/loss_ch": jnp.sum(w * ch * (out.pg + beta * out.kl_penalty)),
                   "lsp/kl_sol": mean(out.kl, sol), "lsp/kl_ch": mean(out.kl, ch),
                   "lsp/tokens_sol": jnp.sum(mask * sol[:, None]), "lsp/tokens_ch": jnp.sum(mask * ch[:, None])}
        return out.loss, metrics

    return loss_fn


def check_lsp_trainer(trainer_cfg) -> None:
    """LSP takes one gradient step per self-play iteration (Algorithm 1); the ⊥ ratio is on-policy only."""
    check(trainer_cfg.updates_per_batch == 1,
          f"LSP needs trainer.updates_per_batch=1 (one step per iteration, Algorithm 1), got {trainer_cfg.updates_per_batch}")


# ------------------------------------------------------------------------------------------------------------
# Roles, judges and the rollout

@dataclasses.dataclass(frozen=True)
class LSPFormat:
    """The two prompts of one model, in token ids.

    challenger_prompt: the Challenger's context <cp> (Box 1 of the paper); the query is what follows, up to
        and including `eos_id`, at most `max_query_tokens`.
    solver_prefix / solver_suffix: the Solver sees solver_prefix + query + solver_suffix and answers up to
        `eos_id`, at most `max_answer_tokens`.
    temperature / top_p: of both roles' training samples.
    """

    challenger_prompt: tuple[int, ...]
    solver_prefix: tuple[int, ...]
    solver_suffix: tuple[int, ...]
    eos_id: int
    pad_id: int
    max_query_tokens: int = 16
    max_answer_tokens: int = 8
    temperature: float = 1.0
    top_p: float = 1.0

    def __post_init__(self):
        for name in ("challenger_prompt", "solver_prefix", "solver_suffix"):
            object.__setattr__(self, name, tuple(int(t) for t in getattr(self, name)))
        check(len(self.challenger_prompt) >= 1, "LSPFormat.challenger_prompt must not be empty")
        check(self.max_query_tokens >= 1 and self.max_answer_tokens >= 1,
              "LSPFormat.max_query_tokens and max_answer_tokens must be ≥ 1")
        check(self.temperature > 0, f"LSPFormat.temperature must be > 0 (samples must differ), got {self.temperature}")

    @property
    def solver_prompt_len(self) -> int:
        return len(self.solver_prefix) + self.max_query_tokens + len(self.solver_suffix)

    @property
    def row_len(self) -> int:
        """T of every training row: the longer of the two roles' prompt + generation."""
        return max(len(self.challenger_prompt) + self.max_query_tokens, self.solver_prompt_len + self.max_answer_tokens)

    def sampling(self, max_new: int) -> SamplingConfig:
        return SamplingConfig(max_new_tokens=max_new, temperature=self.temperature, top_p=self.top_p,
                              stop_tokens=(self.eos_id,), pad_id=self.pad_id)

    def query_of(self, gen_L: np.ndarray) -> np.ndarray:
        """The query's tokens: the Challenger's generation before its first end token (all of it without one)."""
        gen = np.asarray(gen_L)
        stop = np.flatnonzero(gen == self.eos_id)
        return gen[: stop[0]] if stop.size else gen

    def solver_prompt(self, query: np.ndarray) -> list[int]:
        return [*self.solver_prefix, *(int(t) for t in query), *self.solver_suffix]


class Rollout(NamedTuple):
    """What the judge and the reward see: N queries and N·G answers (answer b answers query b // G).
    query_tokens / answer_tokens: the generations (pad after the end token); *_mask: the tokens that count
    (up to and including the end token); *_terminated: whether the end token was emitted within the bound."""

    query_tokens: np.ndarray  # [N, Lq]
    query_mask: np.ndarray  # [N, Lq] bool
    query_terminated: np.ndarray  # [N] bool
    answer_tokens: np.ndarray  # [N·G, La]
    answer_mask: np.ndarray  # [N·G, La] bool
    answer_terminated: np.ndarray  # [N·G] bool
    queries: list  # N token arrays, the query before its end token


# judge(rollout) -> (R_Q [N·G] float, number of malformed or failed judgements); never raises for bad text.
Judge = Callable[[Rollout], tuple[np.ndarray, int]]
# reward_fn(query tokens, answer tokens before the end token) -> R
PairRewardFn = Callable[[np.ndarray, np.ndarray], float]
# query_stats(query tokens, terminated) -> {name: float}, averaged over the N queries into lsp/query_<name>
QueryStats = Callable[[np.ndarray, bool], dict]


def pair_judge(score_fn: Callable[[Rollout, int], float]) -> Judge:
    """A judge from a per-answer score score_fn(rollout, b) (a programmatic rubric); a score that raises or is
    not finite counts as 0 and is counted (`loop.safe_rewards`)."""

    def judge(ro: Rollout) -> tuple[np.ndarray, int]:
        rows = np.arange(ro.answer_tokens.shape[0])
        scores, errors, _ = safe_rewards(lambda i, _comp: score_fn(ro, i), rows, ro.answer_tokens)
        return scores, errors

    return judge


def model_judge(model, ref_params, encode: Callable[[str], Sequence[int]], decode: Callable[[Sequence[int]], str],
                decode_query: Callable[[np.ndarray], str], decode_answer: Callable[[np.ndarray], str],
                sampling: SamplingConfig, key: jax.Array, pad_to: Optional[int] = None) -> Judge:
    """The paper's judge: the reference model (`ref_params`) reads `rewards.judge.JUDGE_PROMPT` filled with each
    (query, answer) text, generates (near-greedy in the paper's evaluation), and `<Score>k</Score>` is parsed
    strictly (`rewards.judge.score_or_zero`): a malformed output scores 0 and is counted, never raises.
    encode / decode: the tokenizer; decode_query / decode_answer: role tokens to text. The judge's key is
    folded with a call counter, so repeated calls draw fresh samples."""
    from jaxllm.rewards.judge import judge_prompt, score_or_zero

    calls = [0]

    def judge(ro: Rollout) -> tuple[np.ndarray, int]:
        G = ro.answer_tokens.shape[0] // len(ro.queries)
        prompts = []
        for b in range(ro.answer_tokens.shape[0]):
            ans = ro.answer_tokens[b][ro.answer_mask[b]]
            prompts.append(list(encode(judge_prompt(decode_query(ro.queries[b // G]), decode_answer(ans)))))
        out = generate(model, ref_params, prompts, jax.random.fold_in(key, calls[0]), sampling, pad_to=pad_to)
        calls[0] += 1
        toks, lens = np.asarray(out.tokens), np.asarray(out.lengths)
        scores, bad = np.zeros(len(prompts), np.float32), 0
        for b in range(len(prompts)):
            k, malformed = score_or_zero(decode(toks[b, : lens[b]]))
            scores[b], bad = k, bad + malformed
        return scores, bad

    return judge


def _right_pad(rows: Sequence[Sequence[int]], T: int, pad_id: int) -> np.ndarray:
    out = np.full((len(rows), T), pad_id, np.int32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class _StaticModel:
    model: Any


@jax.jit
def _ref_logps(static: _StaticModel, params, tokens, loss_mask):
    logp, _ = sequence_token_logps(static.model, params, {"tokens": tokens, "loss_mask": loss_mask})
    return logp


class LSPSource:
    """The trainer's batch source for one self-play iteration (the two-stage rollout of Algorithm 1).

        queries  = Challenger: N samples of π_θ(· | <cp>)         (skipped with `data_queries`: GRPO with data)
        answers  = Solver: G samples of π_θ(· | prefix + q_i + suffix) per query
        R        = reward_fn(q_i, a_i^j)  (host; raise / NaN → 0, counted); R_Q = judge(rollout) (LSP only)
        A_Sol, A_Ch = `lsp_advantages`, ref log-probs under the frozen π_Ref (in the batch)

    The batch: N challenger rows then N·G solver rows, each right-padded to `fmt.row_len`: tokens, loss_mask
    (1 on the generated tokens incl. the end token), advantages, row_weight (α_Ch/N and 1/(NG)), ref_logps
    [R, T-1], is_challenger. `data_queries` (a list of token arrays) turns the source into solver-only GRPO on
    a fixed query set (N drawn per iteration, no challenger rows, same R, β and G): the paper's baseline.

    Host state (checkpointed): batches drawn, failed rewards, malformed judgements. `samples` keeps
    (batch, query tokens) every `sample_every` batches for the Box 4-style record (diagnostics, not checkpointed).
    """

    def __init__(self, model, cfg: LSPConfig, fmt: LSPFormat, reward_fn: PairRewardFn, ref_params, *,
                 judge: Optional[Judge] = None, query_stats: Optional[QueryStats] = None,
                 data_queries: Optional[Sequence[np.ndarray]] = None, sample_every: int = 0):
        if cfg.self_reward and judge is None:
            raise ValueError("LSPConfig.self_reward=True (LSP) needs a judge for R_Q; give one, or self_reward=False "
                             "(LSP-Zero)")
        if data_queries is not None:
            if len(data_queries) < cfg.n_queries:
                raise ValueError(f"{len(data_queries)} data queries but n_queries={cfg.n_queries} per iteration")
            long = [i for i, q in enumerate(data_queries) if len(q) > fmt.max_query_tokens]
            if long:
                raise ValueError(f"data queries {long[:5]} are longer than max_query_tokens={fmt.max_query_tokens}")
        if model.cfg.max_seq_len < fmt.row_len:
            raise ValueError(f"rows of {fmt.row_len} tokens exceed the model's max_seq_len={model.cfg.max_seq_len}")
        self.model, self.cfg, self.fmt, self.reward_fn, self.ref_params = model, cfg, fmt, reward_fn, ref_params
        self.judge, self.query_stats, self.sample_every = judge, query_stats, sample_every
        self.data_queries = None if data_queries is None else [np.asarray(q, np.int32) for q in data_queries]
        self.batches, self.reward_errors, self.judge_errors = 0, 0, 0
        self.samples: list = []

    def get_state(self) -> dict:
        return {"batches": self.batches, "reward_errors": self.reward_errors, "judge_errors": self.judge_errors}

    def set_state(self, state: dict) -> None:
        state = state or {}
        self.batches = int(state.get("batches", 0))
        self.reward_errors, self.judge_errors = int(state.get("reward_errors", 0)), int(state.get("judge_errors", 0))

    # the two sampling stages -----------------------------------------------------------------------------
    def sample_queries(self, params, key) -> tuple[np.ndarray, np.ndarray]:
        """N Challenger generations [N, Lq] and their masks [N, Lq] (or N data queries, mask on the tokens)."""
        cfg, fmt = self.cfg, self.fmt
        if self.data_queries is not None:
            idx = host_rng(key).permutation(len(self.data_queries))[: cfg.n_queries]
            rows = [list(self.data_queries[i]) + [fmt.eos_id] for i in idx]
            gen = _right_pad(rows, fmt.max_query_tokens + 1, fmt.pad_id)
            return gen, completion_mask(gen, fmt.eos_id)
        prompts = [list(fmt.challenger_prompt)] * cfg.n_queries
        out = generate(self.model, params, prompts, key, fmt.sampling(fmt.max_query_tokens))
        gen = np.asarray(jax.device_get(out.tokens))
        return gen, completion_mask(gen, fmt.eos_id)

    def sample_answers(self, params, queries: list, key) -> tuple[np.ndarray, np.ndarray]:
        """G Solver generations per query, [N·G, La] with masks (query i's answers contiguous)."""
        fmt, G = self.fmt, self.cfg.group_size
        prompts = [fmt.solver_prompt(q) for q in queries for _ in range(G)]
        tok, lengths = pad_prompts(prompts, fmt.pad_id, pad_to=fmt.solver_prompt_len)  # one compilation
        out = generate(self.model, params, tok, key, fmt.sampling(fmt.max_answer_tokens), lengths=lengths)
        gen = np.asarray(jax.device_get(out.tokens))
        return gen, completion_mask(gen, fmt.eos_id)

    def __call__(self, state, key: jax.Array) -> SourceBatch:
        cfg, fmt, G, N = self.cfg, self.fmt, self.cfg.group_size, self.cfg.n_queries
        k_q, k_a = jax.random.split(key)
        with_challenger = self.data_queries is None
        t0 = time.perf_counter()
        q_gen, q_mask = self.sample_queries(state.params, k_q)
        queries = [fmt.query_of(g[m]) for g, m in zip(q_gen, q_mask)]
        q_term = (q_gen == fmt.eos_id).any(axis=1)
        t1 = time.perf_counter()
        a_gen, a_mask = self.sample_answers(state.params, queries, k_a)
        a_term = (a_gen == fmt.eos_id).any(axis=1)
        t2 = time.perf_counter()

        rows = np.arange(N * G)
        answers = [fmt.query_of(a) for a in a_gen]
        rewards, errors, first = safe_rewards(lambda b, _c: self.reward_fn(queries[b // G], answers[b]), rows, a_gen)
        ro = Rollout(q_gen, q_mask, q_term, a_gen, a_mask, a_term, queries)
        if cfg.self_reward:
            try:
                rq, bad = self.judge(ro)
                rq = np.nan_to_num(np.asarray(rq, np.float32).reshape(N * G), nan=0.0, posinf=0.0, neginf=0.0)
            except Exception as e:  # noqa: BLE001 - a failing judge scores 0 for the batch, counted
                warnings.warn(f"LSP batch {self.batches}: the judge raised {type(e).__name__}: {e}; R_Q = 0",
                              RuntimeWarning, stacklevel=2)
                rq, bad = np.zeros(N * G, np.float32), N * G
        else:
            rq, bad = np.zeros(N * G, np.float32), 0
        if errors:
            warnings.warn(f"LSP batch {self.batches}: {errors}/{N * G} rewards failed and count as 0; first: {first}",
                          RuntimeWarning, stacklevel=2)
        self.reward_errors += errors
        self.judge_errors += int(bad)
        R = cfg.reward_scale * rewards.reshape(N, G)
        RQ = cfg.self_reward_scale * rq.reshape(N, G)
        adv = lsp_advantages(R, RQ if cfg.self_reward else None)
        stats = [self.query_stats(q, bool(t)) for q, t in zip(queries, q_term)] if self.query_stats else []
        t3 = time.perf_counter()

        # training rows: [challenger rows;] solver rows, right-padded to T, generated tokens in the loss mask
        T = fmt.row_len
        tok_rows, mask_rows = [], []
        if with_challenger:
            for g, m in zip(q_gen, q_mask):
                tok_rows.append([*fmt.challenger_prompt, *g[m]])
                mask_rows.append([0] * len(fmt.challenger_prompt) + [1] * int(m.sum()))
        for b in range(N * G):
            p = fmt.solver_prompt(queries[b // G])
            a = a_gen[b][a_mask[b]]
            tok_rows.append([*p, *a])
            mask_rows.append([0] * len(p) + [1] * len(a))
        tokens = _right_pad(tok_rows, T, fmt.pad_id)
        loss_mask = _right_pad(mask_rows, T, 0).astype(np.float32)
        n_ch = N if with_challenger else 0
        advantages = np.concatenate([np.asarray(adv.challenger)[:n_ch], np.asarray(adv.solver).reshape(-1)])
        weights = np.concatenate([np.full(n_ch, cfg.challenger_weight / N), np.full(N * G, 1.0 / (N * G))])
        is_ch = np.concatenate([np.ones(n_ch), np.zeros(N * G)]).astype(np.float32)
        ref = _ref_logps(_StaticModel(self.model), self.ref_params, jnp.asarray(tokens), jnp.asarray(loss_mask))
        batch = {"tokens": jnp.asarray(tokens), "loss_mask": jnp.asarray(loss_mask),
                 "advantages": jnp.asarray(advantages, jnp.float32), "row_weight": jnp.asarray(weights, jnp.float32),
                 "ref_logps": ref, "is_challenger": jnp.asarray(is_ch)}
        jax.block_until_ready(batch)
        t4 = time.perf_counter()

        if self.sample_every and self.batches % self.sample_every == 0:
            self.samples.append((self.batches, [q.tolist() for q in queries]))
        self.batches += 1
        v, vq = np.asarray(adv.values), np.asarray(adv.self_values)
        metrics = {"lsp/V_mean": float(v.mean()), "lsp/V_std": float(v.std()), "lsp/RQ_mean": float(vq.mean()),
                   "lsp/reward_mean": float(R.mean()), "lsp/adv_ch_abs": float(np.abs(np.asarray(adv.challenger)).mean()) if with_challenger else 0.0,
                   "lsp/adv_sol_abs": float(np.abs(np.asarray(adv.solver)).mean()),
                   "lsp/query_terminated": float(q_term.mean()), "lsp/answer_terminated": float(a_term.mean()),
                   "lsp/query_len": float(np.mean([len(q) for q in queries])),
                   "lsp/reward_errors": float(errors), "lsp/judge_errors": float(bad),
                   "lsp/judge_errors_total": float(self.judge_errors),
                   "lsp/challenger_s": t1 - t0, "lsp/solver_s": t2 - t1, "lsp/score_s": t3 - t2, "lsp/batch_s": t4 - t3}
        for name in (stats[0] if stats else {}):
            metrics[f"lsp/query_{name}"] = float(np.mean([s[name] for s in stats]))
        return SourceBatch(batch, metrics)
