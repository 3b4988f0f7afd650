"""Builds rnnfast's native extension (rnnfast._C) against the installed torch.

    pip install --no-build-isolation .

CPU kernels are always built. CUDA sources (csrc/core/cuda/*.cu and the glue in
csrc/torch/cuda) are compiled only when the installed torch has CUDA and nvcc
is found, for sm_80 and sm_90 unless TORCH_CUDA_ARCH_LIST says otherwise;
RNNFAST_NO_CUDA=1 skips them. A CUDA build records the hash of the sources its
CUDA path is compiled from (scripts/cuda_sources_hash.py) as
rnnfast._C.cuda_sources_sha, which rnnfast checks against the GPU-verified ones.
RNNFAST_CXX_OPT (default -O3) is the C++ optimisation flag (nvcc keeps -O3 for the CUDA
sources); scripts/sanitize.sh builds its ASan + UBSan copy with -O1, as the sanitizers'
documentation advises (at -O3 that build took 23 of CI's 90 minutes on a 2-core AMD Zen 3).
"""
import glob
import importlib.util
import os
import sys

from setuptools import find_packages, setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _cuda_sources_sha():
    """sha256 of the sources the CUDA path is compiled from (scripts/cuda_sources_hash.py)."""
    path = os.path.join(ROOT, "scripts", "cuda_sources_hash.py")
    spec = importlib.util.spec_from_file_location("rnnfast_cuda_sources_hash", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.sources_sha(module.WorkingTree(ROOT))


def _cxx_standard():
    """C++17, or C++20 where the installed torch's headers demand it (torch >= 2.14)."""
    import torch

    header = os.path.join(os.path.dirname(torch.__file__), "include", "ATen", "ATen.h")
    try:
        with open(header) as f:
            return "c++20" if "C++20" in f.read() else "c++17"
    except OSError:
        return "c++17"


def _cublas_paths(cuda_home):
    """Include and library folders holding cuBLAS, and the linker flag naming it.

    cuBLAS comes with a full CUDA toolkit, or with the nvidia-cublas wheel that a CUDA
    build of torch installs (headers under nvidia/cu13/include, or nvidia/cublas/include
    for CUDA 12)."""
    candidates = [(os.path.join(cuda_home, "include"), os.path.join(cuda_home, "lib64"))]
    try:
        import nvidia  # namespace package of the CUDA wheels

        for base in nvidia.__path__:
            for sub in ("cu13", "cu12", "cublas"):
                candidates.append((os.path.join(base, sub, "include"),
                                   os.path.join(base, sub, "lib")))
    except ImportError:
        pass
    for inc, lib in candidates:
        if not os.path.exists(os.path.join(inc, "cublas_v2.h")):
            continue
        libs = sorted(glob.glob(os.path.join(lib, "libcublas.so*")))
        if not libs:
            continue
        name = os.path.basename(libs[0])
        flag = "-lcublas" if name == "libcublas.so" else f"-l:{name}"
        return [inc], [lib], flag
    raise RuntimeError(
        "rnnfast: torch has CUDA and nvcc was found, but no cuBLAS headers and library "
        f"(looked in {cuda_home} and the nvidia wheels); set RNNFAST_NO_CUDA=1 to build "
        "the CPU kernels only")


def _cxx_opt():
    """The optimisation flag for the C++ sources: RNNFAST_CXX_OPT, default -O3."""
    opt = os.environ.get("RNNFAST_CXX_OPT", "") or "-O3"
    allowed = ("-O0", "-O1", "-O2", "-O3", "-Og", "-Os")
    if opt not in allowed:
        raise ValueError(f"RNNFAST_CXX_OPT must be one of {', '.join(allowed)}, got {opt!r}")
    return opt


def _extension():
    import torch

    sources = _sources("csrc/torch/*.cpp") + _sources("csrc/core/cpu/*.cpp")
    std = _cxx_standard()
    cxx = [_cxx_opt(), f"-std={std}", "-fvisibility=hidden"]
    link = []
    define_macros = []
    # at::parallel_for is a header template whose OpenMP pragma is compiled into this
    # extension: without -fopenmp it silently runs on one thread. libgomp then resolves
    # to the copy torch already loaded (same soname), so torch.set_num_threads applies.
    if "OpenMP" in torch.__config__.parallel_info() and sys.platform.startswith("linux"):
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    cuda_sources = _sources("csrc/core/cuda/*.cu") + _sources("csrc/torch/cuda/*.cpp")
    use_cuda = (
        torch.version.cuda is not None
        and cpp_extension.CUDA_HOME is not None
        and bool(cuda_sources)
        and os.environ.get("RNNFAST_NO_CUDA", "0") != "1"
    )
    if use_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        define_macros.append(("RNNFAST_WITH_CUDA", None))
        # A bare token (64 hex digits), which the C++ side quotes: a quoted value would not
        # survive the shell that runs ninja's compile commands.
        define_macros.append(("RNNFAST_CUDA_SOURCES_SHA", _cuda_sources_sha()))
        inc, lib, flag = _cublas_paths(cpp_extension.CUDA_HOME)
        return cpp_extension.CUDAExtension(
            "rnnfast._C",
            sources + cuda_sources,
            define_macros=define_macros,
            include_dirs=inc,
            library_dirs=lib,
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", f"-std={std}"]},
            extra_link_args=link + [flag],
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
    # the manifest of GPU-verified CUDA source hashes, read at import (_cuda_verified.py)
    package_data={"rnnfast": ["cuda_verified.json"]},
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    python_requires=">=3.9",
    install_requires=["torch>=2.4", "numpy"],
)
