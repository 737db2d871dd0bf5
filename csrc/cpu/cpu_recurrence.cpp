// The CPU's "row blocks" schedule of a GRU / LSTM / RNN recurrence (the StepKernels hooks
// recurrence_forward / recurrence_backward; the per-step schedule is the driver's own loop).
//
// The batch rows of a sequence never interact: row b's state at step t depends only on row b.
// So each intra-op thread takes one block of rows and runs all T steps for it alone: per step a
// GEMM of its rows with the shared W_hh (packed once, read by every thread), then the pointwise
// step kernel on the same rows. The threads never wait for each other inside the sequence. The
// per-step schedule instead spreads every step over all threads: two fork-joins per step (MKL's
// GEMM, then the pointwise kernel), and the threads wait at both.
//
// Same results bit for bit as the per-step schedule (and whatever the thread count): on the own
// packed GEMM every element is one sum over k in order however the step is split; on a BLAS the
// blocks are whole tiles of the hidden GEMM (kTileRows rows; csrc/cpu/cpu_gemm.cpp), and every
// tile is one single-threaded BLAS call on the same operands in both schedules.
// tests/test_determinism.py and tests/test_cpu_schedule.py check it.
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <memory>
#include <thread>
#include <type_traits>
#include <unistd.h>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "cpu_kernels.h"
#include "row_kernels.h"

