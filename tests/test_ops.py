"""The raw ops: torch.library.opcheck on every op, argument checks in the glue,
build info, and parity on every SIMD path this CPU supports."""
import glob
import os
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

import rnnfast
from rnnfast import _C

CELLS = [("lstm", 4), ("gru", 3), ("rnn_tanh", 1), ("rnn_relu", 1)]


def _args(cell, G, proj=0, lengths=True, reverse=False, dtype=torch.float64, T=3, B=2, I=4,
          H=5, requires_grad=True):
    g = torch.Generator().manual_seed(0)
    S = proj or H

    def r(*shape):
        return torch.randn(*shape, dtype=dtype, generator=g).requires_grad_(requires_grad)

    return (r(T, B, I), r(B, S), r(B, H) if cell == "lstm" else None, r(G * H, I), r(G * H, S),
            r(G * H), r(G * H), r(proj, H) if proj else None,
            torch.tensor([T, T - 1][:B]) if lengths else None, reverse, True)


@pytest.mark.parametrize("cell,G", CELLS)
@pytest.mark.parametrize("reverse", [False, True])
def test_opcheck_forward(cell, G, reverse):
    op = getattr(torch.ops.rnnfast, f"{cell}_layer")
    for proj in ([0, 3] if cell == "lstm" else [0]):
        for lengths in (False, True):
            torch.library.opcheck(op, _args(cell, G, proj, lengths, reverse))


@pytest.mark.parametrize("cell,G", CELLS)
def test_opcheck_backward(cell, G):
    fwd = getattr(torch.ops.rnnfast, f"{cell}_layer")
    bwd = getattr(torch.ops.rnnfast, f"{cell}_layer_backward")
    args = _args(cell, G, requires_grad=False)
    out, hy, cy, ws = fwd(*args)
    x, _, _, w_ih, w_hh, _, _, w_hr, lengths, reverse, _ = args
    grads = (torch.randn_like(out), torch.randn_like(hy),
             torch.randn_like(cy) if cell == "lstm" else None)
    torch.library.opcheck(bwd, (*grads, x, w_ih, w_hh, w_hr, lengths, ws, reverse))


def test_inference_saves_nothing_and_backward_says_why():
    args = list(_args("lstm", 4, requires_grad=False))
    args[-1] = False
    out, hy, cy, ws = torch.ops.rnnfast.lstm_layer(*args)
    assert ws.numel() == 0
    with pytest.raises(RuntimeError, match="training=False"):
        torch.ops.rnnfast.lstm_layer_backward(out, hy, cy, args[0], args[3], args[4], None, None,
                                              ws, False)


@pytest.mark.parametrize("bad,match", [
    (lambda a: a.__setitem__(3, a[3][:, :2]), "weight_ih"),
    (lambda a: a.__setitem__(1, a[1][:1]), "hx"),
    (lambda a: a.__setitem__(8, torch.tensor([9, 1])), "lengths"),
    (lambda a: a.__setitem__(8, torch.tensor([1.0, 1.0])), "lengths"),
    (lambda a: a.__setitem__(0, a[0].float()), "dtype"),
    (lambda a: a.__setitem__(0, a[0][:0]), "time step"),
])
def test_glue_rejects_bad_arguments(bad, match):
    args = list(_args("lstm", 4, requires_grad=False))
    bad(args)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.rnnfast.lstm_layer(*args)


def test_info():
    info = rnnfast.info()
    assert info["version"] == rnnfast.__version__
    assert info["torch_version"] == torch.__version__
    assert info["simd"] in ("scalar", "avx2", "avx512")
    assert _C.cpu_supports(info["simd"])
    assert info["cuda"] in (True, False)


def test_set_simd_rejects_unknown_path():
    with pytest.raises(ValueError, match="unknown SIMD path"):
        _C.set_simd("sse9")


SIMD_PATHS = [p for p in ("scalar", "avx2", "avx512") if _C.cpu_supports(p)]


