"""Special inputs: T=1, B=0, very long sequences, non-contiguous / expanded tensors, hidden sizes
around SIMD vector widths, sizes large enough to use the threaded paths, determinism."""
import copy

import pytest
import torch

from rnn_testutils import (CELL_KIND_NAMES, KIND_NAMES, call_dense, call_packed, compare_modules,
                           fwd_bwd, hx_shapes, is_lstm, make_pair, randn)


def _leaves(kind, x_shape, layers, bidir, batch, hidden, dtype=torch.float64, proj=0, hx=True,
            seed=0):
    leaves = {"x": randn(*x_shape, dtype=dtype, seed=seed + 1)}
    if hx:
        hs, cs = hx_shapes(kind, layers, bidir, batch, hidden, proj)
        leaves["h0"] = randn(*hs, dtype=dtype, seed=seed + 2)
        if cs is not None:
            leaves["c0"] = randn(*cs, dtype=dtype, seed=seed + 3)
    return leaves


# ---------------------------------------------------------------------------------- T = 1

@pytest.mark.parametrize("kind", KIND_NAMES)
@pytest.mark.parametrize("form", ["batched", "unbatched", "packed"])
def test_single_timestep(kind, form):
    ref, new = make_pair(kind, 3, 4, num_layers=2, bidirectional=True)
    lstm = is_lstm(kind)
    if form == "batched":
        leaves, call = _leaves(kind, (1, 2, 3), 2, True, 2, 4), call_dense(lstm)
    elif form == "unbatched":
        leaves, call = _leaves(kind, (1, 3), 2, True, None, 4), call_dense(lstm)
    else:
        leaves = _leaves(kind, (1, 3, 3), 2, True, 3, 4)
        call = call_packed(lstm, [1, 1, 1], False, False)
    compare_modules(kind, ref, new, leaves, call, torch.float64, what=f"{kind} T=1 {form}")


# ---------------------------------------------------------------------------------- B = 0

