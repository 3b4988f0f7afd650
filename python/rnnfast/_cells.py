"""The cells rnnfast knows and the parameters a layer takes, as the C++ core describes them.

Read once from the native extension (``_C.cells()``, ``_C.layer_params()``, generated from
csrc/core/cells.h), so that the ops' fake kernels, the reference loop and the modules derive a
cell's gates, states, projection and parameter shapes from the same description as the kernels,
and a new cell or parameter needs no change here.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from . import _C


class Cell(NamedTuple):
    """One cell's description (csrc/core/cells.h)."""

    name: str                   # the ops' `cell` argument: "lstm", "gru", ...
    gate_names: Tuple[str, ...]  # in weight row order
    gates: int                  # G: weight_ih and weight_hh have G * H rows
    cell_state: bool            # has c: states are [h, c], else [h]
    projection: bool            # accepts weight_hr (proj_size)
    apart_gates: int            # bit k: gate k keeps h W_hh^T + b_hh apart from the x side
    saved_blocks: int           # H-wide workspace blocks the forward saves
    params: Tuple[str, ...]     # its own parameters (PARAMS entries present "cell"), in order
    layer_norm: bool            # normalises its gate pre-activations (ln_ih_weight, ...)
    stats_cols: int             # workspace columns of per-row statistics after h_{t-1}

    @property
    def states(self) -> int:
        return 2 if self.cell_state else 1


class Param(NamedTuple):
    """One per-layer parameter: shape [rows] (cols None) or [rows, cols], each an extent of the
    shape legend ("input", "hidden", "state", "proj", "gate_rows"); present "always", with
    "bias", with a "projection", or in the cells that list it as their own ("cell")."""

    name: str
    rows: str
    cols: Optional[str]
    presence: str


DESCRIPTIONS: Dict[str, Cell] = {
    d["name"]: Cell(**{**d, "gate_names": tuple(d["gate_names"]), "params": tuple(d["params"])})
    for d in _C.cells()}
PARAMS: Tuple[Param, ...] = tuple(Param(**d) for d in _C.layer_params())
# The epsilon of the layer-normalised cells' normalisation (csrc/core/cells.h kLayerNormEps).
LAYER_NORM_EPS: float = _C.layer_norm_eps
# The names of the states, by position in a state list ([h] or [h, c]).
STATE_NAMES = ("h", "c")


def cell(name: str) -> Cell:
    """The description of the cell called ``name``; a ValueError lists the known ones."""
    try:
        return DESCRIPTIONS[name]
    except (KeyError, TypeError):
        raise ValueError(f"rnnfast: unknown cell {name!r}, expected one of "
                         f"{', '.join(DESCRIPTIONS)}") from None


def _present(param: Param, info: Cell, bias: bool, projection: bool) -> bool:
    return {"always": True, "bias": bias, "projection": projection,
            "cell": param.name in info.params}[param.presence]


# The parameters of each (cell, bias, projection) layout, computed once (the modules read them
# on every call).
_LAYOUT_PARAMS: Dict[Tuple[str, bool, bool], Tuple[Param, ...]] = {
    (c.name, b, p): tuple(q for q in PARAMS if _present(q, c, b, p))
    for c in DESCRIPTIONS.values() for b in (False, True) for p in (False, True)}


def params_of(info: Cell, bias: bool, projection: bool) -> Tuple[Param, ...]:
    """The parameters of a layer of cell ``info`` with/without biases and a projection, in the
    ops' `weights` order (the cell's own last)."""
    return _LAYOUT_PARAMS[(info.name, bool(bias), bool(projection))]


def _layouts(info: Cell) -> List[Tuple[bool, bool]]:
    """The (bias, projection) combinations a cell accepts."""
    return [(b, p) for p in ((False, True) if info.projection else (False,)) for b in (False, True)]


def weight_names(info: Cell, count: int) -> Tuple[str, ...]:
    """The names of the tensors of a `weights` list of ``count`` tensors for cell ``info``.

    The length says which optional groups the list holds (see csrc/torch/common.h: the bias
    group and the projection group differ in size); a RuntimeError, as from the ops, when no
    combination the cell accepts has that length."""
    def listed(bias, projection):
        return ", ".join(p.name for p in params_of(info, bias, projection))

    items = [f"{len(params_of(info, b, p))} ({listed(b, p)})" for b, p in _layouts(info)]
    accepted = " or ".join([", ".join(items[:-1]), items[-1]] if len(items) > 1 else items)
    for bias, projection in ((b, p) for p in (False, True) for b in (False, True)):
        if len(params_of(info, bias, projection)) != count:
            continue
        if projection and not info.projection:
            raise RuntimeError(
                f"rnnfast: weights has {count} tensors, which are {listed(bias, projection)}, "
                f"but the {info.name} cell takes no projection (weight_hr); it takes {accepted}")
        return tuple(p.name for p in params_of(info, bias, projection))
    raise RuntimeError(f"rnnfast: the {info.name} cell's weights must hold {accepted} tensors, "
                       f"got {count} tensors")


def layer_sizes(info: Cell, named: Mapping[str, object]) -> Tuple[int, int]:
    """(H, P) of a layer from its named weights: H from the rows of the first parameter with
    G*H rows (weight_ih), P from the rows of the one with P rows (weight_hr; 0 without)."""
    hidden = next(named[p.name].shape[0] // info.gates for p in PARAMS
                  if p.rows == "gate_rows" and p.name in named)
    proj = next((named[p.name].shape[0] for p in PARAMS if p.rows == "proj" and p.name in named), 0)
    return hidden, proj


def param_shape(param: Param, sizes: Mapping[str, int]) -> Tuple[int, ...]:
    """The shape of ``param`` given the sizes of the extents ("input", "hidden", "state",
    "proj", "gate_rows")."""
    if param.cols is None:
        return (sizes[param.rows],)
    return (sizes[param.rows], sizes[param.cols])


def extent_sizes(info: Cell, input_size: int, hidden: int, proj: int) -> Dict[str, int]:
    """The sizes of the shape legend's extents for one layer."""
    return {"input": input_size, "hidden": hidden, "state": proj if proj > 0 else hidden,
            "proj": proj, "gate_rows": info.gates * hidden}


def state_shapes(info: Cell, batch, hidden, proj) -> List[tuple]:
    """The shapes of a layer's states: h [B, S], then c [B, H] for a cell with a cell state."""
    shapes = [(batch, proj if proj > 0 else hidden)]
    if info.cell_state:
        shapes.append((batch, hidden))
    return shapes


def workspace_cols(info: Cell, hidden, proj):
    """Columns of the workspace a training forward saves per (t, b): the cell's saved blocks,
    the projection input (with a projection), h_{t-1}, then the layer-norm statistics of a
    layer-normalised cell (csrc/core/cells.h)."""
    hprev_col = (info.saved_blocks + (1 if proj > 0 else 0)) * hidden
    return hprev_col + (proj if proj > 0 else hidden) + info.stats_cols


def state_list(info: Cell) -> str:
    """The cell's state list as messages name it: "[h]" or "[h, c]"."""
    return "[" + ", ".join(STATE_NAMES[:info.states]) + "]"


def check_state(info: Cell, state: Sequence) -> None:
    """A state list is empty (zeros) or holds one tensor per state of the cell."""
    if len(state) not in (0, info.states):
        raise RuntimeError(f"rnnfast: the {info.name} cell's state must be empty (zero initial "
                           f"states) or {state_list(info)}, got {len(state)} tensors")
