"""Forward + backward parity of rnnfast.LSTM / GRU / RNN against torch.nn.

Every constructor option (num_layers, bidirectional, batch_first, bias, dropout in eval mode,
proj_size for LSTM, dtype) and every input form (batched, unbatched, PackedSequence sorted and
unsorted, with and without hx) is combined pairwise for each module kind, plus a few
"everything on" configurations.
"""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rnn_testutils import (ATOL, DTYPES, KIND_NAMES, call_dense, call_packed, compare_modules,
                           hx_shapes, is_lstm, make_pair, pairwise, randn, row_id)

T, B, I, H, P = 4, 3, 3, 4, 2
SORTED_LENGTHS = [4, 3, 1]
UNSORTED_LENGTHS = [3, 1, 4]

BASE_FACTORS = {
    "num_layers": [1, 2],
    "bidirectional": [False, True],
    "batch_first": [False, True],
    "bias": [True, False],
    "form": ["batched", "unbatched", "packed_sorted", "packed_unsorted"],
    "hx": [False, True],
    "dtype": ["float64", "float32"],
    "mode": ["train", "eval", "eval_dropout"],
}


def _valid(row):
    # dropout needs a second layer to act on; eval mode makes it inactive so we can compare.
    return not (row.get("mode") == "eval_dropout" and row.get("num_layers") == 1)


def _configs():
    out = []
    lstm_rows = pairwise({**BASE_FACTORS, "proj_size": [0, P]}, _valid, seed=1)
    other_rows = pairwise(BASE_FACTORS, _valid, seed=2)
    full = [
        dict(num_layers=2, bidirectional=True, batch_first=True, bias=True,
             form="packed_unsorted", hx=True, dtype="float64", mode="train"),
        dict(num_layers=2, bidirectional=True, batch_first=True, bias=False,
             form="unbatched", hx=True, dtype="float32", mode="eval_dropout"),
        dict(num_layers=2, bidirectional=True, batch_first=False, bias=True,
             form="batched", hx=True, dtype="float64", mode="eval"),
    ]
    for kind in KIND_NAMES:
        rows = lstm_rows if kind == "LSTM" else other_rows
        extra = [dict(r, proj_size=P) if kind == "LSTM" else r for r in full]
        for r in rows + extra:
            out.append(pytest.param(kind, r, id=f"{kind}-{row_id(r)}"))
    return out


def build_case(kind, row, seed=0):
    dtype = DTYPES[row["dtype"]]
    kw = dict(num_layers=row["num_layers"], bidirectional=row["bidirectional"],
              batch_first=row["batch_first"], bias=row["bias"])
    if row.get("proj_size"):
        kw["proj_size"] = row["proj_size"]
    if row["mode"] == "eval_dropout":
        kw["dropout"] = 0.4
    ref, new = make_pair(kind, I, H, seed=seed, dtype=dtype, **kw)
    if row["mode"] in ("eval", "eval_dropout"):
        ref.eval()
        new.eval()
    else:
        ref.train()
        new.train()

    form = row["form"]
    bf = row["batch_first"]
    batch = None if form == "unbatched" else B
    if form == "unbatched":
        x = randn(T, I, dtype=dtype, seed=seed + 1)
    elif bf:
        x = randn(B, T, I, dtype=dtype, seed=seed + 1)
    else:
        x = randn(T, B, I, dtype=dtype, seed=seed + 1)
    leaves = {"x": x}
    if row["hx"]:
        hs, cs = hx_shapes(kind, row["num_layers"], row["bidirectional"], batch, H,
                           row.get("proj_size", 0))
        leaves["h0"] = randn(*hs, dtype=dtype, seed=seed + 2)
        if cs is not None:
            leaves["c0"] = randn(*cs, dtype=dtype, seed=seed + 3)

    lstm = is_lstm(kind)
    if form == "packed_sorted":
        call = call_packed(lstm, SORTED_LENGTHS, True, bf)
    elif form == "packed_unsorted":
        call = call_packed(lstm, UNSORTED_LENGTHS, False, bf)
    else:
        call = call_dense(lstm)
    return ref, new, leaves, call, dtype


@pytest.mark.parametrize("kind,row", _configs())
def test_parity(kind, row):
    ref, new, leaves, call, dtype = build_case(kind, row)
    compare_modules(kind, ref, new, leaves, call, dtype, what=f"{kind} {row}")
    # the rnnfast module must leave its training flag alone
    assert new.training == (row["mode"] == "train")


@pytest.mark.parametrize("kind", KIND_NAMES)
@pytest.mark.parametrize("loss_on", ["out", "h_n", "c_n"])
def test_partial_upstream_gradients(kind, loss_on):
    """Only some outputs feed the loss: the others get no gradient (undefined in autograd)."""
    if loss_on == "c_n" and not is_lstm(kind):
        pytest.skip("c_n only exists for LSTM")
    row = dict(num_layers=2, bidirectional=True, batch_first=False, bias=True, form="batched",
               hx=True, dtype="float64", mode="train")
    ref, new, leaves, call, dtype = build_case(kind, row)
    compare_modules(kind, ref, new, leaves, call, dtype, what=f"{kind} loss on {loss_on}",
                    loss_keys=(loss_on,))


