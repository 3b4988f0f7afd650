"""The raw ops: argument checks in the glue, packed inputs, build info, and parity on every
SIMD path this CPU supports. (torch.library.opcheck of both ops: test_compile_opcheck.py.)"""
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

from rnnfast.ops import CELLS
from rnn_testutils import CELL_MODULES, SIMD_PATHS, op_args, projections


def _info(cell):
    return next(d for d in _C.cells() if d["name"] == cell)


def test_inference_saves_nothing_and_backward_says_why():
    args = list(op_args("lstm", requires_grad=False))
    args[-1] = False
    out, state_out, ws = torch.ops.rnnfast.layer(*args)
    assert ws.numel() == 0
    with pytest.raises(RuntimeError, match="training=False"):
        torch.ops.rnnfast.layer_backward("lstm", out, state_out, args[1], args[3], None, ws,
                                         False)


def _set_weight(k, fn):
    return lambda a: a[3].__setitem__(k, fn(a[3][k]))


@pytest.mark.parametrize("bad,match", [
    (_set_weight(0, lambda w: w[:, :2]),
     r"rnnfast::layer\(lstm\): weight_ih must have shape \[20, 4\], got \[20, 2\]"),
    (_set_weight(0, lambda w: w[:7]), r"weight_ih has 7 rows, not a multiple of 4 gates"),
    (_set_weight(1, lambda w: w[:, :4]), r"weight_hh must have shape \[20, 5\], got \[20, 4\]"),
    (_set_weight(2, lambda w: w[:19]), r"bias_ih must have shape \[20\], got \[19\]"),
    (_set_weight(3, lambda w: w.float()), r"bias_hh has dtype Float but the input has dtype"),
    (_set_weight(3, lambda w: w[None]), r"bias_hh must be 1-D"),
    (lambda a: a[2].__setitem__(0, a[2][0][:1]),
     r"state\[0\] \(h\) must have shape \[2, 5\], got \[1, 5\]"),
    (lambda a: a[2].__setitem__(1, a[2][1][:, :4]),
     r"state\[1\] \(c\) must have shape \[2, 5\], got \[2, 4\]"),
    (lambda a: a[2].pop(), r"state must be empty \(zero initial states\) or hold 2 tensors"),
    (lambda a: a.__setitem__(4, torch.tensor([9, 1])), "lengths"),
    (lambda a: a.__setitem__(4, torch.tensor([1.0, 1.0])), "lengths"),
    (lambda a: a.__setitem__(1, a[1].float()), "dtype"),
    (lambda a: a.__setitem__(1, a[1][:0]), "time step"),
    # three weights are weight_ih, weight_hh, weight_hr: here the third is bias_ih
    (lambda a: a[3].pop(), r"weight_hr must be 2-D"),
    (lambda a: a[3].extend([a[3][0], a[3][0]]),
     r"weights must hold 2 \(weight_ih, weight_hh\), 4 \(weight_ih, weight_hh, bias_ih, "
     r"bias_hh\), 3 \(weight_ih, weight_hh, weight_hr\) or 5 \(weight_ih, weight_hh, bias_ih, "
     r"bias_hh, weight_hr\) tensors, got 6 tensors"),
    (lambda a: a[3].append(torch.randn(5, 5, dtype=torch.float64)),
     r"weight_hr must have 0 < rows < 5, got 5"),
])
def test_glue_rejects_bad_arguments(bad, match):
    args = list(op_args("lstm", requires_grad=False))
    bad(args)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.rnnfast.layer(*args)


@pytest.mark.parametrize("requires_grad", [False, True])
def test_unknown_cell_is_a_value_error(requires_grad):
    args = list(op_args("lstm", requires_grad=requires_grad))
    args[0] = "lstmx"
    with pytest.raises(ValueError, match=r"rnnfast::layer: unknown cell 'lstmx', expected one "
                       r"of " + ", ".join(CELLS)):
        torch.ops.rnnfast.layer(*args)
    with pytest.raises(ValueError, match="unknown cell 'lstmx'"):
        rnnfast.ops.layer(*args[:-1])


