// Torch glue of the CPU selective-scan kernels and the op schemas (also of
// the fused mixer kernels, whose glue is mixer_cpu_ops.h).
//
// The ops are registered in the `patchscale_mm` library so that the CUDA
// extension only adds a CUDA implementation of the same schemas and
// torch.ops.patchscale_mm.ssd_fwd dispatches on the tensors' device.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include <ATen/Parallel.h>
#include <torch/extension.h>
#include <torch/library.h>

#include "kernel_threads.h"
#include "mixer_cpu.h"
#include "ssd_cpu.h"
#include "ssd_inputs.h"

namespace patchscale_ssd {

// The widest instruction set this CPU runs: avx512, avx2 or generic.
// PATCHSCALE_SSD_CPU_ISA=avx2|generic caps it (for benchmarks and tests of the
// narrower code paths). The scan and the fused mixer kernels use the same.
const std::string &cpu_isa() {
  static const std::string isa = [] {
    const char *env = std::getenv("PATCHSCALE_SSD_CPU_ISA");
    const std::string cap = env ? env : "";
#if defined(__x86_64__) || defined(_M_X64)
    __builtin_cpu_init();
    const bool fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if ((cap.empty() || cap == "avx512") && fma && __builtin_cpu_supports("avx512f"))
      return std::string("avx512");
    if (cap != "generic" && fma) return std::string("avx2");
#endif
    return std::string("generic");
  }();
  return isa;
}

namespace {

const KernelSet &kernels() {
  static const KernelSet ks = [] {
#if defined(__x86_64__) || defined(_M_X64)
    if (cpu_isa() == "avx512") return kernels_avx512();
    if (cpu_isa() == "avx2") return kernels_avx2();
#endif
    return kernels_generic();
  }();
  return ks;
}

using patchscale_ssd_inputs::chunk_count;
using patchscale_ssd_inputs::ptr_or_null;

constexpr const char *kOp = "ssd_scan cpp";

SSDParams make_params(const at::Tensor &x, const at::Tensor &dt, const at::Tensor &A,
                      const at::Tensor &B, const at::Tensor &C,
                      const c10::optional<at::Tensor> &D, const c10::optional<at::Tensor> &z,
                      const c10::optional<at::Tensor> &dt_bias,
                      const c10::optional<at::Tensor> &init, bool dt_softplus, double dt_min,
                      double dt_max, int64_t chunk_size) {
  TORCH_CHECK(x.device().is_cpu(), kOp, ": x must be a CPU tensor, got ", x.device());
  return patchscale_ssd_inputs::read_scan_inputs<SSDParams>(
      kOp, x, dt, A, B, C, D, z, dt_bias, init, dt_softplus, dt_min, dt_max, chunk_size);
}

// The forward runs one task per (batch, head) pair: each is independent.
// The backward sums dB/dC over the heads of a group, so its pairs run in
// `slices` fixed slices (kernel_threads.h), each adding into its own buffer,
// slice_stride elements apart.
void run(const SSDParams &P, bool is_double, bool backward, int64_t slices = 1,
         int64_t slice_stride = 0) {
  const KernelSet &ks = kernels();
  const KernelFn fn = backward ? (is_double ? ks.bwd_f64 : ks.bwd_f32)
                               : (is_double ? ks.fwd_f64 : ks.fwd_f32);
  const int64_t elem = is_double ? sizeof(double) : sizeof(float);
  // Each task runs whole sequences with the state in cache. The threads are
  // torch's OpenMP threads (setup.py compiles with -fopenmp; the process
  // loads torch's libgomp only), as many as kernel_threads.h allows.
  if (!backward) {
    patchscale_threads::parallel_for(P.batch * P.nheads, 1,
                                     [&](int64_t begin, int64_t end) { fn(P, begin, end); });
    return;
  }
  patchscale_threads::parallel_slices(P.batch * P.nheads, slices,
                                      [&](int64_t begin, int64_t end, int64_t slice) {
    SSDParams Pt = P;
    Pt.dB = static_cast<char *>(P.dB) + slice * slice_stride * elem;
    Pt.dC = static_cast<char *>(P.dC) + slice * slice_stride * elem;
    fn(Pt, begin, end);
  });
}

}  // namespace

// Returns (out, final_states, chunk_states); chunk_states is
// (b, h, nchunks, n, p), the state entering each chunk, saved for the
// backward (empty unless save_states).
std::vector<at::Tensor> ssd_fwd_cpu(const at::Tensor &x, const at::Tensor &dt,
                                    const at::Tensor &A, const at::Tensor &B,
                                    const at::Tensor &C, const c10::optional<at::Tensor> &D,
                                    const c10::optional<at::Tensor> &z,
                                    const c10::optional<at::Tensor> &dt_bias,
                                    const c10::optional<at::Tensor> &initial_states,
                                    bool dt_softplus, double dt_min, double dt_max,
                                    int64_t chunk_size, bool save_states) {
  SSDParams P = make_params(x, dt, A, B, C, D, z, dt_bias, initial_states, dt_softplus, dt_min,
                            dt_max, chunk_size);
  const int64_t nchunks = chunk_count(P.seqlen, P.chunk);
  at::Tensor out = at::empty_like(x);
  at::Tensor fin = at::empty({P.batch, P.nheads, P.headdim, P.dstate}, x.options());
  at::Tensor ckpt = save_states
                        ? at::empty({P.batch, P.nheads, nchunks, P.dstate, P.headdim}, x.options())
                        : at::empty({0}, x.options());
  P.out = out.data_ptr();
  P.final_state = fin.data_ptr();
  P.ckpt = save_states ? ckpt.data_ptr() : nullptr;
  run(P, x.scalar_type() == at::kDouble, false);
  return {out, fin, ckpt};
}

// Returns (dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinitial_states), with
// empty tensors for inputs that were not given. ddt is w.r.t. the raw dt.
std::vector<at::Tensor> ssd_bwd_cpu(
    const at::Tensor &dout, const c10::optional<at::Tensor> &dfinal, const at::Tensor &x,
    const at::Tensor &dt, const at::Tensor &A, const at::Tensor &B, const at::Tensor &C,
    const c10::optional<at::Tensor> &D, const c10::optional<at::Tensor> &z,
    const c10::optional<at::Tensor> &dt_bias, const c10::optional<at::Tensor> &initial_states,
    const at::Tensor &chunk_states, bool dt_softplus, double dt_min, double dt_max,
    int64_t chunk_size) {
  SSDParams P = make_params(x, dt, A, B, C, D, z, dt_bias, initial_states, dt_softplus, dt_min,
                            dt_max, chunk_size);
  patchscale_ssd_inputs::check_grad_inputs(kOp, P, x, dout, dfinal, chunk_states);
  const int64_t b = P.batch, l = P.seqlen, h = P.nheads, p = P.headdim, g = P.ngroups,
                n = P.dstate;
  const auto opt = x.options();
  at::Tensor dx = at::empty_like(x), ddt = at::empty_like(dt);
  // Sums over heads per slice of (batch, head) pairs, rather than per-head
  // buffers: at 50K tokens and 24 heads those would be 300 MB each.
  const int64_t slices = patchscale_threads::slice_count(b * h, 1);
  at::Tensor dB_s = at::zeros({slices, b, l, g, n}, opt);
  at::Tensor dC_s = at::zeros({slices, b, l, g, n}, opt);
  at::Tensor dA_bh = at::empty({b, h}, opt);
  const bool has_D = P.D != nullptr, has_z = P.z != nullptr, has_init = P.init != nullptr;
  at::Tensor dD_bh = has_D ? at::empty({b, h, p}, opt) : at::empty({0}, opt);
  at::Tensor dz = has_z ? at::empty_like(x) : at::empty({0}, opt);
  at::Tensor dinit = has_init ? at::empty({b, h, p, n}, opt) : at::empty({0}, opt);
  P.dout = dout.data_ptr();
  P.dfinal = ptr_or_null(dfinal);
  P.ckpt = const_cast<void *>(chunk_states.data_ptr());
  P.dx = dx.data_ptr();
  P.ddt = ddt.data_ptr();
  P.dB = dB_s.data_ptr();
  P.dC = dC_s.data_ptr();
  P.dA = dA_bh.data_ptr();
  P.dD = has_D ? dD_bh.data_ptr() : nullptr;
  P.dz = has_z ? dz.data_ptr() : nullptr;
  P.dinit = has_init ? dinit.data_ptr() : nullptr;
  run(P, x.scalar_type() == at::kDouble, true, slices, b * l * g * n);

  at::Tensor dB = patchscale_threads::sum_slices(dB_s);
  at::Tensor dC = patchscale_threads::sum_slices(dC_s);
  at::Tensor ddt_bias = P.dt_bias ? ddt.sum(at::IntArrayRef{0, 1}) : at::empty({0}, opt);
  return {dx, ddt, dA_bh.sum(0), dB, dC, has_D ? dD_bh.sum(0) : dD_bh, dz, ddt_bias, dinit};
}

}  // namespace patchscale_ssd

