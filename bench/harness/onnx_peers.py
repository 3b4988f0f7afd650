"""ONNX Runtime and OpenVINO as inference peers for bench_cpu.py (registry.py registers them).

Both runtimes are optional. Each benchmark model (the torch nn.LSTM/GRU/RNN that holds the row's
weights) is exported to ONNX once per row and shared by both peers:

* exporter: the TorchScript-based `torch.onnx.export(..., dynamo=False)`, which turns nn.LSTM /
  nn.GRU / nn.RNN into the ONNX LSTM / GRU / RNN operators (one node per layer, both directions
  in one node). Those are what ONNX Runtime's fused CPU RNN kernels and OpenVINO's
  LSTMSequence / GRUSequence / RNNSequence (oneDNN RNN primitives) run. If that exporter is gone
  (a future torch), the dynamo exporter is used instead; it still emits LSTM/GRU nodes in
  torch 2.13 but unrolls nn.RNN into per-step MatMul/Tanh, which is correct but not what a user
  would deploy, so the JSON records the exporter and the ONNX op counts per row.
* packed rows: the padded model is exported and every RNN node's optional `sequence_lens` input
  is wired to a new int32 graph input `seq_lens`; per the ONNX spec (and both runtimes) steps
  past a sequence's length are not computed, the reverse direction starts at each sequence's own
  last step, Y is zero there and Y_h holds each sequence's last valid state, i.e. exactly what
  pack_padded_sequence + nn.LSTM + pad_packed_sequence give. The check against torch verifies it.
* float32, inference only (training raises Unsupported), static shapes (the row's T and B).
* threads: torch.get_num_threads() at build time (2 on the project machine; --threads changes
  it). ONNX Runtime: intra_op_num_threads=N, inter_op_num_threads=1, sequential execution, and
  intra-op spinning off (see ORT_SPIN). OpenVINO CPU: INFERENCE_NUM_THREADS=N, NUM_STREAMS=1,
  PERFORMANCE_HINT=LATENCY, INFERENCE_PRECISION_HINT=f32 (this AVX512-BF16 host would
  otherwise default to bf16) and ENABLE_CPU_PINNING=NO, so its threads float like torch's and
  rnnfast's.
"""

from __future__ import annotations

import importlib
import io
import os
import warnings
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn

from .runners import Runner, Unsupported

# ONNX Runtime's intra-op pool spins after a parallel section before it sleeps (measured: about
# half a core busy for the 10 ms after a call). In interleaved rounds that spinning thread would
# compete with the next implementation's threads on a 2-core machine, so it is off by default
# (RNNFAST_BENCH_ORT_SPIN=1 turns it back on).
ORT_SPIN = os.environ.get("RNNFAST_BENCH_ORT_SPIN", "0") == "1"

RNN_OPS = ("LSTM", "GRU", "RNN")


def _version(mod_name: str) -> Optional[str]:
    try:
        mod = importlib.import_module(mod_name)
    except Exception:  # noqa: BLE001
        return None
    return getattr(mod, "__version__", "?")


def _need(*mods: str) -> Tuple[bool, str]:
    missing = []
    for m in mods:
        try:
            importlib.import_module(m)
        except Exception as e:  # noqa: BLE001  (ImportError, or a broken install raising anything)
            missing.append(f"{m} ({type(e).__name__}: {e})")
    if missing:
        return False, ("cannot import " + ", ".join(missing)
                       + f"; pip install {' '.join(mods)}")
    return True, ""


def ort_available() -> Tuple[bool, str]:
    return _need("onnxruntime", "onnx")


def openvino_available() -> Tuple[bool, str]:
    return _need("openvino", "onnx")


def versions() -> Dict[str, Optional[str]]:
    return {m: _version(m) for m in ("onnxruntime", "openvino", "onnx", "onnxscript")}


# --------------------------------------------------------------------------------------------
# Export (shared by the peers of one row)
# --------------------------------------------------------------------------------------------

