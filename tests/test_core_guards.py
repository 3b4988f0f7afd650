"""Guards on the CPU kernels' edge cases (issue 14, section 5):

- the debug mode RNNFAST_DEBUG_NAN_SCRATCH=1 (every scratch block and output starts as NaN, so
  a kernel that reads scratch it did not write gives NaN): it is on when asked for, and the
  kernels pass a parity check against torch with it;
- the padding of x and of grad_output (the (t, b) past each length) never reaches a result
  of the raw ops, NaN and Inf included, with unsorted lengths, sorted ones and packed inputs;
- an empty sequence (T = 0) raises a clear RuntimeError in the raw ops, as in the modules;
- float64 keeps denormals as torch does; float32 flushes them (the documented speed trade);
  neither changes the caller's denormal mode (torch.set_flush_denormal).
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import rnnfast
from rnnfast import _cells, _reference
from rnn_testutils import modules_for_cell

# every cell, and with a projection (P = 3) each cell that takes one
CELLS = [(c, 0) for c in rnnfast.ops.CELLS] + [
    (c, 3) for c in rnnfast.ops.CELLS if _cells.cell(c).projection]


# --------------------------------------------------------------------------------------------
# The NaN-scratch debug mode
# --------------------------------------------------------------------------------------------

# Modules against torch.nn in float64, forward and backward, over the layouts whose kernels
# skip work on rows they never write: B > 4 (dG panels), sorted and unsorted lengths, packed,
# projection, both directions, two layers. Prints the mode and the largest difference
# (infinite if any result is NaN).
_NAN_MODE_SCRIPT = textwrap.dedent("""
    import json, math, torch, rnnfast
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    worst = 0.0
    for kind, kw in [("LSTM", {}), ("LSTM", {"proj_size": 3}), ("GRU", {}),
                     ("RNN", {"nonlinearity": "relu"})]:
        torch.manual_seed(0)
        ref = getattr(torch.nn, kind)(5, 7, num_layers=2, bidirectional=True,
                                      dtype=torch.float64, **kw)
        ours = getattr(rnnfast, kind)(5, 7, num_layers=2, bidirectional=True,
                                      dtype=torch.float64, **kw)
        ours.load_state_dict(ref.state_dict())
        # B = 30 and lengths 1..8: the active rows of successive steps (30, 26, 23, ...)
        # cross the GEMM panels' row boundaries (4, 6 or 12 rows, by SIMD path)
        T, B = 8, 30
        x = torch.randn(T, B, 5, dtype=torch.float64)
        unsorted = [(b * 5) % 8 + 1 for b in range(B)]
        for lengths in (None, sorted(unsorted, reverse=True), unsorted):
            res = []
            for m in (ref, ours):
                xi = x.clone().requires_grad_()
                if lengths is None:
                    out, _ = m(xi)
                else:
                    packed = pack_padded_sequence(xi, torch.tensor(lengths),
                                                  enforce_sorted=False)
                    out, _ = pad_packed_sequence(m(packed)[0])
                g = torch.autograd.grad((out * torch.cos(out.detach() * 3)).sum(),
                                        [xi] + list(m.parameters()))
                res.append([out.detach()] + [t.detach() for t in g])
            for a, b in zip(*res):
                d = (a - b).abs().max().item()
                worst = max(worst, d) if math.isfinite(d) else math.inf  # (max() skips NaN)
    print(json.dumps({"debug_nan_scratch": rnnfast._C.debug_nan_scratch(),
                      "scratch_cache": rnnfast._C.scratch_cache_enabled(),
                      "cached_bytes": rnnfast._C.scratch_cached_bytes(),
                      "worst": repr(worst)}))