@pytest.mark.parametrize("kind", KIND_NAMES)
@pytest.mark.parametrize("hx", [False, True], ids=["nohx", "hx"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tf", "bf"])
def test_empty_batch(kind, hx, batch_first):
    ref, new = make_pair(kind, 3, 4, num_layers=2, bidirectional=True, batch_first=batch_first)
    x_shape = (0, 2, 3) if batch_first else (2, 0, 3)
    leaves = _leaves(kind, x_shape, 2, True, 0, 4, hx=hx)
    call = call_dense(is_lstm(kind))
    try:
        expected = fwd_bwd(ref, leaves, call)
    except Exception as exc:  # torch refuses: rnnfast must refuse the same way
        with pytest.raises(type(exc)):
            fwd_bwd(new, leaves, call)
        return
    actual = fwd_bwd(new, leaves, call)
    for k in expected:
        assert actual[k].shape == expected[k].shape, k
        assert actual[k].dtype == expected[k].dtype, k
    for k in actual:
        if k.startswith("grad:param:"):
            assert (actual[k] == 0).all(), k


# ---------------------------------------------------------------------------------- long T

@pytest.mark.parametrize("kind", KIND_NAMES)
def test_long_sequence_float64(kind):
    """T=2000: errors must not accumulate beyond float64 rounding over a long recurrence."""
    T, B, I, H = 2000, 2, 3, 8
    ref, new = make_pair(kind, I, H)
    leaves = _leaves(kind, (T, B, I), 1, False, B, H)
    compare_modules(kind, ref, new, leaves, call_dense(is_lstm(kind)), torch.float64,
                    what=f"{kind} T={T}")


# ------------------------------------------------------------------------- non-contiguous

NONCONTIG = {
    # name: (leaf shape for a (T=4, B=3, I=3) input, view producing the module input)
    "transposed": ((3, 4, 3), lambda t: t.transpose(0, 1)),
    "sliced": ((4, 3, 7), lambda t: t[..., 1::2]),
    "batch_stride": ((4, 6, 3), lambda t: t[:, ::2]),
    "expanded": ((4, 1, 3), lambda t: t.expand(4, 3, 3)),
}


@pytest.mark.parametrize("kind", KIND_NAMES)
@pytest.mark.parametrize("layout", list(NONCONTIG))
def test_noncontiguous_input_and_hx(kind, layout):
    shape, view = NONCONTIG[layout]
    ref, new = make_pair(kind, 3, 4, num_layers=2, bidirectional=True)
    leaves = {"x": randn(*shape)}
    # hx stored batch-major then transposed -> (L*D, B, H) with non-contiguous strides
    leaves["h0"] = randn(3, 4, 4, seed=2)
    if is_lstm(kind):
        leaves["c0"] = randn(3, 4, 4, seed=3)
    call = call_dense(is_lstm(kind), x_view=view, h_view=lambda t: t.transpose(0, 1))
    view_of_x = view(leaves["x"])
    assert view_of_x.shape == (4, 3, 3) and not view_of_x.is_contiguous()
    compare_modules(kind, ref, new, leaves, call, torch.float64, what=f"{kind} {layout}")


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_noncontiguous_unbatched_and_batch_first(kind):
    lstm = is_lstm(kind)
    ref, new = make_pair(kind, 3, 4, batch_first=True)
    leaves = {"x": randn(3, 4, 7), "h0": randn(4, 1, seed=2)}
    if lstm:
        leaves["c0"] = randn(4, 1, seed=3)
    # unbatched (T=4, I=3) input from a strided slice; hx (1, H) as a transposed view
    call = call_dense(lstm, x_view=lambda t: t[1, :, ::2][:, :3], h_view=lambda t: t.t())
    compare_modules(kind, ref, new, leaves, call, torch.float64, what=f"{kind} unbatched view")
    # batch_first input given as a transposed time-major buffer
    leaves = {"x": randn(4, 3, 3)}
    call = call_dense(lstm, x_view=lambda t: t.transpose(0, 1))
    compare_modules(kind, ref, new, leaves, call, torch.float64, what=f"{kind} bf view")


# ------------------------------------------------------------- sizes around SIMD widths

@pytest.mark.parametrize("kind", KIND_NAMES)
@pytest.mark.parametrize("hidden", [1, 3, 4, 8, 9, 15, 16, 17, 33])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_hidden_sizes_simd_tails(kind, hidden, dtype):
    inp = hidden + 2
    ref, new = make_pair(kind, inp, hidden, bidirectional=True, dtype=dtype)
    leaves = _leaves(kind, (3, 2, inp), 1, True, 2, hidden, dtype=dtype)
    compare_modules(kind, ref, new, leaves, call_dense(is_lstm(kind)), dtype,
                    what=f"{kind} H={hidden}")


@pytest.mark.parametrize("hidden,proj", [(9, 1), (17, 8), (33, 17)])
def test_lstm_proj_sizes(hidden, proj):
    for dtype in (torch.float32, torch.float64):
        ref, new = make_pair("LSTM", 5, hidden, num_layers=2, proj_size=proj, dtype=dtype)
        leaves = _leaves("LSTM", (3, 2, 5), 2, False, 2, hidden, dtype=dtype, proj=proj)
        compare_modules("LSTM", ref, new, leaves, call_dense(True), dtype,
                        what=f"LSTM H={hidden} P={proj}")


# ----------------------------------------------- larger sizes (threaded / blocked paths)

@pytest.mark.parametrize("kind", KIND_NAMES)
@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_larger_sizes(kind, batch, dtype):
    T, I, H = 6, 40, 128
    ref, new = make_pair(kind, I, H, num_layers=2, dtype=dtype)
    leaves = _leaves(kind, (T, batch, I), 2, False, batch, H, dtype=dtype)
    call = call_dense(is_lstm(kind))
    actual, expected = compare_modules(kind, ref, new, leaves, call, dtype,
                                       what=f"{kind} B={batch} H={H}")
    if dtype == torch.float32:
        # project rule: rnnfast's float32 error against float64 torch is no worse than a small
        # multiple of torch's own float32 error
        ref64 = copy.deepcopy(ref).double()
        exact = fwd_bwd(ref64, {k: v.double() for k, v in leaves.items()}, call)
        for k, e64 in exact.items():
            if not e64.is_floating_point():
                continue
            err_torch = (expected[k].double() - e64).abs().max().item()
            err_new = (actual[k].double() - e64).abs().max().item()
            assert err_new <= 4 * err_torch + 1e-6, (
                f"{k}: rnnfast float32 error {err_new:.2e} vs torch float32 error {err_torch:.2e}")


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_deterministic_and_thread_count_invariant(kind):
    """Same input twice -> bit-identical results; 1 thread vs default threads -> same numbers."""
    _, m = make_pair(kind, 40, 128, num_layers=2, bidirectional=True, dtype=torch.float32)
    leaves = _leaves(kind, (6, 8, 40), 2, True, 8, 128, dtype=torch.float32)
    call = call_dense(is_lstm(kind))
    a = fwd_bwd(m, leaves, call)
    b = fwd_bwd(m, leaves, call)
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} not bitwise reproducible run to run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        c = fwd_bwd(m, leaves, call)
    finally:
        torch.set_num_threads(threads)
    for k in a:
        torch.testing.assert_close(c[k], a[k], atol=1e-4, rtol=0, msg=f"{k}: 1 thread vs {threads}")


# ------------------------------------------------------ buffer reuse / graph lifetime

@pytest.mark.parametrize("kind", KIND_NAMES)
def test_outputs_and_graphs_independent_across_calls(kind):
    """A second forward must not overwrite the first call's outputs or saved tensors."""
    ref, new = make_pair(kind, 3, 4, num_layers=2, bidirectional=True)
    x1, x2 = randn(5, 2, 3, seed=1), randn(5, 2, 3, seed=2)
    w = randn(5, 2, 8, seed=3)
    grads = {}
    for name, m in (("ref", ref), ("new", new)):
        a = x1.clone().requires_grad_()
        b = x2.clone().requires_grad_()
        out1, _ = m(a)
        snapshot = out1.detach().clone()
        out2, _ = m(b)
        assert torch.equal(out1.detach(), snapshot), "second forward overwrote the first output"
        loss1 = (out1 * w).sum()
        g1 = torch.autograd.grad(loss1, [a], retain_graph=True)[0]
        g1_again = torch.autograd.grad(loss1, [a])[0]   # same graph, backward twice
        g2 = torch.autograd.grad((out2 * w).sum(), [b])[0]
        assert torch.equal(g1, g1_again)
        grads[name] = (out1.detach(), out2.detach(), g1, g2)
    for r, n in zip(grads["ref"], grads["new"]):
        torch.testing.assert_close(n, r, atol=1e-9, rtol=0)


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_output_layout_like_torch(kind):
    """word_language_model does output.view(-1, H): time-major outputs must be viewable."""
    _, m = make_pair(kind, 3, 4, num_layers=2, bidirectional=True)
    out, hn = m(randn(5, 2, 3))
    assert out.is_contiguous()
    out.view(-1, 8)
    for h in (hn if isinstance(hn, tuple) else (hn,)):
        assert h.is_contiguous()
        h.view(-1)


# The CPU kernels are float32/float64 only (the CUDA kernels also take float16 and bfloat16,
# tests/test_cuda.py). A 16-bit module or input on the CPU must be refused with an error that
# names the supported dtypes and the one given, whichever path the input takes (dense,
# PackedSequence, the cells, inference or training), never a crash or numbers in another
# dtype. torch's own CPU modules accept these dtypes, but whether they run depends on what
# oneDNN supports on the host, so torch is not run here.
LOW_PRECISION = {torch.bfloat16: "BFloat16", torch.float16: "Half"}


@pytest.mark.parametrize("kind", KIND_NAMES + ["LSTMCell", "GRUCell", "RNNCell_TANH"])
@pytest.mark.parametrize("dtype", list(LOW_PRECISION), ids=["bf16", "f16"])
@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
def test_low_precision_on_cpu_raises_a_clear_error(kind, dtype, grad):
    cell = kind in CELL_KIND_NAMES
    _, m = make_pair(kind, 3, 4, dtype=dtype)
    if cell:
        forms = {"dense": randn(2, 3, dtype=dtype)}
    else:
        x = randn(5, 2, 3, dtype=dtype)
        forms = {"dense": x,
                 "packed": torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([5, 3]))}
    m.requires_grad_(grad)
    for inp in forms.values():
        with torch.set_grad_enabled(grad):
            with pytest.raises(RuntimeError,
                               match=rf"on cpu must be float32 or float64, got "
                                     rf"{LOW_PRECISION[dtype]}\b"):
                m(inp)