namespace fused_rnn::cpu {
namespace {

// In auto, the row blocks run for float32 past the lanes' batches. On the library's own packed
// GEMM (gemm_backend "own-packed", the default) wherever every thread gets at least one 8-row
// tile: measured ahead of per-step, or level, at every point of
// benchmarks/results/cpu_schedules_own_packed_2026-12-06.md (B=32 and 128, H=128 and 256, GRU /
// LSTM / RNN, inference and training; the other way only LSTM training B=128 H=256, 0.84x nn.*
// vs 0.87x). On MKL's packed GEMM ("mkl-packed") where every thread gets at least kMinAutoRows
// rows and a row's step GEMM has at most kMaxAutoMacs = gates * H * H multiply-adds, measured
// on the Intel development machine of 2026-11-28 (T=35, I=H, float32; fused time row blocks /
// per step, B=32, two runs; benchmarks/results/cpu_schedules{,_h512}_2026-11-28.md):
// up to 2^16 (GRU, LSTM, RNN at H=128) 0.80-0.85 forward and 0.85-0.94 training, RNN H=256
// 0.95 / 1.00; GRU and LSTM at H=256 (2^17.6, 2^18) 1.00-1.05, all at H=512 1.00-1.03:
// there MKL's 2-thread GEMM of the whole batch beats two 1-thread GEMMs of half of it by more
// than the fork-joins cost.
constexpr int64_t kMinAutoRows = 16;
// On the own packed GEMM the row blocks also need a sequence of at least kMinRowBlockSteps steps
// and a float32 W_hh no larger than a core's L2 cache (l2_cache_bytes): every thread reads all
// of W every step (the per-step schedule and the lanes each read their part), from its own L2
// only where it fits there, and the first step reads it from memory (half of it packed by the
// other thread). Measured on the 2-core development VM (AMD EPYC Zen 4, 1 MB L2 per core;
// 2026-12-07; I=H, B=16-128, given states, 10 interleaved rounds of 40 ms each): at T=1
// inference row blocks took 1.6-2.7x the time of per-step at B=32 (GRU H=256 466 vs 264 us,
// H=512 2156 vs 817); at T=2 and 4 per-step or level (LSTM H=256 T=4 B=16: 0.67x of the row
// blocks' time); at T=8 level for H=256 (per-step / row blocks 0.89-1.19) and per-step ahead at
// H=512 (0.71-1.01); at T=16 and 35 row blocks ahead at H=256 (GRU T=35 B=32 6.0 vs 6.6 ms,
// RNN B=16 1.06 vs 1.41 ms) and level at H=512 (W 3-4 MB; within 2% at T=35). With this rule,
// forced row blocks / auto time: T=1 0.93-1.78, T=4 0.90-1.66, T=8 0.96-1.26
// (benchmarks/results/cpu_short_schedules_zen4_2026-12-07.md; benchmarks/cpu_notes.md).
// bfloat16 on the dot products likewise, with the pair panel's 2 bytes per weight: on the AMD
// EPYC Zen 5 VM (2026-12-07, T=35, I=H, 2 threads, 9 interleaved rounds; nn.* / fused with
// forced row blocks vs auto's choice then, lanes or per-step) at H=256, B=16-128: row blocks ahead
// at 21 of 24 points (GRU training B=32 2.29x vs 1.98x, RNN inference B=32 4.51x vs 3.32x,
// LSTM inference B=32 1.09x vs 0.93x), behind at 3 by 2-7% (GRU training B=16, LSTM inference
// B=64, RNN training B=128); at H=128 B=16-128 ahead or level at all but GRU inference B=128
// (2.94x vs lanes' 2.95x); at H=512 (RNN's panel 512 KB; GRU's and LSTM's past L2) RNN row
// blocks 1.66-2.56x vs per-step 1.15-2.44x.
constexpr int64_t kMinRowBlockSteps = 8;
constexpr int64_t kDefaultL2Bytes = int64_t{1} << 20;
constexpr int64_t kMaxAutoMacs = int64_t{1} << 16;

// In auto, the lanes run float32 recurrences of batches of up to max_lane_rows(H) rows, whatever
// the thread count (one lane per thread; their results do not depend on the lanes, so the
// results stay the same for any thread count). Measured on the 2-core development VM (AMD EPYC,
// Zen 4) on 2026-12-06 with the lanes on packed W_hh (benchmarks/results/
// cpu_lanes_packed_*_2026-12-06.md; T=35, I=H, 2 threads, GRU / LSTM / RNN, inference and
// training; each schedule's speed-up over nn.* in the same interleaved rounds): H=256 and 512,
// B=16-64: lanes ahead of per-step at every point but one (LSTM inference B=64 H=256, equal),
// GRU 1.14-1.45x nn.* vs per-step's 0.99-1.43x, LSTM 0.71-0.97x vs 0.61-0.93x, RNN 1.15-2.13x
// vs 0.97-1.72x; B=128: ahead in 11 of 12 (GRU training H=256: 1.06x vs 1.16x). H=128: lanes
// ahead of per-step and row blocks at B=8 (1.02-3.82x nn.* vs 0.77-2.95x), mixed at B=32 (GRU
// and LSTM inference ahead; LSTM training and RNN behind row blocks), behind at B=128. Earlier
// measurements (2026-11-28 and the morning of 2026-12-06, lanes with dot products on W_hh in
// place) had given lanes batch 1 only, then up to 2 / 8 / 16 rows from H=128 / 256 / 512. Those
// limits stay with the "mkl-packed" back end (no longer a default): on the Intel Xeon of the
// eighth session MKL's per-step GEMM beat a lane kernel of this kind at 32 rows (GRU H=256
// backward recurrence 3.53 ms vs 5.02, benchmarks/cpu_notes.md). On the Sapphire Rapids Xeon
// of 2026-12-06 the own-packed rule set below took at most its time at 42 of 48 points (the
// rest 1.01-1.08x its time, and 1.40x at GRU B=1 H=256 training: 0.94x in the run before;
// results/cpu_rule_sets_intel_2026-12-06b.md).
// Lanes start at multiples of kLaneUnits hidden units (whole vectors for the pointwise kernels).
//
// With the per-step GEMM on the library's own packed kernel (gemm_backend "own-packed", the
// default; benchmarks/results/cpu_schedules_own_packed*_2026-12-06.md, the same
// grid against row blocks): lanes ahead at B=8 (H=256: 1.05-2.83x nn.* vs row blocks'
// 0.95-2.33x; H=512 within 3% either way), about even at B=16 and 64 (GRU H=256 B=16: row blocks
// 1.76 / 2.02x vs lanes 1.54 / 1.86x; the rest within ~5%), row blocks ahead at B=32 and 128
// (GRU H=256 B=32 inference 1.85x vs 1.55x, LSTM H=256 B=128 inference 0.92x vs 0.72x; H=128
// B=128 1.36-1.98x vs 0.64-1.62x). So on it lanes run up to 8 rows and row blocks
// above (row_blocks) in long sequences; short ones see row_blocks and lanes below.
int64_t max_lane_rows(int64_t H) {
  if (!own_packed_backend()) return H >= 512 ? 16 : H >= 256 ? 8 : H >= 128 ? 2 : 1;
  return H >= 128 ? 8 : 1;
}
// In auto, bfloat16 recurrences on the dot products (the AVX512_BF16 build: lanes_forward_dot /
// lanes_backward_dot) run as lanes for batches of up to max_dot_lane_rows(H) rows. Measured on
// the 2-core development VM (AMD EPYC Zen 4, 2026-12-07, twenty-third session; T=35, I=H, GRU /
// LSTM (/ RNN), inference and training, 3 interleaved rounds, their medians; lanes / per-step
// time) with each lane's gates in one pass (gemm_gates): H=256 B=8-16 0.87-0.97 at every point,
// B=32 0.99-1.09, B=64-128 0.96-1.06; H=512 B=1 0.89-1.00, B=4 0.93-0.95, B=8 0.88-1.07, B=16
// 1.05-1.10. (With one product per gate, before gemm_gates: H=256 B=1-16 0.74-0.97, B=32
// 0.89-1.24.) Not measured below H=256 (the float32 rule's 1 row below H=128) nor above 512.
// From 16 rows the row blocks take over where W_hh's pair panel fits a core's L2 (row_blocks):
// on the AMD EPYC Zen 5 VM (2026-12-07, T=35, I=H, 2 threads, 9 interleaved rounds, nn.* /
// fused per schedule, benchmarks/cpu_notes.md) row blocks ahead of lanes at B=16 in 11 of 12
// points at H=128 and 256 (GRU / LSTM / RNN, inference and training; H=128 LSTM inference 1.49x
// vs 1.10x, RNN 8.35x vs 5.43x; H=256 GRU training 2.73x vs 2.86x the one behind), lanes ahead
// at B=8 (H=256 LSTM inference 1.13x vs 0.91x). So lanes up to 8 rows at H=128-511.
int64_t max_dot_lane_rows(int64_t H) { return H >= 512 ? 4 : H >= 128 ? 8 : 1; }
constexpr int64_t kLaneUnits = 16;
// Lanes pack their weights for calls of at least this many rows over all steps (B * T); the
// backward only where a lane's columns of W_hh take more than kMaxInPlaceLaneBytes (as float).
constexpr int64_t kMinPackedRowSteps = 32;
constexpr int64_t kMaxInPlaceLaneBytes = int64_t{1} << 20;

CpuSchedule parse(const std::string& name) {
  if (name == "auto") return CpuSchedule::kAuto;
  if (name == "per-step") return CpuSchedule::kPerStep;
  if (name == "row-blocks") return CpuSchedule::kRowBlocks;
  if (name == "lanes") return CpuSchedule::kLanes;
  TORCH_CHECK(false, "fused_rnn: CPU schedule must be 'auto', 'per-step', 'row-blocks' or "
              "'lanes', got '", name, "'");
}

std::atomic<int>& setting() {
  static std::atomic<int> value{[] {
    const char* env = std::getenv("FUSED_RNN_CPU_SCHEDULE");
    return static_cast<int>(env && *env ? parse(env) : CpuSchedule::kAuto);
  }()};
  return value;
}

}  // namespace

int64_t l2_cache_bytes() {
  static const int64_t bytes = [] {
#if defined(_SC_LEVEL2_CACHE_SIZE)
    const long value = sysconf(_SC_LEVEL2_CACHE_SIZE);
    if (value > 0) return static_cast<int64_t>(value);
#endif
    return kDefaultL2Bytes;
  }();
  return bytes;
}

std::vector<int64_t> row_blocks(int64_t B, int64_t H, int64_t gates, at::ScalarType dtype,
                                int64_t steps) {
  const bool float32 = dtype == at::kFloat;
  const bool bf16_dot = dtype == at::kBFloat16 && bf16_dot_kernels() != nullptr;
  const CpuSchedule schedule = static_cast<CpuSchedule>(setting().load());
  if (schedule == CpuSchedule::kLanes) return {};
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  const int64_t tiles = (B + kTileRows - 1) / kTileRows;
  int64_t blocks = 0;
  if (schedule == CpuSchedule::kRowBlocks) {
    blocks = std::max<int64_t>(1, std::min(threads, tiles));
  } else if (schedule == CpuSchedule::kAuto && (float32 || bf16_dot) && threads >= 2) {
    // the hidden GEMM's panel of W_hh: float32, or bfloat16 pairs on the dot products
    const bool own = own_packed_backend() || bf16_dot;
    const int64_t element_bytes = bf16_dot ? 2 : 4;
    if ((own && tiles >= threads && steps >= kMinRowBlockSteps &&
         gates * H * H * element_bytes <= l2_cache_bytes()) ||
        (!own && gemm_backend() == "mkl-packed" && B >= kMinAutoRows * threads &&
         gates * H * H <= kMaxAutoMacs)) {
      blocks = std::min(threads, tiles);
    }
  }
  if (blocks == 0 || B == 0) return {};
  std::vector<int64_t> starts(blocks + 1);  // whole tiles, as evenly as they go
  for (int64_t i = 0; i <= blocks; ++i) starts[i] = std::min(B, tiles * i / blocks * kTileRows);
  return starts;
}

namespace {

// Runs body(b_begin, b_end) for the blocks, one thread per block (a thread given several
// blocks runs their rows as one block).
template <typename F>
void for_row_blocks(const std::vector<int64_t>& starts, const F& body) {
  const int64_t blocks = static_cast<int64_t>(starts.size()) - 1;
  at::parallel_for(0, blocks, 1, [&](int64_t k0, int64_t k1) { body(starts[k0], starts[k1]); });
}

// w: [N, K] (transpose_w: op(W) = w^T) or [K, N], as a tensor over the hook's pointer.
template <typename S>
at::Tensor weight_tensor(const S* w, int64_t rows, int64_t cols) {
  return at::from_blob(const_cast<S*>(w), {rows, cols}, c10::CppTypeToScalarType<S>::value);
}

// A forward recurrence step by step (processing step s, at time index t(s)), for the row-blocks
// and lanes schedules: where the step's rows are, and its pointwise kernel.
template <typename S>
struct ForwardSteps {
  const RecurrenceForward<S>& p;
  S* gh;  // GRU: [B, 3H], the step's h_prev W_hh^T (LSTM / RNN add it to x in place)