@pytest.mark.parametrize("cell", [c for c in CELLS if not _info(c)["projection"]])
@pytest.mark.parametrize("bias", [False, True])
def test_projection_rejected_for_cells_without(cell, bias):
    """A weights list whose length means a projection, for a cell that takes none."""
    args = list(op_args(cell, requires_grad=False, bias=bias))
    args[3].append(torch.randn(2, 5, dtype=torch.float64))
    with pytest.raises(RuntimeError, match=rf"rnnfast::layer\({cell}\): weights has "
                       rf"{len(args[3])} tensors, which are .*weight_hr(, \w+)*, but the {cell} cell "
                       r"takes no projection"):
        torch.ops.rnnfast.layer(*args)


def test_backward_rejects_bad_arguments():
    args = op_args("gru", requires_grad=False)
    out, state_out, ws = torch.ops.rnnfast.layer(*args)
    _, x, _, weights, lengths, reverse, _ = args
    bwd = torch.ops.rnnfast.layer_backward
    with pytest.raises(RuntimeError, match=r"rnnfast::layer_backward\(gru\): grad_state must "
                       r"be empty \(no state gradients\) or hold 1 tensor"):
        bwd("gru", out, [None, None], x, weights, lengths, ws, reverse)
    with pytest.raises(RuntimeError, match=r"rnnfast::layer_backward\(gru\): grad_state\[0\] "
                       r"\(h\) must have shape \[2, 5\], got \[2, 4\]"):
        bwd("gru", out, [state_out[0][:, :4]], x, weights, lengths, ws, reverse)
    with pytest.raises(RuntimeError, match=r"rnnfast::layer_backward\(gru\): workspace must "
                       r"have shape"):
        bwd("gru", out, [], x, weights, lengths, ws[:, :, 1:], reverse)
    with pytest.raises(RuntimeError, match=r"rnnfast::layer_backward\(gru\): weight_hh must "
                       r"have shape"):
        bwd("gru", out, [], x, [weights[0], weights[1][:, 1:]] + weights[2:], lengths, ws,
            reverse)
    with pytest.raises(ValueError, match=r"rnnfast::layer_backward: unknown cell 'GRU'"):
        bwd("GRU", out, [], x, weights, lengths, ws, reverse)


def test_python_derives_the_cells_from_the_cpp_description():
    """ops.CELLS / GATES / workspace_cols, the modules' parameters and the reference loop read
    the description the kernels use (_C.cells(), _C.layer_params()): the workspace the fake
    kernel predicts is the one the op saves, and every module's parameters are the ops'
    weights list with the shapes the extents give."""
    described = {d["name"]: d for d in _C.cells()}
    assert CELLS == tuple(described)
    assert rnnfast.ops.GATES == {n: d["gates"] for n, d in described.items()}
    params = _C.layer_params()
    assert [p["name"] for p in params] == ["weight_ih", "weight_hh", "bias_ih", "bias_hh",
                                           "weight_hr", "weight_ci", "weight_cf", "weight_co",
                                           "ln_ih_weight", "ln_hh_weight", "ln_c_weight",
                                           "ln_c_bias"]
    ln = ["ln_ih_weight", "ln_hh_weight", "ln_c_weight", "ln_c_bias"]
    assert described["lstm_peephole"]["params"] == ["weight_ci", "weight_cf", "weight_co"]
    assert described["lstm_coupled_peephole"]["params"] == ["weight_ci", "weight_co"]
    assert described["lstm_peephole_ln"]["params"] == ["weight_ci", "weight_cf", "weight_co"] + ln
    assert described["lstm_coupled_ln"]["params"] == ln
    assert described["gru_ln"]["params"] == ln[:2]
    assert all(not d["params"] for n, d in described.items()
               if "peephole" not in n and not n.endswith("_ln"))
    assert [n for n, d in described.items() if d["layer_norm"]] == [
        n for n in described if n.endswith("_ln")]
    for cell in CELLS:
        for proj in projections(cell):
            _, x, state, weights, lengths, reverse, _ = op_args(cell, proj, requires_grad=False)
            _, _, ws = torch.ops.rnnfast.layer(cell, x, state, weights, lengths, reverse, True)
            assert ws.shape[-1] == rnnfast.ops.workspace_cols(cell, 5, proj), (cell, proj)
    for m, cell in [(rnnfast.LSTM(3, 5, proj_size=2, bias=False), "lstm"),
                    (rnnfast.GRU(3, 5, num_layers=2), "gru"), (rnnfast.RNN(3, 5), "rnn_tanh"),
                    (rnnfast.LSTM(3, 5, proj_size=2, peephole=True), "lstm_peephole"),
                    (rnnfast.LSTM(3, 5, proj_size=2, peephole=True, coupled_gates=True,
                                  layer_norm=True), "lstm_coupled_peephole_ln"),
                    (rnnfast.GRU(3, 5, layer_norm=True), "gru_ln")]:
        G = described[cell]["gates"]
        P = getattr(m, "proj_size", 0)
        sizes = {"input": 3, "hidden": 5, "state": P or 5, "proj": P, "gate_rows": G * 5}
        want = [(p["name"] + "_l0", (sizes[p["rows"]],) + ((sizes[p["cols"]],) if p["cols"] else ()))
                for p in params if p["presence"] == "always"
                or (p["presence"] == "bias" and m.bias) or (p["presence"] == "projection" and P)
                or (p["presence"] == "cell" and p["name"] in described[cell]["params"])]
        got = [(n, tuple(t.shape)) for n, t in m.named_parameters() if n.endswith("_l0")]
        assert got == want, (cell, got, want)


