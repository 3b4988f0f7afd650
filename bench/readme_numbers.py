"""The numbers of README.md's speed summary, derived from the results files in bench/results/.

    python bench/readme_numbers.py            # each number with the result rows it comes from
    python bench/readme_numbers.py --markdown # the two README blocks, as they should read
    python bench/readme_numbers.py --check    # exit 1 (with a diff) if README.md differs
    python bench/readme_numbers.py --write    # rewrite those blocks of README.md in place

Two blocks of README.md's Status section are generated here: the GPU speed bullet (it starts
with "  - Speed against cuDNN") and the CPU speed bullet (it starts with "- Speed on CPU").
tests/test_readme_claims.py fails when README.md and this script's output differ, so a number
in those blocks can change only with the results it comes from. To describe a new run, point
the file names below at its results and update the wording here.

Conventions: every ratio is rnnfast's time / the other's time (below 1: rnnfast is faster),
rounded to 2 decimals; a range "a–b" is the smallest and the largest over the rows named.
"""
from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import sys
import textwrap
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")
README = os.path.join(ROOT, "README.md")

GPU_MD = "gpu-2026-11-27.md"             # the verified H200 run; its benchmark table
GPU_JSON = "gpu-20261127-185644.json"    # the same table's raw numbers
CPU_GRID_JSON = "cpu-20261128-025519.json"
CPU_GRID_TXT = "cpu-20261128-025519.txt"
CPU_NOTES_MD = "cpu-2026-11-28b.md"      # that session's notes: interleaved runs, the demo
CPU_EARLIER_MD = ("cpu-2026-11-28.md", "cpu-2026-11-27.md")
PACKED_TXT = "packed-20261128b.txt"

DASH = "–"


def _read(name):
    with open(os.path.join(RESULTS, name), encoding="utf-8") as f:
        return f.read()


# ----------------------------------------------------------------------------- loaders

@dataclass
class Row:
    """One result row: a label naming it in its file, and its ratios."""
    file: str
    label: str
    fields: dict = field(default_factory=dict)

    def where(self):
        return f"{self.file}: {self.label}"


def gpu_rows():
    """The benchmark table of GPU_MD, as written there (ratios to 2 decimals)."""
    rows = []
    for line in _read(GPU_MD).splitlines():
        m = re.match(r"\| (LSTM|GRU|RNN) \| (\w+) \| (inference|training) \| (\d+) \| (\d+) \| "
                     r"([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", line)
        if not m:
            continue
        cell, dtype, mode, B, H, cudnn_ms, fast_ms, ratio, _ = m.groups()
        rows.append(Row(GPU_MD, f"{cell} {dtype} {mode} B={B} H={H}",
                        dict(cell=cell, dtype=dtype, mode=mode, B=int(B), H=int(H),
                             cudnn_ms=float(cudnn_ms), rnnfast_ms=float(fast_ms),
                             ratio=float(ratio))))
    if not rows:
        raise ValueError(f"{GPU_MD}: no benchmark table rows found")
    return rows


def gpu_json():
    with open(os.path.join(RESULTS, GPU_JSON), encoding="utf-8") as f:
        return json.load(f)


def gpu_json_rows():
    return gpu_json()["rows"]


def gpu_tests_passed():
    """The number of CUDA tests GPU_MD records as passed."""
    m = re.search(r"\*\*(\d+) passed\*\*", _read(GPU_MD))
    if not m:
        raise ValueError(f"{GPU_MD}: no '**N passed**' line")
    return int(m.group(1))