  int64_t t(int64_t s) const { return time_of(s, p.steps, p.reverse); }
  S* x(int64_t s) const { return p.x + t(s) * p.x_step; }        // [B, G*H]
  S* out(int64_t s) const { return p.out + t(s) * p.out_step; }  // [B, H]
  const S* h_prev(int64_t s) const { return s == 0 ? p.h0 : out(s - 1); }  // [B, H]
  int64_t h_prev_row(int64_t s) const { return s == 0 ? p.hidden : p.out_row; }
  S* cell(int64_t s) const {  // [B, H], the LSTM cell state after processing step s
    return p.cells + (p.cells_per_step ? t(s) : s % 2) * p.batch * p.hidden;
  }
  // Where h_prev W_hh^T goes ([B, G*H], row stride hidden_row()), and whether it is added.
  S* hidden(int64_t s) const { return p.cell == Cell::kGru ? gh : x(s); }
  int64_t hidden_row() const { return p.cell == Cell::kGru ? 3 * p.hidden : p.x_row; }
  bool hidden_adds() const { return p.cell != Cell::kGru; }

  // The pointwise kernel of step s on the rows [b0, b1) and hidden units [j0, j1).
  void pointwise(const RowKernels<S>& k, int64_t s, int64_t b0, int64_t b1, int64_t j0,
                 int64_t j1) const {
    const int64_t B = p.batch, H = p.hidden;
    switch (p.cell) {
      case Cell::kGru:
        k.gru_forward({B, H, x(s), p.x_row, gh, 3 * H, p.b_ih, p.b_hh, h_prev(s), h_prev_row(s),
                       out(s), p.out_row, p.saved ? p.saved + t(s) * B * 4 * H : nullptr, 4 * H,
                       t(s), p.lengths},
                      b0, b1, j0, j1);
        break;
      case Cell::kLstm:
        k.lstm_forward({B, H, x(s), p.x_row, p.b_ih, h_prev(s), h_prev_row(s),
                        s == 0 ? p.c0 : cell(s - 1), H, cell(s), H, out(s), p.out_row, t(s),
                        p.lengths},
                       b0, b1, j0, j1);
        break;
      default:
        k.rnn_forward({B, H, x(s), p.x_row, p.b_ih, h_prev(s), h_prev_row(s), out(s), p.out_row,
                       p.cell == Cell::kRnnRelu, t(s), p.lengths},
                      b0, b1, j0, j1);
    }
  }
};

// A backward recurrence step by step (processing step s from T - 1 down to 0), for the
// row-blocks and lanes schedules: the rows the hidden GEMM reads, and the pointwise kernel.
template <typename S>
struct BackwardSteps {
  const RecurrenceBackward<S>& p;

