#!/usr/bin/env python
"""What the exported ONNX graphs of rnnfast's layers cost at run time in ONNX Runtime: the
layers that become ONNX's own LSTM / GRU node against the ones exported as their unrolled step
loop (proj_size, layer_norm, zoneout in eval; python/rnnfast/_onnx.py), same shape, same
thread count, timed in interleaved rounds (medians), each session timed in blocks of calls.

    python bench/onnx_cost.py [--config T,B,I,H] [--threads N] [--reps N] [--block N]

Each model is exported once with the dynamo exporter (torch.onnx.export's default), checked
against rnnfast's own outputs (atol 1e-3: over 100 steps the layer-normalised LSTM's float32
outputs differ from float64 by about 2e-4, rnnfast's and a plain-torch loop's alike), then
timed. Writes bench/results/onnx-<stamp>.json
and prints a table; the ratio column is each graph's time over the plain LSTM node's.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import tempfile
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness.machine import import_rnnfast, machine_info, rnnfast_error  # noqa: E402
from harness.timing import rounds, summarize  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# name -> (module class, keyword arguments); the first is the reference of the ratios
MODELS = {
    "lstm (ONNX LSTM node)": ("LSTM", {}),
    "gru (ONNX GRU node)": ("GRU", {}),
    "lstm proj_size=H/2 (unrolled)": ("LSTM", {"proj_size": -2}),
    "lstm layer_norm (unrolled)": ("LSTM", {"layer_norm": True}),
    "gru layer_norm (unrolled)": ("GRU", {"layer_norm": True}),
    "lstm zoneout=0.1 eval (unrolled)": ("LSTM", {"zoneout": 0.1}),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="100,8,128,128", help="T,B,I,H (default %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    p.add_argument("--reps", type=int, default=15, help="interleaved rounds")
    p.add_argument("--block", type=int, default=20, help="session calls per timed block")
    p.add_argument("--no-save", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    rf = import_rnnfast(prefer_tree=True)
    if rf is None:
        print(f"rnnfast not importable: {rnnfast_error()}", file=sys.stderr)
        return 2
    import onnxruntime as ort

    T, B, I, H = (int(v) for v in a.config.split(","))
    x = torch.randn(T, B, I, generator=torch.Generator().manual_seed(0))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = a.threads
    opts.inter_op_num_threads = 1
    sessions, rows = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (cls, kw) in MODELS.items():
            kw = {k: (H // -v if k == "proj_size" else v) for k, v in kw.items()}
            torch.manual_seed(0)
            model = getattr(rf, cls)(I, H, **kw).eval()
            path = os.path.join(tmp, "m.onnx")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (x,), path)
            s = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
            with torch.no_grad():
                want = model(x)[0]
            got = torch.from_numpy(s.run(None, {s.get_inputs()[0].name: x.numpy()})[0])
            err = float((got - want).abs().max())
            if err > 1e-3:
                print(f"{name}: ONNX Runtime differs from rnnfast by {err:.3g}", file=sys.stderr)
                return 1
            import onnx
            nodes = len(onnx.load(path).graph.node)
            sessions[name] = s
            rows[name] = {"module": cls, "kwargs": kw, "nodes": nodes, "max_abs_diff": err}

    feeds = {n: {s.get_inputs()[0].name: x.numpy()} for n, s in sessions.items()}

    def block(n):
        def call() -> float:
            s, f = sessions[n], feeds[n]
            t0 = time.perf_counter()
            for _ in range(a.block):
                s.run(None, f)
            return (time.perf_counter() - t0) / a.block
        return call

    calls = {n: block(n) for n in sessions}
    for c in calls.values():  # warm-up
        c()
    samples = rounds(calls, a.reps)
    ref = None
    for n, ts in samples.items():
        rows[n].update(summarize(ts))
        ref = ref or rows[n]["median_ms"]
        rows[n]["ratio_vs_lstm_node"] = rows[n]["median_ms"] / ref
    print(f"ONNX Runtime {ort.__version__}, T={T} B={B} I={I} H={H}, {a.threads} thread(s), "
          f"{a.reps} interleaved rounds of {a.block}-call blocks, medians")
    print(f"{'graph':36s} {'nodes':>6s} {'ms':>8s} {'iqr%':>6s} {'/ LSTM node':>12s}")
    for n, r in rows.items():
        print(f"{n:36s} {r['nodes']:6d} {r['median_ms']:8.3f} {r['iqr_pct']:6.1f} "
              f"{r['ratio_vs_lstm_node']:12.2f}")
    if not a.no_save:
        os.makedirs(RESULTS, exist_ok=True)
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = os.path.join(RESULTS, f"onnx-{stamp}.json")
        with open(path, "w") as f:
            json.dump({"config": {"T": T, "B": B, "I": I, "H": H}, "threads": a.threads,
                       "reps": a.reps, "block": a.block, "onnxruntime": ort.__version__,
                       "machine": machine_info(), "rows": rows}, f, indent=1)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
