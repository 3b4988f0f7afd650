"""rnnfast.info() and the RNNFAST_SIMD override (each forced SIMD path must give torch's numbers)."""
import json
import os
import subprocess
import sys

import pytest
import torch

import rnnfast

SIMD_NAMES = {"scalar", "avx2", "avx512"}


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _supported(simd):
    flags = _cpu_flags()
    return {"scalar": True, "avx2": {"avx2", "fma"} <= flags,
            "avx512": "avx512f" in flags}[simd]


def test_info_keys_and_types():
    info = rnnfast.info()
    assert isinstance(info, dict)
    for key in ("version", "torch_version", "simd", "cuda"):
        assert key in info, key
    assert isinstance(info["version"], str) and info["version"]
    assert info["torch_version"] == torch.__version__
    assert info["simd"] in SIMD_NAMES
    assert isinstance(info["cuda"], bool)
    if not torch.cuda.is_available():
        assert info["cuda"] is False
    assert _supported(info["simd"]), f"selected {info['simd']} which this CPU lacks"


def test_env_override_is_reported():
    forced = os.environ.get("RNNFAST_SIMD")
    if not forced:
        pytest.skip("RNNFAST_SIMD not set for this run")
    assert rnnfast.info()["simd"] == forced


# Runs in a fresh interpreter (the variable is read at import): reports the selected path and
# the worst error against torch float64 (for float64 runs) / float32 (for float32 runs).
_SCRIPT = r"""
import json, torch, torch.nn as nn, rnnfast
res = {"simd": rnnfast.info()["simd"], "err": {}}
specs = [("LSTM", {}), ("GRU", {}), ("RNN", {"nonlinearity": "tanh"}), ("RNN", {"nonlinearity": "relu"})]
for name, kw in specs:
    for dt in (torch.float32, torch.float64):
        for H in (3, 8, 17, 33):
            torch.manual_seed(H)
            ref = getattr(nn, name)(5, H, bidirectional=True, dtype=dt, **kw)
            new = getattr(rnnfast, name)(5, H, bidirectional=True, dtype=dt, **kw)
            new.load_state_dict(ref.state_dict())
            x = torch.randn(4, 3, 5, dtype=dt)
            outs = []
            for m in (ref, new):
                xx = x.clone().requires_grad_()
                out, hn = m(xx)
                h = hn[0] if isinstance(hn, tuple) else hn
                g = torch.autograd.grad((out * out.detach().sin()).sum() + h.sum(),
                                        [xx] + list(m.parameters()))
                outs.append([out.detach(), h.detach(), *g])
            worst = max(float((a - b).abs().max()) for a, b in zip(*outs))
            res["err"][f"{name}{kw.get('nonlinearity', '')}-{dt}-H{H}"] = worst
print("RESULT" + json.dumps(res))
"""


@pytest.mark.parametrize("simd", ["scalar", "avx2", "avx512"])
def test_forced_simd_path_parity(simd):
    if not _supported(simd):
        pytest.skip(f"CPU lacks {simd}")
    env = dict(os.environ, RNNFAST_SIMD=simd)
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1]
    res = json.loads(line[len("RESULT"):])
    assert res["simd"] == simd, f"RNNFAST_SIMD={simd} but info() says {res['simd']}"
    bad = {k: v for k, v in res["err"].items()
           if v > (1e-9 if "float64" in k else 3e-5)}
    assert not bad, f"{simd}: errors vs torch above tolerance: {bad}"


def test_bogus_simd_value_does_not_crash():
    env = dict(os.environ, RNNFAST_SIMD="no-such-isa")
    proc = subprocess.run(
        [sys.executable, "-c",
         "import torch, rnnfast; m = rnnfast.LSTM(3, 4); m(torch.randn(2, 1, 3)); "
         "print(rnnfast.info()['simd'])"],
        env=env, capture_output=True, text=True, timeout=240)
    # either a clean Python error at import or a fallback path; never a signal
    assert proc.returncode >= 0, proc.stderr[-2000:]
    if proc.returncode == 0:
        assert proc.stdout.strip().splitlines()[-1] in SIMD_NAMES