@pytest.mark.parametrize("path", SIMD_PATHS)
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_parity_on_every_simd_path(path, kind):
    """Sizes that straddle the SIMD widths (H=19, I=23) on each path, float32 and float64."""
    before = _C.simd()
    _C.set_simd(path)
    try:
        for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 3e-5)):
            torch.manual_seed(0)
            kw = dict(num_layers=2, bidirectional=True, dtype=dtype)
            if kind == "LSTM":
                kw["proj_size"] = 7
            ref = getattr(nn, kind)(23, 19, **kw)
            mine = getattr(rnnfast, kind)(23, 19, **kw)
            mine.load_state_dict(ref.state_dict())
            x = torch.randn(6, 13, 23, dtype=dtype)
            outs = []
            for m in (ref, mine):
                xi = x.clone().requires_grad_()
                y, _ = m(xi)
                y.pow(2).sum().backward()
                outs.append([y, xi.grad] + [p.grad for p in m.parameters()])
            for a, b in zip(*outs):
                torch.testing.assert_close(b, a, atol=tol, rtol=0)
    finally:
        _C.set_simd(before)


def test_environment_variable_forces_simd_path():
    env = dict(os.environ, RNNFAST_SIMD="scalar")
    out = subprocess.run([sys.executable, "-c", "import rnnfast; print(rnnfast.info()['simd'])"],
                         env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "scalar"


def _expected_native_cuda(built, verified, env):
    """The documented rule: CUDA tensors run the fused kernels only where they were built; then
    RNNFAST_CUDA_KERNELS=1 / =0 forces them on / off, and otherwise CUDA_KERNELS_VERIFIED
    decides."""
    if not built:
        return False
    if env in ("0", "1"):
        return env == "1"
    return verified


@pytest.mark.parametrize("built", [False, True], ids=["cpu_build", "cuda_build"])
@pytest.mark.parametrize("verified", [False, True], ids=["unverified", "verified"])
@pytest.mark.parametrize("env", ["", "0", "1", "yes"])
def test_which_devices_run_native_kernels(monkeypatch, built, verified, env):
    """Every combination of the three inputs of the rule (whether the CUDA kernels were built,
    the verification flag, RNNFAST_CUDA_KERNELS), set here rather than read off this build (a
    CPU-only build would leave the CUDA side trivially false): has_native_kernels, info() and
    the modules' choice of the fused op or the reference loop all follow the rule."""
    from rnnfast import _reference, modules

    monkeypatch.setattr(_C, "cuda_built", built)
    monkeypatch.setattr(rnnfast.ops, "CUDA_KERNELS_VERIFIED", verified)
    monkeypatch.setattr(rnnfast.ops, "_CUDA_KERNELS_ENV", env)
    monkeypatch.setattr(modules, "_warned_devices", set())
    want = _expected_native_cuda(built, verified, env)
    assert rnnfast.ops.has_native_kernels("cpu") is True
    assert rnnfast.ops.has_native_kernels("cuda") is want
    for other in ("meta", "mps", "xpu"):
        assert rnnfast.ops.has_native_kernels(other) is False, other
    assert rnnfast.info()["cuda_kernels"] is want
    assert rnnfast.info()["cuda"] is built
    assert modules._layer_fn(torch.device("cpu")) is rnnfast.ops.layer
    if want:
        assert modules._layer_fn(torch.device("cuda")) is rnnfast.ops.layer
    else:
        with pytest.warns(UserWarning, match="device 'cuda' runs the plain-PyTorch reference"):
            assert modules._layer_fn(torch.device("cuda")) is _reference.layer
    with pytest.warns(UserWarning, match="device 'meta' runs the plain-PyTorch reference"):
        assert modules._layer_fn(torch.device("meta")) is _reference.layer


@pytest.mark.parametrize("env", ["0", "1", None])
def test_cuda_kernels_variable_is_read_at_import(env):
    """RNNFAST_CUDA_KERNELS is read from the environment of a fresh process and overrides the
    verification flag (the CUDA build is simulated, so this runs on a CPU-only build too)."""
    code = ("import rnnfast; o = rnnfast.ops; rnnfast._C.cuda_built = True; "
            "print(o.has_native_kernels('cuda'), o.CUDA_KERNELS_VERIFIED)")
    environ = {k: v for k, v in os.environ.items() if k != "RNNFAST_CUDA_KERNELS"}
    if env is not None:
        environ["RNNFAST_CUDA_KERNELS"] = env
    out = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True,
                         text=True, check=True).stdout.split()
    cuda, verified = (w == "True" for w in out)
    assert cuda is _expected_native_cuda(True, verified, env or "")


