"""rnnfast's CUDA kernels against cuDNN (nn.LSTM/GRU/RNN on the GPU), against float64 torch on
the CPU, and against the plain-PyTorch reference loop.

Skipped without a GPU or without CUDA kernels in the build. bench/gpu_check.sh runs this file on
a GPU machine with RNNFAST_REQUIRE_CUDA=1, which turns those skips into failures.
"""
from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnfast
from rnnfast import _cells, _reference, ops

from rnn_testutils import (CELL_KIND_NAMES, KIND_NAMES, assert_results_close, call_dense,
                           call_packed, fwd_bwd, hx_shapes, is_lstm, make_pair, op_args,
                           projections, randn)

_AVAILABLE = (torch.cuda.is_available() and bool(rnnfast._C.cuda_built)
              and ops.has_native_kernels("cuda"))
if os.environ.get("RNNFAST_REQUIRE_CUDA") == "1" and not _AVAILABLE:
    raise RuntimeError(
        "RNNFAST_REQUIRE_CUDA=1 but the CUDA kernels are unavailable: "
        f"torch.cuda.is_available()={torch.cuda.is_available()}, "
        f"cuda_built={rnnfast._C.cuda_built}, enabled={ops.has_native_kernels('cuda')}")
pytestmark = pytest.mark.skipif(not _AVAILABLE, reason="needs a GPU and rnnfast's CUDA kernels")

CUDA = torch.device("cuda")
# Every cell has CUDA kernels (the layer-normalised ones since 2026-12-01: one block per row).
CUDA_CELLS = list(ops.CELLS)
LN_CELLS = [c for c in ops.CELLS if _cells.cell(c).layer_norm]


@pytest.fixture(autouse=True)
def _no_tf32():
    """float32 means float32: TF32 off for cuDNN's RNNs (torch >= 2.9 defaults them to TF32)
    and for matmuls, as the comparisons assume."""
    rnn = getattr(torch.backends.cudnn, "rnn", None)
    if rnn is not None and hasattr(rnn, "fp32_precision"):
        saved = (rnn.fp32_precision, torch.backends.cuda.matmul.fp32_precision)
        rnn.fp32_precision = "ieee"
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        yield
        rnn.fp32_precision, torch.backends.cuda.matmul.fp32_precision = saved
    else:
        saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        yield
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _to(results, device):
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in results.items()}


def _leaves(kind, T, B, I, H, layers, bidir, proj=0, dtype=torch.float64, seed=0,
            batch_first=False, device="cpu"):
    x = randn(*((B, T, I) if batch_first else (T, B, I)), dtype=dtype, seed=seed).to(device)
    hs, cs = hx_shapes(kind, layers, bidir, B, H, proj)
    h0 = randn(*hs, dtype=dtype, seed=seed + 1).to(device)
    c0 = randn(*cs, dtype=dtype, seed=seed + 2).to(device) if cs else None
    return {"x": x, "h0": h0, "c0": c0}


# Module configurations: (T, B, I, H, layers, bidirectional, proj_size, batch_first)
CONFIGS = [
    (7, 5, 6, 8, 1, False, 0, False),
    (5, 3, 4, 6, 2, True, 0, True),
    (9, 2, 5, 7, 2, False, 3, False),   # proj_size (LSTM only; others use 0)
    (1, 1, 3, 4, 1, True, 0, False),
    (4, 70, 33, 40, 1, False, 0, False),
]


def _config_pair(kind, cfg, dtype, device="cpu"):
    """(torch module, rnnfast module, leaves) for one CONFIGS entry, leaves on `device`."""
    T, B, I, H, layers, bidir, proj, bf = cfg
    proj = proj if is_lstm(kind) else 0
    kw = dict(num_layers=layers, bidirectional=bidir, batch_first=bf)
    if proj:
        kw["proj_size"] = proj
    ref, new = make_pair(kind, I, H, dtype=dtype, **kw)
    leaves = _leaves(kind, T, B, I, H, layers, bidir, proj, dtype=dtype, batch_first=bf,
                     device=device)
    return ref, new, leaves


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("kind", KIND_NAMES)
def test_float64_matches_cpu_torch(kind, cfg):
    """Outputs, states and every gradient in float64 on the GPU against nn.* on the CPU."""
    ref, new, leaves = _config_pair(kind, cfg, torch.float64)
    call = call_dense(is_lstm(kind))
    expected = fwd_bwd(ref, leaves, call)
    actual = fwd_bwd(new.to(CUDA), _to(leaves, CUDA), call)
    assert_results_close(_to(actual, "cpu"), expected, atol=1e-9, what=f"{kind} {cfg}")