  int64_t t(int64_t s) const { return time_of(s, p.steps, p.reverse); }
  // dh += d_h W_hh reads these rows: [B, G*H] (GRU's d_gh, LSTM's d_gates, RNN's d_pre)
  const S* d_h(int64_t s) const { return p.d_h + t(s) * p.dh_step; }

  // The pointwise kernel of step s on the rows [b0, b1) and hidden units [j0, j1).
  void pointwise(const RowKernels<S>& k, int64_t s, int64_t b0, int64_t b1, int64_t j0,
                 int64_t j1) const {
    const int64_t B = p.batch, H = p.hidden, ts = t(s);
    const S* grad_h = p.grad_out + ts * p.go_step;  // [B, H]
    S* d_x = p.d_x + ts * p.dx_step;                // [B, G*H]
    switch (p.cell) {
      case Cell::kGru:
        k.gru_backward({B, H, grad_h, p.go_row, p.dh, p.h_prev + ts * p.hp_step, p.hp_row,
                        p.saved + ts * B * 4 * H, 4 * H, d_x, p.dx_row, p.d_h + ts * p.dh_step,
                        p.dh_row, ts, p.lengths},
                       b0, b1, j0, j1);
        break;
      case Cell::kLstm: {
        const S* c_prev = s == 0 ? p.c0 : p.cells + t(s - 1) * B * H;  // [B, H]
        k.lstm_backward({B, H, grad_h, p.go_row, p.dh, p.dc, p.gates + ts * p.g_step, p.g_row,
                         c_prev, H, p.cells + ts * B * H, H, d_x, p.dx_row, ts, p.lengths},
                        b0, b1, j0, j1);
        break;
      }
      default:
        k.rnn_backward({B, H, grad_h, p.go_row, p.dh, p.out + ts * p.out_step, p.out_row, d_x,
                        p.dx_row, p.cell == Cell::kRnnRelu, ts, p.lengths},
                       b0, b1, j0, j1);
    }
  }
};

}  // namespace

std::vector<int64_t> lanes(int64_t B, int64_t H, at::ScalarType dtype, int64_t steps) {
#if defined(_OPENMP)
  const bool float32 = dtype == at::kFloat;
  const bool bf16_dot = dtype == at::kBFloat16 && bf16_dot_kernels() != nullptr;
  const CpuSchedule schedule = static_cast<CpuSchedule>(setting().load());
  // On the own packed GEMM also batches of fewer than min_prepared_rows() rows over all steps
  // (H >= 128): the per-step schedule runs those on W as it is (ATen's mm per tile), and the
  // lanes (W_hh in place, dot products) took 0.63-0.75x its time at T=1 B=16 inference (GRU,
  // LSTM, RNN, H=256 and 512; 2026-12-07, Zen 4 VM) and 0.53-0.83x in training.
  const bool short_unprepared =
      own_packed_backend() && H >= 128 && B * steps < min_prepared_rows();
  const bool wanted =
      schedule == CpuSchedule::kLanes ||
      (schedule == CpuSchedule::kAuto &&
       ((float32 && (B <= max_lane_rows(H) || short_unprepared)) ||
        (bf16_dot && B <= max_dot_lane_rows(H))));
  if (!wanted || B == 0 || H == 0) return {};
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  const int64_t count = std::max<int64_t>(1, std::min(threads, H / kLaneUnits));
  std::vector<int64_t> starts(count + 1);
  for (int64_t i = 0; i < count; ++i) starts[i] = H * i / count / kLaneUnits * kLaneUnits;
  starts[count] = H;
  return starts;
#else
  // at::parallel_for without OpenMP (ATen's own thread pool) may run the lanes one after
  // another, and a lane waiting at the step barrier would then wait forever.
  (void)B, (void)H, (void)dtype, (void)steps;
  return {};
#endif
}

namespace {

// The barrier between two steps of the lanes: the lanes of every thread arrive (a thread that
// got several lanes arrives for all of them at once), the last one lets everybody go on. Spins,
// then yields (a waiting thread must not take the core from one that is still computing).
class StepBarrier {
 public:
  explicit StepBarrier(int64_t lanes) : lanes_(lanes) {}
  void arrive_and_wait(int64_t lanes) {
    const int64_t generation = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(lanes, std::memory_order_acq_rel) + lanes == lanes_) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
      return;
    }
    for (int64_t spins = 0; generation_.load(std::memory_order_acquire) == generation; ++spins) {
      if (spins < kSpins) {
#if defined(__x86_64__) || defined(__i386__)
        _mm_pause();
#endif
      } else {
        std::this_thread::yield();
      }
    }
  }

