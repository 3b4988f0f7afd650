#!/usr/bin/env python
"""CPU benchmark: rnnfast vs torch.nn (LSTM / GRU / RNN), inference and training.

Every config is timed for all implementations in the same process, in interleaved rounds
(A, B, A, B, ... with the order rotated each round), and medians are reported, because this
host's run-to-run noise (6-20%) is larger than many of the differences we care about.

    python bench/bench_cpu.py --quick                 # < 1 minute smoke run
    python bench/bench_cpu.py                         # default grid, several minutes
    python bench/bench_cpu.py --cells lstm,gru --modes inference --threads 1
    python bench/bench_cpu.py --config 100,32,256,256 --config 50,1,64,64:2bi

See bench/README.md for the columns and the method.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import gc
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

CELLS = ("lstm", "gru", "rnn")
MODES = ("inference", "training")
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
TORCH_CLASSES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}

# Correctness tolerances (checked once per config, before timing).
OUT_ATOL = 1e-4          # outputs / final states: allclose(atol=1e-4), as torch's own fp32 noise
GRAD_RTOL = 1e-4         # gradients: max|a-b| <= GRAD_ATOL + GRAD_RTOL * max|ref| (norm-wise,
GRAD_ATOL = 1e-4         # since weight grads sum over T*B terms and grow with the config)


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Case:
    """One shape to benchmark. `variant` is 'plain', 'packed' or 'padded'.

    packed: a PackedSequence built from `lengths` (mixed, unsorted, enforce_sorted=False).
    padded: the same batch as the packed case, run as a plain padded [T, B, I] tensor, i.e. what
            you pay without packing (full T for every sequence).
    """

    T: int
    B: int
    I: int
    H: int
    layers: int = 1
    bidirectional: bool = False
    variant: str = "plain"
    lengths: Optional[Tuple[int, ...]] = None

    @property
    def dirs(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def tag(self) -> str:
        parts = []
        if self.layers > 1:
            parts.append(f"{self.layers}L")
        if self.bidirectional:
            parts.append("bi")
        if self.variant != "plain":
            parts.append(self.variant)
        return "+".join(parts) or "-"

    def token_steps(self) -> int:
        """Sum over the batch of the steps actually computed (T*B unless packed)."""
        if self.variant == "packed":
            return int(sum(self.lengths))
        return self.T * self.B

    def forward_flops(self, cell: str) -> float:
        """2 * steps * G*H * (I_l + H) per layer and direction (GEMM flops only)."""
        g = GATES[cell]
        total = 0.0
        for layer in range(self.layers):
            i_l = self.I if layer == 0 else self.H * self.dirs
            total += self.dirs * 2.0 * self.token_steps() * g * self.H * (i_l + self.H)
        return total

    def flops(self, cell: str, mode: str) -> float:
        f = self.forward_flops(cell)
        return f if mode == "inference" else 3.0 * f   # backward ~ 2x forward


def mixed_lengths(T: int, B: int, seed: int) -> Tuple[int, ...]:
    """Mixed, unsorted lengths in [T/4, T], always containing T (so padding to T is exact)."""
    g = torch.Generator().manual_seed(seed + 12345)
    lo = max(1, T // 4)
    lens = torch.randint(lo, T + 1, (B,), generator=g).tolist()
    lens[int(torch.randint(0, B, (1,), generator=g))] = T
    return tuple(int(x) for x in lens)


def packed_pair(T: int, B: int, I: int, H: int, seed: int, **kw) -> List[Case]:
    lens = mixed_lengths(T, B, seed)
    return [Case(T, B, I, H, variant="packed", lengths=lens, **kw),
            Case(T, B, I, H, variant="padded", lengths=lens, **kw)]


def default_grid(seed: int) -> List[Case]:
    grid = [Case(*s) for s in [(200, 1, 128, 128), (50, 16, 64, 64), (100, 32, 256, 256),
                               (1000, 4, 64, 256), (100, 64, 512, 512), (100, 8, 256, 1024)]]
    grid.append(Case(100, 16, 256, 256, layers=2, bidirectional=True))
    grid += packed_pair(100, 16, 256, 256, seed)
    return grid


def quick_grid(seed: int) -> List[Case]:
    return ([Case(32, 1, 32, 32), Case(16, 4, 32, 64, layers=2, bidirectional=True)]
            + packed_pair(24, 6, 32, 32, seed))


_CONFIG_RE = re.compile(r"^(\d+),(\d+),(\d+),(\d+)(?::(.*))?$")


def parse_config(text: str, seed: int) -> List[Case]:
    """'T,B,I,H[:opts]' with opts a '+'-list of: <n>L (layers), bi, packed."""
    m = _CONFIG_RE.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"bad --config {text!r}; want T,B,I,H[:2L+bi+packed]")
    T, B, I, H = (int(m.group(k)) for k in range(1, 5))
    layers, bidir, packed = 1, False, False
    for opt in filter(None, (m.group(5) or "").split("+")):
        if opt == "bi":
            bidir = True
        elif opt == "packed":
            packed = True
        elif re.fullmatch(r"\d+L", opt):
            layers = int(opt[:-1])
        else:
            raise argparse.ArgumentTypeError(f"unknown option {opt!r} in --config {text!r}")
    if packed:
        return packed_pair(T, B, I, H, seed, layers=layers, bidirectional=bidir)
    return [Case(T, B, I, H, layers=layers, bidirectional=bidir)]


# --------------------------------------------------------------------------------------------
# Implementations registry
# --------------------------------------------------------------------------------------------
#
# An implementation is a factory  (cell, case, mode, reference_module) -> Runner.
# The reference module is a torch.nn.{LSTM,GRU,RNN} holding the weights every implementation must
# use; factories copy them (load_state_dict, or export for ONNX Runtime / OpenVINO later).
# A factory raises Unsupported for combinations it cannot run (e.g. an inference-only runtime
# asked for training); the table then shows "n/a" for that column.
#
# To add a peer (ONNX Runtime, OpenVINO, ...): write a Runner subclass with `infer` (and `train`
# if it can), a factory, and register it with `register("name", factory, available_fn)`. Ratios are
# always reported against BASELINE.


class Unsupported(Exception):
    pass


class Runner:
    """What the timing loop calls. Inputs are prepared once per case (see make_inputs)."""

    def infer(self, inputs: "Inputs"):
        """Forward without autograd. Returns (out [T,B,D*H] padded, h_n, c_n or None)."""
        raise NotImplementedError

    def train(self, inputs: "Inputs") -> None:
        """Grads set to None, forward, (out.sum() + h_n.sum()).backward()."""
        raise Unsupported("training")

    def grads(self) -> Dict[str, torch.Tensor]:
        """Gradients left by the last train() call, keyed by torch parameter name (+ 'input')."""
        return {}


@dataclasses.dataclass
class Inputs:
    x: torch.Tensor                          # [T, B, I] padded input (leaf, requires_grad)
    packed: Optional[PackedSequence] = None  # built from x (with autograd) per call, see arg()
    lengths: Optional[torch.Tensor] = None

    def arg(self):
        if self.lengths is None:
            return self.x
        # Packing is part of the work a packed-sequence user pays for each batch; it is cheap and
        # identical for every implementation.
        return pack_padded_sequence(self.x, self.lengths, enforce_sorted=False)


class ModuleRunner(Runner):
    """Runs any module with torch.nn.RNNBase's forward signature."""

    def __init__(self, module: nn.Module, cell: str):
        self.m = module
        self.cell = cell
        self._x: Optional[torch.Tensor] = None

    def _forward(self, inputs: Inputs):
        out, h = self.m(inputs.arg())
        c = None
        if isinstance(h, tuple):
            h, c = h
        if isinstance(out, PackedSequence):
            out, _ = pad_packed_sequence(out, total_length=inputs.x.shape[0])
        return out, h, c

    def infer(self, inputs: Inputs):
        with torch.no_grad():
            return self._forward(inputs)

    def train(self, inputs: Inputs) -> None:
        self.m.zero_grad(set_to_none=True)
        inputs.x.grad = None
        out, h = self.m(inputs.arg())
        if isinstance(h, tuple):
            h = h[0]
        if isinstance(out, PackedSequence):
            out = out.data
        (out.sum() + h.sum()).backward()
        self._x = inputs.x

    def grads(self) -> Dict[str, torch.Tensor]:
        g = {n: p.grad for n, p in self.m.named_parameters() if p.grad is not None}
        if self._x is not None and self._x.grad is not None:
            g["input"] = self._x.grad
        return g