def test_reference_has_no_step_for_an_unknown_cell(monkeypatch):
    """A cell the C++ description lists but the reference loop has no math for raises
    NotImplementedError naming it (not a wrong result)."""
    from rnnfast import _reference

    monkeypatch.delitem(_reference._STEPS, "gru")
    _, x, state, weights, lengths, reverse, _ = op_args("gru", requires_grad=False)
    with pytest.raises(NotImplementedError, match="no step for the cell 'gru'"):
        _reference.layer("gru", x, state, weights, lengths, reverse)


def test_reference_checks_its_lists():
    from rnnfast import _reference

    _, x, state, weights, _, _, _ = op_args("lstm", requires_grad=False)
    with pytest.raises(RuntimeError, match="state must be empty .* or \\[h, c\\], got 1"):
        _reference.layer("lstm", x, state[:1], weights)
    with pytest.raises(RuntimeError, match="takes no projection"):
        _reference.layer("gru", x, [], weights[:2] + [weights[0]])
    with pytest.raises(ValueError, match="unknown cell 'lstmx', expected one of " +
                       ", ".join(CELLS)):
        _reference.layer("lstmx", x, [], weights)


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


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("reverse", [False, True])
def test_packed_input_matches_padded(cell, reverse):
    """The op on packed rows [N, I] == the op on the padded batch with the same lengths:
    outputs on the active rows, final states and every gradient (float64)."""
    T, B, I, H = 6, 5, 4, 5
    lengths = torch.tensor([6, 4, 4, 2, 0])
    rows = _packed_rows(lengths.tolist(), T)
    idx = torch.tensor([t * B + b for t, b in rows])
    for proj in projections(cell):
        _, x, state, weights, _, _, _ = op_args(cell, proj, False, reverse, T=T, B=B, I=I, H=H)
        x = x.detach()
        results = []
        for packed in (False, True):
            st = [t.detach().clone().requires_grad_() for t in state]
            ws = [t.detach().clone().requires_grad_() for t in weights]
            xin = (x.reshape(T * B, I)[idx] if packed else x).clone().requires_grad_()
            out, state_out, _ = torch.ops.rnnfast.layer(cell, xin, st, ws, lengths, reverse,
                                                        True)
            out_rows = out if packed else out.reshape(T * B, -1)[idx]
            loss = (out_rows * torch.linspace(-1, 1, out_rows.numel(), dtype=out.dtype)
                    .reshape(out_rows.shape)).sum()
            loss = loss + sum(s.sum() * 0.5 ** (k + 1) for k, s in enumerate(state_out))
            grads = torch.autograd.grad(loss, [xin] + st + ws)
            gx = grads[0] if packed else grads[0].reshape(T * B, I)[idx]
            results.append([out_rows, *state_out, gx, *grads[1:]])
        for a, b in zip(*results):
            torch.testing.assert_close(b, a, atol=1e-12, rtol=0)


