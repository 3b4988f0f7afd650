"""Concurrency, memory and weight freshness.

* Forward/backward from several Python threads at once give bitwise the results of serial calls,
  also with each job on its own intra-op thread count (torch.set_num_threads 1, 2, 3), on every
  SIMD path (RNNFAST_SIMD, in a fresh process per path).
* The saved workspaces are released by backward, or when the outputs are dropped.
* RSS stays flat over thousands of calls (successful calls, inference calls, and calls that
  raise part-way): nothing leaks per call.
* A weight change between calls is always seen (in-place update, optimizer step, reassigned
  Parameter, ``.data`` swap, ``load_state_dict``): the kernels cache no weights across calls.
* The large scratch blocks the CPU kernels keep for the next call (``rnnfast.empty_cache``)
  are reused dirty without changing any result, and ``empty_cache`` frees them.
* A very long sequence (T = 100,000, small B and H) runs forward + backward in a subprocess whose
  peak RSS is measured and bounded (see ``test_very_long_sequence_memory``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.nn as nn
from torch.multiprocessing.reductions import StorageWeakRef

import rnnfast
from rnn_testutils import (ATOL, CELL_KIND_NAMES, KIND_NAMES, assert_results_close, call_dense,
                           fwd_bwd, hx_shapes, is_lstm, make_pair, randn)


def _under_sanitizer() -> bool:
    """ASan's quarantine and shadow memory make RSS meaningless."""
    try:
        with open("/proc/self/maps") as f:
            return any("libasan" in line or "libtsan" in line for line in f)
    except OSError:
        return False


SANITIZED = _under_sanitizer()


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def _bitwise_equal(a: dict, b: dict, what: str):
    assert sorted(a) == sorted(b), what
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), f"{what}: {k} differs"
        else:
            assert a[k] == b[k], f"{what}: {k} differs"


# -------------------------------------------------------------------------------- threads

def _job(kind, module, seed):
    """One forward + backward on its own input; sizes large enough for the threaded paths."""
    lstm = is_lstm(kind)
    if kind in CELL_KIND_NAMES:
        leaves = {"x": randn(16, 20, dtype=torch.float32, seed=seed)}

        def call(m, x):
            r = m(x)
            return {"h": r[0], "c": r[1]} if lstm else {"h": r}
    else:
        leaves = {"x": randn(6, 16, 20, dtype=torch.float32, seed=seed)}
        hs, cs = hx_shapes(kind, 2, True, 16, 32)
        leaves["h0"] = randn(*hs, dtype=torch.float32, seed=seed + 1)
        if cs is not None:
            leaves["c0"] = randn(*cs, dtype=torch.float32, seed=seed + 2)
        call = call_dense(lstm)
    return fwd_bwd(module, leaves, call, upstream_seed=seed + 3)


def _module(kind):
    # B * G*H * H > 16384: the per-step loops and the GEMMs take their parallel paths
    if kind in CELL_KIND_NAMES:
        return make_pair(kind, 20, 32, dtype=torch.float32)[1]
    return make_pair(kind, 20, 32, num_layers=2, bidirectional=True, dtype=torch.float32)[1]


@pytest.mark.parametrize("kind", KIND_NAMES + ["mixed"])
def test_concurrent_threads_match_serial(kind):
    """3 Python threads x 8 jobs, twice (each job its own input; all share one module)."""
    kinds = (KIND_NAMES + CELL_KIND_NAMES) if kind == "mixed" else [kind]
    modules = {k: _module(k) for k in kinds}
    jobs = [(kinds[i % len(kinds)], 100 + 10 * i) for i in range(8)]
    serial = [_job(k, modules[k], s) for k, s in jobs]
    with ThreadPoolExecutor(max_workers=3) as pool:
        for _round in range(2):
            futures = [pool.submit(_job, k, modules[k], s) for k, s in jobs]
            for (k, s), fut, want in zip(jobs, futures, serial):
                _bitwise_equal(fut.result(timeout=120), want, f"{k} seed {s} (threaded)")


THREAD_COUNTS = (1, 2, 3)


def _job_with_threads(kind, module, seed, num_threads):
    """_job after torch.set_num_threads(num_threads) in the calling thread (each Python thread
    has its own intra-op thread count)."""
    torch.set_num_threads(num_threads)
    assert torch.get_num_threads() == num_threads
    return _job(kind, module, seed)


