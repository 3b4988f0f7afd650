"""The CPU shortcut of ops.layer (ops._straight_to_cpu): a call that records no autograd, on
plain CPU tensors, with nothing else watching, goes to the CPU kernel through a pybind11 entry
(_C.layer_cpu_inference) instead of the dispatcher; every other call keeps the full route.

Checked here: which route each situation takes (spies in place of ops._LAYER and
ops._LAYER_CPU), that the
shortcut's results are the full route's bit for bit, and that what watches the dispatcher
(dispatch and torch function modes, the profiler, the TorchScript tracer, torch.compile,
autocast, autograd, tensor subclasses) still sees the op."""
import os
import subprocess
import sys

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import rnnfast
from rnnfast import ops


class _Spy:
    """Stands in for ops._LAYER (the full route) and ops._LAYER_CPU (the straight one) and
    records the route of each call."""

    def __init__(self, real, straight):
        self.real = real
        self.straight = straight
        self.routes = []

    def __call__(self, *args):
        self.routes.append("full")
        return self.real(*args)

    def straight_call(self, *args):
        self.routes.append("straight")
        return self.straight(*args)


@pytest.fixture
def spy(monkeypatch):
    s = _Spy(ops._LAYER, ops._LAYER_CPU)
    monkeypatch.setattr(ops, "_LAYER", s)
    monkeypatch.setattr(ops, "_LAYER_CPU", s.straight_call)
    return s


def _cell_args(cls=rnnfast.LSTMCell, B=3, I=5, H=4, dtype=torch.float32):
    torch.manual_seed(0)
    cell = cls(I, H).to(dtype)
    x = torch.randn(B, I, dtype=dtype)
    h = torch.randn(B, H, dtype=dtype)
    state = (h, torch.randn(B, H, dtype=dtype)) if cls is rnnfast.LSTMCell else h
    return cell, x, state


@pytest.mark.parametrize("cls", [rnnfast.LSTMCell, rnnfast.GRUCell, rnnfast.RNNCell])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_plain_inference_goes_straight_with_the_same_bits(spy, cls, dtype):
    cell, x, state = _cell_args(cls, dtype=dtype)
    with torch.no_grad():
        got = cell(x, state)
    assert spy.routes == ["straight"]
    # the full route, through the dispatcher's Autograd kernel
    w = [getattr(cell, n) for n in rnnfast.modules._cell_weight_names(cell._cell_name, True)]
    states = list(state) if isinstance(state, tuple) else [state]
    with torch.no_grad():
        _, full, _ = spy.real(cell._cell_name if cls is not rnnfast.RNNCell else "rnn_tanh",
                              x.unsqueeze(0), states, w, None, False, False, None)
    got = list(got) if isinstance(got, tuple) else [got]
    assert len(got) == len(full)
    for a, b in zip(got, full):
        assert torch.equal(a, b)


def test_grad_enabled_without_grads_goes_straight(spy):
    # nothing requires grad: autograd would record nothing either way
    cell, x, state = _cell_args()
    cell.requires_grad_(False)
    h, c = cell(x, state)
    assert spy.routes == ["straight"] and not h.requires_grad


def test_a_layer_module_in_eval_goes_straight(spy):
    m = rnnfast.GRU(5, 4).eval()
    with torch.no_grad():
        m(torch.randn(6, 2, 5))
    assert spy.routes == ["straight"]


def test_autograd_takes_the_full_route(spy):
    cell, x, state = _cell_args()
    h, c = cell(x, state)
    assert spy.routes == ["full"]
    (h.sum() + c.sum()).backward()
    assert cell.weight_hh.grad is not None and cell.weight_hh.grad.abs().sum() > 0


def test_an_input_that_requires_grad_takes_the_full_route(spy):
    cell, x, state = _cell_args()
    cell.requires_grad_(False)
    x.requires_grad_(True)
    h, _ = cell(x, state)
    assert spy.routes == ["full"] and h.requires_grad


class _SeenOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def test_a_dispatch_mode_sees_the_op(spy):
    cell, x, state = _cell_args()
    mode = _SeenOps()
    with torch.no_grad(), mode:
        cell(x, state)
    assert spy.routes == ["full"]
    assert any(n.startswith("rnnfast.layer") for n in mode.names), mode.names