# torch's module for each cell, to compare the op against


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("reverse", [False, True])
def test_packed_input_matches_torch(cell, reverse):
    """The op on packed rows [N, I] against torch's own module on the same PackedSequence
    (float64): output rows, final states, and the gradients of the rows, of the initial states
    and of every weight. The reverse op is compared with the reverse direction of a
    bidirectional torch module (its forward direction does not reach the compared results)."""
    T, B, I, H = 6, 5, 4, 5
    lengths = torch.tensor([6, 4, 4, 2, 1])          # torch packs no empty sequence
    torch_name, _, kw = CELL_MODULES[cell]
    if torch_name is None:
        pytest.skip(f"torch has no {cell} cell to compare with (the cell's own tests check "
                    "packed input against its equations)")
    cls = getattr(nn, torch_name)
    for proj in projections(cell):
        _, x, state, weights, _, _, _ = op_args(cell, proj, False, reverse, T=T, B=B, I=I, H=H)
        x = x.detach()
        state = [t.detach() for t in state]
        names = [p["name"] for p in _C.layer_params()
                 if p["presence"] in ("always", "bias") or (proj and p["presence"] == "projection")]
        named = dict(zip(names, [t.detach() for t in weights]))
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths)
        rows = packed.data
        S = proj or H
        upstream = torch.linspace(-1, 1, rows.shape[0] * S, dtype=torch.float64)
        upstream = upstream.reshape(rows.shape[0], S)

        def loss_of(out_rows, final):
            return (out_rows * upstream).sum() + sum(s.sum() * 0.5 ** (k + 1)
                                                     for k, s in enumerate(final))

        # rnnfast's op
        leaves = [t.clone().requires_grad_() for t in [rows] + state + list(named.values())]
        st, ws = leaves[1:1 + len(state)], leaves[1 + len(state):]
        out, final, _ = torch.ops.rnnfast.layer(cell, leaves[0], st, ws, lengths, reverse, True)
        grads = torch.autograd.grad(loss_of(out, final), leaves)
        mine = [out, *final] + list(grads)

        # torch: the same weights in a (bidirectional, for reverse) module
        torch.manual_seed(1)
        extra = {"proj_size": proj} if proj else {}
        ref = cls(I, H, bidirectional=reverse, dtype=torch.float64, **kw, **extra)
        suffix = "_l0_reverse" if reverse else "_l0"
        with torch.no_grad():
            for name, value in named.items():
                getattr(ref, name + suffix).copy_(value)
        d = 1 if reverse else 0
        rows_leaf = rows.clone().requires_grad_()
        state_leaves = [s.clone().requires_grad_() for s in state]

        def full(state_leaf):    # [D, B, width] with this direction's row from the leaf
            other = torch.zeros_like(state_leaf)
            return torch.stack([other, state_leaf]) if reverse else state_leaf.unsqueeze(0)

        hx = tuple(full(s) for s in state_leaves)
        ref_out, ref_state = ref(nn.utils.rnn.PackedSequence(rows_leaf, packed.batch_sizes),
                                 hx if len(hx) > 1 else hx[0])
        ref_rows = ref_out.data[:, d * S:(d + 1) * S]
        ref_final = [s[d] for s in (ref_state if len(hx) > 1 else (ref_state,))]
        targets = [rows_leaf] + state_leaves + [getattr(ref, name + suffix) for name in named]
        ref_grads = torch.autograd.grad(loss_of(ref_rows, ref_final), targets)
        theirs = [ref_rows, *ref_final] + list(ref_grads)
        # the op's gradients come in argument order: rows, states, weights
        assert len(mine) == len(theirs)
        for i, (a, b) in enumerate(zip(mine, theirs)):
            torch.testing.assert_close(a, b, atol=1e-9, rtol=0,
                                       msg=lambda m, i=i: f"{cell} proj={proj} item {i}: {m}")


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
        torch.ops.rnnfast.layer("gru", torch.randn(7, 4), [],
                                [torch.randn(15, 4), torch.randn(15, 5)], lengths, False, False)