def cpu_grid():
    """(the grid JSON, its rows). Row fields: cell, mode, tag, T, B, I, H, torch (rnnfast /
    torch), ort and ov (rnnfast / peer, inference only), torch_pct_sgemm."""
    with open(os.path.join(RESULTS, CPU_GRID_JSON), encoding="utf-8") as f:
        grid = json.load(f)
    rows = []
    for r in grid["results"]:
        c, impls = r["case"], r["impls"]
        med = {k: v["median_ms"] for k, v in impls.items() if v and v.get("median_ms")}
        f = dict(cell=r["cell"], mode=r["mode"], tag=r["tag"], T=c["T"], B=c["B"], I=c["I"],
                 H=c["H"], torch=med["rnnfast"] / med["torch"],
                 torch_pct_sgemm=impls["torch"]["gflops"] / grid["sgemm"]["used_gflops"] * 100)
        for peer, key in (("onnxruntime", "ort"), ("openvino", "ov")):
            if peer in med:
                f[key] = med["rnnfast"] / med[peer]
        tag = "" if r["tag"] == "-" else " " + r["tag"]
        rows.append(Row(CPU_GRID_JSON,
                        f"{r['cell']} {r['mode']} T={c['T']} B={c['B']} I={c['I']} H={c['H']}{tag}",
                        f))
    return grid, rows


def cpu_grid_txt_ratios():
    """{(cell, mode, T, B, I, H, tag): rnnfast/torch} from the first table of CPU_GRID_TXT."""
    out = {}
    for line in _read(CPU_GRID_TXT).splitlines():
        m = re.match(r"(lstm|gru|rnn)\s+(inference|training)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+"
                     r"(\S+)\s+[\d.]+\s+[\d.]+\s+\S+\s+\S+\s+([\d.]+)\s", line)
        if m:
            key = (m[1], m[2], int(m[3]), int(m[4]), int(m[5]), int(m[6]), m[7])
            out.setdefault(key, float(m[8]))   # the file repeats the table; keep the first
    return out


def packed():
    """(header fields, rows) of PACKED_TXT. Row fields: impl, cell, mode, packed_ms (the module
    on a PackedSequence), end_ms (the same with pack_padded_sequence and pad_packed_sequence
    around it), padded_ms, packed_padded, end_padded."""
    text = _read(PACKED_TXT)
    head = re.search(r"T=(\d+) B=(\d+) I=(\d+) H=(\d+) threads=(\d+) active fraction ([\d.]+)",
                     text)
    if not head:
        raise ValueError(f"{PACKED_TXT}: no 'T=.. B=.. I=.. H=.. threads=.. active fraction' line")
    rows = []
    for line in text.splitlines():
        m = re.match(r"(rnnfast|torch)\s+(lstm|gru|rnn)\s+(inference|training)\s+([\d.]+)\s+"
                     r"([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", line)
        if m:
            rows.append(Row(PACKED_TXT, f"{m[1]} {m[2]} {m[3]}",
                            dict(impl=m[1], cell=m[2], mode=m[3], packed_ms=float(m[4]),
                                 end_ms=float(m[5]), padded_ms=float(m[6]),
                                 packed_padded=float(m[7]), end_padded=float(m[8]))))
    T, B, I, H, threads, active = head.groups()
    return dict(T=int(T), B=int(B), I=int(I), H=int(H), threads=int(threads),
                active=float(active)), rows


