"""A small, bounded arithmetic parser for Countdown answers: never `eval`.

Grammar (the alphabet of the reference's `^[\\d+\\-*/().\\s]+$`, ASCII digits only):

    expr   := term (('+' | '-') term)*
    term   := factor (('*' | '/') factor)*
    factor := ('+' | '-') factor | number | '(' expr ')'
    number := digits ['.' digits] | '.' digits

Exact rational arithmetic (`fractions.Fraction`) with true division. Deliberate differences from Python
`eval` used by the reference: `**` (power) and `//` (floor division) are rejected, as are numbers longer than
`MAX_DIGITS`, expressions longer than `MAX_LENGTH` characters or nested deeper than `MAX_DEPTH`.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Optional

MAX_LENGTH = 512
MAX_DEPTH = 32
MAX_DIGITS = 12
MAX_TOKENS = 256

_TOKEN_RE = re.compile(r"\s*(?:(\d+(?:\.\d*)?|\.\d+)|([-+*/()]))", re.ASCII)


class ArithmeticError_(ValueError):
    pass


def tokenize(text: str) -> Optional[list]:
    if not isinstance(text, str) or len(text) > MAX_LENGTH:
        return None
    pos, out = 0, []
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            if not text[pos:].strip(" \t\n\r\f\v"):
                break  # trailing ASCII whitespace
            return None
        num, op = m.group(1), m.group(2)
        if num is not None:
            if len(num.replace(".", "")) > MAX_DIGITS:
                return None
            out.append(("num", Fraction(num)))
        else:
            out.append(("op", op))
        pos = m.end()
        if len(out) > MAX_TOKENS:
            return None
    return out


def evaluate(text: str) -> Optional[Fraction]:
    """The exact value of an arithmetic expression, or None if it is not one (or breaks a bound)."""
    tokens = tokenize(text)
    if not tokens:
        return None
    i = 0

    def peek():
        return tokens[i] if i < len(tokens) else (None, None)

    def expr(depth):
        nonlocal i
        value = term(depth)
        while peek() in (("op", "+"), ("op", "-")):
            op = tokens[i][1]
            i += 1
            rhs = term(depth)
            value = value + rhs if op == "+" else value - rhs
        return value

    def term(depth):
        nonlocal i
        value = factor(depth)
        while peek() in (("op", "*"), ("op", "/")):
            op = tokens[i][1]
            i += 1
            if peek() in (("op", "*"), ("op", "/")):  # `**` and `//`
                raise ArithmeticError_("power and floor division are not accepted")
            rhs = factor(depth)
            if op == "*":
                value = value * rhs
            else:
                if rhs == 0:
                    raise ArithmeticError_("division by zero")
                value = value / rhs
        return value

    def factor(depth):
        nonlocal i
        if depth > MAX_DEPTH:
            raise ArithmeticError_("nesting too deep")
        kind, tok = peek()
        if kind == "num":
            i += 1
            return tok
        if (kind, tok) in (("op", "+"), ("op", "-")):
            i += 1
            v = factor(depth + 1)
            return v if tok == "+" else -v
        if (kind, tok) == ("op", "("):
            i += 1
            v = expr(depth + 1)
            if peek() != ("op", ")"):
                raise ArithmeticError_("unbalanced parenthesis")
            i += 1
            return v
        raise ArithmeticError_(f"unexpected token {tok!r}")

    try:
        value = expr(0)
    except (ArithmeticError_, RecursionError, ZeroDivisionError):
        return None
    if i != len(tokens):
        return None
    return value
