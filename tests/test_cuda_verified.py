"""ops.CUDA_KERNELS_VERIFIED is derived from the sources, never set by hand: the hash of the
CUDA sources (scripts/cuda_sources_hash.py), built into the extension, against the manifest
of GPU-verified hashes (python/rnnfast/cuda_verified.json), in rnnfast/_cuda_verified.py."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

import rnnfast
from rnnfast import _C, _cuda_verified

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "cuda_sources_hash.py")
RESULTS = os.path.join(ROOT, "bench", "results")

if not os.path.isfile(SCRIPT):
    pytest.skip("no scripts/ next to the tests (not a source checkout)", allow_module_level=True)

_spec = importlib.util.spec_from_file_location("cuda_sources_hash", SCRIPT)
hashing = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hashing)


@pytest.fixture
def tree_copy(tmp_path):
    """A copy of the repository's csrc/ under tmp_path, as a WorkingTree."""
    shutil.copytree(os.path.join(ROOT, "csrc"), tmp_path / "csrc")
    return hashing.WorkingTree(str(tmp_path))


def test_hash_is_deterministic_and_the_cli_prints_it():
    sha = hashing.sources_sha(hashing.WorkingTree(ROOT))
    assert sha == hashing.sources_sha(hashing.WorkingTree(ROOT))
    assert len(sha) == 64 and int(sha, 16) >= 0
    out = subprocess.run([sys.executable, SCRIPT], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == sha


def test_the_set_is_the_cuda_folders_and_their_includes():
    files = set(hashing.source_files(hashing.WorkingTree(ROOT)))
    assert {"csrc/core/cuda/rnn_cuda.cu", "csrc/core/cuda/rnn_cuda.h",
            "csrc/torch/cuda/ops_cuda.cpp", "csrc/core/cell_math.h", "csrc/core/cells.h",
            "csrc/core/rnn.h", "csrc/torch/common.h"} <= files
    assert not any(p.startswith("csrc/core/cpu/") for p in files)
    assert "csrc/torch/ops.cpp" not in files and "csrc/torch/autograd.cpp" not in files


def test_hash_depends_on_contents_and_paths_only(tree_copy):
    assert hashing.sources_sha(tree_copy) == hashing.sources_sha(hashing.WorkingTree(ROOT))


def test_hash_changes_when_any_listed_source_changes(tree_copy):
    before = hashing.sources_sha(tree_copy)
    listed = sorted(hashing.source_files(tree_copy))
    for path in listed:
        full = os.path.join(tree_copy.root, path)
        with open(full, "rb") as f:
            original = f.read()
        with open(full, "ab") as f:
            f.write(b" ")
        assert hashing.sources_sha(tree_copy) != before, f"editing {path} left the hash alone"
        with open(full, "wb") as f:
            f.write(original)
    assert hashing.sources_sha(tree_copy) == before


def test_hash_ignores_unlisted_files_and_follows_new_includes(tree_copy):
    before = hashing.sources_sha(tree_copy)
    with open(os.path.join(tree_copy.root, "csrc/core/cpu/dispatch.cpp"), "ab") as f:
        f.write(b"// unlisted\n")
    assert hashing.sources_sha(tree_copy) == before
    # a new header included from a CUDA source joins the set, and so do its edits
    header = os.path.join(tree_copy.root, "csrc/core/extra.h")
    with open(header, "w") as f:
        f.write("#pragma once\n")
    with open(os.path.join(tree_copy.root, "csrc/core/cuda/rnn_cuda.h"), "a") as f:
        f.write('#include "../extra.h"\n')
    assert "csrc/core/extra.h" in hashing.source_files(tree_copy)
    with_header = hashing.sources_sha(tree_copy)
    with open(header, "a") as f:
        f.write("// edited\n")
    assert hashing.sources_sha(tree_copy) != with_header


def test_an_include_outside_the_repository_is_an_error(tree_copy):
    with open(os.path.join(tree_copy.root, "csrc/core/cuda/rnn_cuda.h"), "a") as f:
        f.write('#include "missing_header.h"\n')
    with pytest.raises(ValueError, match="missing_header.h"):
        hashing.sources_sha(tree_copy)


def test_manifest_parses_and_cites_recorded_runs():
    entries = _cuda_verified.load_manifest()
    assert entries, "the manifest lists no verified source set"
    for entry in entries:
        assert set(entry) == set(_cuda_verified.ENTRY_KEYS)
        if os.path.isdir(RESULTS):
            assert os.path.isfile(os.path.join(ROOT, entry["results"])), entry


def _git_has(commit):
    return subprocess.run(["git", "-C", ROOT, "cat-file", "-e", commit + "^{commit}"],
                          capture_output=True).returncode == 0


def test_manifest_hashes_are_those_of_their_commits():
    """Each entry's sha is what the script computes for the sources at its commit."""
    checked = 0
    for entry in _cuda_verified.load_manifest():
        commit = entry["commit"].split()[0]
        if not _git_has(commit):
            continue
        assert hashing.sources_sha(hashing.Commit(commit)) == entry["sha"], entry
        checked += 1
    if not checked:
        pytest.skip("no manifest commit in this checkout's git history")


@pytest.mark.parametrize("content, match", [
    ("not json", "cannot read"),
    ('{"verified": {}}', "list 'verified'"),
    ('{"verified": [{"sha": "ab"}]}', "exactly the keys"),
    ('{"verified": [{"sha": "AB", "date": "", "card": "", "commit": "", "results": ""}]}',
     "64 lowercase hex"),
])
def test_a_malformed_manifest_is_a_clear_error(tmp_path, content, match):
    path = tmp_path / "manifest.json"
    path.write_text(content)
    with pytest.raises(RuntimeError, match=match):
        _cuda_verified.load_manifest(str(path))


def test_a_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="cannot read"):
        _cuda_verified.load_manifest(str(tmp_path / "absent.json"))