@pytest.mark.parametrize("kind", KIND_NAMES)
@pytest.mark.parametrize("which", ["frozen_params", "input_no_grad", "hx_only_grad"])
def test_partial_requires_grad(kind, which):
    row = dict(num_layers=2, bidirectional=True, batch_first=False, bias=True, form="batched",
               hx=True, dtype="float64", mode="train")
    ref, new, leaves, call, dtype = build_case(kind, row)
    no_grad = ()
    if which == "frozen_params":
        for m in (ref, new):
            m.requires_grad_(False)
    elif which == "input_no_grad":
        no_grad = ("x",)
    else:
        no_grad = ("x",)
        for m in (ref, new):
            m.requires_grad_(False)
    compare_modules(kind, ref, new, leaves, call, dtype, what=f"{kind} {which}",
                    no_grad_leaves=no_grad)


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_nothing_requires_grad_and_inference_mode(kind):
    ref, new = make_pair(kind, I, H, num_layers=2, bidirectional=True)
    x = randn(T, B, I)
    with torch.no_grad():
        expected = ref(x)
    new.requires_grad_(False)
    out1 = new(x)
    new.requires_grad_(True)
    with torch.no_grad():
        out2 = new(x)
    with torch.inference_mode():
        out3 = new(x)
    for got in (out1, out2, out3):
        assert not got[0].requires_grad
        torch.testing.assert_close(got[0], expected[0], atol=ATOL[torch.float64], rtol=0)
        e_h = expected[1][0] if is_lstm(kind) else expected[1]
        g_h = got[1][0] if is_lstm(kind) else got[1]
        torch.testing.assert_close(g_h, e_h, atol=ATOL[torch.float64], rtol=0)


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_backward_twice_and_grad_accumulation(kind):
    """.backward() accumulating into .grad twice gives twice torch's gradient."""
    ref, new = make_pair(kind, I, H, num_layers=2)
    x = randn(T, B, I)
    for m in (ref, new):
        for _ in range(2):
            out, _ = m(x)
            (out * randn(*out.shape, seed=9)).sum().backward()
    for (n, p_ref), (_, p_new) in zip(ref.named_parameters(), new.named_parameters()):
        torch.testing.assert_close(p_new.grad, p_ref.grad, atol=2e-9, rtol=0, msg=n)


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
@pytest.mark.parametrize("kind", KIND_NAMES)
def test_parity_random_shapes(kind, data):
    """Random small shapes (including size-1 dims) and options, float64."""
    t = data.draw(st.integers(1, 6), label="T")
    b = data.draw(st.integers(1, 4), label="B")
    i = data.draw(st.integers(1, 6), label="I")
    h = data.draw(st.integers(1, 6), label="H")
    layers = data.draw(st.integers(1, 3), label="num_layers")
    bidir = data.draw(st.booleans(), label="bidirectional")
    bias = data.draw(st.booleans(), label="bias")
    kw = dict(num_layers=layers, bidirectional=bidir, bias=bias)
    proj = 0
    if is_lstm(kind) and h > 1:
        proj = data.draw(st.integers(0, h - 1), label="proj_size")
        kw["proj_size"] = proj
    ref, new = make_pair(kind, i, h, seed=t * 100 + b, **kw)
    leaves = {"x": randn(t, b, i, seed=3)}
    hs, cs = hx_shapes(kind, layers, bidir, b, h, proj)
    leaves["h0"] = randn(*hs, seed=4)
    if cs is not None:
        leaves["c0"] = randn(*cs, seed=5)
    compare_modules(kind, ref, new, leaves, call_dense(is_lstm(kind)), torch.float64,
                    what=f"{kind} T={t} B={b} I={i} H={h} {kw}")


@pytest.mark.parametrize("kind", KIND_NAMES)
@pytest.mark.parametrize("form", ["batched", "packed_sorted", "packed_unsorted"])
def test_long_small_batch_input_projection_in_the_steps(kind, form):
    """Long sequences of a small batch whose weights fit the cores' L2 take the x W_ih^T
    product inside each step (csrc/core/cpu/layer_impl.h, `fused`) instead of one GEMM over
    every step: the sizes here select that path (gx > 4 MB, weights < 768 KB per thread),
    bidirectional so that it also runs in reverse; LSTM with a projection too. Their saved
    workspaces (> 8 MB each) are also written with non-temporal stores on AVX-512 (the plan's
    stream_workspace; AVX2 and the portable path store them plainly)."""
    lstm = is_lstm(kind)
    # x W_ih^T of 4 rows per step must exceed 4 MB in float64: T * 4 * G * H * 8 bytes, and
    # the workspace 8 MB: T * 4 * WS * 8 bytes (WS = 7H + P, 4H + H, H + H)
    Tl = {"LSTM": 300, "GRU": 420}.get(kind, 1100)
    Bl, Il, Hl = 4, 8, 128
    kw = dict(bidirectional=True, proj_size=64) if lstm else dict(bidirectional=True)
    ref, new = make_pair(kind, Il, Hl, dtype=torch.float64, **kw)
    leaves = {"x": randn(Tl, Bl, Il, seed=3)}
    hs, cs = hx_shapes(kind, 1, True, Bl, Hl, kw.get("proj_size", 0))
    leaves["h0"] = randn(*hs, seed=4)
    if cs is not None:
        leaves["c0"] = randn(*cs, seed=5)
    lengths = [Tl, Tl - 1, Tl - 3, Tl - 5]
    if form == "batched":
        call = call_dense(lstm)
    else:
        call = call_packed(lstm, lengths if form == "packed_sorted" else lengths[::-1],
                           form == "packed_sorted", False)
    compare_modules(kind, ref, new, leaves, call, torch.float64, what=f"{kind} {form} T={Tl}")
