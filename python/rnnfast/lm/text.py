"""Character- and word-level tokenizers for the language-model utilities.

Both tokenizers map text to a list of integer ids and back, with two special
tokens at fixed ids:

* ``<unk>`` (id 0): anything not in the vocabulary.
* ``<eos>`` (id 1): the end of a line. A newline character in the text *is* an
  ``<eos>``: ``encode("ab\\ncd")`` gives the ids of ``a b <eos> c d`` and
  :meth:`decode` turns every ``<eos>`` back into ``"\\n"``. A corpus read from a
  file therefore gets an ``<eos>`` at each line end, and
  ``decode(encode(text)) == text`` whenever every character (or word) of
  ``text`` is in the vocabulary (word level: up to whitespace, see below).

Lines are split on ``"\\n"`` only (a ``"\\r"`` is an ordinary character), so
the round trip is exact for any text.

:class:`CharTokenizer` has one id per character. :class:`WordTokenizer` splits
each line on whitespace (``str.split()``); :meth:`WordTokenizer.decode` joins the
words of a line with single spaces. Rare words become ``<unk>`` through
``min_freq`` and ``max_size``. A literal ``<unk>`` or ``<eos>`` word in the text
(as in Penn Treebank files) maps to the special token.

Both save to and load from JSON: :meth:`Tokenizer.save`, :meth:`Tokenizer.load`
(or :func:`load_tokenizer`, which returns whichever kind the file holds).
"""
from __future__ import annotations

import json
import os
from collections import Counter
from typing import Dict, Iterable, List, Optional, Sequence, Union

from .checks import _check_int

UNK = "<unk>"
EOS = "<eos>"
SPECIALS = (UNK, EOS)
_FORMAT = "rnnfast-tokenizer"
_VERSION = 1

__all__ = ["Tokenizer", "CharTokenizer", "WordTokenizer", "load_tokenizer", "UNK", "EOS"]


def _check_text(text, what: str = "text") -> str:
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a str, got {type(text).__name__}")
    return text




