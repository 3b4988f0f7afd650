"""sha256 of the sources rnnfast's CUDA path is compiled from.

The set: every file under csrc/core/cuda and csrc/torch/cuda (the CUDA kernels and their
torch glue), and every file of the repository that those include with #include "...",
followed transitively (today csrc/core/rnn.h, cells.h and cell_math.h, and the argument
checks of csrc/torch/common.h). A quoted include is looked up beside the including file,
then under csrc/ (the include folder of the CMake build); one found in neither is an error.
Not in the set: what runs the same on every device and the CPU test suite covers (the ops'
registration and C++ autograd in csrc/torch/ops.cpp and autograd.cpp, the Python package).

The hash runs over the files in path order, each as its path, a NUL, its size in bytes, a
NUL and its bytes: renaming, moving or editing any file of the set changes it.

setup.py builds it into the extension (rnnfast._C.cuda_sources_sha); rnnfast says the CUDA
kernels are verified when that hash is in the manifest of GPU-verified hashes
(python/rnnfast/cuda_verified.json), whose entries bench/gpu_check.sh writes on a passing
GPU run.

    python scripts/cuda_sources_hash.py                   the hash of the working tree
    python scripts/cuda_sources_hash.py --commit 350bc40  the hash of a commit (git show)
    python scripts/cuda_sources_hash.py --list            the files of the set
    python scripts/cuda_sources_hash.py --entry --card "NVIDIA H200" \\
        --results bench/results/gpu-2026-11-27.md          a manifest entry (JSON)
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import posixpath
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Folders whose every file is in the set.
ROOT_FOLDERS = ("csrc/core/cuda", "csrc/torch/cuda")
# Where a quoted include is looked up after the including file's folder.
INCLUDE_FOLDER = "csrc"
_INCLUDE = re.compile(rb'^\s*#\s*include\s*"([^"]+)"', re.MULTILINE)


class WorkingTree:
    """The files of a checkout on disk (paths relative to `root`, with '/')."""

    def __init__(self, root: str = ROOT):
        self.root = root

    def files_under(self, folder: str) -> list[str]:
        found = []
        for base, _, names in os.walk(os.path.join(self.root, folder)):
            for name in names:
                found.append(os.path.relpath(os.path.join(base, name), self.root)
                             .replace(os.sep, "/"))
        return found

    def read(self, path: str) -> bytes | None:
        try:
            with open(os.path.join(self.root, path), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None


class Commit:
    """The files of one git commit of the repository at `root`."""

    def __init__(self, commit: str, root: str = ROOT):
        self.commit, self.root = commit, root

    def _git(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", self.root, *args], capture_output=True)

    def files_under(self, folder: str) -> list[str]:
        out = self._git("ls-tree", "-r", "--name-only", self.commit, "--", folder + "/")
        if out.returncode != 0:
            raise ValueError(f"git ls-tree failed for commit {self.commit!r}: "
                             f"{out.stderr.decode(errors='replace').strip()}")
        return out.stdout.decode().split()

    def read(self, path: str) -> bytes | None:
        out = self._git("show", f"{self.commit}:{path}")
        return out.stdout if out.returncode == 0 else None


def source_files(tree) -> dict[str, bytes]:
    """The set (see the module's docstring): path -> contents."""
    pending = sorted(p for folder in ROOT_FOLDERS for p in tree.files_under(folder))
    if not pending:
        raise ValueError(f"no CUDA sources found under {', '.join(ROOT_FOLDERS)}")
    files: dict[str, bytes] = {}
    while pending:
        path = pending.pop()
        if path in files:
            continue
        data = tree.read(path)
        if data is None:
            raise ValueError(f"{path}: listed but not readable")
        files[path] = data
        for name in _INCLUDE.findall(data):
            name = name.decode()
            for candidate in (posixpath.join(posixpath.dirname(path), name),
                              posixpath.join(INCLUDE_FOLDER, name)):
                candidate = posixpath.normpath(candidate)
                if candidate in files or tree.read(candidate) is not None:
                    pending.append(candidate)
                    break
            else:
                raise ValueError(f'{path}: #include "{name}" is not a file of the repository '
                                 f"(looked beside it and under {INCLUDE_FOLDER}/)")
    return files


def sources_sha(tree) -> str:
    """sha256 (hex) of the set of `tree` (a WorkingTree or a Commit)."""
    h = hashlib.sha256()
    for path, data in sorted(source_files(tree).items()):
        h.update(path.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)
    return h.hexdigest()


def manifest_entry(tree, card: str, results: str) -> dict:
    """The manifest entry for a GPU run of `tree` on `card`, recorded in `results`."""
    git = ["git", "-C", ROOT]
    commit = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    if subprocess.run(git + ["diff", "--quiet", "HEAD"], capture_output=True).returncode != 0:
        commit += " with uncommitted changes"
    date = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    return {"sha": sources_sha(tree), "date": date, "card": card, "commit": commit,
            "results": results}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--commit", help="hash the sources of this git commit")
    ap.add_argument("--list", action="store_true", help="print the files of the set")
    ap.add_argument("--entry", action="store_true",
                    help="print the manifest entry for a GPU run of the working tree")
    ap.add_argument("--card", default="", help="with --entry: the GPU the run used")
    ap.add_argument("--results", default="", help="with --entry: the file recording the run")
    args = ap.parse_args(argv)
    tree = Commit(args.commit) if args.commit else WorkingTree()
    if args.list:
        print("\n".join(sorted(source_files(tree))))
    elif args.entry:
        if args.commit:
            ap.error("--entry describes a run of the working tree; it takes no --commit")
        print(json.dumps(manifest_entry(tree, args.card, args.results), indent=1))
    else:
        print(sources_sha(tree))
    return 0


if __name__ == "__main__":
    sys.exit(main())