def check_thread_counts_under_concurrency():
    """Jobs on 3 Python threads, each job on its own intra-op thread count (1, 2 or 3), while
    the main thread keeps changing its own count and reading rnnfast.info(): every result is
    bitwise the serial one computed at the default count, and that one matches torch (float32
    tolerance). Returns the SIMD path in use. Run by the test below in a fresh process per
    SIMD path (RNNFAST_SIMD)."""
    kinds = ["LSTM", "GRU", "RNN_RELU", "LSTMCell"]
    pairs = {}
    for k in kinds:
        kw = {} if k in CELL_KIND_NAMES else dict(num_layers=2, bidirectional=True)
        pairs[k] = make_pair(k, 20, 32, dtype=torch.float32, **kw)
    main_threads = torch.get_num_threads()
    serial = {k: _job(k, pairs[k][1], 7) for k in kinds}
    for k in kinds:
        assert_results_close(serial[k], _job(k, pairs[k][0], 7), ATOL[torch.float32],
                             what=f"{k} vs torch")
    jobs = [(k, n) for k in kinds for n in THREAD_COUNTS]
    try:
        with ThreadPoolExecutor(max_workers=3) as pool:
            for _round in range(2):
                futures = [pool.submit(_job_with_threads, k, pairs[k][1], 7, n) for k, n in jobs]
                i = 0
                while not all(f.done() for f in futures):
                    torch.set_num_threads(THREAD_COUNTS[i % len(THREAD_COUNTS)])
                    rnnfast.info()
                    i += 1
                    time.sleep(0.002)
                for (k, n), fut in zip(jobs, futures):
                    _bitwise_equal(fut.result(timeout=120), serial[k],
                                   f"{k} on {n} intra-op threads, concurrently")
    finally:
        torch.set_num_threads(main_threads)
    return rnnfast.info()["simd"]


_THREADS_SCRIPT = textwrap.dedent(r"""
    import sys
    sys.path.insert(0, sys.argv[1])
    import test_threads_memory as t
    print("SIMD", t.check_thread_counts_under_concurrency())
""")


@pytest.mark.parametrize("simd", ["scalar", "avx2", "avx512"])
def test_threads_with_different_thread_counts_on_every_simd_path(simd):
    """check_thread_counts_under_concurrency in a fresh process with RNNFAST_SIMD=simd (the
    variable is read at import), on each SIMD path this CPU has."""
    if not rnnfast._C.cpu_supports(simd):
        pytest.skip(f"this CPU lacks {simd}")
    env = dict(os.environ, RNNFAST_SIMD=simd)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, "-c", _THREADS_SCRIPT, here], capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.split()[-2:] == ["SIMD", simd], proc.stdout[-2000:]


# -------------------------------------------------------------------------------- memory

def _rss_trend(step, warmup: int, blocks: int, per_block: int):
    for _ in range(warmup):
        step()
    base = _rss_mb()
    marks = []
    for _ in range(blocks):
        for _ in range(per_block):
            step()
        marks.append(_rss_mb())
    return base, marks


# A leak of one buffer of >= 4 KiB per call shows up as >= 8 MiB over 2,000 calls.
LEAK_TOLERANCE_MB = 8.0