class Exported:
    """One row's model as ONNX bytes, plus what the runners need to feed and read it."""

    def __init__(self, data: bytes, exporter: str, ops: Dict[str, int], outputs: Tuple[str, ...],
                 packed: bool):
        self.data = data
        self.exporter = exporter
        self.ops = ops
        self.outputs = outputs            # ("y", "h_n"[, "c_n"])
        self.packed = packed              # has the int32 [B] input "seq_lens"

    def info(self) -> dict:
        rnn = {k: v for k, v in self.ops.items() if k in RNN_OPS}
        return {"exporter": self.exporter, "onnx_rnn_ops": rnn, "onnx_nodes": sum(self.ops.values()),
                "onnx_bytes": len(self.data), "sequence_lens": self.packed}


# Single-entry cache: both peers of a row get the same export. Keyed by the reference module
# object and the variant; the module is held so its id cannot be reused while cached.
_cache: Dict[str, object] = {}


def _export_torchscript(ref: nn.Module, x: torch.Tensor, names_out) -> bytes:
    f = io.BytesIO()
    torch.onnx.export(ref, (x,), f, dynamo=False, input_names=["x"], output_names=list(names_out),
                      opset_version=17, do_constant_folding=True,
                      training=torch.onnx.TrainingMode.EVAL)
    return f.getvalue()


def _export_dynamo(ref: nn.Module, x: torch.Tensor, names_out) -> bytes:
    was = ref.training
    ref.eval()
    try:
        prog = torch.onnx.export(ref, (x,), dynamo=True, input_names=["x"],
                                 output_names=list(names_out), verbose=False)
    finally:
        ref.train(was)
    f = io.BytesIO()
    prog.save(f) if hasattr(prog, "save") else f.write(prog.model_proto.SerializeToString())
    return f.getvalue()


def export(cell: str, case, ref: nn.Module) -> Exported:
    key = (id(ref), case.variant, case.lengths)
    hit = _cache.get("key")
    if hit == key and _cache.get("ref") is ref:
        return _cache["value"]  # type: ignore[return-value]
    if getattr(ref, "proj_size", 0):
        raise ValueError("proj_size: the ONNX LSTM op has no projection")
    if ref.batch_first:
        raise ValueError("batch_first modules are not exported (the grid is time-major)")
    import onnx

    names_out = ("y", "h_n", "c_n") if isinstance(ref, nn.LSTM) else ("y", "h_n")
    x = torch.zeros(case.T, case.B, case.I)
    errors = []
    data, exporter = None, None
    for name, fn in (("torchscript", _export_torchscript), ("dynamo", _export_dynamo)):
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                data = fn(ref, x, names_out)
            exporter = name
            break
        except Exception as e:  # noqa: BLE001
            errors.append(f"{name}: {type(e).__name__}: {e}")
    if data is None:
        raise RuntimeError("ONNX export failed: " + " | ".join(errors))

    proto = onnx.load_from_string(data)
    packed = case.variant == "packed"
    if packed:
        rnn_nodes = [n for n in proto.graph.node if n.op_type in RNN_OPS]
        if not rnn_nodes:
            raise ValueError(f"{exporter} export has no ONNX RNN node to give sequence_lens to")
        proto.graph.input.append(onnx.helper.make_tensor_value_info(
            "seq_lens", onnx.TensorProto.INT32, [case.B]))
        for n in rnn_nodes:
            # inputs: X, W, R, B, sequence_lens, initial_h[, initial_c, P]; empty name = absent
            while len(n.input) < 5:
                n.input.append("")
            n.input[4] = "seq_lens"
        data = proto.SerializeToString()
    ops: Dict[str, int] = {}
    for n in proto.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    outs = tuple(o.name for o in proto.graph.output)
    if outs != names_out:
        raise RuntimeError(f"exported outputs {outs}, expected {names_out}")
    value = Exported(data, exporter, ops, outs, packed)
    _cache.clear()
    _cache.update(key=key, ref=ref, value=value)
    return value


def _threads() -> int:
    return max(1, torch.get_num_threads())