def test_cuda_verification_flag_cites_a_recorded_gpu_run():
    """CUDA_KERNELS_VERIFIED claims a run of the CUDA tests on a real GPU, recorded in
    bench/results/gpu-*.md (see its comment in ops.py): while it is True, such a record must
    exist and report the CUDA test file passing."""
    flag = rnnfast.ops.CUDA_KERNELS_VERIFIED
    assert isinstance(flag, bool)
    results = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench", "results")
    if not os.path.isdir(results):
        pytest.skip("no bench/results next to the tests (not a source checkout)")
    if not flag:
        return
    records = sorted(glob.glob(os.path.join(results, "gpu-*.md")))
    assert records, "CUDA_KERNELS_VERIFIED is True but bench/results holds no gpu-*.md record"
    passing = [r for r in records
               if re.search(r"test_cuda\.py`?[^\n]*\*\*\d+ passed\*\*", open(r).read())]
    assert passing, f"no GPU record reports tests/test_cuda.py passing: {records}"


def _packed_rows(lengths, T):
    """(t, b) of each row of the packed layout, time-major (PackedSequence.data order)."""
    return [(t, b) for t in range(T) for b in range(len(lengths)) if lengths[b] > t]


@pytest.mark.parametrize("cell,G", CELLS)
@pytest.mark.parametrize("reverse", [False, True])
def test_packed_input_matches_padded(cell, G, reverse):
    """The op on packed rows [N, I] == the op on the padded batch with the same lengths:
    outputs on the active rows, final states and every gradient (float64)."""
    T, B, I, H = 6, 5, 4, 5
    lengths = torch.tensor([6, 4, 4, 2, 0])
    rows = _packed_rows(lengths.tolist(), T)
    idx = torch.tensor([t * B + b for t, b in rows])
    op = getattr(torch.ops.rnnfast, f"{cell}_layer")
    for proj in ([0, 3] if cell == "lstm" else [0]):
        args = list(_args(cell, G, proj, False, reverse, T=T, B=B, I=I, H=H))
        args[8] = lengths
        x = args[0].detach()
        results = []
        for packed in (False, True):
            leaves = [a.detach().clone().requires_grad_() if isinstance(a, torch.Tensor)
                      and a.is_floating_point() else a for a in args]
            xin = leaves[0]
            if packed:
                xin = x.reshape(T * B, I)[idx].clone().requires_grad_()
            out, hy, cy, _ = op(xin, *leaves[1:])
            out_rows = out if packed else out.reshape(T * B, -1)[idx]
            loss = (out_rows * torch.linspace(-1, 1, out_rows.numel(), dtype=out.dtype)
                    .reshape(out_rows.shape)).sum() + hy.sum() * 0.5
            if cell == "lstm":
                loss = loss + cy.sum() * 0.25
            params = [a for a in leaves[1:8] if isinstance(a, torch.Tensor)]
            grads = torch.autograd.grad(loss, [xin] + params)
            gx = grads[0] if packed else grads[0].reshape(T * B, I)[idx]
            results.append([out_rows, hy, cy, gx, *grads[1:]])
        for a, b in zip(*results):
            torch.testing.assert_close(b, a, atol=1e-12, rtol=0)


_TORCH_CELLS = {"lstm": (nn.LSTM, {}), "gru": (nn.GRU, {}),
                "rnn_tanh": (nn.RNN, {"nonlinearity": "tanh"}),
                "rnn_relu": (nn.RNN, {"nonlinearity": "relu"})}


