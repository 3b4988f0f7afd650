"""rnnfast: fused LSTM / GRU / RNN kernels for PyTorch, as drop-in nn modules.

    import rnnfast
    lstm = rnnfast.LSTM(128, 256, num_layers=2, batch_first=True)   # same API as nn.LSTM
    model = rnnfast.convert(model)   # swap every nn.LSTM/GRU/RNN(+Cell) in a model

The language-model toolkit (RNNLM, tokenizers, generate, perplexity) is the subpackage
:mod:`rnnfast.lm`, which ``import rnnfast`` does not load.
"""
from __future__ import annotations

import torch
from torch import nn

from . import _C, ops
from .modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNBase, RNNCell, RNNCellBase
from .modules import _cell_weight_names

__version__ = "0.1.0"

__all__ = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell", "RNNBase", "RNNCellBase",
           "convert", "info", "empty_cache", "ops"]

# Modules saved whole with torch.save(model) load back with weights_only=True.
torch.serialization.add_safe_globals([LSTM, GRU, RNN, LSTMCell, GRUCell, RNNCell])


def empty_cache() -> None:
    """Frees the scratch blocks (64 KB and up) the CPU kernels keep from one call for the
    next; at most 256 MB are kept. The next call allocates afresh."""
    _C.release_scratch()


def info() -> dict:
    """Build and runtime facts: versions, the SIMD path in use, whether CUDA kernels were built
    (``cuda``) and whether CUDA tensors use them (``cuda_kernels``), whether the CPU kernels
    keep freed scratch blocks (``cpu_scratch_cache``, RNNFAST_SCRATCH_CACHE=0/1) and how many
    bytes they keep, whether the NaN-scratch debug mode is on
    (``debug_nan_scratch``, RNNFAST_DEBUG_NAN_SCRATCH=1), and whether GEMMs of few k steps
    write row by row (``cpu_gemm_rows``, RNNFAST_GEMM_ROWS=0 turns it off)."""
    return {
        "version": __version__,
        "torch_version": torch.__version__,
        "simd": _C.simd(),
        "cuda": bool(_C.cuda_built),
        "cuda_kernels": ops.has_native_kernels("cuda"),
        "threads": torch.get_num_threads(),
        "cpu_scratch_cache": _C.scratch_cache_enabled(),
        "cpu_scratch_cached_bytes": _C.scratch_cached_bytes(),
        "debug_nan_scratch": _C.debug_nan_scratch(),
        "cpu_gemm_rows": _C.gemm_rows_enabled(),
    }


_REPLACEMENTS = {nn.LSTM: LSTM, nn.GRU: GRU, nn.RNN: RNN}
_CELL_REPLACEMENTS = {nn.LSTMCell: LSTMCell, nn.GRUCell: GRUCell, nn.RNNCell: RNNCell}


# nn.Module's hook dicts, which convert hands to the twin.
_HOOK_DICTS = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks",
               "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
               "_backward_pre_hooks", "_backward_hooks", "_state_dict_hooks",
               "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
               "_load_state_dict_post_hooks")


def _convert_one(module: nn.Module):
    """The rnnfast twin of one torch recurrent module, sharing its Parameter objects."""
    kind = type(module)
    if kind in _REPLACEMENTS:
        kwargs = dict(num_layers=module.num_layers, bias=module.bias,
                      batch_first=module.batch_first, dropout=module.dropout,
                      bidirectional=module.bidirectional)
        if kind is nn.LSTM:
            kwargs["proj_size"] = module.proj_size
        if kind is nn.RNN:
            kwargs["nonlinearity"] = module.nonlinearity
        new = _REPLACEMENTS[kind](module.input_size, module.hidden_size, device="meta", **kwargs)
        names = module._flat_weights_names
    elif kind in _CELL_REPLACEMENTS:
        extra = {"nonlinearity": module.nonlinearity} if kind is nn.RNNCell else {}
        new = _CELL_REPLACEMENTS[kind](module.input_size, module.hidden_size, bias=module.bias,
                                       device="meta", **extra)
        names = _cell_weight_names(new._cell_name, module.bias)
    else:
        return None
    # Reuse the very Parameter objects: values, requires_grad, and any optimizer
    # state keyed on them carry over.
    for name in names:
        value = getattr(module, name)
        if not isinstance(value, nn.Parameter) and value is not None:
            # computed before each call by a forward pre-hook (torch.nn.utils.prune,
            # weight_norm, spectral_norm) from parameters of other names: a plain tensor here,
            # recomputed by the same hook on the twin (below)
            del new._parameters[name]
        setattr(new, name, value)
    # What such hooks compute the weights from (weight_hh_orig and weight_hh_mask, weight_g
    # and weight_v, ...), and the hooks themselves: they take the module they run on as an
    # argument, so they serve the twin as they served the original (and prune.remove,
    # remove_weight_norm and the like find them there).
    for name, param in module._parameters.items():
        if name not in names:
            new.register_parameter(name, param)
    for name, buf in module._buffers.items():
        new.register_buffer(name, buf, persistent=name not in module._non_persistent_buffers_set)
    # The same dicts, not copies: a handle taken before convert removes its hook from them.
    for hooks in _HOOK_DICTS:
        if hooks in module.__dict__:
            object.__setattr__(new, hooks, module.__dict__[hooks])
    # (whether _backward_hooks are full backward hooks: without it torch runs none of them)
    object.__setattr__(new, "_is_full_backward_hook", module._is_full_backward_hook)
    for key, hook in list(new._load_state_dict_pre_hooks.items()):
        if getattr(hook, "with_module", False):  # bound to the module: now the twin
            new._load_state_dict_pre_hooks[key] = type(hook)(hook.hook, new)
    if isinstance(new, RNNBase):
        new._init_flat_weights()
    new.train(module.training)
    return new


def convert(model: nn.Module) -> nn.Module:
    """Replace every nn.LSTM / nn.GRU / nn.RNN / nn.LSTMCell / nn.GRUCell / nn.RNNCell
    inside ``model`` (in place) by its rnnfast twin holding the same parameters.

    Returns ``model`` (or the replacement, if ``model`` itself is one of those).
    Subclasses of those torch modules are left alone: their forward may differ.
    """
    root = _convert_one(model)
    if root is not None:
        return root
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new = _convert_one(child)
            if new is not None:
                setattr(parent, name, new)
    return model
