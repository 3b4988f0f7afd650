"""LSTMCell / GRUCell / RNNCell (tanh, relu) parity against torch.nn, plus gradcheck."""
import pytest
import torch

from rnn_testutils import (CELL_KIND_NAMES, DTYPES, compare_modules, fwd_bwd, is_lstm,
                           make_pair, pairwise, randn, row_id)

B, I, H = 3, 4, 5

FACTORS = {
    "form": ["batched", "unbatched"],
    "hx": [False, True],
    "bias": [True, False],
    "dtype": ["float64", "float32"],
}


def _cases():
    rows = pairwise(FACTORS, seed=3)
    return [pytest.param(kind, r, id=f"{kind}-{row_id(r)}")
            for kind in CELL_KIND_NAMES for r in rows]


def cell_call(lstm):
    def call(m, x, h0=None, c0=None):
        if h0 is None:
            res = m(x)
        else:
            res = m(x, (h0, c0) if lstm else h0)
        if lstm:
            assert isinstance(res, tuple) and len(res) == 2
            return {"h": res[0], "c": res[1]}
        assert isinstance(res, torch.Tensor)
        return {"h": res}
    return call


def cell_leaves(kind, batched, with_hx, dtype, seed=0, b=B, i=I, h=H):
    lead = (b,) if batched else ()
    leaves = {"x": randn(*lead, i, dtype=dtype, seed=seed + 1)}
    if with_hx:
        leaves["h0"] = randn(*lead, h, dtype=dtype, seed=seed + 2)
        if is_lstm(kind):
            leaves["c0"] = randn(*lead, h, dtype=dtype, seed=seed + 3)
    return leaves


@pytest.mark.parametrize("kind,row", _cases())
def test_cell_parity(kind, row):
    dtype = DTYPES[row["dtype"]]
    ref, new = make_pair(kind, I, H, bias=row["bias"], dtype=dtype)
    leaves = cell_leaves(kind, row["form"] == "batched", row["hx"], dtype)
    compare_modules(kind, ref, new, leaves, cell_call(is_lstm(kind)), dtype,
                    what=f"{kind} {row}")


@pytest.mark.parametrize("kind", CELL_KIND_NAMES)
@pytest.mark.parametrize("h", [1, 8, 17])
def test_cell_parity_sizes(kind, h):
    """Hidden sizes around SIMD widths (tails), both dtypes."""
    for dtype in (torch.float32, torch.float64):
        ref, new = make_pair(kind, 3, h, dtype=dtype)
        leaves = cell_leaves(kind, True, True, dtype, b=2, i=3, h=h)
        compare_modules(kind, ref, new, leaves, cell_call(is_lstm(kind)), dtype,
                        what=f"{kind} H={h} {dtype}")


@pytest.mark.parametrize("kind", CELL_KIND_NAMES)
def test_cell_empty_batch(kind):
    ref, new = make_pair(kind, I, H)
    leaves = cell_leaves(kind, True, True, torch.float64, b=0)
    compare_modules(kind, ref, new, leaves, cell_call(is_lstm(kind)), torch.float64,
                    what=f"{kind} B=0")


@pytest.mark.parametrize("kind", CELL_KIND_NAMES)
def test_cell_sequence_loop_matches_torch(kind):
    """Cells reused over several steps (the typical decoder loop), gradients through time."""
    lstm = is_lstm(kind)
    ref, new = make_pair(kind, I, H)

    def call(m, x, h0, c0=None):
        state = (h0, c0) if lstm else h0
        outs = []
        for t in range(x.shape[0]):
            state = m(x[t], state)
            outs.append(state[0] if lstm else state)
        return {"out": torch.stack(outs)}

    leaves = {"x": randn(4, B, I), "h0": randn(B, H, seed=5)}
    if lstm:
        leaves["c0"] = randn(B, H, seed=6)
    compare_modules(kind, ref, new, leaves, call, torch.float64, what=f"{kind} loop")


@pytest.mark.parametrize("kind", CELL_KIND_NAMES)
def test_cell_gradcheck(kind):
    lstm = is_lstm(kind)
    _, m = make_pair(kind, 3, 2)
    x = randn(2, 3).requires_grad_()
    h0 = randn(2, 2, seed=1).requires_grad_()
    c0 = randn(2, 2, seed=2).requires_grad_()
    if lstm:
        def f(x, h0, c0):
            return m(x, (h0, c0))
        inputs = (x, h0, c0)
    else:
        def f(x, h0):
            return m(x, h0)
        inputs = (x, h0)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("kind", CELL_KIND_NAMES)