@pytest.mark.skipif(SANITIZED, reason="RSS is meaningless under AddressSanitizer")
@pytest.mark.parametrize("mode", ["train", "inference", "errors", "cells"])
def test_rss_flat_over_many_calls(mode):
    torch.manual_seed(0)
    torch.set_num_threads(1)  # the loop measures memory, not speed (and the host may be busy)
    if mode == "cells":
        cells = [rnnfast.LSTMCell(16, 32), rnnfast.GRUCell(16, 32), rnnfast.RNNCell(16, 32)]
        x = torch.randn(8, 16, requires_grad=True)

        def step():
            for c in cells:
                out = c(x)
                h = out[0] if isinstance(out, tuple) else out
                h.sum().backward()
    else:
        # one forward + backward holds ~40 KiB of activations per layer and direction
        lstm = rnnfast.LSTM(16, 32, bidirectional=True, proj_size=8)
        gru = rnnfast.GRU(16, 32)
        x = torch.randn(16, 4, 16, requires_grad=(mode == "train"))
        bad_lengths = torch.full((4,), 99, dtype=torch.int64)
        w_ih, w_hh = gru.weight_ih_l0.detach(), gru.weight_hh_l0.detach()

        def step():
            if mode == "train":
                for m in (lstm, gru):
                    out, _ = m(x)
                    out.sum().backward()
            elif mode == "inference":
                with torch.no_grad():
                    lstm(x)
                    gru(x)
            else:
                # errors raised at argument checking and after allocations
                for bad in (lambda: torch.ops.rnnfast.layer(
                                "gru", x.detach(), [], [w_ih, w_hh], bad_lengths, False, True),
                            lambda: torch.ops.rnnfast.layer_backward(
                                "gru", None, [None], x.detach(), [w_ih, w_hh], None,
                                torch.zeros(16, 4, 7), False),
                            lambda: lstm(x[..., :3])):
                    with pytest.raises(RuntimeError):
                        bad()

    base, marks = _rss_trend(step, warmup=200, blocks=4, per_block=500)
    growth = max(marks) - base
    assert growth < LEAK_TOLERANCE_MB, (
        f"{mode}: RSS grew {growth:.1f} MiB over 2,000 calls after warm-up "
        f"(base {base:.1f} MiB, marks {[round(m, 1) for m in marks]})")


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN_TANH"])
def test_scratch_blocks_reused_dirty_give_the_same_results(kind):
    """Calls big enough for cached scratch blocks (x W_ih^T alone is > 2 MB here): a call on a
    cold cache, then one on other data (leaving other values in the blocks), then the first
    again on the reused blocks must agree bitwise, and match torch in float64."""
    lstm = is_lstm(kind)
    ref, ours = make_pair(kind, 24, 64, dtype=torch.float64)
    hs, cs = hx_shapes(kind, 1, False, 32, 64)

    def leaves(seed):
        out = {"x": randn(160, 32, 24, seed=seed), "h0": randn(*hs, seed=seed + 1)}
        if cs is not None:
            out["c0"] = randn(*cs, seed=seed + 2)
        return out

    call = call_dense(lstm)
    rnnfast.empty_cache()
    assert rnnfast.info()["cpu_scratch_cached_bytes"] == 0
    first = fwd_bwd(ours, leaves(0), call)
    # (with the cache off, as by default under AddressSanitizer, the kernels keep nothing)
    assert not rnnfast.info()["cpu_scratch_cache"] or \
        rnnfast.info()["cpu_scratch_cached_bytes"] >= 2 << 20, (
        "no large block was kept")
    fwd_bwd(ours, leaves(10), call, upstream_seed=99)
    again = fwd_bwd(ours, leaves(0), call)
    _bitwise_equal(first, again, "the same call on reused scratch blocks")
    assert_results_close(again, fwd_bwd(ref, leaves(0), call), ATOL[torch.float64],
                         what="on reused scratch blocks")
    rnnfast.empty_cache()
    assert rnnfast.info()["cpu_scratch_cached_bytes"] == 0


def _record_saved(fn):
    """Runs fn() with autograd's saved-tensor hooks recording, for every tensor the graph saves
    for backward (the ops' workspaces among them), a weak reference to its storage (which
    expires when the memory is released, whoever held it) and its shape and data pointer. The
    hook stores a detached alias: returning an output itself would make a reference cycle
    (output -> its grad_fn -> the saved output) that the hook, not the op, created."""
    saved = []

    def pack(t):
        storage = t.untyped_storage()
        saved.append((StorageWeakRef(storage), tuple(t.shape), storage.data_ptr()))
        return t.detach()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    return result, saved