def demo_runs():
    """The demo runs CPU_NOTES_MD records under "**The demo**": [(commit, rnnfast tokens/s,
    nn.LSTM tokens/s, the ratio as written)]. The written ratio must be the tokens/s ratio."""
    text = _read(CPU_NOTES_MD)
    start = text.index("**The demo**")
    section = text[start:text.index("\n## ", start)]
    runs = []
    for item in re.split(r"\n- ", section)[1:]:
        item = " ".join(item.split())
        m = re.match(r"at (\w+)\b.*?([\d,]+) against (?:nn\.LSTM's )?([\d,]+) tokens/s "
                     r"\((\d+\.\d+)×\)", item)
        if not m:
            raise ValueError(f"{CPU_NOTES_MD}: demo item not understood: {item[:80]}")
        fast, ref = (int(m[i].replace(",", "")) for i in (2, 3))
        written = float(m[4])
        if f"{fast / ref:.2f}" != m[4]:
            raise ValueError(f"{CPU_NOTES_MD}: demo at {m[1]}: {fast}/{ref} = {fast / ref:.4f}, "
                             f"written {m[4]}")
        runs.append((m[1], fast, ref, written))
    if not runs:
        raise ValueError(f"{CPU_NOTES_MD}: no demo runs found")
    # later runs, one file each (bench/results/demo-YYYYMMDD[-tag].txt: the demo's own output)
    for name in _demo_files():
        text = _read(name)
        commit = re.search(r"fresh clone of (\w+)", text)
        m = re.search(r"rnnfast ([\d,]+) tokens/s \| torch\.nn\.LSTM ([\d,]+) tokens/s \| "
                      r"(\d+\.\d+)x", text)
        if not (commit and m):
            raise ValueError(f"{name}: no 'fresh clone of <commit>' header or no demo speed line")
        fast, ref = (int(m[i].replace(",", "")) for i in (1, 2))
        if f"{fast / ref:.2f}" != m[3]:
            raise ValueError(f"{name}: {fast}/{ref} = {fast / ref:.4f}, written {m[3]}")
        runs.append((commit[1], fast, ref, float(m[3])))
    return runs


def _demo_files():
    """The names of the demo runs' files in RESULTS, oldest first: demo-YYYYMMDD.txt, then that
    day's further runs demo-YYYYMMDD-<tag>.txt (another host, another SIMD path) by name."""
    names = [n for n in os.listdir(RESULTS) if re.fullmatch(r"demo-\d{8}(-[a-z0-9]+)*\.txt", n)]
    return sorted(names, key=lambda n: (n[5:13], n[13] != ".", n))


def demo_run_paths():
    """For each run of demo_runs(), in its order: None for runs recorded only in the notes, else
    (the SIMD path of its "rnnfast installed:" line or None, the path the header's command
    forced with RNNFAST_SIMD=<path> or None)."""
    paths = [None] * (len(demo_runs()) - len(_demo_files()))
    for name in _demo_files():
        text = _read(name)
        simd = re.search(r'"simd": "(\w+)"', text)
        forced = re.match(r"# (?:\S+=\S+ )*RNNFAST_SIMD=(\w+) ", text)
        paths.append((simd[1] if simd else None, forced[1] if forced else None))
    return paths


def demo_run_simd(commit):
    """The SIMD path rnnfast ran in the first demo-*.txt run of `commit` (its "rnnfast
    installed:" line), or None for runs recorded only in the notes."""
    for name in _demo_files():
        text = _read(name)
        if re.search(rf"fresh clone of {commit}\b", text):
            m = re.search(r'"simd": "(\w+)"', text)
            return m[1] if m else None
    return None


def _path_label(path):
    """How README names a demo run's SIMD path: nothing for the native AVX-512 path or a run
    kept only in the notes; a forced path as its setting; AVX2 unforced as the CPU's only one."""
    if path is None or path[0] in (None, "avx512"):
        return ""
    simd, forced = path
    if forced:
        return f" (RNNFAST_SIMD={forced})"
    return f" (an {simd.upper()}-only CPU)"


def demo_shape_interleaved():
    """(T, B, I, H, lo, hi): the demo's shape and its interleaved time ratios against
    nn.LSTM, from the targets table of CPU_NOTES_MD."""
    m = re.search(r"the demo's shape \((\d+)×(\d+)×(\d+)×(\d+)\) (\d+\.\d+)–(\d+\.\d+)",
                  _read(CPU_NOTES_MD))
    if not m:
        raise ValueError(f"{CPU_NOTES_MD}: no \"the demo's shape (T×B×I×H) lo–hi\" entry")
    return tuple(int(v) for v in m.groups()[:4]) + (float(m[5]), float(m[6]))


# ----------------------------------------------------------------------------- claims

