"""Ready-made models on rnnfast's recurrent layers.

:class:`RNNLM` is a token-level language model: embedding -> stacked
:class:`rnnfast.LSTM` or :class:`rnnfast.GRU` -> dropout -> linear layer to the
vocabulary. Its recurrent part runs on rnnfast's fused ops; the same model on
``torch.nn.LSTM`` / ``torch.nn.GRU`` (``backend="torch"``) has the same
``state_dict``, which is how rnnfast is compared against torch.

The model follows the protocol of :mod:`rnnfast.lm.protocol`:
``model(input_ids [B, T], state) -> (logits [B, T, V], state)``, where ``state``
is what the recurrent layer takes and returns (LSTM: a tuple ``(h, c)``, GRU: a
tensor ``h``), each tensor ``[num_layers, B, hidden_size]`` (batch at dim 1).
"""
from __future__ import annotations

import json
import numbers
import os
from typing import Optional, Tuple, Union

import torch
from torch import Tensor, nn

from .. import _cells
from ..modules import GRU, LSTM, _zoneout_probs, check_weight_drop

__all__ = ["RNNLM", "detach_state", "save_lm", "load_lm"]

State = Union[Tensor, Tuple[Tensor, Tensor]]

# the cells the model offers: rnnfast's module and torch's twin for each
_CELLS = {"lstm": (LSTM, nn.LSTM), "gru": (GRU, nn.GRU)}
_BACKENDS = ("rnnfast", "torch")


def detach_state(state):
    """``state`` with every tensor detached from the autograd graph (truncated BPTT)."""
    if state is None:
        return None
    if isinstance(state, Tensor):
        return state.detach()
    if isinstance(state, (tuple, list)):
        return type(state)(detach_state(s) for s in state)
    raise TypeError(f"state must be a Tensor or a tuple of Tensors, got {type(state).__name__}")


def _check_positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}")


def _check_dropout(value) -> float:
    """``dropout`` as a float, checked to be a number in [0, 1)."""
    if (not isinstance(value, numbers.Real) or isinstance(value, bool)
            or not 0.0 <= value < 1.0):
        raise ValueError(f"dropout must be a number in [0, 1), got {value!r}")
    return float(value)


def _torch_lacks(names) -> ValueError:
    """The error for rnnfast-only options (``names``) asked of backend='torch'."""
    return ValueError(f"backend='torch' has no {', '.join(names)}: torch.nn's recurrent "
                      f"modules lack them; use backend='rnnfast'")


def _zoneout_value(value, cell: str):
    """``zoneout`` checked as rnnfast's modules check it (p, or for LSTM (p_c, p_h)), as
    plain floats; a list (from a saved config: JSON has no tuples) as a tuple."""
    _zoneout_probs("RNNLM", value, _cells.DESCRIPTIONS[cell].cell_state)
    if isinstance(value, (tuple, list)):
        return tuple(float(v) for v in value)
    return float(value)


def _is_on(value) -> bool:
    """Whether a checked option's value turns it on (a bool, a float, or a zoneout pair)."""
    return any(v != 0 for v in value) if isinstance(value, tuple) else bool(value)