@pytest.mark.parametrize("cell,G", CELLS)
@pytest.mark.parametrize("reverse", [False, True])
def test_packed_input_matches_torch(cell, G, reverse):
    """The op on packed rows [N, I] against torch's own module on the same PackedSequence
    (float64): output rows, final states, and the gradients of the rows, of the initial states
    and of every weight. The reverse op is compared with the reverse direction of a
    bidirectional torch module (its forward direction does not reach the compared results)."""
    T, B, I, H = 6, 5, 4, 5
    lengths = torch.tensor([6, 4, 4, 2, 1])          # torch packs no empty sequence
    cls, kw = _TORCH_CELLS[cell]
    for proj in ([0, 3] if cell == "lstm" else [0]):
        args = _args(cell, G, proj, False, reverse, T=T, B=B, I=I, H=H)
        x, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr = (
            a.detach() if isinstance(a, torch.Tensor) else a for a in args[:8])
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths)
        rows = packed.data
        weights = {"weight_ih": w_ih, "weight_hh": w_hh, "bias_ih": b_ih, "bias_hh": b_hh}
        if proj:
            weights["weight_hr"] = w_hr
        upstream = torch.linspace(-1, 1, rows.shape[0] * (proj or H), dtype=torch.float64)
        upstream = upstream.reshape(rows.shape[0], proj or H)

        def loss_of(out_rows, hy, cy):
            loss = (out_rows * upstream).sum() + hy.sum() * 0.5
            return loss + cy.sum() * 0.25 if cy is not None else loss

        # rnnfast's op
        leaves = [t.clone().requires_grad_() if t is not None else None
                  for t in (rows, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr)]
        out, hy, cy, _ = getattr(torch.ops.rnnfast, f"{cell}_layer")(
            *leaves, lengths, reverse, True)
        cy = cy if cell == "lstm" else None
        grads = torch.autograd.grad(loss_of(out, hy, cy), [t for t in leaves if t is not None])
        mine = [out, hy] + ([cy] if cy is not None else []) + list(grads)

        # torch: the same weights in a (bidirectional, for reverse) module
        torch.manual_seed(1)
        ref = cls(I, H, bidirectional=reverse, proj_size=proj, dtype=torch.float64, **kw) \
            if cell == "lstm" else cls(I, H, bidirectional=reverse, dtype=torch.float64, **kw)
        suffix = "_l0_reverse" if reverse else "_l0"
        with torch.no_grad():
            for name, value in weights.items():
                getattr(ref, name + suffix).copy_(value)
        d = 1 if reverse else 0
        rows_leaf = rows.clone().requires_grad_()
        h_leaf = hx.clone().requires_grad_()
        c_leaf = cx.clone().requires_grad_() if cx is not None else None
        S = proj or H

        def full(state_leaf, width):    # [D, B, width] with this direction's row from the leaf
            other = torch.zeros(B, width, dtype=torch.float64)
            return torch.stack([other, state_leaf]) if reverse else state_leaf.unsqueeze(0)

        h0 = full(h_leaf, S)
        state = (h0, full(c_leaf, H)) if cell == "lstm" else h0
        ref_out, ref_state = ref(nn.utils.rnn.PackedSequence(rows_leaf, packed.batch_sizes),
                                 state)
        ref_rows = ref_out.data[:, d * S:(d + 1) * S]
        ref_h = (ref_state[0] if cell == "lstm" else ref_state)[d]
        ref_c = ref_state[1][d] if cell == "lstm" else None
        targets = [rows_leaf, h_leaf] + ([c_leaf] if c_leaf is not None else [])
        targets += [getattr(ref, name + suffix) for name in weights]
        ref_grads = torch.autograd.grad(loss_of(ref_rows, ref_h, ref_c), targets)
        theirs = [ref_rows, ref_h] + ([ref_c] if ref_c is not None else []) + list(ref_grads)
        # the op's gradients come in argument order: rows, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr
        assert len(mine) == len(theirs)
        for i, (a, b) in enumerate(zip(mine, theirs)):
            torch.testing.assert_close(a, b, atol=1e-9, rtol=0,
                                       msg=lambda m, i=i: f"{cell} proj={proj} item {i}: {m}")


@pytest.mark.parametrize("training", [False, True])
def test_opcheck_packed(training):
    lengths = torch.tensor([3, 2, 2])
    x = torch.randn(7, 4, dtype=torch.float64, requires_grad=training)
    args = (x, torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64),
            torch.randn(20, 4, dtype=torch.float64, requires_grad=training),
            torch.randn(20, 5, dtype=torch.float64), None, None, None, lengths, False, training)
    torch.library.opcheck(torch.ops.rnnfast.lstm_layer, args)


@pytest.mark.parametrize("lengths,match", [
    (None, "needs lengths"),
    (torch.tensor([2, 3, 2]), "non-increasing"),
    (torch.tensor([3, 2, 1]), r"sum\(lengths\) = 6, but it has 7 rows"),
    (torch.tensor([3.0, 2.0, 2.0]), "1-D int64 CPU tensor"),
    # lengths whose sum wraps around int64 to the number of rows must not get through
    (torch.tensor([2 ** 62 + 1] * 4 + [1, 1, 1]), "add up to more than"),
])
def test_packed_input_argument_errors(lengths, match):
    with pytest.raises(RuntimeError, match=match):
        torch.ops.rnnfast.gru_layer(torch.randn(7, 4), None, None, torch.randn(15, 4),
                                    torch.randn(15, 5), None, None, None, lengths, False, False)
