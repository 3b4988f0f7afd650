"""bench_variants.py's implementations. Every runner computes out [T, B, H] from inputs.x, 1
layer, unidirectional, zero initial state; training calls backpropagate out.sum(). Gradients
are keyed by rnnfast's parameter names (+ 'input'), so checks.check can compare any two.

- RnnfastRunner: the rnnfast module itself, with the variant's options.
- The baselines, what users run without rnnfast (baseline_for picks one per variant):
  CellLoopRunner (torch.nn.LSTMCell / GRUCell in a Python loop over time steps),
  ZoneoutCellLoopRunner (the same with the zoneout blend), HandLoopRunner (a hand-written
  coupled / peephole LSTM cell in the loop), TorchWeightDropRunner (torch.nn.LSTM / GRU with
  a dropped W_hh through torch.func.functional_call).
- MaskDrawRunner: only the zoneout masks rnnfast draws per training call.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .runners import Inputs, Runner


def options_on(kwargs: dict) -> dict:
    """The options a variant turns on (False / 0 are the defaults, i.e. off)."""
    return {k: v for k, v in kwargs.items() if v}


class VariantRunner(Runner):
    """A runner with its parameters by rnnfast's names and a training switch (the row's mode;
    the check runs in eval mode)."""

    kind = ""          # what the baseline column calls it
    is_loop = False    # a Python loop over time steps (where the speedup target applies)

    def __init__(self) -> None:
        self.params: Dict[str, nn.Parameter] = {}
        self.training = False
        self._x: Optional[torch.Tensor] = None

    def set_training(self, on: bool) -> None:
        self.training = on

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def infer(self, inputs: Inputs):
        with torch.no_grad():
            return self.forward(inputs.x), None, None

    def train(self, inputs: Inputs) -> None:
        for p in self.params.values():
            p.grad = None
        inputs.x.grad = None
        self.forward(inputs.x).sum().backward()
        self._x = inputs.x

    def copy_layer0(self, module: nn.Module, cell: nn.Module) -> None:
        """Loads the layer-0 parameters of the rnnfast `module` into `cell` (whose parameters
        are named without the _l0 suffix) and tracks them under the module's names."""
        sd = module.state_dict()
        with torch.no_grad():
            for name, p in cell.named_parameters():
                p.copy_(sd[f"{name}_l0"])
                self.params[f"{name}_l0"] = p

    def grads(self) -> Dict[str, torch.Tensor]:
        g = {n: p.grad for n, p in self.params.items() if p.grad is not None}
        if self._x is not None and self._x.grad is not None:
            g["input"] = self._x.grad
        return g


class RnnfastRunner(VariantRunner):
    """The rnnfast module itself (in train() or eval() as the row's mode says)."""

    kind = "rnnfast"

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.m = module
        self.params = dict(module.named_parameters())

    def set_training(self, on: bool) -> None:
        super().set_training(on)
        self.m.train(on)

    def forward(self, x):
        return self.m(x)[0]


class CellLoopRunner(VariantRunner):
    """The plain cell as users write a custom RNN today: torch.nn.LSTMCell / GRUCell / RNNCell
    called once per time step from Python, outputs stacked."""

    is_loop = True

    def __init__(self, module: nn.Module, cls_name: str) -> None:
        super().__init__()
        self.kind = f"{cls_name}Cell loop"
        self.cell = getattr(nn, f"{cls_name}Cell")(module.input_size, module.hidden_size)
        self.lstm = cls_name == "LSTM"
        self.copy_layer0(module, self.cell)

    def forward(self, x):
        h = x.new_zeros(x.shape[1], self.cell.hidden_size)
        state = (h, h) if self.lstm else h
        outs = []
        for t in range(x.shape[0]):
            state = self.cell(x[t], state)
            outs.append(state[0] if self.lstm else state)
        return torch.stack(outs)