class RNNLM(nn.Module):
    """Embedding -> stacked LSTM/GRU -> dropout -> Linear to the vocabulary.

    Args:
        vocab_size: number of token ids ``V``.
        embed_size: embedding width ``E``.
        hidden_size: recurrent state width ``H``.
        num_layers: stacked recurrent layers (inter-layer dropout between them).
        cell: ``"lstm"`` or ``"gru"``.
        dropout: probability used between recurrent layers and on the last layer's
            output, in training mode only.
        tie_weights: share the embedding matrix with the output layer's weight
            (Press & Wolf 2017); needs ``embed_size == hidden_size``.
        backend: ``"rnnfast"`` (fused kernels, the default) or ``"torch"``
            (``torch.nn.LSTM``/``GRU``; same parameters and ``state_dict``, for
            comparisons; without the variants below, which torch does not have).
        peephole: LSTM only: peephole connections (:class:`rnnfast.LSTM`'s ``peephole``).
        weight_drop: DropConnect on the recurrent weights in training, the AWD-LSTM
            regulariser (:class:`rnnfast.LSTM`'s ``weight_drop``).
        zoneout: zoneout of the recurrent states, p or for LSTM (p_c, p_h)
            (:class:`rnnfast.LSTM`'s ``zoneout``).
        layer_norm: layer normalisation inside the recurrent cell (LSTM or GRU;
            :class:`rnnfast.LSTM`'s ``layer_norm``).

    ``dropout``, ``weight_drop`` and ``zoneout`` are also attributes, read from and set on the
    submodules (``drop``, ``rnn``): a value set after construction (a schedule) is checked as
    the constructor checks it, used by forward and reported by :attr:`config`.

    ``forward(input_ids, state=None) -> (logits, state)``: ``input_ids`` is a
    ``[B, T]`` integer tensor, ``logits`` is ``[B, T, V]``, ``state`` is the
    recurrent state after the last step (``None`` in: zeros).
    """

    def __init__(self, vocab_size: int, embed_size: int, hidden_size: int, num_layers: int = 1,
                 cell: str = "lstm", dropout: float = 0.0, tie_weights: bool = False,
                 backend: str = "rnnfast", peephole: bool = False,
                 weight_drop: float = 0.0, zoneout=0.0, layer_norm: bool = False) -> None:
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("embed_size", embed_size),
                            ("hidden_size", hidden_size), ("num_layers", num_layers)):
            _check_positive_int(name, value)
        if not isinstance(cell, str) or cell.lower() not in _CELLS:
            raise ValueError(f"cell must be one of {sorted(_CELLS)}, got {cell!r}")
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {list(_BACKENDS)}, got {backend!r}")
        dropout = _check_dropout(dropout)
        if not isinstance(tie_weights, bool):
            raise TypeError(f"tie_weights must be a bool, got {type(tie_weights).__name__}")
        if tie_weights and embed_size != hidden_size:
            raise ValueError(
                "tie_weights=True shares the embedding matrix [vocab_size, embed_size] with the "
                "output layer's weight [vocab_size, hidden_size], so it needs embed_size == "
                f"hidden_size; got embed_size={embed_size}, hidden_size={hidden_size}")
        cell = cell.lower()
        if not isinstance(peephole, bool):
            raise TypeError(f"peephole must be a bool, got {type(peephole).__name__}")
        if peephole and cell != "lstm":
            raise ValueError(f"peephole=True needs cell='lstm', got cell={cell!r}")
        if not isinstance(layer_norm, bool):
            raise TypeError(f"layer_norm must be a bool, got {type(layer_norm).__name__}")
        weight_drop = check_weight_drop(weight_drop)
        zoneout = _zoneout_value(zoneout, cell)
        variants = {k: v for k, v in (("peephole", peephole), ("weight_drop", weight_drop),
                                      ("zoneout", zoneout), ("layer_norm", layer_norm))
                    if _is_on(v)}
        if variants and backend == "torch":
            raise _torch_lacks(variants)
        self.vocab_size = vocab_size
        self.embed_size = embed_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.cell = cell
        self.tie_weights = tie_weights
        self.backend = backend
        self.peephole = peephole
        self.layer_norm = layer_norm
        # dropout, weight_drop and zoneout live in the submodules only (the properties below
        # read and set them there); the recurrent module validates zoneout

        rnn_cls = _CELLS[cell][0 if backend == "rnnfast" else 1]
        self.embedding = nn.Embedding(vocab_size, embed_size)
        # inter-layer dropout only exists between layers (torch warns for one layer)
        self.rnn = rnn_cls(embed_size, hidden_size, num_layers, batch_first=True,
                           dropout=dropout if num_layers > 1 else 0.0, **variants)
        self.drop = nn.Dropout(dropout)
        self.decoder = nn.Linear(hidden_size, vocab_size)
        self.reset_parameters()

    # --- regularisation options -----------------------------------------------------------
    # Read from and written to the submodules, so that a value set after construction (a
    # schedule, or turning an option off to fine-tune) is what forward uses and what config
    # reports, whether set here or on self.rnn.

    @property
    def dropout(self) -> float:
        """The dropout probability on the last recurrent layer's output (``self.drop.p``) and,
        with more than one layer, between the layers (``self.rnn.dropout``)."""
        return self.drop.p

    @dropout.setter
    def dropout(self, value) -> None:
        value = _check_dropout(value)
        self.drop.p = value
        if self.num_layers > 1:   # inter-layer dropout only exists between layers
            self.rnn.dropout = value

    @property
    def weight_drop(self) -> float:
        """DropConnect on the recurrent weights (``self.rnn.weight_drop``; 0.0 on
        backend='torch', which has none)."""
        if self.backend == "torch":
            return 0.0
        # (read as the module's forward does: a module pickled before the option lacks it)
        return self.rnn.__dict__.get("weight_drop", 0.0)

    @weight_drop.setter
    def weight_drop(self, value) -> None:
        value = check_weight_drop(value)
        if self.backend == "torch":
            if _is_on(value):
                raise _torch_lacks(["weight_drop"])
            return
        self.rnn.weight_drop = value

    @property
    def zoneout(self):
        """The zoneout of the recurrent states (``self.rnn.zoneout``: p, or for LSTM
        (p_c, p_h), as floats; 0.0 on backend='torch', which has none)."""
        if self.backend == "torch":
            return 0.0
        return self.rnn.zoneout

    @zoneout.setter
    def zoneout(self, value) -> None:
        value = _zoneout_value(value, self.cell)
        if self.backend == "torch":
            if _is_on(value):
                raise _torch_lacks(["zoneout"])
            return
        self.rnn.zoneout = value

    def reset_parameters(self) -> None:
        """Small uniform embeddings, zero output bias (the recurrent layer keeps torch's
        initialisation)."""
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        if self.tie_weights:
            self.decoder.weight = self.embedding.weight
        else:
            nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    # --- construction helpers -------------------------------------------------------------

    @property
    def config(self) -> dict:
        """The constructor arguments (JSON-serialisable); ``RNNLM(**model.config)`` rebuilds
        the architecture. One ``dropout`` is both the output's and the inter-layer one: a
        model whose ``rnn.dropout`` was set apart from it has no config (ValueError)."""
        if self.num_layers > 1 and self.rnn.dropout != self.drop.p:
            raise ValueError(
                f"RNNLM's config has one dropout for the output and between the layers, but "
                f"rnn.dropout = {self.rnn.dropout} differs from drop.p = {self.drop.p}; set "
                f"both through the model's dropout attribute (model.dropout = p)")
        return dict(vocab_size=self.vocab_size, embed_size=self.embed_size,
                    hidden_size=self.hidden_size, num_layers=self.num_layers, cell=self.cell,
                    dropout=self.dropout, tie_weights=self.tie_weights, backend=self.backend,
                    peephole=self.peephole, weight_drop=self.weight_drop, zoneout=self.zoneout,
                    layer_norm=self.layer_norm)

    def twin(self, backend: str) -> "RNNLM":
        """A copy of this model on ``backend`` ("rnnfast" or "torch") with the same values
        (independent parameters), in the same training mode, device and dtype."""
        config = dict(self.config, backend=backend)
        p = self.embedding.weight
        other = RNNLM(**config).to(device=p.device, dtype=p.dtype)
        other.load_state_dict(self.state_dict())
        return other.train(self.training)

    # --- state ----------------------------------------------------------------------------

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        """A zero state for ``batch_size`` sequences: LSTM ``(h, c)``, GRU ``h``, each
        ``[num_layers, batch_size, hidden_size]``; device/dtype default to the model's."""
        _check_positive_int("batch_size", batch_size)
        p = self.embedding.weight
        shape = (self.num_layers, batch_size, self.hidden_size)
        kw = dict(device=p.device if device is None else device,
                  dtype=p.dtype if dtype is None else dtype)
        if _cells.DESCRIPTIONS[self.cell].cell_state:
            return torch.zeros(shape, **kw), torch.zeros(shape, **kw)
        return torch.zeros(shape, **kw)

    @staticmethod
    def detach_state(state):
        return detach_state(state)

    # --- forward --------------------------------------------------------------------------

    def _check_ids(self, input_ids) -> None:
        if not isinstance(input_ids, Tensor):
            raise TypeError(f"input_ids must be a torch.Tensor of token ids, got "
                            f"{type(input_ids).__name__}")
        if input_ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8,
                                   torch.uint8):
            raise TypeError(f"input_ids must be an integer tensor (torch.long), got "
                            f"{input_ids.dtype}")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be 2-D [batch, time], got shape "
                             f"{tuple(input_ids.shape)}")
        if input_ids.size(0) == 0 or input_ids.size(1) == 0:
            raise ValueError(f"input_ids must hold at least one token per row, got shape "
                             f"{tuple(input_ids.shape)}")
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= self.vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"input_ids holds token id {bad}, outside [0, {self.vocab_size - 1}] "
                             f"for vocab_size={self.vocab_size}")

    def forward(self, input_ids: Tensor, state: Optional[State] = None) -> Tuple[Tensor, State]:
        self._check_ids(input_ids)
        emb = self.embedding(input_ids.long())        # [B, T, E]
        out, state = self.rnn(emb, state)             # [B, T, H]
        logits = self.decoder(self.drop(out))         # [B, T, V]
        return logits, state

    def extra_repr(self) -> str:
        s = f"cell={self.cell!r}"
        if self.tie_weights:
            s += ", tie_weights=True"
        if self.backend != "rnnfast":
            s += f", backend={self.backend!r}"
        if self.peephole:
            s += ", peephole=True"
        if self.weight_drop:
            s += f", weight_drop={self.weight_drop}"
        if self.zoneout:
            s += f", zoneout={self.zoneout}"
        if self.layer_norm:
            s += ", layer_norm=True"
        return s


