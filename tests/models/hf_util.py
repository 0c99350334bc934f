"""Tiny random transformers models for parity tests (torch, fp32)."""

import torch


def tiny_hf_model(model_type: str, tied: bool, theta: float, heads=4, kv_heads=2, seed=0, layers=2, vocab=64):
    from transformers import Llama4ForCausalLM, Llama4TextConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, hidden_size=32, num_hidden_layers=layers, num_attention_heads=heads,
                  num_key_value_heads=kv_heads, head_dim=8, tie_word_embeddings=tied,
                  rope_parameters={"rope_type": "default", "rope_theta": theta}, max_position_embeddings=128)
    if model_type == "llama":
        model = LlamaForCausalLM(LlamaConfig(intermediate_size=64, rms_norm_eps=1e-6, **common))
    else:
        model = Llama4ForCausalLM(Llama4TextConfig(
            intermediate_size=64, intermediate_size_mlp=64, moe_layers=[], no_rope_layers=[1] * layers,
            use_qk_norm=True, attention_chunk_size=128, attn_temperature_tuning=False, **common))
    # random norms too, so that a transposed / misplaced norm weight cannot pass
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    return model.eval().float()


def hf_logits(model, tokens):
    with torch.no_grad():
        return model(torch.as_tensor(tokens, dtype=torch.long)).logits.float().numpy()