def _same_module_kwargs(ref: nn.Module) -> dict:
    kw = dict(num_layers=ref.num_layers, bias=ref.bias, batch_first=ref.batch_first,
              dropout=ref.dropout, bidirectional=ref.bidirectional)
    if isinstance(ref, nn.LSTM) and ref.proj_size:
        kw["proj_size"] = ref.proj_size
    if type(ref) is nn.RNN:
        kw["nonlinearity"] = ref.nonlinearity
    return kw


def torch_factory(cell: str, case: Case, mode: str, ref: nn.Module) -> Runner:
    return ModuleRunner(ref, cell)


_rnnfast_mod = None
_rnnfast_err: Optional[str] = None


def import_rnnfast():
    """Import rnnfast; if it is not on the path, fall back to the in-tree python/ directory
    (appended, so an explicit PYTHONPATH still wins)."""
    global _rnnfast_mod, _rnnfast_err
    if _rnnfast_mod is not None or _rnnfast_err is not None:
        return _rnnfast_mod
    try:
        import rnnfast  # noqa: F401
    except ImportError:
        local = str(REPO / "python")
        if local not in sys.path and (REPO / "python" / "rnnfast").is_dir():
            sys.path.append(local)
        try:
            import rnnfast  # noqa: F401,F811
        except Exception as e:  # noqa: BLE001
            _rnnfast_err = f"{type(e).__name__}: {e}"
            return None
    except Exception as e:  # noqa: BLE001  (a half-built package may raise anything)
        _rnnfast_err = f"{type(e).__name__}: {e}"
        return None
    import rnnfast  # noqa: F811
    missing = [n for n in ("LSTM", "GRU", "RNN") if not hasattr(rnnfast, n)]
    if missing:   # e.g. an empty python/rnnfast/ imported as a namespace package
        where = getattr(rnnfast, "__file__", None) or list(getattr(rnnfast, "__path__", []))
        _rnnfast_err = f"rnnfast imported from {where} lacks {missing} (not built yet?)"
        return None
    _rnnfast_mod = rnnfast
    return rnnfast


def rnnfast_available() -> Tuple[bool, str]:
    mod = import_rnnfast()
    return (mod is not None, _rnnfast_err or "")


def rnnfast_factory(cell: str, case: Case, mode: str, ref: nn.Module) -> Runner:
    rf = import_rnnfast()
    cls = getattr(rf, type(ref).__name__)
    m = cls(ref.input_size, ref.hidden_size, **_same_module_kwargs(ref))
    m.load_state_dict(ref.state_dict())
    m.train(ref.training)
    return ModuleRunner(m, cell)


@dataclasses.dataclass
class Impl:
    name: str
    factory: Callable[[str, Case, str, nn.Module], Runner]
    available: Callable[[], Tuple[bool, str]] = lambda: (True, "")
    peer: bool = False     # an outside runtime: optional, selected with --peers, and compared
                           # with CANDIDATE in a "<CANDIDATE>/<peer>" ratio column
    label: str = ""        # short name for table headers (default: name)
    version: Optional[Callable[[], Optional[str]]] = None   # for the legend and the JSON

    def __post_init__(self):
        self.label = self.label or self.name


IMPLEMENTATIONS: Dict[str, Impl] = {}
BASELINE = "torch"     # ratios are <impl>_time / BASELINE_time
CANDIDATE = "rnnfast"  # the implementation whose GFLOP/s and %sgemm the table shows


def register(name: str, factory, available=lambda: (True, ""), peer: bool = False,
             label: str = "", version: Optional[Callable[[], Optional[str]]] = None) -> None:
    IMPLEMENTATIONS[name] = Impl(name, factory, available, peer, label, version)


def peer_names() -> List[str]:
    return [n for n, impl in IMPLEMENTATIONS.items() if impl.peer]


register("rnnfast", rnnfast_factory, rnnfast_available)
register("torch", torch_factory)

# Optional inference peers (ONNX Runtime, OpenVINO): bench/onnx_peers.py. Their packages are
# imported only when a peer is used; if they are missing the peer reports itself unavailable.
_PEERS_ERR: Optional[str] = None
try:
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import onnx_peers as _onnx_peers
    _onnx_peers.register_peers(register, Runner, Unsupported)
except Exception as _e:  # noqa: BLE001  (never let a peer break the rnnfast/torch benchmark)
    _onnx_peers = None
    _PEERS_ERR = f"{type(_e).__name__}: {_e}"


# --------------------------------------------------------------------------------------------
# Building a case
# --------------------------------------------------------------------------------------------