def _check_float32(kind, ref32, new32, leaves32, call, what):
    """rnnfast float32 on the GPU against float64 torch on the CPU (fp32 tolerance), and
    against cuDNN float32 within fp32 tolerance plus cuDNN's own deviation from float64."""
    ref64 = copy.deepcopy(ref32).double()
    expected64 = fwd_bwd(ref64, {k: (v.double().cpu() if v is not None else None)
                                 for k, v in leaves32.items()}, call)
    cudnn = fwd_bwd(ref32.to(CUDA), leaves32, call)
    ours = fwd_bwd(new32.to(CUDA), leaves32, call)
    as64 = {k: (v.double().cpu() if isinstance(v, torch.Tensor) and v.is_floating_point()
                else (v.cpu() if isinstance(v, torch.Tensor) else v)) for k, v in ours.items()}
    assert_results_close(as64, expected64, atol=3e-5, rtol=1e-5, what=f"{what} vs float64")
    for k, v in ours.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel():
            own = float((cudnn[k].double().cpu() - expected64[k]).abs().max())
            diff = float((v - cudnn[k]).abs().max())
            assert diff <= 3e-5 + own, (
                f"{what}: {k} differs from cuDNN by {diff:.2e}; cuDNN's own error vs float64 "
                f"is {own:.2e}")


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("kind", KIND_NAMES)
def test_float32_matches_cudnn(kind, cfg):
    """float32 against cuDNN on the same GPU and against float64, TF32 off on both sides."""
    ref, new, leaves = _config_pair(kind, cfg, torch.float32, CUDA)
    _check_float32(kind, ref, new, leaves, call_dense(is_lstm(kind)), f"{kind} {cfg}")


@pytest.mark.parametrize("enforce_sorted", [True, False])
@pytest.mark.parametrize("kind", KIND_NAMES)
def test_packed_sequence_float64(kind, enforce_sorted):
    """PackedSequence (variable lengths, both directions, 2 layers) against CPU float64."""
    lengths = [6, 6, 4, 2, 1] if enforce_sorted else [2, 6, 1, 4, 6]
    T, B, I, H = 6, 5, 4, 5
    proj = 3 if is_lstm(kind) else 0
    kw = dict(num_layers=2, bidirectional=True)
    if proj:
        kw["proj_size"] = proj
    ref, new = make_pair(kind, I, H, dtype=torch.float64, **kw)
    leaves = _leaves(kind, T, B, I, H, 2, True, proj)
    call = call_packed(is_lstm(kind), lengths, enforce_sorted, batch_first=False)
    expected = fwd_bwd(ref, leaves, call)
    actual = fwd_bwd(new.to(CUDA), _to(leaves, CUDA), call)
    assert_results_close(_to(actual, "cpu"), expected, atol=1e-9, what=f"{kind} packed")


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_packed_sequence_float32_matches_cudnn(kind):
    lengths = [9, 3, 7, 1, 9, 5]
    T, B, I, H = 9, 6, 8, 16
    ref, new = make_pair(kind, I, H, dtype=torch.float32, num_layers=2, bidirectional=True)
    leaves = _leaves(kind, T, B, I, H, 2, True, dtype=torch.float32, device=CUDA)
    call = call_packed(is_lstm(kind), lengths, False, batch_first=False)
    _check_float32(kind, ref, new, leaves, call, f"{kind} packed fp32")


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_unbatched_float64(kind):
    ref, new = make_pair(kind, 3, 5, dtype=torch.float64)
    x = randn(4, 3, seed=3)
    call = call_dense(is_lstm(kind))
    expected = fwd_bwd(ref, {"x": x}, call)
    actual = fwd_bwd(new.to(CUDA), {"x": x.to(CUDA)}, call)
    assert_results_close(_to(actual, "cpu"), expected, atol=1e-9, what=f"{kind} unbatched")