""")


def _run_script(script, extra_env):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env.update(extra_env)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _env_flag(name):
    v = os.environ.get(name)
    return None if v in (None, "") else v != "0"


def test_debug_nan_scratch_mode_is_on_when_asked_and_parity_holds():
    """RNNFAST_DEBUG_NAN_SCRATCH=1 turns the mode on (off by default), and with every scratch
    block starting as NaN the modules still match torch in float64: no kernel reads scratch
    it did not write (e.g. the dG panels, which are not zero-filled). The subprocess also
    turns the scratch cache off (RNNFAST_SCRATCH_CACHE=0): nothing is kept then. (This process
    runs with the cache as the suite was started: tests/test_threads_memory.py, and
    tests/cpp for the cache itself.)"""
    # this process: the modes as the environment asks (off by default)
    assert rnnfast._C.debug_nan_scratch() == bool(_env_flag("RNNFAST_DEBUG_NAN_SCRATCH"))
    if _env_flag("RNNFAST_SCRATCH_CACHE") is not None:
        assert rnnfast._C.scratch_cache_enabled() == _env_flag("RNNFAST_SCRATCH_CACHE")
    r = _run_script(_NAN_MODE_SCRIPT, {"RNNFAST_DEBUG_NAN_SCRATCH": "1",
                                       "RNNFAST_SCRATCH_CACHE": "0"})
    assert r["debug_nan_scratch"] is True
    assert r["scratch_cache"] is False and r["cached_bytes"] == 0, r
    assert float(r["worst"]) < 1e-9, r


# --------------------------------------------------------------------------------------------
# Padding never reaches a result
# --------------------------------------------------------------------------------------------

def _params(cell, I, H, P, seed):
    """The layer's initial states ([h] or [h, c], batch 4) and weights (with biases; weight_hr
    with P), by name: h0, c0, then the weights' names."""
    g = torch.Generator().manual_seed(seed)
    info = _cells.cell(cell)

    def r(*shape):
        return (torch.rand(shape, generator=g, dtype=torch.float64) - 0.5)

    sizes = _cells.extent_sizes(info, I, H, P)
    states = {n: r(*shape) for n, shape in zip(("h0", "c0"), _cells.state_shapes(info, 4, H, P))}
    weights = {p.name: r(*_cells.param_shape(p, sizes))
               for p in _cells.params_of(info, True, P > 0)}
    return {**states, **weights}


def _split(named):
    """The state list and the weights list of the tensors named as by _params."""
    return ([named[n] for n in ("h0", "c0") if n in named],
            [named[p.name] for p in _cells.PARAMS if p.name in named])


def _grads(fn, leaves, upstream):
    leaves = {k: v.clone().requires_grad_() for k, v in leaves.items() if v is not None}
    outs = fn(**leaves)
    pairs = [(o, u) for o, u in zip(outs, upstream) if o is not None]
    gs = torch.autograd.grad([o for o, _ in pairs], list(leaves.values()),
                             [u for _, u in pairs])
    return [o.detach() for o, _ in pairs], dict(zip(leaves, gs))


