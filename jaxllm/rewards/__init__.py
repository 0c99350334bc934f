"""Verifiers for the reasoning tasks. Rewards never execute model text; every call is bounded in time.

countdown_reward(completion, numbers, target) ∈ [0, 1]; sudoku_reward(completion, puzzle, solution) ∈ [0, 1];
gsm8k_reward(completion, answer) ∈ [−40, 4]; math_reward(completion, answer) ∈ [0, 3].
"""

from jaxllm.rewards.countdown import countdown_reward
from jaxllm.rewards.extract import MAX_COMPLETION_CHARS, last_answer_tag, last_boxed, last_boxed_content
from jaxllm.rewards.gsm8k import extract_hash_answer, gsm8k_reward, gsm8k_reward_parts
from jaxllm.rewards.math_answer import is_equiv, math_format_reward, math_reward, strip_string
from jaxllm.rewards.sudoku import sudoku_cell_accuracy, sudoku_reward

__all__ = [
    "MAX_COMPLETION_CHARS", "countdown_reward", "extract_hash_answer", "gsm8k_reward", "gsm8k_reward_parts",
    "is_equiv", "last_answer_tag", "last_boxed", "last_boxed_content", "math_format_reward", "math_reward",
    "strip_string", "sudoku_cell_accuracy", "sudoku_reward",
]