def zoneout_probs(cls_name: str, zoneout) -> Tuple[float, float]:
    """(p_h, p_c) of a module's `zoneout` argument: p for every state, or for LSTM a pair
    (p_c, p_h), as rnnfast reads it. p_c is 0 for GRU / RNN (no cell state)."""
    if isinstance(zoneout, (tuple, list)):
        p_c, p_h = (float(v) for v in zoneout)
    else:
        p_h = p_c = float(zoneout)
    return (p_h, p_c) if cls_name == "LSTM" else (p_h, 0.0)


class ZoneoutCellLoopRunner(CellLoopRunner):
    """Zoneout as users write it today: the CellLoopRunner loop (torch.nn.LSTMCell / GRUCell /
    RNNCell per time step) with the blend in Python after each step,
    s_t = m * s_{t-1} + (1 - m) * s~_t for h (and c for LSTM). Training: masks
    m ~ Bernoulli(p) drawn with torch.bernoulli once per call for all steps ([T, B, H]; h's
    before c's, none for a p of 0, rnnfast's order, so a seeded call draws the masks rnnfast
    would); eval: m = p, the expectation. The output is the zoned h."""

    def __init__(self, module: nn.Module, cls_name: str, zoneout) -> None:
        super().__init__(module, cls_name)
        self.kind = f"{cls_name}Cell loop+zoneout"
        self.p_h, self.p_c = zoneout_probs(cls_name, zoneout)

    def _masks(self, x: torch.Tensor, p: float):
        """One state's blend weights, indexed by step: None when p is 0 (no zoneout, nothing
        drawn), a [T, B, H] Bernoulli(p) mask in training, [p] * T in eval."""
        if p == 0:
            return None
        if not self.training:
            return [p] * x.shape[0]
        return torch.bernoulli(x.new_full((x.shape[0], x.shape[1], self.cell.hidden_size), p))

    def forward(self, x):
        m_h = self._masks(x, self.p_h)
        m_c = self._masks(x, self.p_c) if self.lstm else None
        h = c = x.new_zeros(x.shape[1], self.cell.hidden_size)
        outs = []
        for t in range(x.shape[0]):
            if self.lstm:
                h_new, c_new = self.cell(x[t], (h, c))
                if m_c is not None:
                    c_new = m_c[t] * c + (1 - m_c[t]) * c_new
                c = c_new
            else:
                h_new = self.cell(x[t], h)
            h = h_new if m_h is None else m_h[t] * h + (1 - m_h[t]) * h_new
            outs.append(h)
        return torch.stack(outs)


def _ln(v: torch.Tensor) -> torch.Tensor:
    """Layer normalisation without gain over the last dimension (eps 1e-5, biased variance)."""
    return F.layer_norm(v, v.shape[-1:])


