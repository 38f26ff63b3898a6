// How many of torch's intra-op threads the CPU kernels split their work over.
//
// torch starts one thread per CPU it sees, but the two vCPUs of a small cloud
// machine may be hyperthreads of one core, whether or not the machine says
// so. A split of FMA-bound work then gains nothing and loses to the threads'
// shared caches and waiting. So, unless PATCHSCALE_KERNEL_THREADS fixes a
// number, the first kernel call that could split times the scan kernel on a
// fixed problem on one thread and on all of them, alternately for 40 ms,
// once per process, and splits only if that saves at least a fifth of the
// time. The choice, like
// torch.set_num_threads, does not change the kernels' results: work summed
// across tasks is cut into slices that do not depend on the thread count
// (parallel_slices).
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#endif

namespace patchscale_threads {

// While alive, the calling thread's arithmetic flushes subnormal results to
// zero and reads subnormal inputs as zero (x86's FTZ and DAZ bits of MXCSR,
// restored after). Every kernel's work runs under one, on each thread that
// runs a part of it. Gradients that decay along the sequence, as from a class
// token back through the scan's state, fall below fp32's smallest normal
// (1.2e-38) for tokens far from it; many Intel cores take a microcode assist
// of a hundred cycles or more for an instruction that reads or makes such a
// number, and the matmuls downstream would read them again. AMD's cores run
// them at full speed. Either way the only change is that values below
// 1.2e-38 (fp32) or 2.2e-308 (fp64) become zero.
class FlushSubnormals {
 public:
#if defined(__x86_64__) || defined(_M_X64)
  FlushSubnormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | kFtzDaz); }
  ~FlushSubnormals() { _mm_setcsr(saved_); }

 private:
  static constexpr unsigned kFtzDaz = 0x8040;  // FTZ is bit 15, DAZ bit 6
  unsigned saved_;
#endif
};

// Threads the kernels use now: at most torch's intra-op threads.
int64_t kernel_threads();

// 0: decide by timing (the default, PATCHSCALE_KERNEL_THREADS=auto);
// n >= 1: at most n threads, no timing.
void set_kernel_threads(int64_t n);
int64_t kernel_threads_setting();

struct SplitTiming {
  bool measured = false;
  int64_t threads = 1;             // the split that was timed
  int64_t heads = 0;               // of the probe's problem
  double one_ms = 0, split_ms = 0;  // best times of the probe
};
SplitTiming split_timing();

// The probe's work, `heads` scans split over `threads` threads (defined with
// the scan kernels; called only here, under the policy's lock).
void probe_workload(int64_t heads, int64_t threads);

// at::parallel_for over [0, n) with each part under FlushSubnormals: how
// every kernel's work runs (the probe's too, so that it times the same).
template <typename F>
inline void parallel_parts(int64_t n, int64_t grain, const F &f) {
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    FlushSubnormals flush;
    f(begin, end);
  });
}

// parallel_parts on at most kernel_threads() threads (on one, inline on the
// calling thread, whose at::get_thread_num() is 0).
template <typename F>
inline void parallel_for(int64_t n, int64_t grain, const F &f) {
  const int64_t t = kernel_threads();
  parallel_parts(n, std::max<int64_t>(grain, (n + t - 1) / t), f);
}

// For work whose parts are summed: [0, n) in `slices` fixed slices, slice i
// handed to f(begin, end, i) on one thread, the slices spread over the
// kernel threads. Each slice sums into its own buffer and the caller adds
// the buffers in slice order, so the bits do not depend on the thread count.
constexpr int64_t kMaxSlices = 8;  // buffers, and the most threads such work uses

inline int64_t slice_count(int64_t n, int64_t grain) {
  return std::max<int64_t>(1, std::min<int64_t>(kMaxSlices, (n + grain - 1) / grain));
}

template <typename F>
inline void parallel_slices(int64_t n, int64_t slices, const F &f) {
  parallel_for(slices, 1, [&](int64_t first, int64_t last) {
    for (int64_t i = first; i < last; ++i) f(i * n / slices, (i + 1) * n / slices, i);
  });
}

// The slices' buffers (slices, ...) added in slice order, in one pass.
template <typename T>
inline void sum_slices_into(const T *buffers, int64_t slices, int64_t numel, T *total) {
  constexpr int64_t kBlock = 2048;  // elements summed while they sit in L1
  patchscale_threads::parallel_for(numel, kBlock, [&](int64_t begin, int64_t end) {
    for (int64_t b0 = begin; b0 < end; b0 += kBlock) {
      const int64_t b1 = std::min(end, b0 + kBlock);
      std::copy(buffers + b0, buffers + b1, total + b0);
      for (int64_t k = 1; k < slices; ++k) {
        const T *part = buffers + k * numel;
        for (int64_t i = b0; i < b1; ++i) total[i] += part[i];
      }
    }
  });
}

// Buffers are in the kernels' compute types, float or double.
inline at::Tensor sum_slices(const at::Tensor &buffers) {
  TORCH_CHECK(buffers.scalar_type() == at::kFloat || buffers.scalar_type() == at::kDouble,
              "sum_slices: float or double buffers, got ", buffers.scalar_type());
  if (buffers.size(0) == 1) return buffers[0];
  at::Tensor total = at::empty_like(buffers[0]);
  const int64_t slices = buffers.size(0), numel = total.numel();
  if (buffers.scalar_type() == at::kDouble)
    sum_slices_into(buffers.data_ptr<double>(), slices, numel, total.data_ptr<double>());
  else
    sum_slices_into(buffers.data_ptr<float>(), slices, numel, total.data_ptr<float>());
  return total;
}

}  // namespace patchscale_threads