class Tokenizer:
    """Shared machinery: the vocabulary, the specials, id checks, JSON save/load.

    Subclasses define how a line is cut into tokens (:meth:`_split_line`) and how
    the tokens of a line are joined back (:meth:`_join_line`).
    """

    kind = ""  # "char" or "word": recorded in the JSON file

    def __init__(self, tokens: Sequence[str]) -> None:
        """Builds a tokenizer from its full vocabulary, specials first.

        Normally called through :meth:`from_text` / :meth:`load`. ``tokens`` must
        start with ``<unk>``, ``<eos>`` and hold no duplicates.
        """
        tokens = list(tokens)
        if tuple(tokens[:len(SPECIALS)]) != SPECIALS:
            raise ValueError(
                f"the vocabulary must start with the special tokens {list(SPECIALS)}, "
                f"got {tokens[:len(SPECIALS)]}")
        for tok in tokens:
            if not isinstance(tok, str) or not tok:
                raise ValueError(f"every vocabulary entry must be a non-empty str, got {tok!r}")
        self._itos: List[str] = tokens
        self._stoi: Dict[str, int] = {}
        for i, tok in enumerate(tokens):
            if tok in self._stoi:
                raise ValueError(f"duplicate vocabulary entry {tok!r} at ids "
                                 f"{self._stoi[tok]} and {i}")
            self._stoi[tok] = i
        self._check_vocab()

    # --- vocabulary -----------------------------------------------------------------------

    def _check_vocab(self) -> None:
        """Subclass hook: reject entries this kind of tokenizer could never produce."""

    @property
    def vocab_size(self) -> int:
        """Number of ids, specials included: valid ids are ``0 .. vocab_size - 1``."""
        return len(self._itos)

    def __len__(self) -> int:
        return len(self._itos)

    @property
    def unk_id(self) -> int:
        return self._stoi[UNK]

    @property
    def eos_id(self) -> int:
        return self._stoi[EOS]

    @property
    def vocab(self) -> List[str]:
        """The tokens in id order (a copy)."""
        return list(self._itos)

    def token_to_id(self, token: str) -> int:
        """The id of ``token``, or ``unk_id`` if it is not in the vocabulary."""
        return self._stoi.get(token, self.unk_id)

    def id_to_token(self, index: int) -> str:
        return self._itos[self._check_id(index, 0)]

    def __contains__(self, token: str) -> bool:
        return token in self._stoi

    def _check_id(self, index, position: int) -> int:
        if hasattr(index, "item") and getattr(index, "ndim", 1) == 0:  # numpy / torch scalars
            index = index.item()
        if not isinstance(index, int) or isinstance(index, bool):
            raise TypeError(f"token ids must be ints, got {type(index).__name__} ({index!r}) "
                            f"at position {position}")
        if not 0 <= index < len(self._itos):
            raise ValueError(f"token id {index} at position {position} is out of range for a "
                             f"vocabulary of {len(self._itos)} tokens (valid: 0 .. "
                             f"{len(self._itos) - 1})")
        return index

    # --- encode / decode ------------------------------------------------------------------

    def _split_line(self, line: str) -> List[str]:
        raise NotImplementedError

    def _join_line(self, tokens: List[str]) -> str:
        raise NotImplementedError

    def encode(self, text: str, add_eos: bool = False) -> List[int]:
        """The ids of ``text``. Each ``"\\n"`` becomes ``<eos>``; unknown tokens ``<unk>``.

        ``add_eos=True`` appends an ``<eos>`` (as if the text ended with a newline).
        """
        _check_text(text)
        unk, eos = self.unk_id, self.eos_id
        ids: List[int] = []
        lines = text.split("\n")
        for i, line in enumerate(lines):
            if i:
                ids.append(eos)
            ids.extend(self._stoi.get(tok, unk) for tok in self._split_line(line))
        if add_eos:
            ids.append(eos)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids`` (a list of ints, or a 1-D tensor / array).

        ``<eos>`` becomes ``"\\n"``; ``<unk>`` is written as the string ``"<unk>"``.
        """
        if isinstance(ids, (str, bytes)):
            raise TypeError(f"decode expects a sequence of token ids, got {type(ids).__name__}")
        if hasattr(ids, "tolist"):  # torch.Tensor, numpy.ndarray
            if getattr(ids, "ndim", 1) != 1:
                raise ValueError(
                    f"decode expects a 1-D sequence of ids, got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        try:
            ids = list(ids)
        except TypeError:
            raise TypeError(
                f"decode expects a sequence of token ids, got {type(ids).__name__}") from None
        eos = self.eos_id
        lines: List[str] = []
        line: List[str] = []
        for pos, index in enumerate(ids):
            index = self._check_id(index, pos)
            if index == eos:
                lines.append(self._join_line(line))
                line = []
            else:
                line.append(self._itos[index])
        lines.append(self._join_line(line))
        return "\n".join(lines)

    def __call__(self, text: str, add_eos: bool = False) -> List[int]:
        return self.encode(text, add_eos=add_eos)

    # --- persistence ----------------------------------------------------------------------

    def _extra_config(self) -> dict:
        return {}

    def to_dict(self) -> dict:
        return {"format": _FORMAT, "version": _VERSION, "kind": self.kind,
                "vocab": list(self._itos), **self._extra_config()}

    @classmethod
    def from_dict(cls, data: dict) -> "Tokenizer":
        """Rebuilds a tokenizer from :meth:`to_dict`'s output.

        Called on :class:`Tokenizer` it returns the kind the data names; called on a
        subclass the data must be of that kind.
        """
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(f"not an rnnfast tokenizer (expected a JSON object with "
                             f"\"format\": \"{_FORMAT}\")")
        if data.get("version") != _VERSION:
            raise ValueError(f"unsupported tokenizer file version {data.get('version')!r} "
                             f"(this rnnfast reads version {_VERSION})")
        kinds = {sub.kind: sub for sub in (CharTokenizer, WordTokenizer)}
        kind = data.get("kind")
        if kind not in kinds:
            raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {sorted(kinds)}")
        target = kinds[kind]
        if cls is not Tokenizer and cls is not target:
            raise ValueError(f"{cls.__name__}.load: the file holds a {target.__name__} "
                             f"(kind {kind!r}); use {target.__name__}.load or load_tokenizer")
        vocab = data.get("vocab")
        if not isinstance(vocab, list):
            raise ValueError("tokenizer data has no \"vocab\" list")
        return target(vocab)

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Writes the tokenizer as JSON (UTF-8) to ``path``."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, ensure_ascii=False, indent=1)
            f.write("\n")

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "Tokenizer":
        """Reads a tokenizer written by :meth:`save`."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{os.fspath(path)!s} is not valid JSON: {exc}") from None
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise ValueError(f"{os.fspath(path)!s}: {exc}") from None

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and other._itos == self._itos

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