 private:
  static constexpr int64_t kSpins = 4096;
  const int64_t lanes_;
  std::atomic<int64_t> arrived_{0};
  std::atomic<int64_t> generation_{0};
};

// A lane's weights packed for its products (elements P: lane_panel_t<S> for the outer-product
// kernel's RowKernels::lane_pack / lane_pack_columns, uint32_t pairs for the bfloat16 dot
// products): one buffer for every lane, allocated before the threads start (nothing inside may
// throw past the step barrier), not zeroed (each lane writes all of its panel).
template <typename P>
class LanePanels {
 public:
  // sizes[l]: the elements of lane l's panel; none where `packed` is false
  LanePanels(bool packed, const std::vector<int64_t>& sizes) : offsets_(sizes.size() + 1, 0) {
    if (!packed) return;
    for (size_t l = 0; l < sizes.size(); ++l) offsets_[l + 1] = offsets_[l] + sizes[l];
    data_.reset(new P[offsets_.back()]);
  }
  P* operator[](int64_t l) const { return data_ ? data_.get() + offsets_[l] : nullptr; }

 private:
  std::vector<int64_t> offsets_;
  std::unique_ptr<P[]> data_;
};

template <typename F>
std::vector<int64_t> per_lane(const std::vector<int64_t>& units, const F& size) {
  std::vector<int64_t> sizes;
  for (size_t l = 0; l + 1 < units.size(); ++l) sizes.push_back(size(units[l + 1] - units[l]));
  return sizes;
}

}  // namespace

// The forward's lanes multiply h_prev by W_hh packed (lane_pack: the lane's rows transposed into
// k-major strips, once per call, by the lane itself) with outer products, or by W_hh in place
// (lane_gemm: dot products, horizontal sums) in short calls: packing costs about as much as
// 1.5 steps of the lane at 16 rows, and saves ~25% of each step at 4-32 rows (one Zen 4 core,
// H=256 LSTM, 128 units: 16 rows 50 -> 37 us a step, 4 rows 12.6 -> 9.2, 1 row 5.7 -> 5.1;
// packing 14-18 us; H=1024, 16 rows: 771 -> 609 us, packing 886 us).
bool lane_forward_packs(int64_t B, int64_t T) { return B * T >= kMinPackedRowSteps; }