def make_reference(cell: str, case: Case, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    m = TORCH_CLASSES[cell](case.I, case.H, num_layers=case.layers,
                            bidirectional=case.bidirectional)
    return m.float()


def make_inputs(case: Case, seed: int) -> Inputs:
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(case.T, case.B, case.I, generator=g)
    lengths = None
    if case.lengths is not None:
        lengths = torch.tensor(case.lengths, dtype=torch.int64)
        mask = torch.arange(case.T)[:, None] < lengths[None, :]
        x = x * mask[..., None]      # zero padding, so 'padded' runs the same data
    if case.variant == "padded":
        lengths = None
    x.requires_grad_(True)
    return Inputs(x=x, lengths=lengths)


# --------------------------------------------------------------------------------------------
# Correctness check
# --------------------------------------------------------------------------------------------

def _maxdiff(a: Optional[torch.Tensor], b: Optional[torch.Tensor]) -> float:
    if a is None and b is None:
        return 0.0
    if a is None or b is None or a.shape != b.shape:
        return math.inf
    return float((a.detach().double() - b.detach().double()).abs().max()) if a.numel() else 0.0


def check(cand: Runner, ref: Runner, inputs: Inputs, mode: str) -> Tuple[bool, dict]:
    """Compare cand against ref on the case's input. Returns (ok, details)."""
    details: dict = {}
    ok = True
    co, ch, cc = cand.infer(inputs)
    ro, rh, rc = ref.infer(inputs)
    for name, a, b in (("out", co, ro), ("h_n", ch, rh), ("c_n", cc, rc)):
        d = _maxdiff(a, b)
        details[name] = d
        if not d <= OUT_ATOL:
            ok = False
    if mode == "training":
        cand.train(inputs)
        cg = {k: v.clone() for k, v in cand.grads().items()}
        ref.train(inputs)
        rg = ref.grads()
        worst, worst_name = 0.0, None
        for k in sorted(set(cg) | set(rg)):
            a, b = cg.get(k), rg.get(k)
            d = _maxdiff(a, b)
            scale = float(b.abs().max()) if b is not None and b.numel() else 0.0
            rel = d / (GRAD_ATOL + GRAD_RTOL * scale)
            if not rel <= 1.0:
                ok = False
            if not rel <= worst:
                worst, worst_name = rel, k
        details["grad_worst"] = worst_name
        details["grad_err_over_tol"] = worst
    return ok, details


def describe_mismatch(details: dict) -> str:
    parts = [f"{k}={v:.2g}" for k, v in details.items()
             if k in ("out", "h_n", "c_n") and not v <= OUT_ATOL]
    if details.get("grad_err_over_tol", 0) > 1:
        parts.append(f"grad[{details['grad_worst']}]={details['grad_err_over_tol']:.2g}xtol")
    return " ".join(parts)


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------

def _call(runner: Runner, mode: str, inputs: Inputs) -> float:
    """One timed call. Grad reset happens inside train() before the forward; it is cheap and the
    same for every implementation."""
    fn = runner.infer if mode == "inference" else runner.train
    t0 = time.perf_counter()
    fn(inputs)
    return time.perf_counter() - t0


def time_interleaved(runners: Dict[str, Runner], mode: str, inputs: Inputs, *, budget: float,
                     warmup: float, min_reps: int, max_reps: int
                     ) -> Tuple[Dict[str, List[float]], Optional[float]]:
    """Warm up each runner, then run rounds in which every runner is called once (order rotated
    each round so neither side always runs first). Reps are chosen from the warm-up timings so
    the rounds take about `budget` seconds in total, within [min_reps, max_reps].
    Returns ({name: [seconds per call]}, fraction of the CPUs other processes used meanwhile)."""
    names = list(runners)
    est = {}
    for n in names:
        t_start = time.perf_counter()
        ts = [_call(runners[n], mode, inputs)]
        while len(ts) < 2 or (time.perf_counter() - t_start < warmup and len(ts) < 50):
            ts.append(_call(runners[n], mode, inputs))
        est[n] = statistics.median(ts[1:])
    per_round = sum(est.values())
    reps = int(budget / per_round) if per_round > 0 else max_reps
    reps = max(min_reps, min(max_reps, reps))
    samples: Dict[str, List[float]] = {n: [] for n in names}
    gc.collect()
    gc_was = gc.isenabled()
    gc.disable()
    # If the machine slows down after warm-up (load from elsewhere), stop at 2x budget rather than
    # running the planned reps at the slow speed; min_reps rounds always complete.
    deadline = time.perf_counter() + 2.0 * budget
    try:
        with OtherLoad() as load:
            for r in range(reps):
                for j in range(len(names)):
                    n = names[(r + j) % len(names)]
                    samples[n].append(_call(runners[n], mode, inputs))
                if r + 1 >= min_reps and time.perf_counter() > deadline:
                    break
    finally:
        if gc_was:
            gc.enable()
    return samples, load.fraction


def summarize(ts: List[float]) -> dict:
    s = sorted(ts)
    q = statistics.quantiles(s, n=4) if len(s) >= 2 else [s[0], s[0], s[0]]
    med = statistics.median(s)
    return {"median_ms": med * 1e3, "min_ms": s[0] * 1e3, "p25_ms": q[0] * 1e3,
            "p75_ms": q[2] * 1e3, "iqr_pct": 100.0 * (q[2] - q[0]) / med if med else 0.0,
            "reps": len(s)}


def sgemm_rate(n: int = 1024, seconds: float = 1.0, windows: int = 3) -> dict:
    """GFLOP/s of torch.mm on n x n float32 matrices: the median of each of `windows` windows of
    seconds/windows; the best window median is the rate used (contention from other processes can
    only lower a window, so the best one is the closest to the machine's real rate)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g)
    b = torch.randn(n, n, generator=g)
    c = torch.empty(n, n)
    for _ in range(3):
        torch.mm(a, b, out=c)
    flop = 2.0 * n ** 3
    medians, rates = [], []
    for _ in range(windows):
        ts = []
        t_end = time.perf_counter() + seconds / windows
        while len(ts) < 5 or time.perf_counter() < t_end:
            t0 = time.perf_counter()
            torch.mm(a, b, out=c)
            ts.append(time.perf_counter() - t0)
        r = [flop / t / 1e9 for t in ts]
        medians.append(statistics.median(r))
        rates += r
    return {"n": n, "gflops": max(medians), "window_medians": medians,
            "median_gflops": statistics.median(rates), "max_gflops": max(rates),
            "min_gflops": min(rates), "reps": len(rates)}


# --------------------------------------------------------------------------------------------
# Machine info
# --------------------------------------------------------------------------------------------

def _loadavg() -> Optional[List[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_stat_busy() -> Optional[Tuple[float, float]]:
    """(busy CPU seconds of all processes summed over CPUs, wall clock) from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return (sum(vals[:8]) - idle) / _CLK_TCK, time.perf_counter()


class OtherLoad:
    """Measures how much CPU *other* processes used while this context was open, as a fraction
    of all CPUs: (busy CPU time from /proc/stat - this process's CPU time) / (wall * ncpu)."""

    def __enter__(self):
        self.p0 = _proc_stat_busy()
        t = os.times()
        self.s0 = t.user + t.system
        return self

    def __exit__(self, *exc):
        p1 = _proc_stat_busy()
        t = os.times()
        self.fraction = None
        if self.p0 is not None and p1 is not None and p1[1] > self.p0[1]:
            other = (p1[0] - self.p0[0]) - (t.user + t.system - self.s0)
            self.fraction = max(0.0, other / ((p1[1] - self.p0[1]) * (os.cpu_count() or 1)))
        return False


def cpu_busy_fraction(interval: float = 1.0) -> Optional[float]:
    """Fraction of all CPUs busy (any process) over `interval` seconds, from /proc/stat."""
    def read():
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
        return sum(vals), idle
    try:
        t0, i0 = read()
        time.sleep(interval)
        t1, i1 = read()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (i1 - i0) / (t1 - t0) if t1 > t0 else None


IDLE_THRESHOLD = 0.15


def wait_for_idle(max_wait: float, threshold: float = IDLE_THRESHOLD,
                  interval: float = 1.0) -> Optional[float]:
    """Wait (up to max_wait s) until other processes use < threshold of the CPUs."""
    t_end = time.perf_counter() + max_wait
    busy = cpu_busy_fraction(interval)
    waited = False
    while busy is not None and busy > threshold and time.perf_counter() < t_end:
        if not waited:
            print(f"  (waiting for an idle machine: {100 * busy:.0f}% of CPUs busy)",
                  file=sys.stderr, flush=True)
            waited = True
        time.sleep(2.0)
        busy = cpu_busy_fraction(interval)
    return busy


def machine_info() -> dict:
    info: dict = {"hostname": platform.node(), "platform": platform.platform(),
                  "python": platform.python_version(), "torch_version": torch.__version__,
                  "torch_num_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    model, flags = None, set()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            key, _, val = line.partition(":")
            if key.strip() == "Model name" and model is None:
                model = val.strip()
            elif key.strip() == "Flags":
                flags = set(val.split())
    except (OSError, subprocess.SubprocessError):
        pass
    if not flags:
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("flags"):
                    flags = set(line.partition(":")[2].split())
                    break
                if line.startswith("model name") and model is None:
                    model = line.partition(":")[2].strip()
        except OSError:
            pass
    info["cpu_model"] = model or platform.processor() or "unknown"
    info["loadavg_start"] = _loadavg()
    info["avx2"] = "avx2" in flags
    info["fma"] = "fma" in flags
    info["avx512f"] = "avx512f" in flags
    try:
        info["torch_mkldnn"] = bool(torch.backends.mkldnn.is_available())
        info["torch_parallel_info"] = torch.__config__.parallel_info()
    except Exception:  # noqa: BLE001
        pass
    return info


def rnnfast_info() -> dict:
    rf = import_rnnfast()
    if rf is None:
        return {"error": _rnnfast_err}
    d: dict = {"file": getattr(rf, "__file__", None)}
    try:
        d.update(rf.info())
    except Exception as e:  # noqa: BLE001
        d["info_error"] = f"{type(e).__name__}: {e}"
    return d


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------

def _fmt(v: Optional[float], spec: str, width: int) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a".rjust(width)
    return format(v, spec).rjust(width)


def _label(n: str) -> str:
    impl = IMPLEMENTATIONS.get(n)
    return impl.label if impl is not None else n


def table_columns(impl_names: Sequence[str]) -> List[Tuple[str, int, Callable[[dict], str]]]:
    """(header, width, cell text from a row) per column; cells are right-aligned to the width
    except the first two."""
    def case_col(key):
        return lambda row: str(row["case"][key])

    def ms_col(n):
        def get(row):
            r = row["impls"].get(n, {})
            return "ERROR" if r.get("error") else _fmt(r.get("median_ms"), ".3f", 0)
        return get

    def ratio_col(kind, n):
        return lambda row: _fmt(row[kind].get(n), ".3f", 0)

    def iqr(row):
        iqrs = [r["iqr_pct"] for r in row["impls"].values() if "iqr_pct" in r]
        return _fmt(max(iqrs) if iqrs else None, ".0f", 0)

    def chk(row):
        st = row["check"]["status"]
        return {"ok": "ok", "skipped": "-", "error": "ERR"}.get(st, "!! " + st.upper())

    cols = [("cell", 4, lambda row: row["cell"]), ("mode", 9, lambda row: row["mode"]),
            ("T", 5, case_col("T")), ("B", 3, case_col("B")), ("I", 4, case_col("I")),
            ("H", 4, case_col("H")), ("extra", 12, lambda row: row["tag"])]
    for n in impl_names:
        cols.append((f"{_label(n)} ms", 11, ms_col(n)))
    others = [n for n in impl_names if n != BASELINE]
    for n in others:
        head = "ratio" if len(impl_names) == 2 else f"{_label(n)}/{_label(BASELINE)}"
        cols.append((head, 7, ratio_col("ratio", n)))
    if CANDIDATE in impl_names:
        for n in impl_names:
            if IMPLEMENTATIONS[n].peer:
                cols.append((f"{_label(CANDIDATE)}/{_label(n)}", 7, ratio_col("ratio_vs_peers", n)))
        cols += [(f"{CANDIDATE} GF/s", 12,
                  lambda row: _fmt(row["impls"].get(CANDIDATE, {}).get("gflops"), ".1f", 0)),
                 ("%sgemm", 6,
                  lambda row: _fmt(row["impls"].get(CANDIDATE, {}).get("pct_sgemm"), ".0f", 0))]
    if BASELINE in impl_names:
        cols.append((f"{BASELINE} GF/s", 10,
                     lambda row: _fmt(row["impls"].get(BASELINE, {}).get("gflops"), ".1f", 0)))
    cols += [("iqr%", 5, iqr), ("check", 5, chk)]
    return [(h, max(w, len(h)), f) for h, w, f in cols]


def _join(texts: Sequence[str], cols) -> str:
    return " ".join(t.ljust(w) if i < 2 else t.rjust(w)
                    for i, (t, (_, w, _f)) in enumerate(zip(texts, cols)))


def format_header(impl_names: Sequence[str]) -> str:
    cols = table_columns(impl_names)
    head = _join([h for h, _, _ in cols], cols)
    return head + "\n" + "-" * len(head)


def format_legend(impl_names: Sequence[str]) -> Optional[str]:
    """One line naming abbreviated implementations (peers' labels) and their versions."""
    parts = []
    for n in impl_names:
        impl = IMPLEMENTATIONS[n]
        if impl.label != n or impl.peer:
            ver = impl.version() if impl.version else None
            parts.append(f"{impl.label} = {n}" + (f" {ver}" if ver else ""))
    if not parts:
        return None
    return ("columns: " + ", ".join(parts)
            + (f"; {_label(CANDIDATE)}/<peer> = {CANDIDATE} time / peer time "
               f"(< 1: {CANDIDATE} faster)" if CANDIDATE in impl_names else ""))


def format_row(row: dict, impl_names: Sequence[str]) -> str:
    cols = table_columns(impl_names)
    line = _join([f(row) for _, _, f in cols], cols)
    chk = row["check"]
    other = row.get("other_load")
    if other is not None and other > OTHER_LOAD_LIMIT:
        line += f" (other processes used {100 * other:.0f}% of the CPUs)"
    if chk["status"] == "mismatch":
        line += "  <<< " + chk.get("summary", "")
    for n in impl_names:
        err = row["impls"].get(n, {}).get("error")
        if err:
            line += f"\n      {n}: {err}"
    return line


def png_series(impl_names: Sequence[str]) -> List[Tuple[str, Callable[[dict], Optional[float]],
                                                       Tuple[str, ...]]]:
    """What the PNG plots: (label, ratio from a row, implementations whose check it depends on).
    With CANDIDATE present: CANDIDATE's time over each other implementation's (baseline first,
    then peers), so every bar reads "< 1: CANDIDATE faster". Without it: <impl>/<baseline>."""
    others = [n for n in impl_names if n != CANDIDATE]
    if CANDIDATE in impl_names and others:
        out = []
        for n in others:
            if n == BASELINE:
                out.append((f"{_label(CANDIDATE)}/{_label(n)}",
                            lambda r: r["ratio"].get(CANDIDATE), (CANDIDATE,)))
            elif IMPLEMENTATIONS.get(n) is not None and IMPLEMENTATIONS[n].peer:
                out.append((f"{_label(CANDIDATE)}/{_label(n)}",
                            lambda r, n=n: r.get("ratio_vs_peers", {}).get(n), (CANDIDATE, n)))
        return out
    return [(f"{_label(n)}/{_label(BASELINE)}", lambda r, n=n: r["ratio"].get(n), (n,))
            for n in impl_names if n != BASELINE]


def _series_mismatch(row: dict, deps: Tuple[str, ...]) -> bool:
    per = row["check"].get("per_impl")
    if per is None:    # rows from before per-implementation statuses
        return row["check"]["status"] == "mismatch"
    return any(per.get(n) == "mismatch" for n in deps)


def write_png(rows: List[dict], impl_names: Sequence[str], path: Path,
              title: str = "rnnfast CPU benchmark") -> Optional[str]:
    """Horizontal bar chart of time ratios (see png_series). Returns a note if skipped."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return f"matplotlib not available ({type(e).__name__}); PNG skipped (pip install matplotlib)"
    series = png_series(impl_names)
    if not series or not rows:
        return "nothing to plot; PNG skipped"
    from matplotlib.patches import Patch
    labels = [f"{r['cell']} {r['mode'][:5]} T{r['case']['T']} B{r['case']['B']} "
              f"I{r['case']['I']} H{r['case']['H']}"
              + ("" if r["tag"] == "-" else f" {r['tag']}") for r in rows]
    peers = series   # one bar per series per row
    hatches = [None, "//", "..", "xx", "\\\\", "++"]
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(rows) * len(peers) + 1.8))
    height = 0.8 / len(peers)
    vals_all = [v for r in rows for _, get, _ in series for v in [get(r)] if v]
    lo = min(vals_all + [0.5]) / 1.3
    hi = max(vals_all + [2.0]) * 1.8   # room for the value labels
    for k, (name, get, deps) in enumerate(series):
        for i, r in enumerate(rows):
            y = i + k * height
            v = get(r)
            if not v:
                err = any(r["impls"].get(n, {}).get("error") for n in deps)
                why = next((r["impls"][n]["unsupported"] for n in deps
                            if r["impls"].get(n, {}).get("unsupported")), "")
                ax.text(lo * 1.05, y, f"{name}: " + ("error" if err else f"n/a {why}".strip()),
                        va="center", fontsize=6, color="tab:red" if err else "grey")
                continue
            bad = _series_mismatch(r, deps)
            loaded = (r.get("other_load") or 0) > OTHER_LOAD_LIMIT
            color = ("tab:red" if bad else "lightgrey" if loaded else
                     "tab:green" if v < 1 else "tab:orange")
            ax.barh(y, v - lo, left=lo, height=height, color=color,
                    hatch=hatches[k % len(hatches)], edgecolor="black", linewidth=0.3)
            ax.text(v * 1.02, y, f"{v:.2f}" + (f" {name}" if len(series) > 1 else "")
                    + (" MISMATCH" if bad else "")
                    + (" (loaded machine)" if loaded else ""), va="center", fontsize=6)
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ticks = [t for t in (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1, 1.5, 2, 3, 5, 10, 20, 50) if lo <= t <= hi]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks([i + (len(peers) - 1) * height / 2 for i in range(len(rows))])
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_ylim(len(rows) - 0.5 + (len(peers) - 1) * height, -0.5)
    first = series[0][0].split("/")[0]
    ax.set_xlabel(f"median time ratio (log scale; < 1 = {first} faster)"
                  + ("" if len(series) == 1 else
                     f"; bars per row, top to bottom: {', '.join(n for n, _, _ in series)}"),
                  fontsize=8)
    ax.set_title(title, fontsize=9)
    handles = [Patch(color="tab:green", label=f"{first} faster"),
               Patch(color="tab:orange", label=f"{first} slower"),
               Patch(color="tab:red", label="output mismatch"),
               Patch(color="lightgrey", label="timed on a loaded machine")]
    if len(series) > 1:
        handles += [Patch(facecolor="white", edgecolor="black", hatch=hatches[k % len(hatches)],
                          label=name) for k, (name, _, _) in enumerate(series)]
    # Below the plot, so it never covers bars near 1.
    legend = ax.legend(handles=handles, fontsize=7, loc="upper center", ncol=4,
                       bbox_to_anchor=(0.5, -0.6 / fig.get_size_inches()[1]), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_extra_artists=[legend], bbox_inches="tight")
    plt.close(fig)
    return None


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------

def run_one(cell: str, mode: str, case: Case, impl_names: Sequence[str], sgemm: float,
            args) -> dict:
    ref_mod = make_reference(cell, case, args.seed)
    inputs = make_inputs(case, args.seed)
    flops = case.flops(cell, mode)
    row = {"cell": cell, "mode": mode, "tag": case.tag, "case": dataclasses.asdict(case),
           "flops": flops, "impls": {}, "ratio": {}, "ratio_vs_peers": {},
           "check": {"status": "skipped"}}
    runners: Dict[str, Runner] = {}
    runtime: Dict[str, dict] = {}
    for n in impl_names:
        try:
            runners[n] = IMPLEMENTATIONS[n].factory(cell, case, mode, ref_mod)
        except Unsupported as e:
            row["impls"][n] = {"unsupported": str(e)}
        except Exception as e:  # noqa: BLE001
            row["impls"][n] = {"error": f"build: {type(e).__name__}: {e}"}
            if args.verbose:
                traceback.print_exc()
        else:
            describe = getattr(runners[n], "describe", None)
            if describe is not None:   # peers: exporter, ONNX ops, runtime settings
                try:
                    runtime[n] = describe()
                except Exception as e:  # noqa: BLE001
                    runtime[n] = {"describe_error": f"{type(e).__name__}: {e}"}

    # Verify every non-baseline runner against the baseline; drop runners that raise.
    if BASELINE in runners:
        statuses = []
        for n in list(runners):
            if n == BASELINE:
                continue
            try:
                ok, det = check(runners[n], runners[BASELINE], inputs, mode)
            except Unsupported as e:
                row["impls"][n] = {"unsupported": str(e)}
                runners.pop(n)
                continue
            except Exception as e:  # noqa: BLE001
                row["impls"][n] = {"error": f"run: {type(e).__name__}: {e}"}
                if args.verbose:
                    traceback.print_exc()
                runners.pop(n)
                continue
            row["check"].setdefault("details", {})[n] = det
            row["check"].setdefault("per_impl", {})[n] = "ok" if ok else "mismatch"
            statuses.append(ok)
            if not ok:
                row["check"].setdefault("summary", "")
                row["check"]["summary"] = (row["check"]["summary"] + " "
                                           + f"{n}: {describe_mismatch(det)}").strip()
        if statuses:
            row["check"]["status"] = "ok" if all(statuses) else "mismatch"
        elif any(v.get("error") for v in row["impls"].values()):
            row["check"]["status"] = "error"

    if runners:
        try:
            samples, row["other_load"] = time_interleaved(
                runners, mode, inputs, budget=args.budget, warmup=args.warmup,
                min_reps=args.min_reps, max_reps=args.max_reps)
        except Exception as e:  # noqa: BLE001  (rare: failed after check passed) - time singly
            if args.verbose:
                traceback.print_exc()
            samples = {}
            for n, r in runners.items():
                try:
                    one, row["other_load"] = time_interleaved(
                        {n: r}, mode, inputs, budget=args.budget / 2, warmup=args.warmup,
                        min_reps=args.min_reps, max_reps=args.max_reps)
                    samples.update(one)
                except Exception as e2:  # noqa: BLE001
                    row["impls"][n] = {"error": f"timing: {type(e2).__name__}: {e2}"}
        for n, ts in samples.items():
            s = summarize(ts)
            s["gflops"] = flops / (s["median_ms"] * 1e-3) / 1e9
            s["pct_sgemm"] = 100.0 * s["gflops"] / sgemm if sgemm else None
            row["impls"][n] = s
    for n, d in runtime.items():
        row["impls"].setdefault(n, {})["runtime"] = d
    base = row["impls"].get(BASELINE, {}).get("median_ms")
    for n in impl_names:
        if n == BASELINE:
            continue
        t = row["impls"].get(n, {}).get("median_ms")
        row["ratio"][n] = (t / base) if (t and base) else None
    # CANDIDATE time / each peer's time (< 1: CANDIDATE faster than that peer).
    cand = row["impls"].get(CANDIDATE, {}).get("median_ms")
    if CANDIDATE in impl_names:
        for n in impl_names:
            if IMPLEMENTATIONS[n].peer:
                t = row["impls"].get(n, {}).get("median_ms")
                row["ratio_vs_peers"][n] = (cand / t) if (cand and t) else None
    return row


OTHER_LOAD_LIMIT = 0.05   # rows timed while other processes used more than this are marked


def _noise(row: dict) -> float:
    """Worst iqr% over the row's implementations, or inf when other processes loaded the CPUs
    during the timed rounds (contention can slow every call alike, keeping the iqr small)."""
    other = row.get("other_load")
    if other is not None and other > OTHER_LOAD_LIMIT:
        return math.inf
    iqrs = [r["iqr_pct"] for r in row["impls"].values() if "iqr_pct" in r]
    return max(iqrs) if iqrs else 0.0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="tiny grid, short budget: a smoke run that finishes in < 1 minute")
    p.add_argument("--cells", default=",".join(CELLS), help="comma list of lstm,gru,rnn")
    p.add_argument("--modes", default=",".join(MODES), help="comma list of inference,training")
    p.add_argument("--impls", default=None,
                   help=f"comma list from {list(IMPLEMENTATIONS)} (default: {CANDIDATE}, "
                        f"{BASELINE} and the peers chosen by --peers)")
    p.add_argument("--peers", default="all",
                   help=f"inference peers to add to {CANDIDATE} and {BASELINE} when --impls is "
                        f"not given: 'all' (default: those installed), 'none', or a comma list "
                        f"from {peer_names()}; peers are inference-only (n/a in training rows)")
    p.add_argument("--config", action="append", default=None, metavar="T,B,I,H[:OPTS]",
                   help="replace the grid (repeatable); OPTS: '+'-list of 2L, bi, packed")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads(N) (default: leave torch's setting)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds of timed rounds per (cell, mode, config) (default 2, quick 0.15)")
    p.add_argument("--warmup", type=float, default=None,
                   help="seconds of warm-up per implementation (default 0.2, quick 0.02)")
    p.add_argument("--min-reps", type=int, default=None, help="default 5 (quick 3)")
    p.add_argument("--max-reps", type=int, default=None, help="default 500 (quick 30)")
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                   help="before starting and before each row, wait up to SECONDS for other "
                        "processes to leave the CPUs idle (< 15%% busy); rows that still "
                        "started on a busy machine are marked")
    p.add_argument("--retries", type=int, default=None,
                   help="rerun a row up to N more times while its iqr%% exceeds --noisy-iqr and "
                        "keep the quietest attempt (default 2, quick 0)")
    p.add_argument("--noisy-iqr", type=float, default=40.0,
                   help="iqr%% above which a row counts as noisy (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=HERE / "results",
                   help="where cpu-<timestamp>.json/.png go (default bench/results)")
    p.add_argument("--no-json", action="store_true", help="do not write JSON")
    p.add_argument("--no-png", action="store_true", help="do not write the PNG")
    p.add_argument("--allow-mismatch", action="store_true",
                   help="exit 0 even if an output/grad check failed")
    p.add_argument("-v", "--verbose", action="store_true", help="print tracebacks")
    a = p.parse_args(argv)
    q = a.quick
    a.budget = a.budget if a.budget is not None else (0.15 if q else 2.0)
    a.warmup = a.warmup if a.warmup is not None else (0.02 if q else 0.2)
    a.min_reps = a.min_reps if a.min_reps is not None else (3 if q else 5)
    a.max_reps = a.max_reps if a.max_reps is not None else (30 if q else 500)
    a.retries = a.retries if a.retries is not None else (0 if q else 2)
    a.cells = [c.strip() for c in a.cells.split(",") if c.strip()]
    a.modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    for c in a.cells:
        if c not in CELLS:
            p.error(f"unknown cell {c!r}; choose from {CELLS}")
    for m in a.modes:
        if m not in MODES:
            p.error(f"unknown mode {m!r}; choose from {MODES}")
    if a.config:
        try:
            a.grid = [c for text in a.config for c in parse_config(text, a.seed)]
        except argparse.ArgumentTypeError as e:
            p.error(str(e))
    else:
        a.grid = quick_grid(a.seed) if q else default_grid(a.seed)
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()

    peers_arg = args.peers.strip().lower()
    if args.impls:
        if peers_arg != "all":
            print("give either --impls or --peers, not both", file=sys.stderr)
            return 2
        wanted = [s.strip() for s in args.impls.split(",") if s.strip()]
    else:
        if peers_arg == "all":
            peers = peer_names()
        elif peers_arg == "none":
            peers = []
        else:
            peers = [s.strip() for s in args.peers.split(",") if s.strip()]
            bad = [n for n in peers if n not in peer_names()]
            if bad:
                print(f"unknown peer(s) {bad}; known: {peer_names()}", file=sys.stderr)
                return 2
        wanted = [n for n in IMPLEMENTATIONS if not IMPLEMENTATIONS[n].peer] + peers
    impl_names, notes = [], []
    if _PEERS_ERR:
        notes.append(f"bench/onnx_peers.py failed to load, no peers: {_PEERS_ERR}")
    for n in wanted:
        if n not in IMPLEMENTATIONS:
            print(f"unknown implementation {n!r}; known: {list(IMPLEMENTATIONS)}", file=sys.stderr)
            return 2
        ok, why = IMPLEMENTATIONS[n].available()
        if ok:
            impl_names.append(n)
        else:
            notes.append(f"{n} unavailable, column dropped: {why}")
    if any(IMPLEMENTATIONS[n].peer for n in impl_names):
        notes.append("peers (" + ", ".join(n for n in impl_names if IMPLEMENTATIONS[n].peer)
                     + ") run inference only (n/a in training rows), float32, the torch model "
                       "exported to ONNX; packed rows feed the ONNX ops' sequence_lens")
    peer_versions = {n: IMPLEMENTATIONS[n].version() for n in impl_names
                     if IMPLEMENTATIONS[n].version}
    if not impl_names:
        print("no implementation available", file=sys.stderr)
        return 2

    busy = wait_for_idle(args.wait_idle) if args.wait_idle > 0 else cpu_busy_fraction(0.5)
    started = _dt.datetime.now()
    stamp = started.strftime("%Y%m%d-%H%M%S")
    machine = machine_info()
    machine["cpu_busy_at_start"] = busy
    rf_info = rnnfast_info() if "rnnfast" in wanted else None
    print(f"rnnfast CPU benchmark  {started.isoformat(timespec='seconds')}")
    print(f"cpu: {machine['cpu_model']}  avx2={machine['avx2']} avx512f={machine['avx512f']}  "
          f"threads={threads}  torch {torch.__version__}  loadavg {machine['loadavg_start']}")
    if rf_info is not None:
        print(f"rnnfast: {rf_info}")
    for note in notes:
        print("NOTE: " + note)
    if busy is not None and busy > 0.15:
        print(f"WARNING: {100 * busy:.0f}% of the CPUs were busy with other work at start; with "
              f"{threads} threads on {os.cpu_count()} CPUs, timings will be slow and noisy "
              f"(use --wait-idle SECONDS, or --threads 1).")

    sg0 = sgemm_rate(seconds=0.3 if args.quick else 1.0)
    print(f"SGEMM (torch.mm 1024x1024 fp32): {sg0['gflops']:.1f} GFLOP/s "
          f"(best of {len(sg0['window_medians'])} window medians "
          f"{', '.join(f'{m:.0f}' for m in sg0['window_medians'])}; max {sg0['max_gflops']:.0f})")
    sgemm = sg0["gflops"]
    print(f"grid: {len(args.grid)} configs x cells {args.cells} x modes {args.modes}; "
          f"budget {args.budget}s/config, reps in [{args.min_reps}, {args.max_reps}]")
    print()
    legend = format_legend(impl_names)
    if legend:
        print(legend)
    print(format_header(impl_names))

    rows = []
    t_all = time.perf_counter()
    for cell in args.cells:
        for mode in args.modes:
            for case in args.grid:
                row = None
                for attempt in range(1 + args.retries):
                    busy_row = (wait_for_idle(args.wait_idle, interval=0.5)
                                if args.wait_idle > 0 else None)
                    new = run_one(cell, mode, case, impl_names, sgemm, args)
                    new["cpu_busy_before"] = busy_row
                    new["attempts"] = attempt + 1
                    if row is None or _noise(new) < _noise(row):
                        row = new
                    if _noise(row) <= args.noisy_iqr:
                        break
                    if attempt < args.retries:
                        iqr = max([r["iqr_pct"] for r in new["impls"].values()
                                   if "iqr_pct" in r] or [0.0])
                        print(f"  (noisy row: iqr {iqr:.0f}%, other load "
                              f"{100 * (new.get('other_load') or 0):.0f}%; retrying)",
                              file=sys.stderr, flush=True)
                rows.append(row)
                print(format_row(row, impl_names), flush=True)
    elapsed = time.perf_counter() - t_all

    if args.wait_idle > 0:
        wait_for_idle(args.wait_idle, interval=0.5)
    sg1 = sgemm_rate(seconds=0.3 if args.quick else 1.0)
    print()
    load_end = _loadavg()
    machine["loadavg_end"] = load_end
    print(f"SGEMM at end: {sg1['gflops']:.1f} GFLOP/s (start {sg0['gflops']:.1f}); "
          f"loadavg {load_end}")
    drift = sg1["gflops"] / sg0["gflops"] if sg0["gflops"] else 1.0
    if not 0.8 <= drift <= 1.25 or (load_end and load_end[0] > threads + 0.5):
        print(f"WARNING: machine load changed or is high during the run (SGEMM end/start "
              f"{drift:.2f}, loadavg {load_end}). Rows timed while other processes used the "
              f"CPUs are marked; unmarked rows were timed on a quiet machine.")
    # Other load can only lower a SGEMM measurement, so the higher of start/end is the better
    # estimate of the machine's rate. If it is clearly higher than the start value the streamed
    # table used, recompute %sgemm and print the table again.
    sgemm_best = max(sg0["gflops"], sg1["gflops"])
    if sgemm_best > 1.05 * sgemm:
        for row in rows:
            for r in row["impls"].values():
                if r.get("gflops") is not None:
                    r["pct_sgemm"] = 100.0 * r["gflops"] / sgemm_best
        print(f"\nSGEMM at end was higher than at start; the table again with %sgemm relative to "
              f"{sgemm_best:.1f} GFLOP/s:\n")
        if legend:
            print(legend)
        print(format_header(impl_names))
        for row in rows:
            print(format_row(row, impl_names))
        print()
    sgemm = sgemm_best
    marked = sum(1 for r in rows if (r.get("other_load") or 0) > OTHER_LOAD_LIMIT)
    ratio_doc = (f"ratio = {CANDIDATE} time / {BASELINE} time (< 1: {CANDIDATE} faster). "
                 if len(impl_names) == 2 else
                 "a/b = a's median time / b's median time (< 1: a faster). ")
    print(f"{ratio_doc}iqr% = worst interquartile range / median of the timed calls. "
          f"%sgemm relative to {sgemm:.1f} GFLOP/s. Timed section {elapsed:.0f}s.")
    if marked:
        print(f"{marked} row(s) were timed while other processes used > "
              f"{100 * OTHER_LOAD_LIMIT:.0f}% of the CPUs (marked); do not trust them.")
    peers_used = [n for n in impl_names if IMPLEMENTATIONS[n].peer]
    if CANDIDATE in impl_names and peers_used:
        beaten = [(r, n, v) for r in rows for n, v in r["ratio_vs_peers"].items()
                  if v is not None and v > 1.0]
        print()
        if beaten:
            print(f"Rows where a peer is faster than {CANDIDATE} ({CANDIDATE}/peer > 1; "
                  f"within ~1.1 is noise unless it repeats):")
            for r, n, v in beaten:
                c = r["case"]
                loaded = (r.get("other_load") or 0) > OTHER_LOAD_LIMIT
                print(f"  {r['cell']:4} {r['mode']:9} T={c['T']} B={c['B']} I={c['I']} "
                      f"H={c['H']} {r['tag']}: {n} {v:.2f}x faster"
                      + (" (loaded machine)" if loaded else ""))
        else:
            print(f"No row where a peer ({', '.join(peers_used)}) is faster than {CANDIDATE}.")

    mismatches = [r for r in rows if r["check"]["status"] == "mismatch"]
    errors = [(r, n) for r in rows for n, v in r["impls"].items() if v.get("error")]
    if mismatches:
        print()
        print("!" * 78)
        print(f"!! {len(mismatches)} CONFIG(S) WHERE OUTPUTS/GRADS DO NOT MATCH {BASELINE}:")
        for r in mismatches:
            c = r["case"]
            print(f"!!   {r['cell']} {r['mode']} T={c['T']} B={c['B']} I={c['I']} H={c['H']} "
                  f"{r['tag']}: {r['check'].get('summary', '')}")
        print("!" * 78)
    if errors:
        print(f"\n{len(errors)} implementation error(s); rerun with -v for tracebacks.")

    result = {
        "schema": "rnnfast-bench-cpu/1",
        "date": started.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "machine": machine,
        "rnnfast": rf_info,
        "threads": threads,
        "implementations": impl_names,
        "baseline": BASELINE,
        "candidate": CANDIDATE,
        "peers": {n: {"version": peer_versions.get(n)} for n in impl_names
                  if IMPLEMENTATIONS[n].peer},
        "package_versions": (_onnx_peers.versions() if _onnx_peers is not None else None),
        "ratios": {"ratio": f"<impl> median / {BASELINE} median",
                   "ratio_vs_peers": f"{CANDIDATE} median / <peer> median"},
        "settings": {"quick": args.quick, "budget_s": args.budget, "warmup_s": args.warmup,
                     "min_reps": args.min_reps, "max_reps": args.max_reps, "seed": args.seed,
                     "retries": args.retries, "noisy_iqr_pct": args.noisy_iqr,
                     "wait_idle_s": args.wait_idle,
                     "dtype": "float32", "out_atol": OUT_ATOL, "grad_rtol": GRAD_RTOL,
                     "grad_atol": GRAD_ATOL,
                     "flops": "forward 2*steps*G*H*(I_l+H) per layer/direction; training 3x"},
        "sgemm": {"start": sg0, "end": sg1, "used_gflops": sgemm},
        "elapsed_s": elapsed,
        "results": rows,
    }
    if not args.no_json or not args.no_png:
        args.out_dir.mkdir(parents=True, exist_ok=True)
    if not args.no_json:
        jpath = args.out_dir / f"cpu-{stamp}.json"
        jpath.write_text(json.dumps(result, indent=1, default=str) + "\n")
        print(f"wrote {jpath}")
    if not args.no_png:
        ppath = args.out_dir / f"cpu-{stamp}.png"
        title = (f"rnnfast CPU benchmark {started:%Y-%m-%d %H:%M}, {machine['cpu_model']}, "
                 f"{threads} threads, torch {torch.__version__}"
                 + ("\n" + ", ".join(f"{n} {v}" for n, v in peer_versions.items() if v)
                    if any(peer_versions.values()) else ""))
        note = write_png(rows, impl_names, ppath, title)
        print(f"note: {note}" if note else f"wrote {ppath}")
    return 1 if (mismatches and not args.allow_mismatch) else 0


if __name__ == "__main__":
    sys.exit(main())
