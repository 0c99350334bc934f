"""Tokenizers: a character-level one for the toy tasks and a wrapper of a local HF `tokenizer.json`.

Both expose the same small interface: `encode(text, add_bos=False, add_eos=False) -> list[int]`,
`decode(ids, skip_special=True) -> str`, `vocab_size`, `pad_id`, `bos_id`, `eos_id`, `token_to_id(tok)`.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Iterable, Optional, Sequence

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"

# Printable ASCII without the rarely useful form feed / vertical tab; newline and tab kept.
DEFAULT_CHARS = "".join(c for c in string.printable if c not in "\x0b\x0c\r")


class CharTokenizer:
    """One id per character. Ids 0.. are the special tokens (pad, bos, eos, then `extra_specials`),
    then the characters in the given order. Unknown characters raise `ValueError` naming them."""

    def __init__(self, chars: str = DEFAULT_CHARS, extra_specials: Sequence[str] = ()):
        if len(set(chars)) != len(chars):
            dup = sorted({c for c in chars if chars.count(c) > 1})
            raise ValueError(f"CharTokenizer: duplicate characters {dup!r}")
        self.specials = [PAD, BOS, EOS, *extra_specials]
        if len(set(self.specials)) != len(self.specials):
            raise ValueError(f"CharTokenizer: duplicate special tokens {self.specials}")
        self.chars = chars
        self._special_ids = {s: i for i, s in enumerate(self.specials)}
        self._char_ids = {c: i + len(self.specials) for i, c in enumerate(chars)}
        self._id_to_str = list(self.specials) + list(chars)

    @property
    def vocab_size(self) -> int:
        return len(self._id_to_str)

    pad_id = property(lambda self: self._special_ids[PAD])
    bos_id = property(lambda self: self._special_ids[BOS])
    eos_id = property(lambda self: self._special_ids[EOS])

    def token_to_id(self, token: str) -> int:
        if token in self._special_ids:
            return self._special_ids[token]
        if token in self._char_ids:
            return self._char_ids[token]
        raise ValueError(f"CharTokenizer: unknown token {token!r}")

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        try:
            ids = [self._char_ids[c] for c in text]
        except KeyError:
            bad = sorted({c for c in text if c not in self._char_ids})
            raise ValueError(f"CharTokenizer: characters {bad!r} are not in the vocabulary "
                             f"({len(self.chars)} chars)") from None
        return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        out = []
        n = len(self._id_to_str)
        for i in ids:
            i = int(i)
            if not 0 <= i < n:
                raise ValueError(f"CharTokenizer: id {i} outside the vocabulary [0, {n})")
            if i < len(self.specials):
                if not skip_special:
                    out.append(self.specials[i])
            else:
                out.append(self._id_to_str[i])
        return "".join(out)


class HFTokenizer:
    """A local `tokenizer.json` through the HF `tokenizers` library (no network).

    `path` is the tokenizer.json file or a folder holding it. bos/eos/pad are given by token string, or
    read from `tokenizer_config.json` next to it when present; pad falls back to eos (then to
    vocab_size - 1, as MobileLLM-R1's SFT script does when the tokenizer has none).
    """

    def __init__(self, path: str | Path, bos_token: Optional[str] = None, eos_token: Optional[str] = None,
                 pad_token: Optional[str] = None):
        from tokenizers import Tokenizer

        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"HFTokenizer: no tokenizer.json at {file}")
        self._tok = Tokenizer.from_file(str(file))
        conf = {}
        conf_file = file.parent / "tokenizer_config.json"
        if conf_file.is_file():
            conf = json.loads(conf_file.read_text())

        def name(given, key):
            if given is not None:
                return given
            v = conf.get(key)
            return v.get("content") if isinstance(v, dict) else v

        self.chat_template = conf.get("chat_template")
        self._set_specials(name(bos_token, "bos_token"), name(eos_token, "eos_token"), name(pad_token, "pad_token"))

    @classmethod
    def from_backend(cls, tokenizer, bos_token: Optional[str] = None, eos_token: Optional[str] = None,
                     pad_token: Optional[str] = None, chat_template: Optional[str] = None) -> "HFTokenizer":
        """Wrap an already built `tokenizers.Tokenizer` (e.g. from a GGUF vocabulary: `jaxllm.hf.gguf`)."""
        self = cls.__new__(cls)
        self._tok = tokenizer
        self.chat_template = chat_template
        self._set_specials(bos_token, eos_token, pad_token)
        return self

    def _set_specials(self, bos_token: Optional[str], eos_token: Optional[str], pad_token: Optional[str]) -> None:
        self.bos_token, self.eos_token, self.pad_token = bos_token, eos_token, pad_token
        self.bos_id = self._lookup(self.bos_token, "bos_token")
        self.eos_id = self._lookup(self.eos_token, "eos_token")
        pad = self._lookup(self.pad_token, "pad_token")
        self.pad_id = pad if pad is not None else (self.eos_id if self.eos_id is not None else self.vocab_size - 1)

    def _lookup(self, token: Optional[str], what: str) -> Optional[int]:
        if token is None:
            return None
        i = self._tok.token_to_id(token)
        if i is None:
            raise ValueError(f"HFTokenizer: {what} {token!r} is not in the vocabulary")
        return i

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int:
        i = self._tok.token_to_id(token)
        if i is None:
            raise ValueError(f"HFTokenizer: unknown token {token!r}")
        return i

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        ids = list(self._tok.encode(text, add_special_tokens=False).ids)
        if add_bos:
            if self.bos_id is None:
                raise ValueError("HFTokenizer: add_bos=True but the tokenizer has no bos_token")
            ids = [self.bos_id] + ids
        if add_eos:
            if self.eos_id is None:
                raise ValueError("HFTokenizer: add_eos=True but the tokenizer has no eos_token")
            ids = ids + [self.eos_id]
        return ids

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"HFTokenizer: ids {bad[:5]} outside the vocabulary [0, {self.vocab_size})")
        return self._tok.decode(ids, skip_special_tokens=skip_special)

    def apply_chat_template(self, messages: Sequence[dict], add_generation_prompt: bool = True, **kwargs) -> str:
        """The prompt text for `messages` ([{"role": ..., "content": ...}]) rendered by the tokenizer's Jinja chat
        template in a sandbox (as transformers does); encode it with `encode` (special tokens in the text are
        matched whole)."""
        if not self.chat_template:
            raise ValueError("HFTokenizer: this tokenizer has no chat template")
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise ValueError(f"chat template: {message}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
        env.globals["raise_exception"] = raise_exception
        env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
        return env.from_string(self.chat_template).render(
            messages=list(messages), add_generation_prompt=add_generation_prompt, bos_token=self.bos_token,
            eos_token=self.eos_token, pad_token=self.pad_token, **kwargs)


# The d1/SPG answer format's tags, one token each in `TagVocab`.
TAGS = ("<reasoning>", "</reasoning>", "<answer>", "</answer>")


class TagVocab:
    """The masked-diffusion toy vocabulary: ids 0, 1, 2 = PAD, EOS, MASK, then whole-tag tokens (`TAGS`), then
    characters. Unlike `CharTokenizer` it has a MASK id and no BOS (the dLLM experiments' layout). Decoding renders the tags as in the reference's
    XML format (each tag on its own line), so rewards parse ordinary text."""

    def __init__(self, chars: str):
        self.items = ["<pad>", "<eos>", "<mask>", *TAGS, *chars]
        self.ids = {s: i for i, s in enumerate(self.items)}
        self.pad, self.eos, self.mask = 0, 1, 2

    def __len__(self):
        return len(self.items)

    def encode(self, pieces: Sequence[str]) -> list[int]:
        """Pieces are tags or strings of characters."""
        out = []
        for p in pieces:
            out.extend([self.ids[p]] if p in self.ids and len(p) > 1 else [self.ids[c] for c in p])
        return out

    def decode(self, ids) -> str:
        text = []
        for i in ids:
            i = int(i)
            if i == self.eos:
                break
            s = self.items[i]
            if s in TAGS:
                s = ("\n" if s.startswith("</") else "") + s + "\n"
            elif i in (self.pad, self.mask):
                s = ""
            text.append(s)
        return "".join(text).replace("\n\n", "\n").strip("\n")