# --------------------------------------------------------------------------------------------
# Runners
# --------------------------------------------------------------------------------------------

class _PeerRunner(Runner):
    """Feeds a row's Inputs to an exported model's session and reads its outputs back."""

    exported: Exported

    def _feeds(self, inputs) -> dict:
        # Zero-copy views; the int32 lengths conversion is the user's per-batch work, like
        # pack_padded_sequence is for torch.
        feeds = {"x": inputs.x.detach().numpy()}
        if self.exported.packed:
            feeds["seq_lens"] = inputs.lengths.to(torch.int32).numpy()
        return feeds

    def _results(self, arrays):
        t = [torch.from_numpy(a) for a in arrays]
        return t[0], t[1], (t[2] if len(t) > 2 else None)

    def describe(self) -> dict:
        d = self.exported.info()
        d.update(self.settings)
        return d


class OrtRunner(_PeerRunner):
    def __init__(self, exported: Exported):
        import onnxruntime as ort
        self.exported = exported
        so = ort.SessionOptions()
        so.intra_op_num_threads = _threads()
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.intra_op.allow_spinning",
                                    "1" if ORT_SPIN else "0")
        so.log_severity_level = 3
        self.sess = ort.InferenceSession(exported.data, sess_options=so,
                                         providers=["CPUExecutionProvider"])
        self.names = list(exported.outputs)
        self.settings = {"intra_op_num_threads": so.intra_op_num_threads,
                         "inter_op_num_threads": 1, "allow_spinning": ORT_SPIN,
                         "providers": self.sess.get_providers()}

    def infer(self, inputs):
        return self._results(self.sess.run(self.names, self._feeds(inputs)))


class OpenVinoRunner(_PeerRunner):
    def __init__(self, exported: Exported):
        import openvino as ov
        self.exported = exported
        core = ov.Core()
        model = core.read_model(exported.data)
        cfg = {"INFERENCE_NUM_THREADS": _threads(), "NUM_STREAMS": 1,
               "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
               "ENABLE_CPU_PINNING": False}
        self.compiled = core.compile_model(model, "CPU", cfg)
        self.req = self.compiled.create_infer_request()
        # Output order by tensor name, so it does not depend on the converter's ordering.
        self.out_index = []
        for want in exported.outputs:
            for i, o in enumerate(self.compiled.outputs):
                if want in o.get_names():
                    self.out_index.append(i)
                    break
            else:
                raise RuntimeError(f"OpenVINO model has no output named {want!r}")
        self.settings = {k: str(self.compiled.get_property(k)) for k in
                         ("INFERENCE_NUM_THREADS", "NUM_STREAMS", "PERFORMANCE_HINT",
                          "INFERENCE_PRECISION_HINT", "ENABLE_CPU_PINNING")}

    def infer(self, inputs):
        # share_inputs: read the torch tensor's memory in place (like ORT's run());
        # share_outputs=False: the results are fresh arrays, as torch's outputs are.
        res = self.req.infer(self._feeds(inputs), share_inputs=True, share_outputs=False)
        return self._results([res[self.compiled.outputs[i]] for i in self.out_index])


def factory_for(cls):
    def factory(cell: str, case, mode: str, ref: nn.Module):
        if mode != "inference":
            raise Unsupported("inference only")
        dtype = next(ref.parameters()).dtype
        if dtype != torch.float32:
            raise Unsupported(f"float32 only (the row is {dtype})")
        try:
            exported = export(cell, case, ref)
        except ValueError as e:
            raise Unsupported(str(e)) from e
        return cls(exported)
    return factory

def register_peers(register: Callable) -> None:
    """Register both peers with the harness's registry.register."""
    register("onnxruntime", factory_for(OrtRunner), ort_available, peer=True, label="ort",
             version=lambda: _version("onnxruntime"))
    register("openvino", factory_for(OpenVinoRunner), openvino_available, peer=True,
             label="ov", version=lambda: (_version("openvino") or "").split("-")[0] or None)
