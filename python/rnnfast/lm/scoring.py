"""Scoring given sequences under a recurrent language model: :func:`sequence_log_prob`
(the joint log-probability of each row) and :func:`perplexity`, in one batched forward (or
in chunks of ``chunk_size`` steps, carrying the state).

The model follows :mod:`rnnfast.lm.protocol`. Scoring runs under ``torch.no_grad()`` with
the model switched to eval mode for the duration (dropout off); the model's training flags
are restored afterwards.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .checks import _check_ids, _check_int, _check_model, _type_name
from .protocol import _float_logits, _forward, _inference

__all__ = ["sequence_log_prob", "perplexity"]


def _check_lengths(lengths, batch: int, total: int, device) -> Optional[Tensor]:
    if lengths is None:
        return None
    if isinstance(lengths, (list, tuple)):
        lengths = torch.tensor(lengths)
    if not isinstance(lengths, Tensor) or lengths.dtype.is_floating_point or lengths.dim() != 1:
        raise TypeError("lengths must be a 1-D integer tensor (or a list of ints) with one "
                        f"length per row, got {_type_name(lengths)}")
    if lengths.numel() != batch:
        raise ValueError(f"lengths must hold one length per row: expected {batch}, got "
                         f"{lengths.numel()}")
    if bool((lengths < 1).any()) or bool((lengths > total).any()):
        raise ValueError(f"lengths must be in [1, {total}] (the padded length), got "
                         f"{lengths.tolist()}")
    return lengths.to(device=device, dtype=torch.long)


def _token_log_probs(model, input_ids, context_length, lengths, state, chunk_size):
    """[B, T-1] log p(x_t | x_<t) for t = 1..T-1, zeroed where not scored; and the
    mask of scored positions."""
    _check_model(model)
    input_ids = _check_ids("input_ids", input_ids, min_len=2)
    B, T = input_ids.shape
    _check_int("context_length", context_length, 1)
    if context_length >= T:
        raise ValueError(f"context_length ({context_length}) must be smaller than the sequence "
                         f"length ({T}): at least one token must be scored")
    _check_int("chunk_size", chunk_size, 1, allow_none=True)
    lengths = _check_lengths(lengths, B, T, input_ids.device)
    inputs, targets = input_ids[:, :-1], input_ids[:, 1:]
    step = chunk_size or inputs.size(1)
    pieces = []
    with _inference(model):
        for start in range(0, inputs.size(1), step):
            chunk = inputs[:, start:start + step]
            logits, state = _forward(model, chunk, state)
            logits = _float_logits(logits)
            V = logits.size(-1)
            tgt = targets[:, start:start + step]
            if int(tgt.max()) >= V:
                raise ValueError(f"input_ids holds token id {int(tgt.max())}, outside the "
                                 f"model's vocabulary [0, {V - 1}]")
            pieces.append(logits.log_softmax(dim=-1).gather(2, tgt.unsqueeze(2)).squeeze(2))
    lp = torch.cat(pieces, dim=1)                                   # [B, T-1]
    pos = torch.arange(1, T, device=lp.device).unsqueeze(0)         # index of the scored token
    mask = (pos >= context_length).expand(B, T - 1)
    if lengths is not None:
        mask = mask & (pos < lengths.unsqueeze(1))
    return lp.masked_fill(~mask, 0.0), mask


def sequence_log_prob(model, input_ids: Tensor, *, context_length: int = 1, lengths=None,
                      state=None, chunk_size: Optional[int] = None,
                      return_token_log_probs: bool = False):
    """Joint log-probability of each row of ``input_ids`` under ``model``.

    Row ``b`` scores ``log p(x_c, ..., x_{L-1} | x_0, ..., x_{c-1})`` =
    ``sum_{t=c}^{L-1} log p(x_t | x_<t)``, where ``c = context_length`` and ``L``
    is the row's length. The first token is never scored: a recurrent model needs an
    input to produce its first prediction, so token 0 is the conditioning context
    (put a BOS-like token such as ``<eos>`` first to score a whole text). With
    ``context_length = P`` this is the log-probability of a continuation given a
    prompt of ``P`` tokens, which is what ``generate`` reports in
    ``sequences_scores``.

    Args:
        input_ids: ``[B, T]`` integer tensor, ``T >= 2`` (1-D: one row).
        context_length: leading tokens that condition but are not scored (>= 1).
        lengths: optional ``[B]`` true lengths of right-padded rows; positions at or
            beyond a row's length are not scored.
        state: the state to start from (has consumed everything before ``input_ids``).
        chunk_size: run the model over at most this many steps at a time, carrying the
            state (bounded memory for long rows); ``None``: one batched forward.
        return_token_log_probs: also return the ``[B, T-1]`` per-token log-probs
            (entry ``t-1`` scores token ``t``; 0 where not scored).

    Returns:
        ``[B]`` log-probabilities, or ``(log_probs, token_log_probs)``.
    """
    token_lp, _ = _token_log_probs(model, input_ids, context_length, lengths, state, chunk_size)
    total = token_lp.sum(dim=1)
    return (total, token_lp) if return_token_log_probs else total


def perplexity(model, input_ids: Tensor, *, context_length: int = 1, lengths=None, state=None,
               chunk_size: Optional[int] = None) -> float:
    """``exp`` of the mean negative log-likelihood per scored token, over all rows
    (same arguments and scored tokens as :func:`sequence_log_prob`)."""
    token_lp, mask = _token_log_probs(model, input_ids, context_length, lengths, state,
                                      chunk_size)
    count = int(mask.sum())
    if count == 0:
        raise ValueError("no token is scored (every row is within context_length of its end)")
    return math.exp(-float(token_lp.sum(dtype=torch.float64)) / count)