# --- saving and loading -------------------------------------------------------------------------

_LM_FORMAT = "rnnfast-rnnlm"
_LM_VERSION = 1
WEIGHTS_FILE = "model.pt"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"


def save_lm(directory: Union[str, os.PathLike], model: RNNLM, tokenizer=None,
            **meta) -> None:
    """Saves ``model`` to ``directory`` (created if needed): ``model.pt`` (the
    ``state_dict``, loadable with ``torch.load(..., weights_only=True)``),
    ``config.json`` (the architecture plus ``meta``, JSON-serialisable extras) and,
    if given, ``tokenizer.json``."""
    if not isinstance(model, RNNLM):
        raise TypeError(f"save_lm saves an RNNLM, got {type(model).__name__}")
    os.makedirs(directory, exist_ok=True)
    config = dict(model.config)
    config.pop("backend")       # a property of the process, not of the weights
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, os.path.join(directory, WEIGHTS_FILE))
    record = {"format": _LM_FORMAT, "version": _LM_VERSION, "model": config,
              "tokenizer": TOKENIZER_FILE if tokenizer is not None else None, "meta": meta}
    with open(os.path.join(directory, CONFIG_FILE), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    if tokenizer is not None:
        tokenizer.save(os.path.join(directory, TOKENIZER_FILE))


def load_lm(directory: Union[str, os.PathLike], backend: str = "rnnfast", map_location="cpu"):
    """Loads what :func:`save_lm` wrote: returns ``(model, tokenizer or None, meta)``,
    the model in eval mode. Weights are read with ``weights_only=True``."""
    from .text import load_tokenizer

    directory = os.fspath(directory)
    config_path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{directory!r} holds no {CONFIG_FILE}: not a directory written "
                                "by rnnfast.lm.save_lm (or `python -m rnnfast demo --save`)")
    with open(config_path, encoding="utf-8") as f:
        try:
            record = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{config_path} is not valid JSON: {exc}") from None
    if not isinstance(record, dict) or record.get("format") != _LM_FORMAT:
        raise ValueError(f"{config_path} is not an rnnfast RNNLM config "
                         f"(expected \"format\": \"{_LM_FORMAT}\")")
    if record.get("version") != _LM_VERSION:
        raise ValueError(f"{config_path}: unsupported version {record.get('version')!r}")
    model = RNNLM(**record["model"], backend=backend)
    state = torch.load(os.path.join(directory, WEIGHTS_FILE), map_location=map_location,
                       weights_only=True)
    model.load_state_dict(state)
    tokenizer = None
    if record.get("tokenizer"):
        tokenizer = load_tokenizer(os.path.join(directory, record["tokenizer"]))
        if tokenizer.vocab_size != model.vocab_size:
            raise ValueError(f"{directory}: the tokenizer has {tokenizer.vocab_size} tokens but "
                             f"the model's vocab_size is {model.vocab_size}")
    return model.eval(), tokenizer, record.get("meta", {})