@pytest.mark.parametrize("kind", ["LSTM_proj", "GRU", "RNN_TANH", "LSTMCell"])
def test_graph_and_workspace_freed(kind):
    """The saved workspace of every (layer, direction) and the saved intermediate layer inputs
    are released by backward (while the outputs live on), and, without a backward, as soon as
    the outputs are dropped: no reference cycle through the op, no reference kept elsewhere."""
    H, P = 8, (3 if kind == "LSTM_proj" else 0)
    if kind == "LSTMCell":
        m, x, cell, n_ws = rnnfast.LSTMCell(4, H), torch.randn(3, 4), "lstm", 1
    else:
        cell = {"LSTM_proj": "lstm", "GRU": "gru", "RNN_TANH": "rnn_tanh"}[kind]
        cls = {"lstm": rnnfast.LSTM, "gru": rnnfast.GRU, "rnn_tanh": rnnfast.RNN}[cell]
        # (a bidirectional RNN's workspace, 2 H wide, could not be told from the next layer's
        # input by its shape)
        bidir = kind != "RNN_TANH"
        m = cls(4, H, num_layers=2, bidirectional=bidir, **(dict(proj_size=P) if P else {}))
        x, n_ws = torch.randn(6, 3, 4), 4 if bidir else 2
    x.requires_grad_()
    user = {t.untyped_storage().data_ptr() for t in [x, *m.parameters()]}
    cols = rnnfast.ops.workspace_cols(cell, H, P)

    def run():
        r = m(x)
        if kind == "LSTMCell":
            return list(r)
        return [r[0], *r[1]] if isinstance(r[1], tuple) else [r[0], r[1]]

    def check_kept(saved):
        ws = [ref for ref, shape, ptr in saved
              if len(shape) == 3 and shape[-1] == cols and ptr not in user]
        assert len(ws) == n_ws, [shape for _, shape, _ in saved]
        assert not any(ref.expired() for ref in ws), "a workspace was not kept for backward"

    def still_held(saved):
        return [shape for ref, shape, ptr in saved if ptr not in user and not ref.expired()]

    # 1. backward releases them; the outputs are still referenced here
    outs, saved = _record_saved(run)
    check_kept(saved)
    sum(o.sum() for o in outs).backward()
    assert still_held(saved) == [], "saved tensors still held after backward"
    del outs

    # 2. without a backward, dropping the outputs releases them (no gc.collect: no cycle)
    outs, saved = _record_saved(run)
    check_kept(saved)
    out_refs = [weakref.ref(o) for o in outs]
    del outs
    assert all(r() is None for r in out_refs), "outputs kept alive (reference cycle?)"
    assert still_held(saved) == [], "saved tensors still held after the outputs were dropped"


# -------------------------------------------------------------------------------- freshness

@pytest.mark.parametrize("kind", KIND_NAMES + CELL_KIND_NAMES)
def test_weight_updates_are_always_seen(kind):
    """Every way of changing a weight between two calls is seen by the next call."""
    cell = kind in CELL_KIND_NAMES
    kw = {} if cell else dict(num_layers=2, bidirectional=True)
    if kind == "LSTM":
        kw["proj_size"] = 3
    ref, new = make_pair(kind, 5, 6, **kw)
    x = randn(5, 5) if cell else randn(4, 5, 5)

    def out_of(m):
        with torch.no_grad():
            r = m(x)
        r = r[0] if isinstance(r, tuple) else r
        return r

    def check(what):
        torch.testing.assert_close(out_of(new), out_of(ref), atol=ATOL[torch.float64], rtol=0,
                                   msg=lambda s: f"{kind}: after {what}: {s}")

    check("construction")
    names = [n for n, _ in new.named_parameters()]
    for i, name in enumerate(names):
        # 1. in-place update of the Parameter's storage
        with torch.no_grad():
            for m in (ref, new):
                getattr(m, name).mul_(-1.5).add_(0.01 * (i + 1))
        check(f"in-place update of {name}")
    # 2. a reassigned Parameter (weight-drop style)
    name = names[1]
    fresh = randn(*getattr(new, name).shape, seed=42)
    for m in (ref, new):
        setattr(m, name, nn.Parameter(fresh.clone()))
    check(f"reassigned {name}")
    # 3. .data swapped for a different storage
    name = names[0]
    fresh = randn(*getattr(new, name).shape, seed=43)
    for m in (ref, new):
        getattr(m, name).data = fresh.clone()
    check(f".data swap of {name}")
    # 4. load_state_dict (copies into the existing storages)
    sd = {k: v + 0.125 for k, v in ref.state_dict().items()}
    for m in (ref, new):
        m.load_state_dict(sd)
    check("load_state_dict")
    # 5. optimizer steps, compared with torch after every step
    opt_r = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    opt_n = torch.optim.SGD(new.parameters(), lr=0.05, momentum=0.9)
    for step in range(4):
        for m, opt in ((ref, opt_r), (new, opt_n)):
            opt.zero_grad()
            r = m(x)
            r = r[0] if isinstance(r, tuple) else r
            (r ** 2).sum().backward()
            opt.step()
        check(f"optimizer step {step}")


