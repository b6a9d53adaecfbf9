"""Build xgenmm-fast and its C++ extension xgenmm_fast._C.

Install (torch must already be installed; see pyproject.toml for why it is not a build requirement):

    pip install --no-build-isolation -e .

Every csrc/**/*.cpp outside csrc/tests/ is compiled into the single module xgenmm_fast._C (whose
PYBIND11_MODULE lives in csrc/bindings.cpp). csrc/**/*.cu files are added, and the module becomes a
CUDAExtension, only when torch is a CUDA build and nvcc is found (see the CUDA hook below).
Environment: XGENMM_NO_CUDA=1 forces a CPU-only build; MAX_JOBS limits ninja's parallelism.
"""

from __future__ import annotations

import glob
import os
import shutil

from setuptools import find_namespace_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(ROOT, "csrc")


def _sources(pattern: str) -> list[str]:
    files = glob.glob(os.path.join(CSRC, "**", pattern), recursive=True)
    files = [f for f in files if os.sep + "tests" + os.sep not in os.path.relpath(f, ROOT)]
    return sorted(os.path.relpath(f, ROOT) for f in files)


def _cxx_flags() -> list[str]:
    # -ffp-contract=off: the resampler's double/float roundings must match Pillow's and Python's.
    return ["-O3", "-ffp-contract=off", "-fvisibility=hidden"]


def _extensions():
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:  # metadata-only operations (e.g. `python setup.py --version`) work without torch
        print("xgenmm-fast: torch not importable, building without the C++ extension")
        return [], {}

    cpp_sources = _sources("*.cpp")
    include_dirs = [CSRC]

    # ---- CUDA hook -------------------------------------------------------------------------
    # CUDA kernels (csrc/**/*.cu) join the module only when all of these hold: torch is a CUDA
    # build, a CUDA toolkit is found (CUDA_HOME or nvcc on PATH), there are .cu sources, and
    # XGENMM_NO_CUDA is not set. They are compiled with XGENMM_WITH_CUDA=1 defined, which
    # csrc/bindings.cpp can test to register the CUDA entry points.
    cuda_sources = _sources("*.cu")
    cuda_home = cpp_extension.CUDA_HOME
    has_nvcc = bool(cuda_home and os.path.exists(os.path.join(cuda_home, "bin", "nvcc"))) or bool(shutil.which("nvcc"))
    use_cuda = (
        torch.version.cuda is not None
        and has_nvcc
        and bool(cuda_sources)
        and os.environ.get("XGENMM_NO_CUDA", "0") != "1"
    )
    if use_cuda:
        ext = cpp_extension.CUDAExtension(
            name="xgenmm_fast._C",
            sources=cpp_sources + cuda_sources,
            include_dirs=include_dirs,
            define_macros=[("XGENMM_WITH_CUDA", "1")],
            extra_compile_args={
                "cxx": _cxx_flags(),
                "nvcc": ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo"],
            },
        )
    # ---- end CUDA hook ---------------------------------------------------------------------
    else:
        ext = cpp_extension.CppExtension(
            name="xgenmm_fast._C",
            sources=cpp_sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": _cxx_flags()},
        )
    cmdclass = {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}
    return [ext], cmdclass


ext_modules, cmdclass = _extensions()

setup(
    name="xgenmm-fast",
    version="0.1.0",
    description="Fast training and inference for xGen-MM (BLIP-3) vision-language models",
    python_requires=">=3.11",
    # namespace discovery also lists data-only folders (demo_assets/...), as setuptools wants
    packages=find_namespace_packages(include=["xgenmm_fast", "xgenmm_fast.*"], exclude=["*.__pycache__"]),
    package_data={"xgenmm_fast": ["demo_assets/**/*"]},
    include_package_data=True,
    install_requires=[
        "torch",
        # the Triton kernels (and their CPU tests through the interpreter, and scripts/triton_sm90_check.py);
        # CPU torch wheels do not bring it. Linux only, as Triton's wheels.
        "triton; platform_system == 'Linux'",
        "transformers",
        "safetensors",
        "pillow",
        "numpy",
        "omegaconf",
        "pyyaml",
        "tokenizers",
        "deepspeed",
        "tqdm",
    ],
    # test: what the benchmark tooling's tests need, so that none of them skips: liger-kernel (the Liger
    # baseline of benchmarks/bench_sft_step.py; its test runs Liger's Triton kernels on the CPU through the
    # interpreter; pinned as scripts/gpu_wheels.sh carries it) and matplotlib (benchmarks/report.py's plots)
    extras_require={"test": ["pytest", "liger-kernel==0.8.5", "matplotlib"], "tensorboard": ["tensorboard"]},
    entry_points={"console_scripts": ["xgenmm-fast = xgenmm_fast.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