// The thread probe's work: the fp32 forward of `heads` heads of Adventurer's
// shape (64 x 64 state) over 1024 tokens, split over `threads`. The inputs
// are allocated on the first call and reused, so that page faults are not
// timed; their values are constant, as the kernel's time does not depend on
// them (no decay leaves the scaled range, nothing is subnormal).
void patchscale_threads::probe_workload(int64_t heads, int64_t threads) {
  constexpr int64_t L = 1024, P = 64, N = 64;
  static std::vector<float> x, dt, A, B, C, out, fin;
  if (static_cast<int64_t>(A.size()) != heads) {
    x.assign(L * heads * P, 0.5f);
    dt.assign(L * heads, 0.1f);
    A.assign(heads, -1.0f);
    B.assign(L * N, 0.25f);
    C.assign(L * N, 0.25f);
    out.assign(L * heads * P, 0.0f);
    fin.assign(heads * P * N, 0.0f);
  }
  patchscale_ssd::SSDParams S{};
  S.batch = 1;
  S.seqlen = S.chunk = L;
  S.nheads = heads;
  S.headdim = P;
  S.ngroups = 1;
  S.dstate = N;
  S.x = x.data();
  S.dt = dt.data();
  S.A = A.data();
  S.B = B.data();
  S.C = C.data();
  S.out = out.data();
  S.final_state = fin.data();
  const patchscale_ssd::KernelFn fn = patchscale_ssd::kernels().fwd_f32;
  patchscale_threads::parallel_parts(heads, (heads + threads - 1) / threads,
                                     [&](int64_t begin, int64_t end) { fn(S, begin, end); });
}

