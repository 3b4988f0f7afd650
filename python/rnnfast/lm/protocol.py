"""The protocol by which generation and scoring use a model, and the plumbing around it.

Any model that follows it works (:class:`rnnfast.lm.RNNLM` does)::

    logits, state = model(input_ids, state)
    # input_ids [B, T] integer tensor; logits [B, T, V]; state: the recurrent state after
    # the last step (None in: the model starts from zeros). State tensors, possibly nested
    # in tuples/lists (LSTM: (h, c)), have the batch at dim 1, as torch's RNNs return them.

Here: calling the model and checking what it returns (:func:`_forward`), running it for
inference (:func:`_inference`: no_grad and eval mode, training flags restored afterwards),
and selecting, repeating, merging and keeping rows of its state.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor, nn

from .checks import _type_name


@contextmanager
def _inference(model):
    """no_grad + eval mode for the duration; training flags restored afterwards."""
    modules = list(model.modules()) if isinstance(model, nn.Module) else []
    flags = [m.training for m in modules]
    for m in modules:
        m.training = False
    try:
        with torch.no_grad():
            yield
    finally:
        for m, flag in zip(modules, flags):
            m.training = flag


def _forward(model, ids: Tensor, state):
    out = model(ids, state)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise TypeError(f"model(input_ids, state) must return (logits, state), got "
                        f"{_type_name(out)}")
    logits, state = out
    if not isinstance(logits, Tensor) or logits.dim() != 3 or \
            tuple(logits.shape[:2]) != tuple(ids.shape):
        got = tuple(logits.shape) if isinstance(logits, Tensor) else _type_name(logits)
        raise ValueError(f"model must return logits of shape [batch, time, vocab] = "
                         f"[{ids.size(0)}, {ids.size(1)}, V], got {got}")
    if not logits.dtype.is_floating_point:
        raise TypeError(f"model returned {logits.dtype} logits; expected a floating dtype")
    return logits, state


def _map_state(state, fn):
    if state is None:
        return None
    if isinstance(state, Tensor):
        return fn(state)
    if isinstance(state, (tuple, list)):
        return type(state)(_map_state(s, fn) for s in state)
    raise TypeError(f"state must be a Tensor or (nested) tuple of Tensors, got "
                    f"{_type_name(state)}")


def _select_rows(state, index: Tensor):
    """State rows ``index`` (batch at dim 1)."""
    return _map_state(state, lambda t: t.index_select(1, index.to(t.device)))


def _repeat_rows(state, repeats: int):
    if repeats == 1:
        return state
    return _map_state(state, lambda t: t.repeat_interleave(repeats, dim=1))


def _merge_rows(first, second, index: Tensor):
    """Rows ``index`` of the two states stacked along the batch (``second``'s rows come
    after ``first``'s)."""
    if first is None:
        return None
    if isinstance(first, Tensor):
        return torch.cat([first, second], dim=1).index_select(1, index.to(first.device))
    return type(first)(_merge_rows(a, b, index) for a, b in zip(first, second))


def _keep_rows(state, new_state, keep: Tensor):
    """``new_state``, except rows where ``keep`` is True, which keep ``state``."""
    if state is None or not bool(keep.any()):
        return new_state
    if isinstance(state, Tensor):
        mask = keep.to(state.device).view(1, -1, *([1] * (state.dim() - 2)))
        return torch.where(mask, state, new_state)
    return type(state)(_keep_rows(s, n, keep) for s, n in zip(state, new_state))


def _float_logits(logits: Tensor) -> Tensor:
    """Last-step logits in at least float32."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))