class Claims:
    """Collects each number put into the README blocks with the rows it comes from."""

    def __init__(self):
        self.items = []   # (name, text, [source lines])

    def add(self, name, text, sources):
        self.items.append((name, text, list(sources)))
        return text

    def range(self, name, rows, key, fmt="{:.2f}"):
        """'lo–hi' of rows' field `key`, formatted; sources: the rows at each end."""
        if not rows:
            raise ValueError(f"{name}: no rows")
        lo = min(rows, key=lambda r: r.fields[key])
        hi = max(rows, key=lambda r: r.fields[key])
        a, b = fmt.format(lo.fields[key]), fmt.format(hi.fields[key])
        text = a if a == b else f"{a}{DASH}{b}"
        return self.add(name, text, [f"min {a}: {lo.where()}", f"max {b}: {hi.where()}",
                                     f"over {len(rows)} rows"])

    def speedup(self, name, rows, key):
        """'lo–hi' of 1 / field (how many times faster), one decimal."""
        inv = [Row(r.file, r.label, {"x": 1.0 / r.fields[key]}) for r in rows]
        return self.range(name, inv, "x", "{:.1f}")

    def span(self, name, rows, key):
        """'lo–hi' (or the one value) of an integer field over rows, e.g. B = 16–32."""
        values = [r.fields[key] for r in rows]
        lo, hi = min(values), max(values)
        return self.add(name, str(lo) if lo == hi else f"{lo}{DASH}{hi}",
                        [r.where() for r in rows])

    def count(self, name, rows):
        """len(rows); sources: the rows (their file once, when there are many)."""
        if len(rows) <= 8:
            return self.add(name, str(len(rows)), [r.where() for r in rows])
        files = sorted({r.file for r in rows})
        return self.add(name, str(len(rows)), [f"{', '.join(files)}: "
                                               + "; ".join(r.label for r in rows)])


def _one(values, what):
    values = set(values)
    if len(values) != 1:
        raise ValueError(f"expected one {what}, found {sorted(values)}")
    return values.pop()


WIDTH = 92


def bullets(items):
    """Markdown list lines from [(level, text)]: '- ' items indented two spaces per level,
    wrapped at WIDTH."""
    out = []
    for level, text in items:
        pad = "  " * level
        out += textwrap.wrap(text, WIDTH, initial_indent=pad + "- ", subsequent_indent=pad + "  ",
                             break_long_words=False, break_on_hyphens=False)
    return out


def gpu_block(c: Claims):
    rows = gpu_rows()
    T = c.add("gpu.T", str(_one([r["T"] for r in gpu_json_rows()], "T")),
              [f"{GPU_JSON}: every row's T"])
    inf = [r for r in rows if r.fields["mode"] == "inference" and r.fields["B"] <= 8]
    inf_ok = [r for r in inf if r.fields["ratio"] <= 1.0]
    inf_miss = [r for r in inf if r.fields["ratio"] > 1.0]
    tr = [r for r in rows if r.fields["mode"] == "training" and r.fields["B"] >= 64]
    tr_ok = [r for r in tr if r.fields["ratio"] <= 1.0]
    tr_near = [r for r in tr if 1.0 < r.fields["ratio"] <= 1.15]
    tr_far = [r for r in tr if r.fields["ratio"] > 1.15]
    card = c.add("gpu.device", gpu_json()["meta"]["device"].replace("NVIDIA ", ""),
                 [f"{GPU_JSON}: meta.device"])
    return bullets([
        (1, f"Speed against cuDNN on the {card}, T={T}, I=H (`bench/results/{GPU_MD}`); ratios are "
            "rnnfast's time / cuDNN's, below 1 is faster, and `python bench/readme_numbers.py` "
            "prints the rows behind each number:"),
        (2, f"inference at B ≤ 8: {c.range('gpu.inf.ok', inf_ok, 'ratio')} on "
            f"{c.count('gpu.inf.ok.n', inf_ok)} of {c.count('gpu.inf.n', inf)} rows, "
            f"{c.range('gpu.inf.miss', inf_miss, 'ratio')} on the other "
            f"{c.count('gpu.inf.miss.n', inf_miss)};"),
        (2, f"training at B ≥ 64: {c.range('gpu.tr.ok', tr_ok, 'ratio')} on "
            f"{c.count('gpu.tr.ok.n', tr_ok)} of {c.count('gpu.tr.n', tr)} rows, "
            f"{c.range('gpu.tr.near', tr_near, 'ratio')} on {c.count('gpu.tr.near.n', tr_near)}, "
            f"{c.range('gpu.tr.far', tr_far, 'ratio')} on {c.count('gpu.tr.far.n', tr_far)}."),
        (2, "The misses and what bounds them are in the results file."),
    ])


