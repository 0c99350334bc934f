"""jaxllm: reasoning and efficiency of small language models, in JAX."""

__version__ = "0.1.0"
