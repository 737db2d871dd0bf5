"""Build of fused_rnn and its one extension, fused_rnn._C.

Environment:
  FUSED_RNN_FORCE_CPU=1   build the CPU kernels only, even where CUDA is usable.
  FORCE_CUDA=1            build the CUDA kernels even without a visible GPU (needs CUDA_HOME and
                          an explicit TORCH_CUDA_ARCH_LIST, e.g. "9.0").
  FUSED_RNN_NO_ISA=1      skip the AVX2 / AVX512 / AVX512_BF16 builds of the CPU kernels
                          (portable only).
  MAX_JOBS                parallel compile jobs (ninja).
"""
import glob
import os
import platform
import subprocess

from setuptools import find_packages, setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("csrc")


def env_flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def want_cuda():
    if env_flag("FUSED_RNN_FORCE_CPU"):
        return False
    if env_flag("FORCE_CUDA"):
        if CUDA_HOME is None:
            raise RuntimeError("FORCE_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME")
        if torch.version.cuda is None:
            raise RuntimeError(f"FORCE_CUDA=1 but torch {torch.__version__} is a CPU-only build")
        return True
    return torch.cuda.is_available() and CUDA_HOME is not None


def nvidia_include_dirs():
    """Headers of the pip 'nvidia' CUDA packages (cusparse.h etc.), which ATen's CUDA headers
    include; a bare toolkit install may lack some of them."""
    try:
        import nvidia  # noqa: F401  (namespace package installed with CUDA builds of torch)
    except ImportError:
        return []
    dirs = []
    for base in nvidia.__path__:
        dirs += sorted(glob.glob(os.path.join(base, "cu*", "include")))
        dirs += sorted(glob.glob(os.path.join(base, "*", "include")))
    return [d for d in dirs if os.path.isdir(d)]


# Instruction-set builds of CPU kernels, chosen at run time: name -> (flags, sources). The step
# kernels (csrc/cpu/row_kernels.cpp) as AVX2 and AVX512, with the flags of ATen's own
# per-capability builds; the bfloat16 dot-product kernels (csrc/cpu/bf16_dot_kernels.cpp, used
# where the CPU has AVX512_BF16) only as AVX512_BF16, where the compiler takes -mavx512bf16.
# Never -march=native: the binary must run on any x86-64 CPU, and falls back to the portable
# DEFAULT build.
ROW_KERNELS = os.path.join(CSRC, "cpu", "row_kernels.cpp")
BF16_DOT_KERNELS = os.path.join(CSRC, "cpu", "bf16_dot_kernels.cpp")
AVX512_FLAGS = ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c"]
ISA_BUILDS = {
    "AVX2": (["-mavx2", "-mfma", "-mf16c"], [ROW_KERNELS]),
    "AVX512": (AVX512_FLAGS, [ROW_KERNELS]),
    "AVX512_BF16": (AVX512_FLAGS + ["-mavx512bf16"], [BF16_DOT_KERNELS]),
}


def compiler_takes(flags):
    """Whether the C++ compiler builds a file with these flags (an old GCC / clang may not know
    -mavx512bf16)."""
    cxx = os.environ.get("CXX", "c++")
    code = "#include <immintrin.h>\nint main() { return 0; }\n"
    try:
        result = subprocess.run([cxx, *flags, "-x", "c++", "-c", "-", "-o", os.devnull],
                                input=code, text=True, capture_output=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0


def isa_builds():
    if env_flag("FUSED_RNN_NO_ISA") or platform.machine().lower() not in ("x86_64", "amd64"):
        return {}
    builds = dict(ISA_BUILDS)
    if not compiler_takes(builds["AVX512_BF16"][0]):
        print("fused_rnn: the compiler does not take -mavx512bf16: no AVX512_BF16 build")
        del builds["AVX512_BF16"]
    return builds


class BuildWithIsaVariants(BuildExtension):
    """BuildExtension that also compiles the per-instruction-set objects of the CPU kernels
    (their own -D and -m flags) and links them into the extension."""

    def build_extension(self, ext):
        for name, (flags, sources) in ISA_BUILDS_IN_USE.items():
            cxx = list(ext.extra_compile_args["cxx"]) + flags + [
                f"-DCPU_CAPABILITY={name}", f"-DCPU_CAPABILITY_{name}"]
            objects = self.compiler.compile(
                sources,
                output_dir=os.path.join(self.build_temp, f"isa_{name}"),
                macros=ext.define_macros,
                include_dirs=ext.include_dirs,
                extra_postargs={"cxx": cxx, "nvcc": []},
                depends=ext.depends,
            )
            ext.extra_objects = list(ext.extra_objects or []) + objects
        super().build_extension(ext)


ISA_BUILDS_IN_USE = isa_builds()


def extension():
    with_cuda = want_cuda()
    sources = [os.path.join(CSRC, "ops.cpp")] + sorted(
        f for f in glob.glob(os.path.join(CSRC, "cpu", "*.cpp")) if f != BF16_DOT_KERNELS)
    cxx = ["-O3", "-fopenmp", "-Wall", "-Wno-unused-function", "-Wno-unknown-pragmas", "-Wno-psabi",
           "-Wno-maybe-uninitialized"]
    nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]  # -std: torch picks its own
    macros = [(f"FUSED_RNN_CPU_{name}", None) for name in ISA_BUILDS_IN_USE]
    depends = sorted(glob.glob(os.path.join(CSRC, "**", "*.h"), recursive=True)) + [
        ROW_KERNELS, BF16_DOT_KERNELS]
    kwargs = dict(
        name="fused_rnn._C",
        define_macros=macros,
        extra_link_args=["-fopenmp"],
        depends=depends,
    )
    if with_cuda:
        sources += sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cu")))
        sources += sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cpp")))
        macros.append(("FUSED_RNN_WITH_CUDA", None))
        return CUDAExtension(sources=sources, include_dirs=nvidia_include_dirs(),
                             extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **kwargs)
    return CppExtension(sources=sources, extra_compile_args={"cxx": cxx}, **kwargs)


setup(
    name="fused_rnn",
    version="0.1.0",
    description="Fused GRU / LSTM layers for PyTorch: drop-in nn.GRU / nn.LSTM with the time loop in C++/CUDA",
    packages=find_packages(include=["fused_rnn", "fused_rnn.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildWithIsaVariants},
    python_requires=">=3.9",
    install_requires=["torch>=2.4", "numpy"],
    # test: pytest, and hypothesis for the property-based conformance tests with nn.*
    extras_require={"test": ["pytest", "hypothesis"]},
    zip_safe=False,
)
