"""Determinism: the same inputs and seed give bitwise-identical outputs and gradients

* run to run in one process (every module and cell, dense and packed input),
* across intra-op thread counts (torch.set_num_threads 1 vs 2) on every SIMD path this CPU has,
* with inter-layer dropout under a seed (and a different seed really changes the result),
* across processes, with the heap pre-filled with different garbage (glibc MALLOC_PERTURB_) and
  different OMP_NUM_THREADS: a kernel that read uninitialised memory, or whose reduction order
  depended on the thread count, would give different bits.

The sizes are chosen so that the per-step loops and the GEMMs take their multi-threaded paths
(B * G*H * S > 16384 and M*N*K > 32768 in csrc/core/cpu).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import rnnfast
from rnn_testutils import (CELL_KIND_NAMES, KIND_NAMES, call_dense, call_packed, fwd_bwd,
                           SIMD_PATHS, hx_shapes, is_lstm, make_pair, randn)

CASES = KIND_NAMES + ["LSTM_proj"] + CELL_KIND_NAMES


def _case(name, dtype=torch.float32, packed=False, dropout=0.0):
    """(module, leaves, call) for one configuration."""
    kind = "LSTM" if name == "LSTM_proj" else name
    lstm = is_lstm(kind)
    if kind in CELL_KIND_NAMES:
        _, m = make_pair(kind, 24, 48, dtype=dtype)
        leaves = {"x": randn(32, 24, dtype=dtype, seed=1), "h0": randn(32, 48, dtype=dtype, seed=2)}
        if lstm:
            leaves["c0"] = randn(32, 48, dtype=dtype, seed=3)

        def call(mod, x, h0, c0=None):
            r = mod(x, (h0, c0) if lstm else h0)
            return {"h": r[0], "c": r[1]} if lstm else {"h": r}
        return m, leaves, call
    kw = dict(num_layers=3 if dropout else 2, bidirectional=True, dropout=dropout)
    proj = 0
    if name == "LSTM_proj":
        kw["proj_size"] = proj = 20
    _, m = make_pair(kind, 24, 48, dtype=dtype, **kw)
    T, B = 7, 16
    leaves = {"x": randn(T, B, 24, dtype=dtype, seed=1)}
    hs, cs = hx_shapes(kind, kw["num_layers"], True, B, 48, proj)
    leaves["h0"] = randn(*hs, dtype=dtype, seed=2)
    if cs is not None:
        leaves["c0"] = randn(*cs, dtype=dtype, seed=3)
    if packed:
        lengths = [7, 7, 6, 5, 5, 5, 4, 4, 3, 3, 3, 2, 2, 1, 1, 1]
        call = call_packed(lstm, lengths[::-1], False, False)   # unsorted: exercises permutes
    else:
        call = call_dense(lstm)
    return m, leaves, call


def _run(m, leaves, call, seed=None):
    if seed is not None:
        torch.manual_seed(seed)
    return fwd_bwd(m, leaves, call, upstream_seed=77)


def _assert_bitwise(a, b, what):
    assert sorted(a) == sorted(b), what
    bad = [k for k in a if isinstance(a[k], torch.Tensor) and not torch.equal(a[k], b[k])]
    bad += [k for k in a if not isinstance(a[k], torch.Tensor) and a[k] != b[k]]
    if bad:
        k = bad[0]
        diff = ((a[k].double() - b[k].double()).abs().max().item()
                if a[k].is_floating_point() else "?")
        raise AssertionError(f"{what}: not bitwise identical in {bad} (e.g. {k}: max diff {diff})")


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize("name", CASES)
def test_run_to_run_bitwise(name, packed):
    if packed and name in CELL_KIND_NAMES:
        pytest.skip("cells take no PackedSequence")
    m, leaves, call = _case(name, packed=packed)
    first = _run(m, leaves, call)
    for i in range(2):
        _assert_bitwise(_run(m, leaves, call), first, f"{name} run {i + 2} vs run 1")


@pytest.fixture
def restore_simd():
    before = rnnfast.info()["simd"]
    yield
    rnnfast._C.set_simd(before)


@pytest.mark.parametrize("simd", SIMD_PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_thread_count_invariant_bitwise(simd, dtype, restore_simd):
    """torch.set_num_threads(1) and (2) give the same bits, for every case, on every path."""
    if torch.get_num_threads() < 2 and (os.cpu_count() or 1) < 2:
        pytest.skip("needs 2 CPUs")
    rnnfast._C.set_simd(simd)
    for name in CASES:
        m, leaves, call = _case(name, dtype=dtype, packed=name == "GRU")
        torch.set_num_threads(2)
        two = _run(m, leaves, call)
        torch.set_num_threads(1)
        one = _run(m, leaves, call)
        _assert_bitwise(one, two, f"{name} {simd} {dtype}: 1 thread vs 2 threads")


@pytest.mark.parametrize("simd", SIMD_PATHS)
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_many_row_blocks_thread_count_invariant(kind, simd, restore_simd):
    """The GEMMs over every step's rows with many row blocks (T * B = 3216 rows: 67 blocks of
    48, an odd count, split unevenly between the threads): the same bits at 1, 2 and 3
    threads, forward and backward (the input projection and the input's gradient are such
    GEMMs)."""
    rnnfast._C.set_simd(simd)
    torch.manual_seed(0)
    f32 = torch.float32
    _, m = make_pair(kind, 24, 40, num_layers=1, dtype=f32)
    T, B = 67, 48
    leaves = {"x": randn(T, B, 24, dtype=f32, seed=1)}
    hs, cs = hx_shapes(kind, 1, False, B, 40, 0)
    leaves["h0"] = randn(*hs, dtype=f32, seed=2)
    if cs is not None:
        leaves["c0"] = randn(*cs, dtype=f32, seed=3)
    call = call_dense(is_lstm(kind))
    before = torch.get_num_threads()
    try:
        runs = {}
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            runs[n] = _run(m, leaves, call)
    finally:
        torch.set_num_threads(before)
    for n in (2, 3):
        _assert_bitwise(runs[1], runs[n], f"{kind} {simd}: 1 thread vs {n} threads")


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_dropout_is_reproducible_under_a_seed(kind):
    m, leaves, call = _case(kind, dropout=0.3)
    m.train()
    a = _run(m, leaves, call, seed=1234)
    b = _run(m, leaves, call, seed=1234)
    _assert_bitwise(a, b, f"{kind} dropout, same seed")
    torch.set_num_threads(1)
    c = _run(m, leaves, call, seed=1234)
    _assert_bitwise(a, c, f"{kind} dropout, same seed, 1 thread vs 2")
    torch.set_num_threads(2)
    d = _run(m, leaves, call, seed=4321)
    assert not torch.equal(a["out"], d["out"]), "a different seed should give other masks"
    m.eval()   # and no randomness at all in eval mode
    e, f = _run(m, leaves, call, seed=1), _run(m, leaves, call, seed=2)
    _assert_bitwise(e, f, f"{kind} eval mode, different seeds")


# Computes a digest of every output and gradient of every case, in a fresh process.
_DIGEST_SCRIPT = textwrap.dedent(r"""
    import hashlib, json, sys, torch
    sys.path.insert(0, sys.argv[1])
    import test_determinism as td
    out = {}
    for name in td.CASES:
        for dtype in (torch.float32, torch.float64):
            for packed in ((False, True) if name not in td.CELL_KIND_NAMES else (False,)):
                m, leaves, call = td._case(name, dtype=dtype, packed=packed, dropout=0.0)
                res = td._run(m, leaves, call, seed=5)
                h = hashlib.sha256()
                for k in sorted(res):
                    v = res[k]
                    h.update(k.encode())
                    h.update(v.contiguous().numpy().tobytes() if isinstance(v, torch.Tensor)
                             else repr(v).encode())
                out[f"{name}-{dtype}-{'packed' if packed else 'dense'}"] = h.hexdigest()
    m, leaves, call = td._case("GRU", dropout=0.25)
    m.train()
    res = td._run(m, leaves, call, seed=9)
    out["GRU-dropout"] = hashlib.sha256(res["out"].numpy().tobytes()).hexdigest()
    print(json.dumps(out))
""")


def _digests(extra_env):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env.update(extra_env)
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, "-c", _DIGEST_SCRIPT, here], capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_across_processes_heap_garbage_and_thread_env():
    """Three fresh processes: default heap / fresh allocations filled with garbage by glibc
    (MALLOC_PERTURB_=165) on 1 OpenMP thread / other garbage (MALLOC_PERTURB_=90) on 2 threads.
    All digests must agree."""
    runs = [_digests({}),
            _digests({"MALLOC_PERTURB_": "165", "OMP_NUM_THREADS": "1"}),
            _digests({"MALLOC_PERTURB_": "90", "OMP_NUM_THREADS": "2"})]
    for i, r in enumerate(runs[1:], 2):
        diff = sorted(k for k in runs[0] if runs[0][k] != r.get(k))
        assert not diff, f"process {i} differs from process 1 in {diff}"