class _SeenFunctions(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def test_a_torch_function_mode_sees_the_op(spy):
    cell, x, state = _cell_args()
    mode = _SeenFunctions()
    with torch.no_grad(), mode:
        cell(x, state)
    assert spy.routes == ["full"]
    assert any("rnnfast.layer" in n for n in mode.names), mode.names


def test_the_profiler_sees_the_op(spy):
    cell, x, state = _cell_args()
    with torch.no_grad(), torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        cell(x, state)
    assert spy.routes == ["full"]
    assert "rnnfast::layer" in {e.name for e in prof.events()}


def test_the_torchscript_tracer_records_the_op(spy):
    cell, x, state = _cell_args(rnnfast.GRUCell)
    with torch.no_grad():
        traced = torch.jit.trace(cell, (x, state), check_trace=False)
    assert spy.routes == ["full"]
    assert "rnnfast::layer" in str(traced.graph)
    with torch.no_grad():
        assert torch.equal(traced(x, state), cell(x, state))


def test_autocast_takes_the_full_route_and_casts(spy):
    # under CPU autocast a bfloat16 input (say, from a Linear run under autocast) reaches the
    # op; its autocast kernel (ops.py, register_autocast) casts it up to float32
    cell, x, state = _cell_args(rnnfast.GRUCell)
    with torch.no_grad():
        want = cell(x.bfloat16().float(), state)
    spy.routes.clear()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = cell(x.bfloat16(), state)
    assert spy.routes == ["full"]
    assert got.dtype == torch.float32 and torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lazy_tensors_reach_the_kernel_materialized(spy, dtype):
    # a negated view (its memory holds -x, it reads as x) and a ZeroTensor (no memory) are plain
    # torch.Tensor objects; the dispatcher's fallbacks materialize them before a kernel, and
    # the glue does the same for the straight route (common.h: materialized)
    cell, x, (h, c) = _cell_args(rnnfast.LSTMCell, dtype=dtype)
    neg_x = torch._neg_view(-x)
    zero_c = torch._efficientzerotensor(c.shape, dtype=dtype)
    assert neg_x.is_neg() and zero_c._is_zerotensor()
    with torch.no_grad():
        want = cell(x, (h, torch.zeros_like(c)))
        got = cell(neg_x, (h, zero_c))
    assert spy.routes == ["straight", "straight"]
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    w = [cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh]
    lazy_w = [torch._neg_view(-t.detach()) for t in w]
    with torch.no_grad():
        out, states = ops.layer("lstm", x.unsqueeze(0), [h, c], lazy_w)
        ref, ref_states = ops.layer("lstm", x.unsqueeze(0), [h, c], w)
    assert torch.equal(out, ref)
    for a, b in zip(states, ref_states):
        assert torch.equal(a, b)


class _Tagged(torch.Tensor):
    """A subclass with torch's default __torch_function__: its type must survive the op."""


def test_a_tensor_subclass_takes_the_full_route(spy):
    cell, x, state = _cell_args(rnnfast.GRUCell)
    with torch.no_grad():
        out = cell(x.as_subclass(_Tagged), state)
    assert spy.routes == ["full"]
    assert type(out) is _Tagged


def test_check_is_off_under_compile_and_for_other_devices():
    x = torch.randn(1, 2, 3)
    w = [torch.randn(4, 3)]
    assert ops._straight_to_cpu(x, None, [], w, ())
    assert not ops._straight_to_cpu(x.to("meta"), None, [], w, ())
    assert not ops._straight_to_cpu(x, None, [x.as_subclass(_Tagged)], w, ())
    assert not ops._straight_to_cpu(x, torch.ones(2, dtype=torch.long).as_subclass(_Tagged),
                                    [], w, ())
    assert not ops._straight_to_cpu(x, None, [], w, (torch.tensor(0.5).as_subclass(_Tagged),))

    seen = []

    def compiled(t):
        seen.append(ops._straight_to_cpu(t, None, [], w, ()))
        return t + 1

    torch.compile(compiled, backend="eager")(x)
    assert seen == [False]


def test_the_environment_turns_the_shortcut_off():
    code = ("import torch, rnnfast; from rnnfast import ops; "
            "x = torch.randn(1, 2, 3); w = [torch.randn(8, 3), torch.randn(8, 2)]; "
            "print(ops._straight_to_cpu(x, None, [], w, ()))")
    env = {k: v for k, v in os.environ.items() if k != "RNNFAST_STRAIGHT_DISPATCH"}
    for value, want in (("0", "False"), ("1", "True"), (None, "True")):
        e = dict(env) if value is None else {**env, "RNNFAST_STRAIGHT_DISPATCH": value}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=120, env=e)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == want, (value, out.stdout)


def test_the_direct_entry_refuses_a_tensor_not_on_the_cpu():
    """_C.layer_cpu_inference is the CPU kernel without the dispatcher, which would have sent a
    meta (or CUDA) input elsewhere: it must refuse one, not read its memory."""
    x = torch.randn(3, 2, 4, device="meta")
    w = [torch.randn(12, 4), torch.randn(12, 3), torch.randn(12), torch.randn(12)]  # RNN, H = 3
    with pytest.raises(RuntimeError, match="the input must be a CPU tensor, got meta"):
        rnnfast._C.layer_cpu_inference("rnn_tanh", x, [], w, None, False, None)
    with pytest.raises(RuntimeError, match="weight_ih is on meta but the input is on cpu"):
        rnnfast._C.layer_cpu_inference("rnn_tanh", torch.randn(3, 2, 4), [],
                                       [w[0].to("meta")] + w[1:], None, False, None)