@pytest.mark.parametrize("where", ["weight_hh", "state", "zoneout", "zoneout_p", "lengths"])
def test_meta_tensor_beside_a_cpu_input_is_refused(where):
    """A meta tensor among CPU arguments sends the call to the fake (meta) kernel, whatever
    needs grad: it must make the kernels' device checks, not return uninitialised outputs."""
    x = torch.randn(3, 2, 4, requires_grad=True)
    w = [torch.randn(9, 4), torch.randn(9, 3), torch.randn(9), torch.randn(9)]  # GRU, H = 3
    state, zoneout, lengths = [torch.zeros(2, 3)], None, None
    if where == "weight_hh":
        w[1] = w[1].to("meta")
    elif where == "state":
        state = [state[0].to("meta")]
    elif where == "zoneout":
        zoneout = [torch.zeros(3, 2, 3, device="meta")]
    elif where == "zoneout_p":  # a 0-D probability: no value to read on meta
        zoneout = [torch.tensor(0.5, device="meta")]
    else:
        lengths = torch.tensor([3, 2], device="meta")
    name = {"state": r"state\[0\] \(h\)", "zoneout": r"zoneout\[0\] \(h\)",
            "zoneout_p": r"zoneout\[0\] \(h\)"}.get(where, where)
    match = (f"{name} is on meta but the input is on cpu" if where not in ("lengths", "zoneout_p")
             else "lengths must be .* on the CPU" if where == "lengths"
             else rf"{name} \(a probability\) must be on the CPU or on the input's device "
                  r"\(cpu\), got one on meta")
    with pytest.raises(RuntimeError, match=match):
        torch.ops.rnnfast.layer("gru", x, state, w, lengths, False, True, zoneout)


def test_fake_kernel_checks_the_zoneout_count():
    """Under torch.compile's fake tensors the fake kernel sees a wrong number of zoneout
    entries first: the kernels' message, not an IndexError."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        x = torch.randn(3, 2, 4)
        w = [torch.randn(12, 4), torch.randn(12, 3), torch.randn(12), torch.randn(12)]  # LSTM
        masks = [torch.zeros(3, 2, 3)] * 3
        with pytest.raises(RuntimeError, match=r"hold one tensor per state \(\[h, c\]\), got 3"):
            torch.ops.rnnfast.layer("lstm", x, [], w, None, False, False, masks)


def test_fake_kernels_name_the_op_and_direction_as_the_kernels_do():
    """The pair's and the stack's fake kernels report a device error with the kernels' names
    for the op and the direction or layer (csrc/torch/ops.cpp)."""
    x = torch.randn(3, 2, 4, requires_grad=True)
    w = [torch.randn(9, 4), torch.randn(9, 3), torch.randn(9), torch.randn(9)]  # GRU, H = 3
    w_meta = [w[0], w[1].to("meta")] + w[2:]
    w_u = [torch.randn(9, 3), torch.randn(9, 3), torch.randn(9), torch.randn(9)]
    w_u_meta = [w_u[0], w_u[1].to("meta")] + w_u[2:]
    with pytest.raises(RuntimeError, match=r"rnnfast::bidirectional_layer, reverse direction"
                                           r"\(gru\): weight_hh is on meta"):
        torch.ops.rnnfast.bidirectional_layer("gru", x, [], [], w, w_meta, None, True)
    with pytest.raises(RuntimeError, match=r"rnnfast::stacked_layers, upper layer\(gru\): "
                                           r"weight_hh is on meta"):
        torch.ops.rnnfast.stacked_layers("gru", x.detach(), [], [], w, w_u_meta, None)