def test_the_entry_gpu_check_writes_extends_the_manifest(tmp_path):
    out = subprocess.run([sys.executable, SCRIPT, "--entry", "--card", "Some GPU",
                          "--results", "bench/results/gpu-x.md"],
                         capture_output=True, text=True, check=True)
    entry = json.loads(out.stdout)
    assert entry["sha"] == hashing.sources_sha(hashing.WorkingTree(ROOT))
    assert entry["card"] == "Some GPU" and entry["results"] == "bench/results/gpu-x.md"
    with open(_cuda_verified.MANIFEST) as f:
        manifest = json.load(f)
    manifest["verified"].append(entry)
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    entries = _cuda_verified.load_manifest(str(path))
    assert _cuda_verified.is_verified(entry["sha"], entries)


@pytest.mark.parametrize("built, listed, want", [
    (True, True, True), (True, False, False), (False, True, False)])
def test_verified_exactly_when_the_built_hash_is_listed(monkeypatch, built, listed, want):
    listed_sha = _cuda_verified.load_manifest()[0]["sha"]
    unlisted_sha = "0" * 64
    assert not _cuda_verified.is_verified(unlisted_sha, _cuda_verified.load_manifest())
    monkeypatch.setattr(_C, "cuda_built", built)
    monkeypatch.setattr(_C, "cuda_sources_sha", listed_sha if listed else unlisted_sha,
                        raising=False)
    assert _cuda_verified.cuda_kernels_verified() is want


def test_this_build_derives_the_flag():
    """ops.CUDA_KERNELS_VERIFIED is the derivation for this build; a CUDA build carries the
    hash of the sources it was compiled from."""
    assert rnnfast.ops.CUDA_KERNELS_VERIFIED is _cuda_verified.cuda_kernels_verified()
    if not _C.cuda_built:
        assert rnnfast.ops.CUDA_KERNELS_VERIFIED is False
        return
    assert len(_C.cuda_sources_sha) == 64
    assert rnnfast.ops.CUDA_KERNELS_VERIFIED is _cuda_verified.is_verified(
        _C.cuda_sources_sha, _cuda_verified.load_manifest())


def test_the_package_ships_the_manifest(tmp_path):
    """setup.py puts the manifest into the built package (pip install reads it from there)."""
    subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path)],
                   cwd=ROOT, capture_output=True, check=True,
                   env={**os.environ, "RNNFAST_NO_CUDA": "1"})
    shipped = tmp_path / "rnnfast" / "cuda_verified.json"
    assert shipped.is_file()
    with open(_cuda_verified.MANIFEST, "rb") as f:
        assert shipped.read_bytes() == f.read()
