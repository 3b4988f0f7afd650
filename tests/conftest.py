import os

import pytest
import torch


def pytest_report_header(config):
    try:
        import rnnfast
    except Exception as exc:  # the suite will error at collection anyway
        return [f"rnnfast: import failed: {type(exc).__name__}: {exc}"]
    lines = [f"rnnfast: {getattr(rnnfast, '__file__', '?')}"]
    try:
        lines.append(f"rnnfast.info(): {rnnfast.info()}")
    except Exception as exc:
        lines.append(f"rnnfast.info() failed: {type(exc).__name__}: {exc}")
    lines.append(f"RNNFAST_SIMD={os.environ.get('RNNFAST_SIMD', '<unset>')} "
                 f"torch={torch.__version__} threads={torch.get_num_threads()}")
    return lines


@pytest.fixture(autouse=True)
def _restore_torch_globals():
    """Tests must not leak global torch state (threads, default dtype, grad mode)."""
    threads = torch.get_num_threads()
    dtype = torch.get_default_dtype()
    grad = torch.is_grad_enabled()
    yield
    torch.set_num_threads(threads)
    torch.set_default_dtype(dtype)
    torch.set_grad_enabled(grad)