namespace patchscale_ssd {

// Shape functions, so the ops trace under torch.compile (FakeTensor falls
// back to Meta kernels).
std::vector<at::Tensor> ssd_fwd_meta(const at::Tensor &x, const at::Tensor &dt,
                                     const at::Tensor &A, const at::Tensor &B,
                                     const at::Tensor &C, const c10::optional<at::Tensor> &D,
                                     const c10::optional<at::Tensor> &z,
                                     const c10::optional<at::Tensor> &dt_bias,
                                     const c10::optional<at::Tensor> &initial_states,
                                     bool dt_softplus, double dt_min, double dt_max,
                                     int64_t chunk_size, bool save_states) {
  const auto b = x.sym_size(0), l = x.sym_size(1), h = x.sym_size(2), p = x.sym_size(3);
  const auto n = B.sym_size(3);
  const auto nchunks = chunk_count(l, chunk_size);
  return {at::empty_symint(x.sym_sizes(), x.options()),
          at::empty_symint({b, h, p, n}, x.options()),
          save_states ? at::empty_symint({b, h, nchunks, n, p}, x.options())
                      : at::empty({0}, x.options())};
}

std::vector<at::Tensor> ssd_bwd_meta(
    const at::Tensor &dout, const c10::optional<at::Tensor> &dfinal, const at::Tensor &x,
    const at::Tensor &dt, const at::Tensor &A, const at::Tensor &B, const at::Tensor &C,
    const c10::optional<at::Tensor> &D, const c10::optional<at::Tensor> &z,
    const c10::optional<at::Tensor> &dt_bias, const c10::optional<at::Tensor> &initial_states,
    const at::Tensor &chunk_states, bool dt_softplus, double dt_min, double dt_max,
    int64_t chunk_size) {
  auto like = [&](const c10::optional<at::Tensor> &t) {
    return t.has_value() && t->defined() ? at::empty_symint(t->sym_sizes(), x.options())
                                         : at::empty({0}, x.options());
  };
  return {like(x), like(dt), like(A), like(B), like(C), like(D), like(z), like(dt_bias),
          like(initial_states)};
}

}  // namespace patchscale_ssd

namespace patchscale_mixer {
const MixerKernelSet &kernels() {
  static const MixerKernelSet ks = [] {
#if defined(__x86_64__) || defined(_M_X64)
    if (patchscale_ssd::cpu_isa() == "avx512") return mixer_kernels_avx512();
    if (patchscale_ssd::cpu_isa() == "avx2") return mixer_kernels_avx2();
#endif
    return mixer_kernels_generic();
  }();
  return ks;
}
}  // namespace patchscale_mixer

#include "mixer_cpu_ops.h"

