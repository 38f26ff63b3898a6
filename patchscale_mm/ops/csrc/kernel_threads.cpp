// The thread policy of the CPU kernels; see kernel_threads.h.
#include "kernel_threads.h"

#include <chrono>
#include <cstdlib>
#include <mutex>
#include <string>

#include <c10/util/Exception.h>

namespace patchscale_threads {
namespace {

constexpr const char *kEnv = "PATCHSCALE_KERNEL_THREADS";
constexpr double kMinGain = 1.25;  // one thread's time over the split's
constexpr int kMinPairs = 5, kMaxPairs = 100;
constexpr double kWindowMs = 40;

std::mutex mutex;
bool setting_read = false;
int64_t setting = 0;
SplitTiming timing;

int64_t read_env() {
  const char *env = std::getenv(kEnv);
  const std::string v = env ? env : "";
  if (v.empty() || v == "auto") return 0;
  char *end = nullptr;
  const long long n = std::strtoll(v.c_str(), &end, 10);
  TORCH_CHECK(end && *end == '\0' && n >= 1, kEnv,
              " must be 'auto' or a positive number of threads, got '", v, "'");
  return n;
}

// Caller holds the mutex. One thread and the split alternate, so that a
// moment of load elsewhere on the machine weighs on both.
SplitTiming measure(int64_t threads) {
  SplitTiming s;
  s.measured = true;
  s.threads = threads;
  // The same problem on one thread and split; two heads per thread, up to 16
  // (about 3 ms on one thread), enough to see whether a split gains at all.
  const int64_t heads = 2 * std::min<int64_t>(threads, 8);
  s.heads = heads;
  probe_workload(heads, threads);  // starts the thread pool, allocates, warms up
  auto ms = [&](int64_t t) {
    const auto t0 = std::chrono::steady_clock::now();
    probe_workload(heads, t);
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
        .count();
  };
  // Pairs for at least kWindowMs: another process's burst on the other CPU
  // (a BLAS pool spinning after its last call, say) lasts a few ms.
  s.one_ms = s.split_ms = 1e30;
  double spent = 0;
  for (int i = 0; i < kMaxPairs && (i < kMinPairs || spent < kWindowMs); ++i) {
    const double one = ms(1), split = ms(threads);
    s.one_ms = std::min(s.one_ms, one);
    s.split_ms = std::min(s.split_ms, split);
    spent += one + split;
  }
  return s;
}

// Caller holds the mutex. A bad value fails on every machine, not only on
// those with several threads.
int64_t current_setting() {
  if (!setting_read) {
    setting = read_env();
    setting_read = true;
  }
  return setting;
}

}  // namespace

int64_t kernel_threads() {
  std::lock_guard<std::mutex> lock(mutex);
  const int64_t t = at::get_num_threads(), cap = current_setting();
  if (t <= 1) return 1;
  if (cap > 0) return std::min(cap, t);
  if (!timing.measured) timing = measure(t);
  return timing.one_ms >= kMinGain * timing.split_ms ? t : 1;
}

void set_kernel_threads(int64_t n) {
  TORCH_CHECK(n >= 0, "kernel threads: 0 (decide by timing) or a positive number, got ", n);
  std::lock_guard<std::mutex> lock(mutex);
  setting = n;
  setting_read = true;
}

int64_t kernel_threads_setting() {
  std::lock_guard<std::mutex> lock(mutex);
  return current_setting();
}

SplitTiming split_timing() {
  std::lock_guard<std::mutex> lock(mutex);
  return timing;
}

}  // namespace patchscale_threads
