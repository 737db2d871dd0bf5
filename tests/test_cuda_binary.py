"""What the compiled persistent CUDA kernels are made of, read from the built extension's
disassembly (cuobjdump -sass: no GPU needed, so it runs wherever the extension was built with
CUDA, as in CI): the tensor-core kernels use the mma instruction of their type, the kernels whose
staged rows keep the stored type can copy them with 16-byte cp.async, the CUDA-core kernels use
no tensor cores, and no persistent kernel touches local memory (a register tile spilled or
indexed at run time would)."""
import os
import re
import shutil
import subprocess

import pytest

import fused_rnn

# the instruction of each storage type's tensor-core kernels (suffixes matched exactly)
MMA = {"c10::BFloat16": "HMMA.16816.F32.BF16", "c10::Half": "HMMA.16816.F32",
       "float": "HMMA.1688.F32.TF32"}
KERNEL = re.compile(r"recurrence_(forward|backward)_kernel<\(fused_rnn::Cell\)(\d), (\d), "
                    r"([\w:]+), (true|false)>")


def find_cuobjdump():
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    candidates = [shutil.which("cuobjdump"), os.path.join(cuda_home, "bin", "cuobjdump")]
    try:  # CUDA builds of torch bring triton, which bundles the tool
        import triton
        candidates.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia",
                                       "bin", "cuobjdump"))
    except ImportError:
        pass
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


@pytest.fixture(scope="module")
def kernels():
    """{(direction, cell, storage type, tensor cores): [opcodes]} of the newest architecture
    in the extension."""
    if not fused_rnn._C.built_with_cuda:
        pytest.skip("extension built without CUDA")
    tool, demangler = find_cuobjdump(), shutil.which("c++filt")
    if tool is None or demangler is None:
        pytest.skip("no cuobjdump / c++filt")
    so = fused_rnn._C.__file__
    elves = subprocess.run([tool, "-lelf", so], capture_output=True, text=True, check=True).stdout
    archs = sorted(set(re.findall(r"sm_(\d+)", elves)), key=int)
    assert archs, elves
    sass = subprocess.run([tool, "-sass", "-arch", f"sm_{archs[-1]}", so], capture_output=True,
                          text=True, check=True).stdout
    functions = re.split(r"\n\s*Function : ", sass)[1:]
    names = [f.split("\n", 1)[0].strip() for f in functions]
    plain = subprocess.run([demangler], input="\n".join(names), capture_output=True, text=True,
                           check=True).stdout.splitlines()
    out = {}
    for name, body in zip(plain, functions):
        m = KERNEL.search(name)
        if m:
            key = (m.group(1), int(m.group(2)), m.group(4), m.group(5) == "true")
            out.setdefault(key, []).extend(
                re.findall(r"/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", body))
    return out


def test_tensor_core_kernels_use_their_types_mma(kernels):
    mma = {k: ops for k, ops in kernels.items() if k[3]}
    # 2 directions x 4 cells (GRU, LSTM, RNN tanh / relu) x 3 storage types
    assert sorted({k[2] for k in mma}) == sorted(MMA) and len(mma) == 24
    for (direction, cell, dtype, _), ops in mma.items():
        hmma = {op for op in ops if op.startswith("HMMA")}
        assert hmma == {MMA[dtype]}, (direction, cell, dtype, hmma)


def test_cuda_core_kernels_use_no_tensor_cores(kernels):
    fma = {k: ops for k, ops in kernels.items() if not k[3]}
    assert len(fma) >= 4 * 2 * 4  # every cell, direction and storage type (x batch tiles)
    for key, ops in fma.items():
        assert not any(op.startswith("HMMA") for op in ops), key


def test_staging_by_cp_async_where_rows_keep_their_type(kernels):
    for (direction, cell, dtype, mma), ops in kernels.items():
        keeps_type = mma or dtype in ("float", "double")
        assert ("LDGSTS.E.BYPASS.128" in ops) == keeps_type, (direction, cell, dtype, mma)


def test_persistent_kernels_use_no_local_memory(kernels):
    for key, ops in kernels.items():
        local = [op for op in ops if op.split(".")[0] in ("LDL", "STL")]
        assert not local, (key, local[:5])
