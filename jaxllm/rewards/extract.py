"""Answer extraction shared by the rewards: `<answer>` tags and the last `\\boxed{}` (linear time, no eval).

Every function is total: any string in, a string or None out, never an exception.
"""

from __future__ import annotations

from typing import Optional

# A completion longer than this is not parsed at all and gets the reward's minimum (documented per reward).
# LLaDA generations are at most 512 tokens (≈ 3k characters); this bound keeps every call in milliseconds.
MAX_COMPLETION_CHARS = 20_000



def too_long(text) -> bool:
    return not isinstance(text, str) or len(text) > MAX_COMPLETION_CHARS


def last_answer_tag(text: str) -> Optional[str]:
    """Stripped content of the last `<answer>…</answer>` (DOTALL), or None (SPG `extract_solution`)."""
    if too_long(text):
        return None
    # Same result as re.findall(r"<answer>(.*?)</answer>", DOTALL)[-1], in linear time (the regex is quadratic
    # on text like "<answer>" * n).
    last, pos = None, 0
    while True:
        a = text.find("<answer>", pos)
        if a < 0:
            break
        b = text.find("</answer>", a + 8)
        if b < 0:
            break
        last, pos = text[a + 8: b], b + 9
    return None if last is None else last.strip()


def split_answer_tag(text: str) -> str:
    """The d1/SPG GSM8K extraction: text after the last `<answer>`, cut at the next `</answer>`, stripped."""
    return text.split("<answer>")[-1].split("</answer>")[0].strip()


def last_boxed(text: str) -> Optional[str]:
    """`\\boxed{...}` (or `\\fbox{...}`) last in the text, braces balanced, including the command; None if
    unclosed. The `\\boxed ` (space) form runs to the next `$`. Follows MATH's `last_boxed_only_string`,
    except that a text without any box gives None instead of the whole text."""
    if too_long(text):
        return None
    if "\\boxed " in text:
        return "\\boxed " + text.split("\\boxed ")[-1].split("$")[0]
    idx = text.rfind("\\boxed")
    if idx < 0:
        idx = text.rfind("\\fbox")
        if idx < 0:
            return None
    depth = 0
    for i in range(idx, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[idx: i + 1]
    return None


def remove_boxed(s: str) -> str:
    """`\\boxed{x}` -> `x`, `\\boxed x` -> `x`; anything else unchanged."""
    if s.startswith("\\boxed "):
        return s[len("\\boxed "):]
    for left in ("\\boxed{", "\\fbox{"):
        if s.startswith(left) and s.endswith("}"):
            return s[len(left): -1]
    return s


def last_boxed_content(text: str) -> Optional[str]:
    b = last_boxed(text)
    return None if b is None else remove_boxed(b)
