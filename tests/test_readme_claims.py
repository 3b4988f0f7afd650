"""README.md's claims against the data and scripts they describe (no benchmark runs; seconds).

- The speed summary in README.md's Status section is what bench/readme_numbers.py derives
  from the results files in bench/results/, number for number.
- The results files the summary reads agree with their raw counterparts (the GPU table with
  its JSON, the CPU grid's text table with its JSON, the packed ratios with their times).
- scripts/setup.sh installs what README says, choosing torch's build as README says.
"""
import importlib.util
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETUP_SH = os.path.join(ROOT, "scripts", "setup.sh")


def _load_readme_numbers():
    path = os.path.join(ROOT, "bench", "readme_numbers.py")
    spec = importlib.util.spec_from_file_location("readme_numbers", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod      # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


rn = _load_readme_numbers()


def _readme():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        return f.read()


def test_readme_speed_summary_is_derived_from_the_results():
    diff = rn.diff_readme()
    assert diff == "", ("README.md's speed summary differs from what bench/readme_numbers.py "
                        "derives from bench/results/ (run it with --write if the results "
                        "changed, or fix the README):\n" + diff)


def test_every_number_of_the_summary_is_a_derived_claim():
    # The blocks compared above are generated text; make sure each number in them comes from a
    # claim with a source (not from a constant typed into the template), apart from the
    # selection bounds the wording names (B <= 8, B >= 32, B >= 64), the ratio convention
    # ("below 1 is faster"), file names and commit hashes.
    blocks, claims = rn.render()
    number = r"\d+(?:\.\d+)?"
    derived = set()
    for _, text, sources in claims.items:
        assert sources, text
        derived.update(re.findall(number, text))
    selectors = {"8", "32", "64", "1"}     # B bounds; "below 1 is faster"
    for _, lines in blocks:
        text = " ".join(lines)
        text = re.sub(r"`[^`]*`", " ", text)              # file names and commands
        text = re.sub(r"\b[0-9a-f]{7}\b", " ", text)       # commit hashes (from the notes)
        for num in re.findall(number, text):
            assert num in derived or num in selectors, (
                f"{num!r} in the generated README text comes from no claim: {text}")


def test_readme_cuda_test_count_matches_the_gpu_results():
    m = re.search(r"the (\d+) CUDA tests passed", _readme())
    assert m, "README.md: no 'the N CUDA tests passed' line"
    assert int(m.group(1)) == rn.gpu_tests_passed()


def test_gpu_results_table_matches_its_json():
    table = {(r.fields["cell"], r.fields["dtype"], r.fields["mode"], r.fields["B"],
              r.fields["H"]): r.fields for r in rn.gpu_rows()}
    raw = rn.gpu_json_rows()
    assert len(table) == len(raw)
    for r in raw:
        row = table[r["cell"], r["dtype"], r["mode"], r["B"], r["H"]]
        assert f"{row['ratio']:.2f}" == f"{r['ratio']:.2f}", r
        assert f"{row['cudnn_ms']:.3f}" == f"{r['cudnn_ms']:.3f}", r
        assert f"{row['rnnfast_ms']:.3f}" == f"{r['rnnfast_ms']:.3f}", r


def test_cpu_grid_text_matches_its_json():
    _, rows = rn.cpu_grid()
    txt = rn.cpu_grid_txt_ratios()
    assert len(txt) == len(rows)
    for r in rows:
        f = r.fields
        key = (f["cell"], f["mode"], f["T"], f["B"], f["I"], f["H"], f["tag"])
        assert f"{txt[key]:.3f}" == f"{f['torch']:.3f}", r.label


def test_packed_ratio_columns_match_their_times():
    _, rows = rn.packed()
    assert len(rows) == 12
    for r in rows:
        f = r.fields
        assert abs(f["packed_padded"] - f["packed_ms"] / f["padded_ms"]) <= 0.005 + 1e-9, r.label
        assert abs(f["end_padded"] - f["end_ms"] / f["padded_ms"]) <= 0.005 + 1e-9, r.label


def test_demo_runs_are_read_with_their_tokens_per_second():
    runs = rn.demo_runs()
    assert len(runs) >= 2
    for commit, fast, ref, written in runs:
        assert re.fullmatch(r"[0-9a-f]{7}", commit)
        assert round(fast / ref, 2) == written


def test_demo_runs_name_the_simd_path_of_their_files():
    # every demo-*.txt run says which path it ran; runs kept only in the notes say none
    runs = rn.demo_runs()
    file_runs = [k for k, *_ in runs if rn.demo_run_simd(k) is not None]
    assert file_runs, "no demo-*.txt run found"
    for commit in file_runs:
        assert rn.demo_run_simd(commit) in ("scalar", "avx2", "avx512"), commit
    assert rn.demo_run_simd("0000000") is None


def test_demo_runs_of_one_day_keep_their_order_and_name_a_forced_path(monkeypatch):
    names = ["demo-20261202-zen5avx2.txt", "demo-20261201.txt", "demo-20261202.txt",
             "demo-20261202-zen5.txt", "demo-notes.txt", "other-20261202.txt"]
    monkeypatch.setattr(rn.os, "listdir", lambda _: names)
    assert rn._demo_files() == ["demo-20261201.txt", "demo-20261202.txt",
                                "demo-20261202-zen5.txt", "demo-20261202-zen5avx2.txt"]
    monkeypatch.undo()
    assert len(rn.demo_run_paths()) == len(rn.demo_runs())
    assert rn._path_label(None) == ""
    assert rn._path_label(("avx512", None)) == ""
    assert rn._path_label(("avx2", None)) == " (an AVX2-only CPU)"
    assert rn._path_label(("avx2", "avx2")) == " (RNNFAST_SIMD=avx2)"


# ----------------------------------------------------------------------------- setup.sh

def test_setup_sh_installs_the_versions_readme_names():
    with open(SETUP_SH, encoding="utf-8") as f:
        sh = f.read()
    readme = _readme()
    torch_v = re.search(r"^TORCH_SPEC=torch==([\d.]+)$", sh, re.M).group(1)
    tf_v = re.search(r"\btransformers==([\d.]+)", sh).group(1)
    assert f"torch {torch_v}" in readme
    assert f"transformers {tf_v}" in readme
    assert "https://download.pytorch.org/whl/cpu" in sh and \
        "https://download.pytorch.org/whl/cpu" in readme


FAKE_PYTHON = r"""#!/usr/bin/env bash
# Stands in for python in scripts/setup.sh: logs every call, imports torch only if told to,
# answers the index probe and pip as told, installs nothing.
echo "$*" >> "$FAKE_LOG"
case "$1" in
  -c) if [[ "$2" == *"import torch"* ]]; then exit "${FAKE_TORCH_RC:-1}"; fi; exit 0 ;;
  -) cat > /dev/null; echo "probe $2" >> "$FAKE_LOG"; exit "${FAKE_PROBE_RC:-1}" ;;
  -m) if [ -n "${FAKE_PIP_FAIL_ON:-}" ] && [[ "$*" == *"$FAKE_PIP_FAIL_ON"* ]]; then exit 1; fi
      exit 0 ;;
esac
exit 0
"""


def _run_setup(tmp_path, gpu, **env):
    """Runs scripts/setup.sh (dry run) with a fake python and a fake nvidia-smi; returns the
    pip install command lines it ran."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    py = bindir / "fakepython"
    py.write_text(FAKE_PYTHON)
    smi = bindir / "nvidia-smi"
    smi.write_text("#!/bin/sh\n" + ('echo "GPU 0: fake"\nexit 0\n' if gpu
                                     else 'echo "No devices were found"\nexit 6\n'))
    for p in (py, smi):
        p.chmod(0o755)
    log = tmp_path / "log"
    log.write_text("")
    e = {k: v for k, v in os.environ.items() if not k.startswith("RNNFAST_")}
    e.update(PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}", PYTHON=str(py),
             FAKE_LOG=str(log), RNNFAST_SETUP_DRY_RUN="1", **env)
    proc = subprocess.run(["bash", SETUP_SH], env=e, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = log.read_text().splitlines()
    return [c for c in calls if c.startswith("-m pip install")], calls


def _torch_installs(pips):
    return [c for c in pips if re.search(r"\btorch==", c)]


@pytest.mark.skipif(sys.platform == "win32", reason="setup.sh is a bash script")
class TestSetupTorchChoice:
    CPU_INDEX = "--index-url https://download.pytorch.org/whl/cpu"

    def test_no_gpu_takes_the_cpu_index_when_it_answers(self, tmp_path):
        pips, calls = _run_setup(tmp_path, gpu=False, FAKE_PROBE_RC="0")
        assert "probe https://download.pytorch.org/whl/cpu" in calls
        assert len(_torch_installs(pips)) == 1
        assert self.CPU_INDEX in _torch_installs(pips)[0]

    def test_no_gpu_falls_back_when_the_cpu_index_does_not_answer(self, tmp_path):
        pips, _ = _run_setup(tmp_path, gpu=False, FAKE_PROBE_RC="1")
        torch_pips = _torch_installs(pips)
        assert len(torch_pips) == 1 and "--index-url" not in torch_pips[0]

    def test_no_gpu_falls_back_when_pip_fails_on_the_cpu_index(self, tmp_path):
        pips, _ = _run_setup(tmp_path, gpu=False, FAKE_PROBE_RC="0",
                             FAKE_PIP_FAIL_ON="download.pytorch.org")
        torch_pips = _torch_installs(pips)
        assert len(torch_pips) == 2
        assert self.CPU_INDEX in torch_pips[0] and "--index-url" not in torch_pips[1]

    def test_gpu_takes_the_default_index(self, tmp_path):
        pips, calls = _run_setup(tmp_path, gpu=True, FAKE_PROBE_RC="0")
        torch_pips = _torch_installs(pips)
        assert len(torch_pips) == 1 and "--index-url" not in torch_pips[0]
        assert not any(c.startswith("probe") for c in calls)

    def test_the_index_from_the_environment_wins(self, tmp_path):
        pips, _ = _run_setup(tmp_path, gpu=False, FAKE_PROBE_RC="0",
                             RNNFAST_TORCH_INDEX_URL="https://example.invalid/simple")
        torch_pips = _torch_installs(pips)
        assert len(torch_pips) == 1
        assert "--index-url https://example.invalid/simple" in torch_pips[0]

    def test_an_installed_torch_is_kept(self, tmp_path):
        pips, _ = _run_setup(tmp_path, gpu=False, FAKE_TORCH_RC="0")
        assert _torch_installs(pips) == []
        assert any("transformers==" in c for c in pips)

    def test_dry_run_passes_dry_run_to_pip_and_builds_nothing(self, tmp_path):
        pips, calls = _run_setup(tmp_path, gpu=False)
        assert pips and all("--dry-run" in c for c in pips)
        assert not any("--no-build-isolation" in c for c in calls)


def test_readme_variant_costs_are_the_results_files():
    """README's paragraph on the variants' cost quotes min-max ranges over the rows of the two
    bench_variants.py runs that bench/results/variants-2026-11-30.md describes."""
    import json

    rows = []
    for name in ("variants-20261130-095338.json", "variants-20261130-095819.json"):
        with open(os.path.join(ROOT, "bench", "results", name)) as f:
            rows += json.load(f)["results"]

    def span(values):
        return f"{min(values):.3f}-{max(values):.3f}"

    def ratios(pick):
        return span([r["ratio_vs_plain"] for r in rows if pick(r)])

    def speedups(pick):
        v = [r["speedup"] for r in rows if pick(r) and r["speedup"]]
        return f"{min(v):.1f}-{max(v):.1f}x"

    def variant(r, *opts):
        return set(k for k, v in r["kwargs"].items() if v) == set(opts)

    looped = ("coupled_gates", "peephole", "zoneout")
    on = lambda r: any(r["kwargs"].get(o) for o in looped) and not r["kwargs"].get("weight_drop")  # noqa: E731
    cfg = lambda r: (r["config"]["T"], r["config"]["B"], r["config"]["I"], r["config"]["H"])  # noqa: E731
    text = " ".join(_readme().split())
    claims = {
        "peephole": ratios(lambda r: variant(r, "peephole")),
        "coupled gates": ratios(lambda r: variant(r, "coupled_gates")),
        "zoneout eval": ratios(lambda r: variant(r, "zoneout") and r["mode"] == "inference"),
        "zoneout training before the own generator":
            ratios(lambda r: variant(r, "zoneout") and r["mode"] == "training"),
        "200,4": speedups(lambda r: on(r) and cfg(r) == (200, 4, 128, 128)
                          and r["mode"] == "training"),
        "50,16": speedups(lambda r: on(r) and cfg(r) == (50, 16, 64, 64)
                          and r["mode"] == "training"),
        "batch 32-64": speedups(lambda r: on(r) and cfg(r)[1] in (32, 64)),
    }
    zoneout_rows = []  # the runs with the masks from rnnfast.ops.keep_mask
    for name in ("variants-20261130-200232.json", "variants-20261130-200414.json"):
        with open(os.path.join(ROOT, "bench", "results", name)) as f:
            zoneout_rows += json.load(f)["results"]
    claims["zoneout training"] = span(
        [r["ratio_vs_plain"] for r in zoneout_rows
         if variant(r, "zoneout") and r["mode"] == "training"])
    for module, ratios_ in _variant_ab_ratios("variant-ab-20261201.txt").items():
        claims[f"layer norm {module}"] = f"{module} " + span(ratios_)
    for what, value in claims.items():
        assert value in text, (what, value)


def _variant_ab_ratios(name):
    """The layer-norm / plain ratios of a bench/variant_ab.py log in bench/results, per module
    (GRU, LSTM): each run is a "$ ... --variant <v> ..." line, then its "ratio <r>" line."""
    ratios, variant = {"GRU": [], "LSTM": []}, None
    with open(os.path.join(ROOT, "bench", "results", name)) as f:
        for line in f:
            m = re.search(r"--variant (\w+)", line)
            if line.startswith("$") and m:
                variant = m.group(1)
            m = re.search(r"ratio ([0-9.]+)$", line.strip())
            if m and variant:
                ratios[variant.split("_")[0].upper()].append(float(m.group(1)))
                variant = None
    assert all(ratios.values()), (name, ratios)
    return ratios


def test_readme_onnx_costs_are_the_results_file():
    """README's Deploy section quotes bench/onnx_cost.py's run: the LSTM node's time and each
    unrolled graph's ratio to it."""
    import json

    with open(os.path.join(ROOT, "bench", "results", "onnx-20261130-135506.json")) as f:
        rows = json.load(f)["rows"]
    text = " ".join(_readme().split())
    ratio = {n: f"{r['ratio_vs_lstm_node']:.2f}x" for n, r in rows.items()}
    claims = [f"({rows['lstm (ONNX LSTM node)']['median_ms']:.2f} ms)",
              f"proj_size=64 {ratio['lstm proj_size=H/2 (unrolled)']}",
              f"layer_norm {ratio['lstm layer_norm (unrolled)']}",
              f"(GRU layer_norm {ratio['gru layer_norm (unrolled)']})",
              f"zoneout {ratio['lstm zoneout=0.1 eval (unrolled)']}"]
    for claim in claims:
        assert claim in text, claim