def test_raw_op_sees_in_place_weight_change():
    from rnnfast import _reference

    x, w_ih, w_hh = randn(5, 2, 3), randn(16, 3, seed=1), randn(16, 4, seed=2)
    for _ in range(3):
        y, final, _ = torch.ops.rnnfast.layer("lstm", x, [], [w_ih, w_hh], None, False, False)
        ry, rfinal = _reference.layer("lstm", x, [], [w_ih, w_hh])
        torch.testing.assert_close(y, ry, atol=1e-12, rtol=0)
        for a, b in zip(final, rfinal):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
        w_hh.mul_(0.5)  # same storage, same pointer, new values
        x[0].add_(1.0)


# -------------------------------------------------------------------------------- long T

_LONG_T_SCRIPT = textwrap.dedent(r"""
    import json, sys, time, torch, rnnfast
    kind, T, B, I, H = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), \
        int(sys.argv[5])
    torch.set_num_threads(1)   # memory is the subject; one thread keeps the timing stable
    torch.manual_seed(0)
    m = {"LSTM": rnnfast.LSTM, "GRU": rnnfast.GRU, "RNN": rnnfast.RNN}[kind](I, H)
    m(torch.randn(3, B, I))[0].sum().backward()    # warm-up: lazy initialisation
    m.zero_grad()
    x = torch.randn(T, B, I)
    def status_mb(key):   # VmHWM: peak resident set; VmRSS: current
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")   # reset VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        pass
    base = status_mb("VmRSS")
    peak_mb = lambda: status_mb("VmHWM")
    t0 = time.perf_counter()
    xg = x.clone().requires_grad_()
    out, hn = m(xg)
    last = lambda s: s[0] if isinstance(s, tuple) else s
    (out.sum() + last(hn).sum()).backward()
    train_s = time.perf_counter() - t0
    train_peak = peak_mb()
    finite = bool(torch.isfinite(xg.grad).all()) and all(
        bool(torch.isfinite(p.grad).all()) for p in m.parameters())
    h_full = last(hn).detach()
    del out, hn, xg
    # the same sequence in two halves, carrying the state: must give the same h_T
    with torch.no_grad():
        _, s1 = m(x[: T // 2])
        _, s2 = m(x[T // 2:], s1)
    print(json.dumps({"base_mb": base, "train_peak_mb": train_peak, "train_s": train_s,
                      "finite": finite, "split_err": (last(s2) - h_full).abs().max().item()}))
""")


def _essential_mb(kind, T, B, I, H, elt):
    """Memory a fused training forward + backward cannot avoid holding at its peak (backward):
    input, output, grad_output, the saved workspace, the gate gradients, grad_input."""
    G = {"LSTM": 4, "GRU": 3, "RNN": 1}[kind]
    ws = {"LSTM": 7 * H, "GRU": 5 * H, "RNN": 2 * H}[kind]
    split = 2 if kind == "GRU" else 1   # GRU keeps separate x-side and h-side gate gradients
    per_tb = I + H + H + ws + split * G * H + I
    return T * B * per_tb * elt / 2 ** 20


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_very_long_sequence_memory(kind):
    """T = 100,000, B = 2, I = 8, H = 16, float32, training forward + backward, one thread.

    Bound: peak RSS growth <= 2 x the essential activation memory + 64 MiB (LSTM and GRU at
    this size: essential 171 MiB, bound 406 MiB; measured ~170 MiB).  A per-step autograd
    graph, as a Python cell loop builds, would hold tens of tensors per step (GiBs).  Also:
    under 60 s, all gradients finite, and running the sequence as two halves (carrying the
    state) gives the same h_T (float32, 1e-5).
    """
    T, B, I, H = 100_000, 2, 8, 16
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    proc = subprocess.run([sys.executable, "-c", _LONG_T_SCRIPT, kind, str(T), str(B), str(I),
                           str(H)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    grew = res["train_peak_mb"] - res["base_mb"]
    essential = _essential_mb(kind, T, B, I, H, 4)
    bound = 2 * essential + 64
    print(f"\n{kind} T={T}: peak RSS +{grew:.0f} MiB (essential {essential:.0f} MiB, bound "
          f"{bound:.0f} MiB), forward+backward {res['train_s']:.2f} s, "
          f"split-vs-whole |dh| = {res['split_err']:.1e}")
    assert res["finite"], res
    assert res["split_err"] < 1e-5, res
    if not SANITIZED:
        assert grew <= bound, f"peak RSS grew {grew:.0f} MiB > bound {bound:.0f} MiB: {res}"
        assert res["train_s"] < 60, res
