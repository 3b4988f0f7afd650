#!/usr/bin/env python
"""Two builds of rnnfast against each other, interleaved: an A/B of a kernel change.

Each build runs in its own worker process (one process cannot import two builds of
rnnfast._C), with the build's `python/` directory first on its path. For every case the
driver asks the workers in turn for a block of back-to-back calls (about --block-ms long),
alternating which build goes first round by round, and prints the median time per call of each
and their ratio (B's time / A's, below 1: B is faster). Both workers see the same machine state
within a round, so a slow spell of this noisy host moves both.

    git worktree add /tmp/base HEAD~1 && (cd /tmp/base && python setup.py build_ext --inplace)
    python bench/build_ab.py --a /tmp/base/python --b python \\
        --layer lstm,200,1,128,128 --layer lstm,64,1,64,256,2 --cell lstm,128,512,float64

A run-time switch of one build is timed the same way, the build given as both A and B with
--a-env / --b-env setting the switch (e.g. --b python --a-env RNNFAST_GEMM_ROWS=0).

Cases: --layer CELL,T,B,I,H[,LAYERS[,bi]] (the nn.LSTM/GRU/RNN-like modules) and
--cell CELL,B,H[,DTYPE] (LSTMCell/GRUCell one step, I = H), each in the --modes given:
inference, training (the input requires grad), training_data (it does not; the cells' hx is
a constant in both training modes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

WORKER = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import torch
import rnnfast
torch.set_num_threads(int(sys.argv[2]))
built = {}

def make(case):
    key = json.dumps(case, sort_keys=True)
    if key not in built:
        torch.manual_seed(0)
        dt = getattr(torch, case.get("dtype", "float32"))
        if case["kind"] == "layer":
            cls = {"lstm": rnnfast.LSTM, "gru": rnnfast.GRU, "rnn": rnnfast.RNN}[case["cell"]]
            m = cls(case["I"], case["H"], num_layers=case["layers"],
                    bidirectional=case["bi"]).to(dt)
            args = (torch.randn(case["T"], case["B"], case["I"], dtype=dt),)
        else:
            cls = {"lstm": rnnfast.LSTMCell, "gru": rnnfast.GRUCell}[case["cell"]]
            m = cls(case["H"], case["H"]).to(dt)
            h = torch.randn(case["B"], case["H"], dtype=dt)
            args = (torch.randn(case["B"], case["H"], dtype=dt), (h, h) if case["cell"] == "lstm" else h)
        built[key] = (m, args)
    return built[key]

def call(case):
    m, args = make(case)
    if case["mode"] in ("training", "training_data"):
        # training_data: the input is data (no gradient of its own), as for a first layer
        x = args[0].detach().requires_grad_(case["mode"] == "training")
        out = m(x, *args[1:])
        y = out[0] if isinstance(out, tuple) else out
        y.sum().backward()
    else:
        with torch.no_grad():
            m(*args)

print(json.dumps(dict(rnnfast.info(), file=rnnfast.__file__)), flush=True)
for line in sys.stdin:
    case, reps = json.loads(line)
    call(case)
    t0 = time.perf_counter()
    for _ in range(reps):
        call(case)
    print((time.perf_counter() - t0) / reps * 1e3, flush=True)
"""


def parse_layer(text: str) -> dict:
    f = text.split(",")
    if not 5 <= len(f) <= 7:
        raise argparse.ArgumentTypeError(f"--layer wants CELL,T,B,I,H[,LAYERS[,bi]], got {text!r}")
    return {"kind": "layer", "cell": f[0], "T": int(f[1]), "B": int(f[2]), "I": int(f[3]),
            "H": int(f[4]), "layers": int(f[5]) if len(f) > 5 else 1,
            "bi": len(f) > 6 and f[6] == "bi"}


def parse_cell(text: str) -> dict:
    f = text.split(",")
    if not 3 <= len(f) <= 4:
        raise argparse.ArgumentTypeError(f"--cell wants CELL,B,H[,DTYPE], got {text!r}")
    return {"kind": "cell", "cell": f[0], "B": int(f[1]), "H": int(f[2]),
            "dtype": f[3] if len(f) > 3 else "float32"}