@pytest.mark.parametrize("b,size", [(16, 64), (128, 64), (128, 3)], ids=["b16-long", "b128-long",
                                                                        "b128-short"])
def test_cell_step_batches(kind, b, size):
    """A cell's step at larger batches: with long rows the forward reads the weights in place
    (dot products, any batch), with short rows it packs them (register tiles); both against
    torch, outputs and every gradient."""
    ref, new = make_pair(kind, size, size)
    leaves = cell_leaves(kind, True, True, torch.float64, seed=7, b=b, i=size, h=size)
    compare_modules(kind, ref, new, leaves, cell_call(is_lstm(kind)), torch.float64,
                    what=f"{kind} B={b} H={size}")


@pytest.mark.parametrize("kind", CELL_KIND_NAMES)
def test_cell_weight_as_plain_tensor(kind):
    """A weight taken out of the parameters and set as a plain tensor attribute (what
    weight-drop wrappers do before each call) is the one the step uses."""
    ref, new = make_pair(kind, I, H)
    w = torch.randn_like(ref.weight_hh)
    del new._parameters["weight_hh"]
    new.weight_hh = w
    with torch.no_grad():
        ref.weight_hh.copy_(w)
    x, h = randn(B, I, seed=1), randn(B, H, seed=2)
    state = (h, randn(B, H, seed=3)) if is_lstm(kind) else h
    got, want = new(x, state), ref(x, state)
    got, want = (got[0], want[0]) if is_lstm(kind) else (got, want)
    torch.testing.assert_close(got, want)


@pytest.fixture
def gemm_rows_restored():
    from rnnfast import _C
    before = _C.gemm_rows_enabled()
    _C.set_gemm_rows(True)
    yield _C
    _C.set_gemm_rows(before)


# The smallest hidden size at which each kind's weight gradients reach the 4 MB of the row-by-row
# path (G H I bytes >= 4 MB with I >= H): small enough to stay cheap under the sanitizers.
ROWS_PATH_H = {torch.float64: {4: 368, 3: 424, 1: 728}, torch.float32: {4: 512, 3: 600, 1: 1024}}


@pytest.mark.parametrize("kind", CELL_KIND_NAMES)
@pytest.mark.parametrize("b,ragged,dtype", [
    (1, False, torch.float64),  # K = 1, every row vector-aligned: streamed
    (3, True, torch.float64),   # W_ih's rows of H + 5: a partial strip, not vector-aligned
    (8, False, torch.float32),  # K = 8, the most k steps of the row-by-row path
], ids=["b1-f64-streamed", "b3-f64-ragged", "b8-f32"])
def test_cell_weight_gradients_row_by_row(kind, b, ragged, dtype, gemm_rows_restored):
    """A cell's step at a small batch takes its weight gradients (4 MB and up) from GEMMs of B k
    steps, written row by row (csrc/core/cpu/gemm_impl.h, kFewK): against torch, and bit for bit
    against the blocked GEMM (set_gemm_rows(False)) on 1, 2 and 3 threads."""
    gates = 4 if is_lstm(kind) else 3 if kind.startswith("GRU") else 1
    h = ROWS_PATH_H[dtype][gates]
    i = h + 5 if ragged else h
    assert gates * h * h * dtype.itemsize >= 4 << 20  # on the path
    _C = gemm_rows_restored
    lstm = is_lstm(kind)
    ref, new = make_pair(kind, i, h, dtype=dtype)
    leaves = cell_leaves(kind, True, True, dtype, seed=4, b=b, i=i, h=h)
    actual, _ = compare_modules(kind, ref, new, leaves, cell_call(lstm), dtype,
                                what=f"{kind} B={b} I={i} H={h} {dtype}")
    threads = torch.get_num_threads()
    try:
        for on, n in [(False, 2), (True, 1), (True, 3)]:
            _C.set_gemm_rows(on)
            torch.set_num_threads(n)
            other = fwd_bwd(new, leaves, cell_call(lstm))
            for k in actual:
                assert torch.equal(other[k], actual[k]), (
                    f"{kind} B={b}: {k} with gemm_rows={on} on {n} threads differs")
    finally:
        torch.set_num_threads(threads)
