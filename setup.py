"""Builds rnnfast's native extension (rnnfast._C) against the installed torch.

    pip install --no-build-isolation .

CPU kernels are always built. CUDA sources (csrc/core/cuda, csrc/torch/*_cuda.cu)
are compiled only when the installed torch has CUDA and nvcc is found, for
sm_80 and sm_90 unless TORCH_CUDA_ARCH_LIST says otherwise.
"""
import glob
import os
import sys

from setuptools import find_packages, setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _extension():
    import torch

    sources = _sources("csrc/torch/*.cpp") + _sources("csrc/core/cpu/*.cpp")
    cxx = ["-O3", "-std=c++17", "-fvisibility=hidden"]
    link = []
    define_macros = []
    # at::parallel_for is a header template whose OpenMP pragma is compiled into this
    # extension: without -fopenmp it silently runs on one thread. libgomp then resolves
    # to the copy torch already loaded (same soname), so torch.set_num_threads applies.
    if "OpenMP" in torch.__config__.parallel_info() and sys.platform.startswith("linux"):
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    cuda_sources = _sources("csrc/core/cuda/*.cu") + _sources("csrc/torch/*.cu")
    use_cuda = (
        torch.version.cuda is not None
        and cpp_extension.CUDA_HOME is not None
        and bool(cuda_sources)
        and os.environ.get("RNNFAST_NO_CUDA", "0") != "1"
    )
    if use_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        define_macros.append(("RNNFAST_WITH_CUDA", None))
        return cpp_extension.CUDAExtension(
            "rnnfast._C",
            sources + cuda_sources,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-std=c++17"]},
            extra_link_args=link,
        )
    return cpp_extension.CppExtension(
        "rnnfast._C", sources, define_macros=define_macros, extra_compile_args={"cxx": cxx},
        extra_link_args=link,
    )


setup(
    name="rnnfast",
    version="0.1.0",
    description="Fused LSTM/GRU/RNN kernels for PyTorch: drop-in nn.LSTM, nn.GRU, nn.RNN",
    package_dir={"": "python"},
    packages=find_packages("python"),
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    python_requires=">=3.9",
    install_requires=["torch>=2.4", "numpy"],
)