TORCH_LIBRARY(patchscale_mm, m) {
  m.def(
      "ssd_fwd(Tensor x, Tensor dt, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, "
      "Tensor? dt_bias, Tensor? initial_states, bool dt_softplus, float dt_min, float dt_max, "
      "int chunk_size, bool save_states) -> Tensor[]");
  m.def(
      "ssd_bwd(Tensor dout, Tensor? dfinal_states, Tensor x, Tensor dt, Tensor A, Tensor B, "
      "Tensor C, Tensor? D, Tensor? z, Tensor? dt_bias, Tensor? initial_states, "
      "Tensor chunk_states, bool dt_softplus, float dt_min, float dt_max, int chunk_size) "
      "-> Tensor[]");
  // Fused kernels of Adventurer's blocks (CPU only; see mixer_cpu.h).
  m.def("conv1d_silu_fwd(Tensor x, Tensor weight, Tensor? bias, int[] splits, bool silu) "
        "-> Tensor[]");
  m.def(
      "conv1d_silu_bwd(Tensor x, Tensor weight, Tensor? bias, Tensor[] douts, Tensor(a!) dx, "
      "bool silu) -> Tensor[]");
  m.def("gated_rmsnorm_fwd(Tensor y, Tensor z, Tensor weight, int group_size, float eps) "
        "-> Tensor");
  m.def(
      "gated_rmsnorm_bwd(Tensor dout, Tensor(a!) y, Tensor z, Tensor weight, Tensor(b!) dz, "
      "int group_size, float eps) -> Tensor");
  m.def("swiglu_fwd(Tensor ab) -> Tensor");
  m.def("swiglu_bwd(Tensor ds, Tensor(a!) ab) -> ()");
  m.def("rms_norm_fwd(Tensor x, Tensor weight, float eps) -> Tensor[]");
  m.def("rms_norm_bwd(Tensor dout, Tensor x, Tensor weight, Tensor rstd) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(patchscale_mm, CPU, m) {
  m.impl("ssd_fwd", &patchscale_ssd::ssd_fwd_cpu);
  m.impl("ssd_bwd", &patchscale_ssd::ssd_bwd_cpu);
  m.impl("conv1d_silu_fwd", &patchscale_mixer::conv1d_silu_fwd_cpu);
  m.impl("conv1d_silu_bwd", &patchscale_mixer::conv1d_silu_bwd_cpu);
  m.impl("gated_rmsnorm_fwd", &patchscale_mixer::gated_rmsnorm_fwd_cpu);
  m.impl("gated_rmsnorm_bwd", &patchscale_mixer::gated_rmsnorm_bwd_cpu);
  m.impl("swiglu_fwd", &patchscale_mixer::swiglu_fwd_cpu);
  m.impl("swiglu_bwd", &patchscale_mixer::swiglu_bwd_cpu);
  m.impl("rms_norm_fwd", &patchscale_mixer::rms_norm_fwd_cpu);
  m.impl("rms_norm_bwd", &patchscale_mixer::rms_norm_bwd_cpu);
}

TORCH_LIBRARY_IMPL(patchscale_mm, Meta, m) {
  m.impl("ssd_fwd", &patchscale_ssd::ssd_fwd_meta);
  m.impl("ssd_bwd", &patchscale_ssd::ssd_bwd_meta);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def(
      "cpu_isa", [] { return std::string(patchscale_ssd::kernels().name); },
      "Instruction set of the CPU kernels in use: avx512, avx2 or generic.");
  m.def(
      "intra_op_parallel",
      [] {
#ifdef INTRA_OP_PARALLEL
        return true;
#else
        return false;
#endif
      },
      "Whether at::parallel_for splits the kernels' work over torch's threads "
      "(built with OpenMP); false means one thread whatever torch.get_num_threads() says.");
  m.def("kernel_threads", &patchscale_threads::kernel_threads,
        "Threads the CPU kernels split their work over now (timing the split once per "
        "process unless a number is set).");
  m.def("set_kernel_threads", &patchscale_threads::set_kernel_threads, pybind11::arg("n"),
        "0: decide by timing the split once (PATCHSCALE_KERNEL_THREADS=auto, the default); "
        "n >= 1: at most n threads.");
  m.def("kernel_threads_setting", &patchscale_threads::kernel_threads_setting);
  m.def(
      "split_timing",
      [] {
        const auto s = patchscale_threads::split_timing();
        pybind11::dict d;
        d["measured"] = s.measured;
        d["threads"] = s.threads;
        d["heads"] = s.heads;
        d["one_ms"] = s.one_ms;
        d["split_ms"] = s.split_ms;
        return d;
      },
      "The probe behind the automatic choice: best times on one thread and split.");
}