// The backward's lanes read W_hh's columns in place (lane_gemm_t: the same outer products, each
// row a contiguous piece of W_hh) where a lane's columns fit its core's cache, else copied into
// strips first (lane_pack_columns): at H=1024 (LSTM, 512 units, 8 MB) every n of the in-place
// product is on a page of its own (one Zen 4 core, 16 rows, harness: 66-79 GF/s in place, 112 on
// strips, the same bits; packing 1.1 ms, about two steps; at H=512 109 vs 117).
bool lane_backward_packs(int64_t B, int64_t T, int64_t H, int64_t G, int64_t units) {
  return B * T >= kMinPackedRowSteps &&
         G * H * units * static_cast<int64_t>(sizeof(float)) > kMaxInPlaceLaneBytes;
}

namespace {

// The lanes schedule of a forward recurrence (see cpu_kernels.h): lane l owns the hidden units
// [units[l], units[l + 1]). Per step each lane computes its units' columns of h_prev W_hh^T for
// every gate and row (from its own rows of W_hh: they stay in its core's cache from step to
// step), runs the pointwise kernel on those columns, then waits for the other lanes (the next
// step's GEMM reads all of h).
template <typename S>
bool lanes_forward(const RecurrenceForward<S>& p, const std::vector<int64_t>& units) {
  const int64_t T = p.steps, B = p.batch, H = p.hidden, G = gates_of(p.cell);
  const int64_t L = static_cast<int64_t>(units.size()) - 1;
  const RowKernels<S>& k = row_kernels<S>();
  // allocation before the threads start: nothing inside may throw past the barrier
  std::vector<S> gh_buffer(p.cell == Cell::kGru ? B * 3 * H : 0);  // gh: [B, 3H] (GRU)
  const LanePanels<lane_panel_t<S>> panels(lane_forward_packs(B, T), per_lane(units, [&](int64_t n) {
                               return lane_panel_size(G, n, H);
                             }));
  const ForwardSteps<S> seq{p, gh_buffer.data()};
  StepBarrier barrier(L);
  at::parallel_for(0, L, 1, [&](int64_t l0, int64_t l1) {
    for (int64_t l = l0; l < l1; ++l) {
      // the lane's rows of each gate of W_hh: [G*H, H], from row units[l] of gate 0
      if (panels[l]) k.lane_pack(p.w_hh + units[l] * H, H * H, G, units[l + 1] - units[l], H, panels[l]);
    }
    for (int64_t s = 0; s < T; ++s) {
      for (int64_t l = l0; l < l1; ++l) {
        const int64_t u0 = units[l], u1 = units[l + 1];
        if (panels[l]) {
          k.lane_gemm_packed(seq.h_prev(s), seq.h_prev_row(s), B, H, panels[l], G, u1 - u0,
                             seq.hidden(s) + u0, seq.hidden_row(), H, seq.hidden_adds());
        } else {
          k.lane_gemm(seq.h_prev(s), seq.h_prev_row(s), B, H, p.w_hh + u0 * H, H * H, G,
                      u1 - u0, seq.hidden(s) + u0, seq.hidden_row(), H, seq.hidden_adds());
        }
        seq.pointwise(k, s, 0, B, u0, u1);
      }
      if (s + 1 < T) barrier.arrive_and_wait(l1 - l0);
    }
  });
  return true;
}

// The lanes schedule of a backward recurrence: per step each lane runs the pointwise kernel on
// its units (their gate gradients, and the direct part of dh), waits for the other lanes (the
// GEMM reads every gate gradient of the step), then adds d_h W_hh to its units' columns of dh
// (its columns of W_hh, in place or packed). The next step's pointwise kernel reads only the
// lane's own columns of dh (and dc), so one barrier per step. Both products sum each element
// over n in order from zero: the same bits packed or not.
template <typename S>
bool lanes_backward(const RecurrenceBackward<S>& p, const std::vector<int64_t>& units) {
  const int64_t T = p.steps, B = p.batch, H = p.hidden, G = gates_of(p.cell);
  const int64_t L = static_cast<int64_t>(units.size()) - 1;
  const RowKernels<S>& k = row_kernels<S>();
  const LanePanels<lane_panel_t<S>> panels(lane_backward_packs(B, T, H, G, units[1] - units[0]),
                             per_lane(units, [&](int64_t n) { return lane_panel_size(1, n, G * H); }));
  const BackwardSteps<S> seq{p};
  StepBarrier barrier(L);
  at::parallel_for(0, L, 1, [&](int64_t l0, int64_t l1) {
    for (int64_t l = l0; l < l1; ++l) {
      // the lane's columns of W_hh: [G*H, H], from column units[l]
      if (panels[l]) k.lane_pack_columns(p.w_hh + units[l], H, G * H, units[l + 1] - units[l], panels[l]);
    }
    for (int64_t s = T - 1; s >= 0; --s) {
      for (int64_t l = l0; l < l1; ++l) seq.pointwise(k, s, 0, B, units[l], units[l + 1]);
      barrier.arrive_and_wait(l1 - l0);
      for (int64_t l = l0; l < l1; ++l) {
        const int64_t u0 = units[l], u1 = units[l + 1];
        if (panels[l]) {
          k.lane_gemm_packed(seq.d_h(s), p.dh_row, B, G * H, panels[l], 1, u1 - u0, p.dh + u0,
                             H, 0, true);
        } else {
          k.lane_gemm_t(seq.d_h(s), p.dh_row, B, G * H, p.w_hh + u0, H, u1 - u0, p.dh + u0, H,
                        true);
        }
      }
    }
  });
  return true;
}

// bfloat16 lanes on the dot products (bf16_dot.h), where the build has them: the same schedules
// as lanes_forward / lanes_backward with the lane's weights in pair panels, always packed (the
// dot products need k in pairs), each product the dot kernel's (bits that depend only on the
// row and column: the same for any lanes or thread count, and as the per-step schedule's
// DotGemm).
// Forward: lane l's panel holds its rows of each gate of W_hh, gate g from column g * up (up =
// its units rounded up to whole strips), all gates multiplied in one pass over h_prev
// (gemm_gates; one product per gate read h_prev G times and ran narrower tiles: 1.20-1.24x
// per-step's time at H=256 B=32 inference against 1.01-1.09x in one pass).
bool lanes_forward_dot(const RecurrenceForward<c10::BFloat16>& p,
                       const std::vector<int64_t>& units, const Bf16DotKernels& dot) {
  using S = c10::BFloat16;
  const int64_t T = p.steps, B = p.batch, H = p.hidden, G = gates_of(p.cell);
  const int64_t L = static_cast<int64_t>(units.size()) - 1;
  const RowKernels<S>& k = row_kernels<S>();
  // allocation before the threads start: nothing inside may throw past the barrier
  std::vector<S> gh_buffer(p.cell == Cell::kGru ? B * 3 * H : 0);  // gh: [B, 3H] (GRU)
  const LanePanels<uint32_t> panels(/*packed=*/true, per_lane(units, [&](int64_t n) {
                                      return dot_panel_size(H, G * lane_padded_units(n));
                                    }));
  const ForwardSteps<S> seq{p, gh_buffer.data()};
  StepBarrier barrier(L);
  at::parallel_for(0, L, 1, [&](int64_t l0, int64_t l1) {
    for (int64_t l = l0; l < l1; ++l) {
      const int64_t u0 = units[l], n = units[l + 1] - u0, up = lane_padded_units(n);
      for (int64_t g = 0; g < G; ++g) {  // rows g * H + u0 .. of W_hh: [G*H, H]
        dot.pack_rows(p.w_hh + (g * H + u0) * H, H, n, H, panels[l] + dot_strip_offset(g * up, H));
      }
    }
    for (int64_t s = 0; s < T; ++s) {
      for (int64_t l = l0; l < l1; ++l) {
        const int64_t u0 = units[l];
        dot.gemm_gates(seq.h_prev(s), seq.h_prev_row(s), B, H, panels[l], G,
                       units[l + 1] - u0, seq.hidden(s) + u0, seq.hidden_row(), H,
                       seq.hidden_adds());
        seq.pointwise(k, s, 0, B, u0, units[l + 1]);
      }
      if (s + 1 < T) barrier.arrive_and_wait(l1 - l0);
    }
  });
  return true;
}

// Backward: lane l's panel holds its columns of W_hh ([G*H, H]: K = G*H).
bool lanes_backward_dot(const RecurrenceBackward<c10::BFloat16>& p,
                        const std::vector<int64_t>& units, const Bf16DotKernels& dot) {
  using S = c10::BFloat16;
  const int64_t T = p.steps, B = p.batch, H = p.hidden, G = gates_of(p.cell);
  const int64_t L = static_cast<int64_t>(units.size()) - 1;
  const RowKernels<S>& k = row_kernels<S>();
  const LanePanels<uint32_t> panels(
      /*packed=*/true, per_lane(units, [&](int64_t n) { return dot_panel_size(G * H, n); }));
  const BackwardSteps<S> seq{p};
  StepBarrier barrier(L);
  at::parallel_for(0, L, 1, [&](int64_t l0, int64_t l1) {
    for (int64_t l = l0; l < l1; ++l) {
      dot.pack_columns(p.w_hh + units[l], H, G * H, units[l + 1] - units[l], panels[l]);
    }
    for (int64_t s = T - 1; s >= 0; --s) {
      for (int64_t l = l0; l < l1; ++l) seq.pointwise(k, s, 0, B, units[l], units[l + 1]);
      barrier.arrive_and_wait(l1 - l0);
      for (int64_t l = l0; l < l1; ++l) {
        const int64_t u0 = units[l];
        dot.gemm(seq.d_h(s), p.dh_row, B, G * H, panels[l], units[l + 1] - u0,
                 p.dh + u0, H, /*accumulate=*/true);
      }
    }
  });
  return true;
}

}  // namespace