def _vocab_from_counts(counts: Counter, min_freq: int, max_size: Optional[int]) -> List[str]:
    """Specials, then the tokens seen at least ``min_freq`` times, most frequent first
    (ties broken by the token itself, so the order is deterministic), at most
    ``max_size`` entries in all."""
    for special in SPECIALS:
        counts.pop(special, None)
    kept = sorted((tok for tok, n in counts.items() if n >= min_freq),
                  key=lambda tok: (-counts[tok], tok))
    if max_size is not None:
        kept = kept[:max_size - len(SPECIALS)]
    return list(SPECIALS) + kept


def _check_build_args(text: str, min_freq: int, max_size: Optional[int]) -> None:
    _check_text(text)
    _check_int("min_freq", min_freq, 1)
    _check_int("max_size", max_size, len(SPECIALS), allow_none=True)


class CharTokenizer(Tokenizer):
    """One id per character (``"\\n"`` is ``<eos>``).

    >>> tok = CharTokenizer.from_text("hello\\nworld\\n")
    >>> tok.decode(tok.encode("hello")) == "hello"
    True
    """

    kind = "char"

    def _check_vocab(self) -> None:
        for tok in self._itos[len(SPECIALS):]:
            if len(tok) != 1 or tok == "\n":
                raise ValueError(f"a CharTokenizer vocabulary holds single characters other "
                                 f"than '\\n', got {tok!r}")

    @classmethod
    def from_text(cls, text: str, min_freq: int = 1,
                  max_size: Optional[int] = None) -> "CharTokenizer":
        """The vocabulary of ``text``: every character seen at least ``min_freq`` times,
        most frequent first, ``max_size`` ids at most (specials included)."""
        _check_build_args(text, min_freq, max_size)
        if not text.replace("\n", ""):
            raise ValueError("cannot build a CharTokenizer from empty text")
        counts = Counter(text.replace("\n", ""))
        return cls(_vocab_from_counts(counts, min_freq, max_size))

    build = from_text

    def _split_line(self, line: str) -> List[str]:
        return list(line)

    def _join_line(self, tokens: List[str]) -> str:
        return "".join(tokens)


class WordTokenizer(Tokenizer):
    """One id per whitespace-separated word (``"\\n"`` is ``<eos>``).

    Words seen fewer than ``min_freq`` times, and all but the ``max_size`` most
    frequent entries, become ``<unk>``. Decoding joins a line's words with single
    spaces, so the round trip normalises runs of whitespace within a line.
    """

    kind = "word"

    def _check_vocab(self) -> None:
        for tok in self._itos[len(SPECIALS):]:
            if len(tok.split()) != 1 or tok.split()[0] != tok:
                raise ValueError(f"a WordTokenizer vocabulary holds words without whitespace, "
                                 f"got {tok!r}")

    @classmethod
    def from_text(cls, text: str, min_freq: int = 1,
                  max_size: Optional[int] = None) -> "WordTokenizer":
        """The vocabulary of ``text``: every word seen at least ``min_freq`` times, most
        frequent first (ties in alphabetical order), ``max_size`` ids at most (the two
        specials included)."""
        _check_build_args(text, min_freq, max_size)
        counts = Counter(text.split())
        if not counts:
            raise ValueError("cannot build a WordTokenizer from text with no words")
        return cls(_vocab_from_counts(counts, min_freq, max_size))

    build = from_text

    def _split_line(self, line: str) -> List[str]:
        return line.split()

    def _join_line(self, tokens: List[str]) -> str:
        return " ".join(tokens)


def load_tokenizer(path: Union[str, os.PathLike]) -> Tokenizer:
    """Loads a :class:`CharTokenizer` or :class:`WordTokenizer` saved with ``save``."""
    return Tokenizer.load(path)