def cpu_block(c: Claims):
    grid, rows = cpu_grid()
    threads = c.add("cpu.threads", str(grid["threads"]), [f"{CPU_GRID_JSON}: threads"])
    simd = c.add("cpu.simd", {"avx512": "AVX-512", "avx2": "AVX2"}.get(
        grid["rnnfast"]["simd"], grid["rnnfast"]["simd"]), [f"{CPU_GRID_JSON}: rnnfast.simd"])
    model = grid["machine"]["cpu_model"]

    gr = [r for r in rows if r.fields["cell"] in ("gru", "rnn")]
    gr_fast = [r for r in gr if r.fields["torch"] < 1.0]
    gr_small = [r for r in gr if r.fields["B"] <= 8]
    gr_large = [r for r in gr if r.fields["B"] >= 32]
    lstm = [r for r in rows if r.fields["cell"] == "lstm"]
    dense = [r for r in lstm if r.fields["tag"] != "packed"]
    lstm_packed = [r for r in lstm if r.fields["tag"] == "packed"]
    slow = [r for r in dense if r.fields["torch"] >= 1.0]
    fast = [r for r in dense if r.fields["torch"] < 1.0]
    inf = [r for r in rows if r.fields["mode"] == "inference"]
    ov_ahead = [r for r in inf if r.fields["ov"] > 1.0]
    ov_ahead_lstm = [r for r in ov_ahead if r.fields["cell"] == "lstm"]
    ort_slower = [r for r in inf if r.fields["ort"] >= 1.0]
    if ort_slower:
        raise ValueError("ONNX Runtime is faster on some rows; the wording below says it is not: "
                         + "; ".join(r.where() for r in ort_slower))
    ov_pct = [Row(r.file, r.label, {"p": (r.fields["ov"] - 1) * 100}) for r in ov_ahead]
    all_gr = "all " if len(gr_fast) == len(gr) else f"{len(gr_fast)} of "

    T, B, I, H, lo, hi = demo_shape_interleaved()
    demo = c.add("cpu.demo.shape", f"T={T}, B={B}, I={I}, H={H}",
                 [f"{CPU_NOTES_MD}: targets table, \"the demo's shape ({T}×{B}×{I}×{H})\""])
    demo_il = c.add("cpu.demo.interleaved", f"{lo:.2f}{DASH}{hi:.2f}",
                    [f"{CPU_NOTES_MD}: targets table, \"the demo's shape (...) {lo}–{hi}\""])
    runs = demo_runs()
    run_text = c.add("cpu.demo.runs",
                     ", ".join(f"{w:.2f}× at {k}" + _path_label(path)
                               for (k, _, _, w), path in zip(runs, demo_run_paths())),
                     [f"{CPU_NOTES_MD} \"The demo\" or bench/results/demo-*.txt: at {k}: "
                      f"{a:,} against {b:,} tokens/s ({w:.2f}×)" for k, a, b, w in runs])

    head, prow = packed()
    fast_p = [r for r in prow if r.fields["impl"] == "rnnfast"]
    fast_inf = [r for r in fast_p if r.fields["mode"] == "inference"]
    fast_tr = [r for r in fast_p if r.fields["mode"] == "training"]
    torch_p = {(r.fields["cell"], r.fields["mode"]): r for r in prow if r.fields["impl"] == "torch"}
    vs_torch = []
    for r in fast_p:
        t = torch_p[r.fields["cell"], r.fields["mode"]]
        vs_torch.append(Row(PACKED_TXT, f"{r.label} / {t.label} (packed ms)",
                            {"x": r.fields["packed_ms"] / t.fields["packed_ms"]}))
    ph = c.add("cpu.packed.shape", f"T={head['T']}, B={head['B']}, I={head['I']}, H={head['H']}, "
               f"{head['active'] * 100:.0f}% of the steps active", [f"{PACKED_TXT}: header line"])

    return bullets([
        (0, f"Speed on CPU: {threads} threads on this project's {model} host, rnnfast on its "
            f"{simd} path. The grid run is `bench/results/{CPU_GRID_TXT}` (also `.json`); the "
            f"session's notes are `bench/results/{CPU_NOTES_MD}` (earlier sessions: "
            + " and ".join(f"`{n}`" for n in CPU_EARLIER_MD) + "). Ratios are rnnfast's median "
            "time / torch's, below 1 is faster; `python bench/readme_numbers.py` prints the rows "
            "behind each number."),
        (1, f"GRU and RNN are faster than torch on {all_gr}{c.count('cpu.gr.n', gr)} of their "
            f"grid rows: {c.range('cpu.gr.small', gr_small, 'torch')} "
            f"({c.speedup('cpu.gr.small.x', gr_small, 'torch')}× faster) at B ≤ 8, "
            f"{c.range('cpu.gr.large', gr_large, 'torch')} "
            f"({c.speedup('cpu.gr.large.x', gr_large, 'torch')}× faster) at B ≥ 32."),
        (1, f"LSTM takes {c.range('cpu.lstm.dense', dense, 'torch')} of oneDNN's time on the "
            f"grid's {c.count('cpu.lstm.dense.n', dense)} dense rows, and "
            f"{c.range('cpu.lstm.packed', lstm_packed, 'torch')} on its "
            f"{c.count('cpu.lstm.packed.n', lstm_packed)} PackedSequence rows."),
        (2, f"Faster on {c.count('cpu.lstm.fast.n', fast)} dense rows "
            f"({c.range('cpu.lstm.fast', fast, 'torch')})."),
        (2, f"Slower on {c.count('cpu.lstm.slow.n', slow)}, all with "
            f"B = {c.span('cpu.lstm.slow.B', slow, 'B')} and "
            f"H = {c.span('cpu.lstm.slow.H', slow, 'H')}: "
            f"{c.range('cpu.lstm.slow', slow, 'torch')}. oneDNN runs those rows at "
            f"{c.range('cpu.lstm.slow.sgemm', slow, 'torch_pct_sgemm', '{:.0f}')}% of the "
            "host's measured SGEMM rate; the notes say what bounds them."),
        (1, f"The demo's shape ({demo}) is not a grid row. Timed interleaved, call by call, it "
            f"took {demo_il} of nn.LSTM's time (the notes' targets table). `python -m rnnfast "
            "demo`, run from a fresh clone, ends with rnnfast's training tokens/s as a "
            f"multiple of nn.LSTM's (above 1 is faster); the runs recorded, oldest first: "
            f"{run_text} (the notes' \"The demo\", then `bench/results/demo-*.txt`)."),
        (1, "PackedSequence input runs on its packed rows directly. Against the padded batch of "
            f"the same data ({ph}; `bench/packed_vs_padded.py`, `bench/results/{PACKED_TXT}`):"),
        (2, "the module call on the PackedSequence takes "
            f"{c.range('cpu.packed.inf', fast_inf, 'packed_padded')} of the padded call's time "
            "in inference (packed beforehand, not timed) and "
            f"{c.range('cpu.packed.tr', fast_tr, 'packed_padded')} in training "
            "(pack_padded_sequence timed, as autograd must reach x);"),
        (2, "with pack_padded_sequence before and pad_packed_sequence after, both timed: "
            f"{c.range('cpu.packed.end.inf', fast_inf, 'end_padded')} in inference, "
            f"{c.range('cpu.packed.end.tr', fast_tr, 'end_padded')} in training;"),
        (2, "against torch's packed path, the module call timed the same way on both sides: "
            f"{c.range('cpu.packed.torch', vs_torch, 'x')} of its time."),
        (1, "Inference against ONNX Runtime and OpenVINO, same grid:"),
        (2, f"faster than ONNX Runtime on every row ({c.range('cpu.ort', inf, 'ort')} of its "
            "time);"),
        (2, f"OpenVINO is faster on {c.count('cpu.ov.n', ov_ahead)} rows, by "
            f"{c.range('cpu.ov.pct', ov_pct, 'p', '{:.0f}')}%, "
            f"{c.count('cpu.ov.lstm.n', ov_ahead_lstm)} of them LSTM rows with "
            f"B = {c.span('cpu.ov.lstm.B', ov_ahead_lstm, 'B')} and "
            f"H = {c.span('cpu.ov.lstm.H', ov_ahead_lstm, 'H')}."),
    ])