template <typename S>
bool recurrence_forward(const RecurrenceForward<S>& p) {
  const int64_t T = p.steps, B = p.batch, H = p.hidden, G = gates_of(p.cell);
  const std::vector<int64_t> units = lanes(B, H, c10::CppTypeToScalarType<S>::value, T);
  if (!units.empty()) {
    if constexpr (std::is_same_v<S, c10::BFloat16>) {
      if (const Bf16DotKernels* dot = bf16_dot_kernels()) return lanes_forward_dot(p, units, *dot);
    }
    return lanes_forward(p, units);
  }
  const std::vector<int64_t> starts = row_blocks(B, H, G, c10::CppTypeToScalarType<S>::value, T);
  if (starts.empty()) return false;
  const RowKernels<S>& k = row_kernels<S>();
  // gh = h_prev W_hh^T (GRU: a buffer of its own; LSTM / RNN: added to x in place)
  const auto hidden = hidden_gemm<S>(weight_tensor(p.w_hh, G * H, H), /*transpose_w=*/true, B, T);
  std::vector<S> gh_buffer(p.cell == Cell::kGru ? B * 3 * H : 0);  // gh: [B, 3H]
  const ForwardSteps<S> seq{p, gh_buffer.data()};
  for_row_blocks(starts, [&](int64_t b0, int64_t b1) {
    for (int64_t s = 0; s < T; ++s) {
      hidden->run(seq.h_prev(s) + b0 * seq.h_prev_row(s), seq.h_prev_row(s),
                  seq.hidden(s) + b0 * seq.hidden_row(), seq.hidden_row(), b1 - b0,
                  seq.hidden_adds());
      seq.pointwise(k, s, b0, b1, 0, H);
    }
  });
  return true;
}

