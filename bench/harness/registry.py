"""bench_cpu.py's implementations, by name: rnnfast, torch and the optional inference peers.

An implementation is a factory (cell, case, mode, reference_module) -> Runner. The reference
module is a torch.nn.{LSTM,GRU,RNN} holding the weights every implementation must use;
factories copy them (load_state_dict, or an ONNX export for the peers). A factory raises
Unsupported for combinations it cannot run; the table then shows "n/a" for that column.

To add a peer: a Runner subclass with `infer` (and `train` if it can), a factory, and
`register("name", factory, available_fn, peer=True, label=..., version=...)`; onnx_peers.py
shows the pattern. Ratios are always reported against BASELINE.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Optional, Tuple

import torch.nn as nn

from .machine import import_rnnfast, rnnfast_error
from .runners import ModuleRunner, Runner, same_module_kwargs

BASELINE = "torch"     # ratios are <impl>_time / BASELINE_time
CANDIDATE = "rnnfast"  # the implementation whose GFLOP/s and %sgemm the table shows


@dataclasses.dataclass
class Impl:
    name: str
    factory: Callable[[str, object, str, nn.Module], Runner]
    available: Callable[[], Tuple[bool, str]] = lambda: (True, "")
    peer: bool = False     # an outside runtime: optional, selected with --peers, and compared
                           # with CANDIDATE in a "<CANDIDATE>/<peer>" ratio column
    label: str = ""        # short name for table headers (default: name)
    version: Optional[Callable[[], Optional[str]]] = None   # for the legend and the JSON

    def __post_init__(self):
        self.label = self.label or self.name


IMPLEMENTATIONS: Dict[str, Impl] = {}


def register(name: str, factory, available=lambda: (True, ""), peer: bool = False,
             label: str = "", version: Optional[Callable[[], Optional[str]]] = None) -> None:
    IMPLEMENTATIONS[name] = Impl(name, factory, available, peer, label, version)


def peer_names() -> List[str]:
    return [n for n, impl in IMPLEMENTATIONS.items() if impl.peer]


def label(name: str) -> str:
    impl = IMPLEMENTATIONS.get(name)
    return impl.label if impl is not None else name


def torch_factory(cell: str, case, mode: str, ref: nn.Module) -> Runner:
    return ModuleRunner(ref)


def rnnfast_available() -> Tuple[bool, str]:
    mod = import_rnnfast()
    return (mod is not None, rnnfast_error() or "")


def rnnfast_factory(cell: str, case, mode: str, ref: nn.Module) -> Runner:
    rf = import_rnnfast()
    cls = getattr(rf, type(ref).__name__)
    m = cls(ref.input_size, ref.hidden_size, **same_module_kwargs(ref))
    m.to(next(ref.parameters()).dtype)   # load_state_dict keeps the parameters' own dtype
    m.load_state_dict(ref.state_dict())
    m.train(ref.training)
    return ModuleRunner(m)


class SimdPathRunner(ModuleRunner):
    """rnnfast on one SIMD path: switches to it (rnnfast._C.set_simd) for each call and back
    after, so that every round of a run times both paths on the same machine state."""

    def __init__(self, module: nn.Module, isa: str):
        super().__init__(module)
        self.isa = isa
        self._c = import_rnnfast()._C

    def _on_path(self, fn, inputs):
        before = self._c.simd()
        self._c.set_simd(self.isa)
        try:
            return fn(inputs)
        finally:
            self._c.set_simd(before)

    def infer(self, inputs):
        return self._on_path(super().infer, inputs)

    def train(self, inputs) -> None:
        self._on_path(super().train, inputs)


def avx2_available() -> Tuple[bool, str]:
    """The AVX2 path as a column of its own: where it is not the path rnnfast already runs."""
    ok, why = rnnfast_available()
    if not ok:
        return ok, why
    c = import_rnnfast()._C
    if not c.cpu_supports("avx2"):
        return False, "the CPU has no AVX2"
    if c.simd() == "avx2":
        return False, "rnnfast's own path is AVX2 here (the rnnfast column)"
    return True, ""


def rnnfast_avx2_factory(cell: str, case, mode: str, ref: nn.Module) -> Runner:
    return SimdPathRunner(rnnfast_factory(cell, case, mode, ref).m, "avx2")


register("rnnfast", rnnfast_factory, rnnfast_available)
register("torch", torch_factory)
# Most users' CPUs have AVX2 and no AVX-512: on an AVX-512 machine every run times the AVX2
# path as well (issue 17), in the same rounds.
register("rnnfast-avx2", rnnfast_avx2_factory, avx2_available, label="avx2")

# Optional inference peers (ONNX Runtime, OpenVINO): onnx_peers.py. Their packages are
# imported only when a peer is used; if they are missing the peer reports itself unavailable.
PEERS_ERR: Optional[str] = None
try:
    from . import onnx_peers as _onnx_peers
    _onnx_peers.register_peers(register)
except Exception as _e:  # noqa: BLE001  (never let a peer break the rnnfast/torch benchmark)
    _onnx_peers = None
    PEERS_ERR = f"{type(_e).__name__}: {_e}"


def package_versions() -> Optional[Dict[str, Optional[str]]]:
    """The peers' packages' versions (None when onnx_peers.py failed to load)."""
    return _onnx_peers.versions() if _onnx_peers is not None else None