class HandLSTMCell(nn.Module):
    """An LSTM cell with coupled gates, peepholes and/or layer normalisation, written as a user
    would (and with the equations of README "Beyond torch"; gate rows i, f, g, o, or i, g, o
    when coupled):

        z = x W_ih^T + b_ih + h W_hh^T + b_hh;  z_i += w_ci * c;  z_f += w_cf * c
          (layer norm: z = LN(x W_ih^T) g_ih + LN(h W_hh^T) g_hh + b_ih + b_hh)
        i = sigmoid(z_i);  f = 1 - i if coupled else sigmoid(z_f);  g = tanh(z_g)
        c' = f * c + i * g;  z_o += w_co * c';  h' = sigmoid(z_o) * tanh(c')
          (layer norm: h' = sigmoid(z_o) * tanh(LN(c') g_c + b_c))
    """

    def __init__(self, input_size: int, hidden_size: int, coupled: bool, peephole: bool,
                 layer_norm: bool = False) -> None:
        super().__init__()
        G = 3 if coupled else 4
        self.coupled, self.peephole, self.hidden_size = coupled, peephole, hidden_size
        self.layer_norm = layer_norm
        self.weight_ih = nn.Parameter(torch.empty(G * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(G * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(G * hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(G * hidden_size))
        if peephole:
            self.weight_ci = nn.Parameter(torch.empty(hidden_size))
            if not coupled:
                self.weight_cf = nn.Parameter(torch.empty(hidden_size))
            self.weight_co = nn.Parameter(torch.empty(hidden_size))
        if layer_norm:
            for name, n in (("ln_ih_weight", G), ("ln_hh_weight", G), ("ln_c_weight", 1),
                            ("ln_c_bias", 1)):
                setattr(self, name, nn.Parameter(torch.empty(n * hidden_size)))

    def forward(self, x, state, weight_hh=None):
        """One step; weight_hh replaces self.weight_hh (a dropped copy, for weight drop)."""
        h, c = state
        w_hh = self.weight_hh if weight_hh is None else weight_hh
        if self.layer_norm:
            z = (_ln(F.linear(x, self.weight_ih)) * self.ln_ih_weight + self.bias_ih
                 + _ln(F.linear(h, w_hh)) * self.ln_hh_weight + self.bias_hh)
        else:
            z = F.linear(x, self.weight_ih, self.bias_ih) + F.linear(h, w_hh, self.bias_hh)
        if self.coupled:
            z_i, z_g, z_o = z.chunk(3, 1)
        else:
            z_i, z_f, z_g, z_o = z.chunk(4, 1)
        if self.peephole:
            z_i = z_i + self.weight_ci * c
            if not self.coupled:
                z_f = z_f + self.weight_cf * c
        i = torch.sigmoid(z_i)
        f = 1 - i if self.coupled else torch.sigmoid(z_f)
        c = f * c + i * torch.tanh(z_g)
        if self.peephole:
            z_o = z_o + self.weight_co * c
        out = _ln(c) * self.ln_c_weight + self.ln_c_bias if self.layer_norm else c
        h = torch.sigmoid(z_o) * torch.tanh(out)
        return h, c


class HandLayerNormGRUCell(nn.Module):
    """A layer-normalised GRU cell written as a user would (as haste's LayerNormGRU):
    a = LN(x W_ih^T) g_ih + b_ih, r = LN(h W_hh^T) g_hh + b_hh, then torch's GRU equations."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        for name, shape in (("weight_ih", (3 * hidden_size, input_size)),
                            ("weight_hh", (3 * hidden_size, hidden_size)),
                            ("bias_ih", (3 * hidden_size,)), ("bias_hh", (3 * hidden_size,)),
                            ("ln_ih_weight", (3 * hidden_size,)),
                            ("ln_hh_weight", (3 * hidden_size,))):
            setattr(self, name, nn.Parameter(torch.empty(shape)))

    def forward(self, x, h, weight_hh=None):
        w_hh = self.weight_hh if weight_hh is None else weight_hh
        a = _ln(F.linear(x, self.weight_ih)) * self.ln_ih_weight + self.bias_ih
        r = _ln(F.linear(h, w_hh)) * self.ln_hh_weight + self.bias_hh
        a_r, a_z, a_n = a.chunk(3, 1)
        r_r, r_z, r_n = r.chunk(3, 1)
        rg = torch.sigmoid(a_r + r_r)
        z = torch.sigmoid(a_z + r_z)
        n = torch.tanh(a_n + rg * r_n)
        return (1 - z) * n + z * h


class HandLoopRunner(VariantRunner):
    """The LSTM variant as a Python loop over HandLSTMCell (the layer-normalised GRU over
    HandLayerNormGRUCell); with weight_drop, W_hh goes through F.dropout once per call (in
    training), as rnnfast draws it."""

    kind = "hand-written loop"
    is_loop = True

    def __init__(self, module: nn.Module, coupled: bool, peephole: bool,
                 weight_drop: float = 0.0, layer_norm: bool = False) -> None:
        super().__init__()
        self.lstm = module.mode == "LSTM"  # else a GRU (layer_norm)
        self.cell = (HandLSTMCell(module.input_size, module.hidden_size, coupled, peephole,
                                  layer_norm) if self.lstm
                     else HandLayerNormGRUCell(module.input_size, module.hidden_size))
        self.weight_drop = weight_drop
        self.copy_layer0(module, self.cell)

    def forward(self, x):
        w_hh = None
        if self.weight_drop > 0 and self.training:
            w_hh = F.dropout(self.cell.weight_hh, self.weight_drop, True)
        h = x.new_zeros(x.shape[1], self.cell.hidden_size)
        state = (h, h) if self.lstm else h
        outs = []
        for t in range(x.shape[0]):
            state = self.cell(x[t], state, w_hh)
            outs.append(state[0] if self.lstm else state)
        return torch.stack(outs)


class TorchWeightDropRunner(VariantRunner):
    """Weight drop as AWD-LSTM users do it: torch.nn.LSTM / GRU (torch's own fused CPU op, not a
    loop) through torch.func.functional_call with weight_hh_l0 = F.dropout(weight_hh_l0, p)."""

    def __init__(self, module: nn.Module, cls_name: str, p: float) -> None:
        super().__init__()
        self.kind = f"nn.{cls_name}+dropped W_hh"
        self.m = getattr(nn, cls_name)(module.input_size, module.hidden_size)
        self.m.load_state_dict(module.state_dict(), strict=True)
        self.p = p
        self.params = dict(self.m.named_parameters())

    def set_training(self, on: bool) -> None:
        super().set_training(on)
        self.m.train(on)

    def forward(self, x):
        params = dict(self.params)
        params["weight_hh_l0"] = F.dropout(params["weight_hh_l0"], self.p, self.training)
        return torch.func.functional_call(self.m, params, (x,))[0]


def baseline_for(cls_name: str, kwargs: dict) -> Optional[Callable[[nn.Module], VariantRunner]]:
    """The 'what users do today' implementation of a variant, as a factory taking the rnnfast
    module (whose parameters it copies); None when none is written here yet (a new option, or
    a combination no loop here covers, e.g. zoneout with peepholes or weight drop, gets its row
    with the baseline columns n/a until one is added)."""
    opts = options_on(kwargs)
    p = float(opts.pop("weight_drop", 0.0))
    if set(opts) == {"zoneout"} and p == 0:
        zoneout = opts["zoneout"]
        return lambda m: ZoneoutCellLoopRunner(m, cls_name, zoneout)
    if cls_name == "LSTM" and opts and set(opts) <= {"coupled_gates", "peephole", "layer_norm"}:
        coupled, peephole = bool(opts.get("coupled_gates")), bool(opts.get("peephole"))
        ln = bool(opts.get("layer_norm"))
        return lambda m: HandLoopRunner(m, coupled, peephole, p, ln)
    if cls_name == "GRU" and set(opts) == {"layer_norm"}:
        return lambda m: HandLoopRunner(m, False, False, p, True)
    if opts:
        return None
    if p > 0:
        return lambda m: TorchWeightDropRunner(m, cls_name, p)
    return lambda m: CellLoopRunner(m, cls_name)


class MaskDrawRunner(VariantRunner):
    """Only the zoneout masks an rnnfast module draws per training call
    (rnnfast.modules._zoneout_tensors: rnnfast.ops.keep_mask on CPU), timed with the rest so that a
    zoneout row's cost can be split into the draw and the kernels."""

    kind = "mask draw"

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        from rnnfast.modules import _zoneout_tensors
        self.draw = _zoneout_tensors
        self.probs = module._zoneout_p
        self.sizes = [module.proj_size or module.hidden_size, module.hidden_size]
        self.calls = module.num_layers * (2 if module.bidirectional else 1)

    def forward(self, x):
        for _ in range(self.calls):
            masks = self.draw(self.probs, True, tuple(x.shape[:-1]), self.sizes, x)
        return masks

    def infer(self, inputs: Inputs):
        self.forward(inputs.x)
        return None, None, None

    def train(self, inputs: Inputs) -> None:
        self.forward(inputs.x)