template <typename S>
bool recurrence_backward(const RecurrenceBackward<S>& p) {
  const int64_t T = p.steps, B = p.batch, H = p.hidden, G = gates_of(p.cell);
  const std::vector<int64_t> units = lanes(B, H, c10::CppTypeToScalarType<S>::value, T);
  if (!units.empty()) {
    if constexpr (std::is_same_v<S, c10::BFloat16>) {
      if (const Bf16DotKernels* dot = bf16_dot_kernels()) return lanes_backward_dot(p, units, *dot);
    }
    return lanes_backward(p, units);
  }
  const std::vector<int64_t> starts = row_blocks(B, H, G, c10::CppTypeToScalarType<S>::value, T);
  if (starts.empty()) return false;
  const RowKernels<S>& k = row_kernels<S>();
  // dh += d_h W_hh (d_h: GRU's d_gh, LSTM's d_gates, RNN's d_pre)
  const auto hidden =
      hidden_gemm<S>(weight_tensor(p.w_hh, G * H, H), /*transpose_w=*/false, B, T);
  const BackwardSteps<S> seq{p};
  for_row_blocks(starts, [&](int64_t b0, int64_t b1) {
    for (int64_t s = T - 1; s >= 0; --s) {
      seq.pointwise(k, s, b0, b1, 0, H);
      hidden->run(seq.d_h(s) + b0 * p.dh_row, p.dh_row, p.dh + b0 * H, H, b1 - b0, true);
    }
  });
  return true;
}

template bool recurrence_forward<float>(const RecurrenceForward<float>&);
template bool recurrence_forward<double>(const RecurrenceForward<double>&);
template bool recurrence_forward<c10::BFloat16>(const RecurrenceForward<c10::BFloat16>&);
template bool recurrence_forward<c10::Half>(const RecurrenceForward<c10::Half>&);
template bool recurrence_backward<float>(const RecurrenceBackward<float>&);
template bool recurrence_backward<double>(const RecurrenceBackward<double>&);
template bool recurrence_backward<c10::BFloat16>(const RecurrenceBackward<c10::BFloat16>&);
template bool recurrence_backward<c10::Half>(const RecurrenceBackward<c10::Half>&);

std::string cpu_schedule() {
  switch (static_cast<CpuSchedule>(setting().load())) {
    case CpuSchedule::kPerStep: return "per-step";
    case CpuSchedule::kRowBlocks: return "row-blocks";
    case CpuSchedule::kLanes: return "lanes";
    default: return "auto";
  }
}

void set_cpu_schedule(const std::string& name) { setting().store(static_cast<int>(parse(name))); }

}  // namespace fused_rnn::cpu
