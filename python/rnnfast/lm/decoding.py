"""What greedy decoding and sampling (:mod:`rnnfast.lm.generation`) and beam search
(:mod:`rnnfast.lm.beam`) share: the checked decoding options (:class:`_Decoding`), the check
of their token ids against the model's vocabulary, the mask of suppressed tokens, and the
result, :class:`GenerateOutput`.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Union

import torch
from torch import Tensor

from .checks import _check_bool, _check_int, _finite_float, _id_list, _type_name

TokenIds = Union[int, Sequence[int], Tensor]


@dataclass
class GenerateOutput:
    """What :func:`rnnfast.lm.generate` returns with ``return_dict=True``.

    Shapes: ``N = batch * num_return_sequences`` rows, ``P`` prompt tokens, ``n``
    generated tokens (``n <= max_new_tokens``).

    Attributes:
        sequences: ``[N, P + n]`` the prompt followed by the generated tokens (rows
            that ended early are padded with ``pad_token_id``).
        state: the recurrent state for the ``N`` rows, having consumed every token of
            ``sequences`` but the last (see :mod:`rnnfast.lm.generation` on
            continuing).
        finished: ``[N]`` bool, whether the row produced an end-of-sequence token.
        lengths: ``[N]`` each row's length up to and including its end-of-sequence
            token (``P + n`` for rows that did not finish): pass it as ``lengths`` to
            :func:`rnnfast.lm.sequence_log_prob` to leave the padding out.
        token_log_probs: ``[N, n]`` with ``output_scores=True``: the model's
            log-probability of each generated token (0 at padding); else None.
        sequences_scores: ``[N]`` with ``output_scores=True``, else None. Beam search:
            HuggingFace's score, the sum of ``token_log_probs`` divided by
            ``generated_length ** length_penalty`` (``generated_length`` counts the
            generated tokens up to and including the end-of-sequence token), the
            score the hypotheses are ranked by. Greedy decoding and sampling: the sum
            of ``token_log_probs`` (the joint log-probability of the generated part
            given the prompt).
    """

    sequences: Tensor
    state: Any
    finished: Tensor
    lengths: Tensor
    token_log_probs: Optional[Tensor] = None
    sequences_scores: Optional[Tensor] = None


@dataclass
class _Decoding:
    """Checked decoding options (for sampling/greedy and beam search alike)."""

    do_sample: bool
    temperature: float
    top_k: Optional[int]
    top_p: Optional[float]
    eos: Optional[List[int]]
    pad: Optional[int]
    suppress: Optional[List[int]]
    generator: Optional[torch.Generator]


def _check_decoding(do_sample, temperature, top_k, top_p, eos_token_id, pad_token_id,
                    suppress_tokens, generator) -> _Decoding:
    _check_bool("do_sample", do_sample)
    temperature = _finite_float("temperature", temperature)
    if do_sample and temperature <= 0:
        raise ValueError(f"temperature must be > 0 when sampling (do_sample=True), got "
                         f"{temperature}; for the most likely token use do_sample=False")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    _check_int("top_k", top_k, 0, allow_none=True)
    if top_k == 0:
        top_k = None                               # as in transformers: 0 turns top-k off
    if top_p is not None:
        if not isinstance(top_p, numbers.Real) or isinstance(top_p, bool):
            raise TypeError(f"top_p must be a float in (0, 1] or None, got {_type_name(top_p)} "
                            f"({top_p!r})")
        top_p = float(top_p)
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    eos = _id_list("eos_token_id", eos_token_id, allow_empty=False)
    _check_int("pad_token_id", pad_token_id, 0, allow_none=True)
    if pad_token_id is None and eos is not None:
        pad_token_id = eos[0]
    suppress = _id_list("suppress_tokens", suppress_tokens)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got "
                        f"{_type_name(generator)}")
    return _Decoding(do_sample, temperature, top_k, top_p, eos, pad_token_id, suppress or None,
                     generator)


def _check_vocab_ids(dec: _Decoding, vocab_size: int) -> None:
    """Checks the token ids in ``dec`` against the model's vocabulary (known after the
    first forward)."""
    for name, ids in (("eos_token_id", dec.eos), ("suppress_tokens", dec.suppress),
                      ("pad_token_id", None if dec.pad is None else [dec.pad])):
        for v in ids or ():
            if v >= vocab_size:
                raise ValueError(f"{name} holds token id {v}, outside the model's vocabulary "
                                 f"[0, {vocab_size - 1}]")
    if dec.suppress is not None and len(set(dec.suppress)) >= vocab_size:
        raise ValueError(f"suppress_tokens suppresses all {vocab_size} tokens of the "
                         "vocabulary; nothing could be generated")


def _suppress_mask(dec: _Decoding, vocab_size: int, device) -> Optional[Tensor]:
    if dec.suppress is None:
        return None
    mask = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    mask[dec.suppress] = True
    return mask
