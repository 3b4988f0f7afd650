"""Argument checks shared by the language-model toolkit (tokenizers, decoding, scoring).

Each raises TypeError for a value of the wrong type and ValueError for one out of range,
with the argument's name in the message.
"""
from __future__ import annotations

import math
import numbers
from typing import List, Optional

import torch
from torch import Tensor


def _type_name(value) -> str:
    return type(value).__name__


def _check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {_type_name(value)} ({value!r})")


def _check_model(model) -> None:
    if not callable(model):
        raise TypeError(f"model must be callable as model(input_ids, state) -> (logits, state), "
                        f"got {_type_name(model)}")


def _check_ids(name: str, input_ids, min_len: int = 1) -> Tensor:
    """``input_ids`` as a 2-D integer tensor (a 1-D tensor is one row)."""
    if not isinstance(input_ids, Tensor):
        hint = " (e.g. torch.tensor([ids]))" if isinstance(input_ids, (list, tuple)) else ""
        raise TypeError(f"{name} must be a torch.Tensor of token ids{hint}, got "
                        f"{_type_name(input_ids)}")
    if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or \
            input_ids.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor (torch.long), got {input_ids.dtype}")
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    if input_ids.dim() != 2:
        raise ValueError(f"{name} must be 2-D [batch, length] (or 1-D for one sequence), got "
                         f"shape {tuple(input_ids.shape)}")
    if input_ids.size(0) == 0:
        raise ValueError(f"{name} must hold at least one sequence, got shape "
                         f"{tuple(input_ids.shape)}")
    if input_ids.size(1) < min_len:
        raise ValueError(f"{name} must hold at least {min_len} token(s) per row, got shape "
                         f"{tuple(input_ids.shape)}")
    return input_ids.long()


def _id_list(name: str, value, allow_empty: bool = True) -> Optional[List[int]]:
    """An int, an iterable of ints or a 1-D integer tensor, as a list (None stays None)."""
    if value is None:
        return None
    if isinstance(value, Tensor):
        if value.dtype.is_floating_point or value.dim() > 1:
            raise TypeError(f"{name} must be an int, a sequence of ints or a 1-D integer "
                            f"tensor, got a {value.dtype} tensor of shape {tuple(value.shape)}")
        value = value.reshape(-1).tolist()
    elif isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    elif isinstance(value, (list, tuple, set, frozenset, range)):
        value = sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    else:
        raise TypeError(f"{name} must be an int, a sequence of ints or a 1-D integer tensor, "
                        f"got {_type_name(value)}")
    for v in value:
        if not isinstance(v, int) or isinstance(v, bool):
            raise TypeError(f"{name} must hold ints, got {_type_name(v)} ({v!r})")
        if v < 0:
            raise ValueError(f"{name} must hold non-negative token ids, got {v}")
    if not value and not allow_empty:
        raise ValueError(f"{name} must not be empty")
    return value


def _check_int(name: str, value, minimum: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        kind = "an int or None" if allow_none else "an int"
        raise TypeError(f"{name} must be {kind}, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _finite_float(name: str, value) -> float:
    """``value`` as a float; TypeError if it is not a real number, ValueError if not finite."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be a float, got {_type_name(value)} ({value!r})")
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return value
