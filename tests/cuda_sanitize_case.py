"""A small forward + backward of every CUDA kernel path, for compute-sanitizer (memcheck).

Run as: PYTORCH_NO_CUDA_MEMORY_CACHING=1 RNNFAST_CUDA_KERNELS=1 \
        compute-sanitizer --tool memcheck --error-exitcode 9 python tests/cuda_sanitize_case.py
(no caching allocator, so each tensor is its own allocation and overruns are seen).
Covers LSTM with and without projection, GRU, RNN tanh/relu, and the layer-normalised LSTM
(with projection and peephole; and without biases, whose scratch once lacked the ones
vector the own parameters' gradients need) and GRU (one block per batch row, H = 300 > the
block's 256 threads); float32, float64, bfloat16 and float16; variable lengths (PackedSequence) and both
directions.
"""
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnfast

assert rnnfast.ops.has_native_kernels("cuda"), "CUDA kernels are not enabled"
dev = torch.device("cuda")
torch.manual_seed(0)
cases = 0
for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
    for cls, kw in ((rnnfast.LSTM, {}), (rnnfast.LSTM, {"proj_size": 3}), (rnnfast.GRU, {}),
                    (rnnfast.RNN, {"nonlinearity": "tanh"}), (rnnfast.RNN, {"nonlinearity": "relu"}),
                    (rnnfast.LSTM, {"layer_norm": True, "peephole": True, "proj_size": 3}),
                    (rnnfast.LSTM, {"layer_norm": True, "peephole": True, "bias": False}),
                    (rnnfast.GRU, {"layer_norm": True, "hidden_size": 300})):
        kw = dict(kw)
        hidden = kw.pop("hidden_size", 7)
        m = cls(5, hidden, num_layers=2, bidirectional=True, **kw).to(dev, dtype)
        x = torch.randn(6, 4, 5, device=dev, dtype=dtype, requires_grad=True)
        out, _ = m(x)
        out.float().sum().backward()
        packed = pack_padded_sequence(x, torch.tensor([6, 2, 5, 1]), enforce_sorted=False)
        pout, _ = m(packed)
        pout.data.float().sum().backward()
        with torch.no_grad():
            m(x)
        cases += 1
torch.cuda.synchronize()
print(f"sanitize case: {cases} module configurations ran forward, backward and inference")
