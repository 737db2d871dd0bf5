"""fused_rnn: GRU and LSTM layers whose time loops, forward and backward, run fused in C++ on
the CPU (and CUDA on the GPU), as drop-in replacements of torch.nn.GRU / LSTM / RNN.

    import fused_rnn
    gru = fused_rnn.GRU(256, 256, batch_first=True)   # same arguments as nn.GRU
    output, h_n = gru(x)

The operators are torch.ops.fused_rnn.{gru,lstm,rnn}_{forward,backward}; `gru_layer`,
`lstm_layer` and `rnn_layer` are their differentiable one-layer entry points; `reference` holds
the textbook cells.
"""
import torch  # noqa: F401  (loads libtorch before the extension)

from . import _C, reference
from ._ops import gru_layer, lstm_layer, rnn_layer
from .convert import from_torch, replace_rnns
from .modules import GRU, LSTM, RNN

__version__ = "0.1.0"


def cpu_isa() -> str:
    """Instruction-set build of the CPU kernels in use: "DEFAULT", "AVX2", "AVX512" or
    "AVX512_BF16" (AVX512's, with the bfloat16 products on AVX512_BF16's dot products)."""
    return _C.cpu_isa()


def available_cpu_isas():
    """The CPU kernel builds this machine can run, best last."""
    return list(_C.available_cpu_isas())


def set_cpu_isa(name: str) -> None:
    """Use another CPU kernel build (for testing and benchmarking); see available_cpu_isas()."""
    _C.set_cpu_isa(name)


def cpu_schedule() -> str:
    """How the CPU runs the GRU / LSTM / RNN recurrences: "auto", "per-step", "row-blocks" or
    "lanes"."""
    return _C.cpu_schedule()


def set_cpu_schedule(name: str) -> None:
    """Choose how the CPU runs the recurrences (process-wide; also FUSED_RNN_CPU_SCHEDULE at
    import):

    * "per-step": each step is spread over all threads (the hidden GEMM's columns by MKL, then
      the pointwise kernel's batch rows): two fork-joins per step;
    * "row-blocks": each thread runs all steps for its own block of batch rows (the rows of a
      sequence never interact), with no synchronisation inside the sequence; the same bits as
      per-step;
    * "lanes": each thread owns a slice of the hidden units and reads its part of W_hh in
      place every step (it stays in its core's cache), one barrier per step, forward and
      backward; the hidden GEMMs are the library's own kernels, so results differ from
      per-step in the last bits (and do not depend on the thread count);
    * "auto" (default), as measured faster: off Intel CPUs (the per-step GEMM on the library's
      own packed kernel), lanes for float32 batches of 1 row (hidden size below 128) or up to 8
      rows, and for short calls of fewer than 32 rows over all steps; row blocks for larger
      float32 batches where every thread gets at least 8 rows, in sequences of at least 8 steps
      whose W_hh fits a core's L2 cache;
      on Intel CPUs (MKL's packed GEMM), lanes for float32 batches of up to 1 row (hidden size
      below 128), 2 (below 256), 8 (below 512) or 16, row blocks where every thread gets at
      least 16 rows and a row's step GEMM has gates * hidden_size^2 <= 2^16 multiply-adds
      (GRU up to hidden 147, LSTM 128, RNN 256); else per-step.
    The GRU textbook form (reset_after=False) and the projected LSTM always run per step.
    Whatever the schedule, results do not depend on the number of threads.
    """
    _C.set_cpu_schedule(name)


def cuda_path() -> str:
    """CUDA path of the GRU / LSTM / RNN recurrences: "auto", "persistent" or "general"."""
    return _C.cuda_path()


def set_cuda_path(name: str) -> None:
    """Choose how the CUDA recurrences run (process-wide; also FUSED_RNN_CUDA_PATH at import):

    * "auto" (default): the persistent kernels (one launch for all steps, recurrent weights on
      chip) where they were measured faster than the general path (batch <= 64 and
      gates * batch * hidden^2 <= 2^27 multiply-adds per step forward, 2^25 backward, weights
      fitting in shared memory), else the general path;
    * "persistent": the persistent kernels for every GRU / LSTM / RNN call; raises where they
      cannot run (weights or batch too large for the chip);
    * "general": per step one cuBLAS GEMM and one fused pointwise kernel.
    The GRU textbook form (reset_after=False) and the projected LSTM always use the general path.
    """
    _C.set_cuda_path(name)


__all__ = ["GRU", "LSTM", "RNN", "from_torch", "replace_rnns", "gru_layer", "lstm_layer",
           "rnn_layer", "reference", "cpu_isa",
           "available_cpu_isas", "set_cpu_isa", "cpu_schedule", "set_cpu_schedule", "cuda_path",
           "set_cuda_path"]