def label(case: dict) -> str:
    if case["kind"] == "layer":
        extra = (f" {case['layers']}L" if case["layers"] > 1 else "") + (" bi" if case["bi"] else "")
        return (f"{case['cell']} {case['mode']} {case['T']},{case['B']},{case['I']},{case['H']}"
                f"{extra}")
    return f"{case['cell']}cell {case['mode']} B={case['B']} H={case['H']} {case['dtype']}"


def parse_env(text: str) -> tuple:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--a-env/--b-env want NAME=VALUE, got {text!r}")
    return name, value


class Worker:
    def __init__(self, path: str, threads: int, env: list = ()):
        if not os.path.isdir(path):
            raise SystemExit(f"build path {path!r} is not a directory")
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER, os.path.abspath(path),
                                      str(threads)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True,
                                     env=dict(os.environ, **dict(env)))
        self.info = json.loads(self._read())
        # the build must be the one asked for, not an installed rnnfast found instead
        where = os.path.abspath(self.info["file"])
        if not where.startswith(os.path.join(os.path.abspath(path), "")):
            self.proc.kill()
            raise SystemExit(f"{path!r} holds no rnnfast build: the worker imported {where}")

    def _read(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"worker exited (status {self.proc.wait()})")
        return line

    def time(self, case: dict, reps: int) -> float:
        self.proc.stdin.write(json.dumps([case, reps]) + "\n")
        self.proc.stdin.flush()
        return float(self._read())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--a", required=True, help="build A's python/ directory (the baseline)")
    ap.add_argument("--b", required=True, help="build B's python/ directory (the change)")
    ap.add_argument("--layer", type=parse_layer, action="append", default=[])
    ap.add_argument("--cell", type=parse_cell, action="append", default=[])
    ap.add_argument("--modes", default="inference,training",
                    help="comma-separated: inference, training, training_data")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--block-ms", type=float, default=150.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--a-env", type=parse_env, action="append", default=[],
                    help="NAME=VALUE in build A's environment (repeatable); with --a and --b the "
                         "same build, an A/B of a run-time switch")
    ap.add_argument("--b-env", type=parse_env, action="append", default=[],
                    help="NAME=VALUE in build B's environment (repeatable)")
    ap.add_argument("--out", help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    modes = args.modes.split(",")
    unknown = [m for m in modes if m not in ("inference", "training", "training_data")]
    if unknown:
        ap.error(f"--modes: unknown mode(s) {unknown}, expected inference, training, "
                 "training_data")
    cases = [dict(c, mode=m) for c in args.layer + args.cell for m in modes]
    if not cases:
        ap.error("give at least one --layer or --cell")
    workers = {"a": Worker(args.a, args.threads, args.a_env),
               "b": Worker(args.b, args.threads, args.b_env)}
    print(f"A: {args.a} {dict(args.a_env)} {workers['a'].info}\n"
          f"B: {args.b} {dict(args.b_env)} {workers['b'].info}")
    print(f"{args.threads} threads, {args.rounds} rounds of ~{args.block_ms:.0f} ms blocks; "
          "b/a = B's median / A's (< 1: B faster)")
    rows = []
    for case in cases:
        probe = workers["a"].time(case, 2)
        reps = max(2, int(args.block_ms / max(probe, 1e-3)))
        times = {"a": [], "b": []}
        for r in range(args.rounds):
            for k in (("a", "b") if r % 2 == 0 else ("b", "a")):
                times[k].append(workers[k].time(case, reps))
        ma, mb = statistics.median(times["a"]), statistics.median(times["b"])
        rows.append({"case": case, "reps": reps, "a_ms": times["a"], "b_ms": times["b"],
                     "a_median_ms": ma, "b_median_ms": mb, "b_over_a": mb / ma})
        print(f"{label(case):46s} A {ma:10.4f} ms  B {mb:10.4f} ms  b/a {mb / ma:.3f}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "a": args.a, "b": args.b,
                       "a_env": dict(args.a_env), "b_env": dict(args.b_env),
                       "a_info": workers["a"].info, "b_info": workers["b"].info,
                       "threads": args.threads, "rounds": args.rounds, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