@pytest.mark.parametrize("kind", CELL_KIND_NAMES)
def test_cells_float64(kind):
    ref, new = make_pair(kind, 4, 6, dtype=torch.float64)
    x = randn(3, 4, seed=5)
    h = randn(3, 6, seed=6)
    lstm = kind.startswith("LSTM")

    def call(m, x, h0, c0=None):
        out = m(x, (h0, c0) if lstm else h0)
        return {"h": out[0], "c": out[1]} if lstm else {"h": out}

    leaves = {"x": x, "h0": h, "c0": randn(3, 6, seed=7) if lstm else None}
    expected = fwd_bwd(ref, leaves, call)
    actual = fwd_bwd(new.to(CUDA), _to(leaves, CUDA), call)
    assert_results_close(_to(actual, "cpu"), expected, atol=1e-9, what=kind)


@pytest.mark.parametrize("zoneout", ["none", "masks", "probabilities"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("cell", CUDA_CELLS)
def test_raw_op_lengths_with_zeros(cell, reverse, zoneout):
    """The op itself with lengths that include 0 and T, against the reference loop; without
    zoneout, with zoneout masks, and with zoneout probabilities (eval's expectation)."""
    T, B, I, H = 5, 4, 3, 6
    info = _cells.cell(cell)
    P = 2 if info.projection else 0
    torch.manual_seed(0)
    sizes = _cells.extent_sizes(info, I, H, P)
    state = [torch.randn(*s, dtype=torch.float64) for s in _cells.state_shapes(info, B, H, P)]
    weights = {p.name: torch.randn(*_cells.param_shape(p, sizes), dtype=torch.float64)
               for p in _cells.params_of(info, True, P > 0)}
    lengths = torch.tensor([0, 5, 2, 3])
    state_cols = [P or H, H][:info.states]
    g = torch.Generator().manual_seed(2)
    zone = {"none": [],
            "masks": [torch.bernoulli(torch.full((T, B, n), 0.4, dtype=torch.float64),
                                      generator=g) for n in state_cols],
            "probabilities": [torch.tensor(p, dtype=torch.float64)
                              for p in (0.3, 0.6)[:info.states]]}[zoneout]

    def run(fn, device):
        x = torch.randn(T, B, I, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        x = x.to(device).requires_grad_()
        st = [t.to(device).requires_grad_() for t in state]
        ws = {k: v.to(device).requires_grad_() for k, v in weights.items()}
        z = [m.to(device) if m.dim() else m for m in zone]
        out, final = fn(cell, x, st, list(ws.values()), lengths, reverse, z)
        res = {"out": out, **{f"state{k}": t for k, t in enumerate(final)}}
        loss = sum((v * torch.linspace(-1, 1, v.numel(), dtype=v.dtype, device=device)
                    .reshape(v.shape)).sum() for v in res.values())
        leaves = {"input": x, **{f"state{k}": t for k, t in enumerate(st)}, **ws}
        grads = torch.autograd.grad(loss, list(leaves.values()))
        res.update({f"grad:{k}": g for k, g in zip(leaves, grads)})
        return {k: v.detach().cpu() for k, v in res.items()}

    expected = run(_reference.layer, "cpu")
    actual = run(ops.layer, CUDA)
    assert_results_close(actual, expected, atol=1e-9,
                         what=f"{cell} reverse={reverse} zoneout={zoneout}")


def _rel_err(a, ref):
    a, ref = a.double().cpu(), ref.double().cpu()
    return float((a - ref).norm() / ref.norm().clamp_min(1e-30))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("kind", KIND_NAMES)
def test_low_precision_error_within_2x_of_cudnn(kind, dtype):
    """Error against float64 no more than twice cuDNN's own error at the same dtype."""
    T, B, I, H = 20, 16, 32, 64
    kw = dict(num_layers=2, bidirectional=True)
    ref64, _ = make_pair(kind, I, H, dtype=torch.float64, **kw)
    cudnn = make_pair(kind, I, H, dtype=torch.float64, **kw)[0].to(CUDA, dtype)
    ours = make_pair(kind, I, H, dtype=torch.float64, **kw)[1].to(CUDA, dtype)
    leaves = _leaves(kind, T, B, I, H, 2, True)
    # the 16-bit runs see the rounded inputs, and so does the reference
    leaves = {k: (v.to(dtype).double() if v is not None else None) for k, v in leaves.items()}
    for name, p in ref64.named_parameters():
        p.data.copy_(p.data.to(dtype).double())
    call = call_dense(is_lstm(kind))
    expected = fwd_bwd(ref64, leaves, call)
    low = {k: (v.to(CUDA, dtype) if v is not None else None) for k, v in leaves.items()}
    try:
        theirs = fwd_bwd(cudnn, low, call)
    except RuntimeError:  # a cuDNN without this dtype: torch's native CUDA kernels instead
        with torch.backends.cudnn.flags(enabled=False):
            theirs = fwd_bwd(cudnn, low, call)
    mine = fwd_bwd(ours, low, call)
    assert sorted(mine) == sorted(theirs) == sorted(expected)
    for k in sorted(expected):
        assert mine[k].dtype == dtype, f"{k}: dtype {mine[k].dtype}"
        e_mine, e_theirs = _rel_err(mine[k], expected[k]), _rel_err(theirs[k], expected[k])
        assert torch.isfinite(mine[k]).all(), k
        assert e_mine <= 2 * e_theirs + 1e-3, (
            f"{kind} {dtype} {k}: relative error {e_mine:.2e} vs cuDNN {e_theirs:.2e}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_autocast(dtype):
    """Under torch.autocast the CUDA kernels run in the autocast dtype, like cuDNN, and the
    float32 parameters get float32 gradients."""
    ref, new = make_pair("LSTM", 16, 32, dtype=torch.float32, num_layers=2)
    ref, new = ref.to(CUDA), new.to(CUDA)
    x = torch.randn(10, 8, 16, device=CUDA)
    outs = {}
    for name, m in (("torch", ref), ("ours", new)):
        with torch.autocast("cuda", dtype=dtype):
            y, (h, c) = m(x)
        # rnnfast runs in the autocast dtype; torch's cuDNN LSTM gives float16 even under a
        # bfloat16 autocast, so only ours is checked
        if name == "ours":
            assert y.dtype == dtype, f"{name}: output dtype {y.dtype}"
        (y.float().square().sum() + h.float().sum()).backward()
        outs[name] = (y.float(), {n: p.grad for n, p in m.named_parameters()})
    for n, g in outs["ours"][1].items():
        assert g.dtype == torch.float32, n
        g_ref = outs["torch"][1][n]
        assert _rel_err(g, g_ref) < 0.05, f"{n}: {_rel_err(g, g_ref):.3e}"
    assert _rel_err(outs["ours"][0], outs["torch"][0]) < 0.02


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("cell", ["lstm", "gru", "lstm_ln", "gru_ln"])
def test_autocast_reference_loop_runs_in_the_autocast_dtype(cell, dtype):
    """The plain-PyTorch loop (the modules' CUDA path while the kernels are off, torch.func
    and forward AD) runs under CUDA autocast as the kernels do: outputs and final states in
    the autocast dtype (it gave float32 where cuDNN gives float16; the layer-normalised cells
    also through layer_norm, which autocast runs in float32), close to float64's."""
    info = _cells.cell(cell)
    sizes = _cells.extent_sizes(info, 16, 32, 0)
    g = torch.Generator().manual_seed(0)
    weights = [(torch.randn(*_cells.param_shape(p, sizes), generator=g) * 0.2
                + (1.0 if p.name.startswith("ln_") and "weight" in p.name else 0.0)).to(CUDA)
               for p in _cells.params_of(info, True, False)]
    x = torch.randn(10, 8, 16, generator=g).to(CUDA)
    with torch.autocast("cuda", dtype=dtype):
        y, final = _reference.layer(cell, x, [], weights)
        y_k, final_k = ops.layer(cell, x, [], weights)
        # float64 is left alone
        y64, _ = _reference.layer(cell, x.double(), [], [w.double() for w in weights])
    assert y.dtype == dtype and all(s.dtype == dtype for s in final)
    assert y_k.dtype == dtype and y64.dtype == torch.float64
    # the loop's pointwise math runs in the low-precision dtype, the kernels' in float32: both
    # against float64, within a few units of the dtype's rounding over the 10 steps
    tol = 8 * torch.finfo(dtype).eps  # (CPU emulation, all-half math: bf16 up to 1.4e-2)
    assert _rel_err(y, y64) < tol and _rel_err(y_k, y64) < tol, (
        f"{cell} {dtype}: loop {_rel_err(y, y64):.2e}, kernels {_rel_err(y_k, y64):.2e}")


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_deterministic_bits(kind):
    """Two runs on the same inputs give the same bits, gradients included."""
    ref, new = make_pair(kind, 64, 128, dtype=torch.float32, num_layers=2, bidirectional=True)
    new = new.to(CUDA)
    leaves = _leaves(kind, 30, 64, 64, 128, 2, True, dtype=torch.float32, device=CUDA)
    call = call_dense(is_lstm(kind))
    a = fwd_bwd(new, leaves, call)
    new.zero_grad()
    b = fwd_bwd(new, leaves, call)
    for k in a:
        assert torch.equal(a[k], b[k]), f"{kind}: {k} differs between two runs"


def test_eval_mode_backward():
    """cuDNN refuses backward in eval mode; rnnfast differentiates as in training."""
    ref, new = make_pair("LSTM", 4, 6, dtype=torch.float64, num_layers=2, dropout=0.5)
    ref.eval()
    new = new.to(CUDA).eval()
    leaves = _leaves("LSTM", 5, 3, 4, 6, 2, False)
    call = call_dense(True)
    expected = fwd_bwd(ref, leaves, call)
    actual = fwd_bwd(new, _to(leaves, CUDA), call)
    assert_results_close(_to(actual, "cpu"), expected, atol=1e-9, what="eval backward")


def test_dropout_uses_torch_rng():
    m = rnnfast.GRU(8, 16, num_layers=3, dropout=0.5).to(CUDA).train()
    x = torch.randn(6, 4, 8, device=CUDA)
    torch.manual_seed(1)
    a, _ = m(x)
    torch.manual_seed(1)
    b, _ = m(x)
    torch.manual_seed(2)
    c, _ = m(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    m.eval()
    d, _ = m(x)
    e, _ = m(x)
    assert torch.equal(d, e)


def test_gradcheck_float64():
    m = rnnfast.LSTM(3, 4, proj_size=2, bidirectional=True, dtype=torch.float64).to(CUDA)
    x = torch.randn(4, 2, 3, dtype=torch.float64, device=CUDA, requires_grad=True)
    h0 = torch.randn(2, 2, 2, dtype=torch.float64, device=CUDA, requires_grad=True)
    c0 = torch.randn(2, 2, 4, dtype=torch.float64, device=CUDA, requires_grad=True)
    params = list(m.parameters())

    def f(x, h0, c0, *ps):
        out, (h, c) = torch.func.functional_call(
            m, {n: p for (n, _), p in zip(m.named_parameters(), ps)}, (x, (h0, c0)))
        return out, h, c

    assert torch.autograd.gradcheck(f, (x, h0, c0, *[p.detach().requires_grad_() for p in params]))


@pytest.mark.parametrize("cell", CUDA_CELLS)
@pytest.mark.parametrize("training", [False, True])
def test_opcheck(cell, training):
    """Both ops, with and without biases (the CUDA backward then gets null bias gradients and
    computes none), with a projection where the cell takes one."""
    proj = projections(cell)[-1]
    for bias in (True, False):
        args = op_args(cell, proj, dtype=torch.float32, device=CUDA, requires_grad=training,
                       bias=bias, training=training)
        torch.library.opcheck(torch.ops.rnnfast.layer, args)
        if training:
            _, x, _, weights, lengths, reverse, _ = args
            out, final, ws = torch.ops.rnnfast.layer(*args)
            grad_state = [torch.randn_like(final[0])] + [None] * (len(final) - 1)
            torch.library.opcheck(torch.ops.rnnfast.layer_backward,
                                  (cell, torch.randn_like(out), grad_state, x.detach(),
                                   [w.detach() for w in weights], lengths, ws.detach(), reverse))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_fake_workspace_dtype_matches_kernel(dtype):
    x = torch.randn(3, 2, 4, device=CUDA, dtype=dtype)
    w_ih = torch.randn(20, 4, device=CUDA, dtype=dtype)
    w_hh = torch.randn(20, 5, device=CUDA, dtype=dtype)
    real = torch.ops.rnnfast.layer("lstm", x, [], [w_ih, w_hh], None, False, True)
    assert real[2].dtype == torch.float32 == ops.workspace_dtype(x)
    assert real[0].dtype == dtype


def test_mixed_devices_raise():
    m = rnnfast.LSTM(4, 5).to(CUDA)
    x = torch.randn(3, 2, 4, device=CUDA)
    h = (torch.zeros(1, 2, 5), torch.zeros(1, 2, 5))
    with pytest.raises(RuntimeError, match="cpu"):
        m(x, h)


_ERROR_PATHS = r"""
import torch, rnnfast
C = torch.device("cuda")
msgs = []
for dev in ("cpu", "cuda"):
    try:  # lengths on the GPU: the op wants them on the CPU
        torch.ops.rnnfast.layer("gru", torch.randn(3, 2, 4, device=dev), [],
                                [torch.randn(15, 4, device=dev), torch.randn(15, 5, device=dev)],
                                torch.tensor([3, 1], device=C), False, False)
    except RuntimeError as e:
        msgs.append(str(e).splitlines()[0])
    try:  # weight_hh of the wrong shape
        torch.ops.rnnfast.layer("lstm", torch.randn(3, 2, 4, device=dev), [],
                                [torch.randn(20, 4, device=dev), torch.randn(20, 6, device=dev)],
                                None, False, False)
    except RuntimeError as e:
        msgs.append(str(e).splitlines()[0])
print("\n".join(msgs))
"""


def test_argument_errors_raise_in_a_subprocess():
    """Argument errors of the CPU and CUDA ops are RuntimeErrors naming the argument (run in
    a subprocess: a crash in the error path must fail this test, not end the run)."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", _ERROR_PATHS], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr[-2000:]}"
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 4, r.stdout
    assert all("lengths must be a 1-D int64 CPU tensor" in m for m in lines[0::2]), lines
    assert all("weight_hh must have shape [20, 5], got [20, 6]" in m for m in lines[1::2]), lines


def test_compile_fullgraph_matches_eager():
    m = rnnfast.LSTM(8, 16, num_layers=2, bidirectional=True).to(CUDA)
    x = torch.randn(5, 3, 8, device=CUDA, requires_grad=True)
    y_eager, _ = m(x)
    y_eager.sum().backward()
    g_eager = x.grad.clone()
    x.grad = None
    compiled = torch.compile(m, fullgraph=True)
    y, _ = compiled(x)
    y.sum().backward()
    torch.testing.assert_close(y, y_eager, atol=1e-6, rtol=0)
    torch.testing.assert_close(x.grad, g_eager, atol=1e-6, rtol=0)


def test_large_batch_and_hidden_float32_matches_cudnn():
    """A size where cuBLAS picks its tiled kernels (and several thread blocks per step)."""
    ref, new = make_pair("LSTM", 256, 512, dtype=torch.float32)
    leaves = _leaves("LSTM", 12, 96, 256, 512, 1, False, dtype=torch.float32, device=CUDA)
    _check_float32("LSTM", ref, new, leaves, call_dense(True), "large LSTM")


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cls", [rnnfast.LSTM, rnnfast.GRU], ids=lambda c: c.__name__)
def test_layer_norm_modules_match_cpu_kernels(cls, layers):
    """rnnfast.LSTM/GRU(layer_norm=True, with peephole, projection, zoneout's expectation) on
    CUDA in float64: outputs, final states and every gradient against the same module on the
    CPU kernels, bidirectional, with lengths (a PackedSequence); H = 300 is more units than
    the threads of a row's block (256)."""
    torch.manual_seed(0)
    extra = dict(peephole=True, proj_size=5) if cls is rnnfast.LSTM else {}
    m = cls(7, 300, num_layers=layers, bidirectional=True, layer_norm=True, zoneout=0.2,
            dtype=torch.float64, **extra)
    with torch.no_grad():  # gains away from 1, so that a swapped gain shows
        for name, p in m.named_parameters():
            if name.startswith("ln_"):
                p.uniform_(0.5, 1.5)
    x = torch.randn(6, 4, 7, dtype=torch.float64)
    lengths = torch.tensor([6, 3, 5, 1])
    results = {}
    for device in ("cpu", CUDA):
        mod = copy.deepcopy(m).to(device).eval()  # zoneout: the expectation on both devices
        xd = x.to(device).requires_grad_()
        packed = torch.nn.utils.rnn.pack_padded_sequence(xd, lengths, enforce_sorted=False)
        out, state = mod(packed)
        padded, _ = torch.nn.utils.rnn.pad_packed_sequence(out)
        states = state if isinstance(state, tuple) else (state,)
        loss = (padded * torch.linspace(-1, 1, padded.numel(), dtype=padded.dtype,
                                        device=padded.device).reshape(padded.shape)).sum()
        loss = loss + sum((s * s).sum() for s in states)
        grads = torch.autograd.grad(loss, [xd] + list(mod.parameters()))
        results[str(device)] = {"out": padded, **{f"state{k}": s for k, s in enumerate(states)},
                                "grad:input": grads[0],
                                **{f"grad:{n}": g for (n, _), g in
                                   zip(mod.named_parameters(), grads[1:])}}
    assert_results_close(_to(results["cuda"], "cpu"), results["cpu"], atol=1e-9,
                         what=f"{cls.__name__} layer_norm layers={layers}")