BLOCKS = (  # (first-line prefix in README.md, builder)
    ("  - Speed against cuDNN", gpu_block),
    ("- Speed on CPU", cpu_block),
)


def render():
    """([(prefix, lines)], Claims)."""
    c = Claims()
    return [(prefix, build(c)) for prefix, build in BLOCKS], c


def readme_block(readme_lines, prefix):
    """(start, end) of the block of README lines that starts with `prefix`: up to the next line
    at the block's indentation or less that starts a list item or a heading, or a blank line."""
    starts = [i for i, line in enumerate(readme_lines) if line.startswith(prefix)]
    if len(starts) != 1:
        raise ValueError(f"README.md: {len(starts)} lines start with {prefix!r}, expected 1")
    start = starts[0]
    indent = len(prefix) - len(prefix.lstrip())
    end = start + 1
    while end < len(readme_lines):
        line = readme_lines[end]
        stripped = line.lstrip()
        if not stripped or stripped.startswith("#"):
            break
        if stripped.startswith("- ") and len(line) - len(stripped) <= indent:
            break
        end += 1
    return start, end


def diff_readme(readme_text=None):
    """Unified diff of README.md's blocks against the rendered ones ('' if they agree)."""
    if readme_text is None:
        with open(README, encoding="utf-8") as f:
            readme_text = f.read()
    lines = readme_text.splitlines()
    blocks, _ = render()
    out = []
    for prefix, want in blocks:
        s, e = readme_block(lines, prefix)
        out += difflib.unified_diff(lines[s:e], want, "README.md", "bench/readme_numbers.py",
                                    lineterm="")
    return "\n".join(out)


def write_readme():
    with open(README, encoding="utf-8") as f:
        lines = f.read().splitlines()
    blocks, _ = render()
    for prefix, want in blocks:
        s, e = readme_block(lines, prefix)
        lines[s:e] = want
    with open(README, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--markdown", action="store_true", help="print the README blocks")
    g.add_argument("--check", action="store_true", help="exit 1 if README.md differs")
    g.add_argument("--write", action="store_true", help="rewrite the README blocks")
    args = ap.parse_args(argv)
    blocks, claims = render()
    if args.markdown:
        for _, lines in blocks:
            print("\n".join(lines))
        return 0
    if args.check:
        d = diff_readme()
        if d:
            print(d)
            return 1
        print("README.md's speed summary matches bench/results/")
        return 0
    if args.write:
        write_readme()
        return 0
    for name, text, sources in claims.items:
        print(f"{name:24s} {text}")
        for s in sources:
            print(f"{'':26s}{s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