@pytest.mark.parametrize("cell,P", CELLS, ids=[f"{c}-P{p}" for c, p in CELLS])
@pytest.mark.parametrize("order", ["unsorted", "sorted", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_padding_of_x_and_grad_output_never_reaches_a_result(cell, P, order, reverse):
    """The raw op with lengths, NaN/Inf in the padding of x and of grad_output: finite
    outputs and gradients equal to the float64 reference run on zero padding, and zeros in
    the padding of grad_input. (Unsorted lengths used to feed x's padding into the dW_ih
    GEMM: NaN * 0 made dW_ih NaN.) Packed inputs have no padding rows: the same data packed
    must give the same gradients."""
    T, B, I, H = 6, 4, 5, 7
    S = P or H
    lengths = {"unsorted": [3, 6, 1, 4], "sorted": [6, 4, 3, 1],
               "packed": [6, 4, 3, 1]}[order]
    L = torch.tensor(lengths)
    pad = torch.arange(T).unsqueeze(1) >= L.unsqueeze(0)  # [T, B]: padding (t, b)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(T, B, I, generator=g, dtype=torch.float64)
    gy = torch.randn(T, B, S, generator=g, dtype=torch.float64)
    ghy = torch.randn(B, S, generator=g, dtype=torch.float64)
    gcy = (torch.randn(B, H, generator=g, dtype=torch.float64)
           if _cells.cell(cell).cell_state else None)
    x_clean = x.masked_fill(pad.unsqueeze(2), 0.0)
    gy_clean = gy.masked_fill(pad.unsqueeze(2), 0.0)
    x_dirty, gy_dirty = x_clean.clone(), gy_clean.clone()
    specials = torch.tensor([float("nan"), float("inf"), -float("inf")], dtype=torch.float64)
    for k, (t, b) in enumerate(pad.nonzero().tolist()):
        x_dirty[t, b] = specials[k % 3]
        gy_dirty[t, b, ::2] = specials[(k + 1) % 3]
    p = _params(cell, I, H, P, seed=5)

    def ref(x, **named):
        out, final = _reference.layer(cell, x, *_split(named), L, reverse)
        return [out, *final]

    def ours(x, **named):
        if order == "packed":  # the rows of the active (t, b), time-major
            out, final = rnnfast.ops.layer(cell, x[~pad], *_split(named), L, reverse)
            full = out.new_zeros(T, B, S)
            full[~pad] = out
            return [full, *final]
        out, final = rnnfast.ops.layer(cell, x, *_split(named), L, reverse)
        return [out, *final]

    want_out, want = _grads(ref, dict(p, x=x_clean), (gy_clean, ghy, gcy))
    got_out, got = _grads(ours, dict(p, x=x_dirty), (gy_dirty, ghy, gcy))
    for name, a, b in [(f"output {i}", a, b) for i, (a, b) in enumerate(zip(got_out, want_out))] \
            + [(f"grad {k}", got[k], want[k]) for k in want]:
        assert torch.isfinite(a).all(), f"{name} is not finite"
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)
    assert (got["x"][pad] == 0).all(), "grad_input is not zero on the padding"


# --------------------------------------------------------------------------------------------
# T = 0
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cell,P", CELLS, ids=[f"{c}-P{p}" for c, p in CELLS])
def test_empty_sequence_raises_in_the_raw_op_as_in_the_modules(cell, P):
    """The core API defines T = 0 (the final state is the initial one; tests/cpp), but the
    raw ops refuse it with a clear RuntimeError, as torch's and rnnfast's modules do: a
    padded [0, B, I] input, and a packed one whose lengths are all zero."""
    state, weights = _split(_params(cell, 5, 7, P, seed=1))
    for x, lengths in [(torch.zeros(0, 4, 5, dtype=torch.float64), None),
                       (torch.zeros(0, 5, dtype=torch.float64), torch.zeros(4, dtype=torch.long))]:
        for training in (False, True):
            with pytest.raises(RuntimeError, match="at least one time step"):
                torch.ops.rnnfast.layer(cell, x, state, weights, lengths, False, training)
        # the plain-PyTorch loop (torch.func, forward AD, devices without kernels) as well
        with pytest.raises(RuntimeError, match="^rnnfast: input must have at least one time"):
            _reference.layer(cell, x, state, weights, lengths)
    with pytest.raises(RuntimeError, match="^rnnfast: input must have at least one time"):
        _reference.layer(cell, torch.zeros(0, 5, dtype=torch.float64), state, weights,
                         torch.zeros(0, dtype=torch.long))   # no sequences
    for cls, kw in modules_for_cell(cell):
        kw = {**kw, "proj_size": P} if P else kw
        with pytest.raises(RuntimeError):
            cls(5, 7, dtype=torch.float64, **kw)(torch.zeros(0, 4, 5, dtype=torch.float64))


# --------------------------------------------------------------------------------------------
# Denormals
# --------------------------------------------------------------------------------------------

@pytest.fixture
def flush_denormal_off():
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU has no FTZ/DAZ control")
    yield
    torch.set_flush_denormal(False)


def _tiny_relu_rnn(dtype, scale):
    """An RNN (ReLU) whose states are around `scale`, and its torch twin."""
    torch.manual_seed(0)
    ref = torch.nn.RNN(6, 8, nonlinearity="relu", dtype=torch.float64)
    with torch.no_grad():
        ref.weight_hh_l0.mul_(0.5)
        ref.bias_ih_l0.zero_()
        ref.bias_hh_l0.zero_()
    ref = ref.to(dtype)
    ours = rnnfast.RNN(6, 8, nonlinearity="relu", dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    x = (torch.rand(5, 3, 6, dtype=torch.float64) * scale).to(dtype)
    return ref, ours, x


def test_float64_keeps_denormals_as_torch_does(flush_denormal_off):
    """States and gradients in the float64 denormal range (below 2.2e-308) match torch's
    float64 results: a flush to zero (FTZ/DAZ) would give zeros. An LSTM with zero weights
    halves c each step from c0 = 2^-1000, so cy = 2^-1040 exactly."""
    ref, ours, x = _tiny_relu_rnn(torch.float64, 1e-309)
    res = []
    for m in (ref, ours):
        xi = x.clone().requires_grad_()
        out, hn = m(xi)
        gw = torch.autograd.grad(out.sum() + hn.sum(), [m.weight_hh_l0, m.weight_ih_l0])
        res.append((out.detach(), gw[0], gw[1]))
    (want_out, want_ghh, want_gih), (out, ghh, gih) = res
    assert 0 < want_out[want_out > 0].min() < 2.2e-308, "the case must reach denormals"
    assert 0 < want_ghh.abs().max() < 2.2e-308
    torch.testing.assert_close(out, want_out, rtol=1e-10, atol=0)
    torch.testing.assert_close(ghh, want_ghh, rtol=1e-10, atol=0)
    torch.testing.assert_close(gih, want_gih, rtol=1e-10, atol=0)

    lstm = rnnfast.LSTM(1, 4, dtype=torch.float64)
    with torch.no_grad():
        for w in lstm.parameters():
            w.zero_()
    c0 = torch.full((1, 2, 4), 2.0 ** -1000, dtype=torch.float64)
    _, (_, cy) = lstm(torch.zeros(40, 2, 1, dtype=torch.float64), (torch.zeros_like(c0), c0))
    assert (cy == 2.0 ** -1040).all(), cy


def test_float32_still_flushes_denormals(flush_denormal_off):
    """The float32 kernels flush denormals (FTZ/DAZ, for speed; torch does not): states
    around 1e-40 come out as zeros where torch's are denormal."""
    ref, ours, x = _tiny_relu_rnn(torch.float32, 1e-39)
    want, _ = ref(x)
    got, _ = ours(x)
    assert (want > 0).any(), "torch keeps float32 denormals"
    assert (got == 0).all()


def _flushes_denormals():
    """Whether torch flushes a float32 denormal result on this thread, and on its pool's
    threads (a large elementwise op runs on all of them)."""
    one = (torch.tensor([1e-30], dtype=torch.float32) * 1e-10).item() == 0.0
    big = torch.full((1 << 20,), 1e-30, dtype=torch.float32) * 1e-10
    return one, bool((big == 0).any())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_callers_denormal_mode_is_restored(dtype, flush_denormal_off):
    """A forward and backward call (threaded) leaves the calling thread and torch's worker
    threads in the denormal mode they had: denormals kept after
    torch.set_flush_denormal(False), flushed after torch.set_flush_denormal(True)."""
    torch.set_num_threads(2)
    m = rnnfast.LSTM(64, 64, dtype=dtype)
    x = torch.randn(50, 16, 64, dtype=dtype)
    assert _flushes_denormals() == (False, False)
    out, _ = m(x)
    out.sum().backward()
    assert _flushes_denormals() == (False, False)
    torch.set_flush_denormal(True)
    out, _ = m(x)
    out.sum().backward()
    assert _flushes_denormals()[0] is True
