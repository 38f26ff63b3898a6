// Torch glue of the CUDA selective-scan kernels: the CUDA implementation of
// the ops that ssd_cpu.cpp defines (load patchscale_mm.ops._C first).
#include <cmath>
#include <vector>

#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>
#include <torch/library.h>

#include "ssd_cuda.h"
#include "ssd_inputs.h"

namespace patchscale_ssd_cuda {
namespace {

using patchscale_ssd_inputs::chunk_count;
using patchscale_ssd_inputs::given;
using patchscale_ssd_inputs::OptT;
using patchscale_ssd_inputs::ptr_or_null;

constexpr const char *kOp = "ssd_scan cuda";

Params make_params(const at::Tensor &x, const at::Tensor &dt, const at::Tensor &A,
                   const at::Tensor &B, const at::Tensor &C, const OptT &D, const OptT &z,
                   const OptT &dt_bias, const OptT &init, bool dt_softplus, double dt_min,
                   double dt_max, int64_t chunk_size) {
  TORCH_CHECK(x.is_cuda(), kOp, ": x must be a CUDA tensor, got ", x.device());
  Params P = patchscale_ssd_inputs::read_scan_inputs<Params>(
      kOp, x, dt, A, B, C, D, z, dt_bias, init, dt_softplus, dt_min, dt_max, chunk_size);
  P.nchunks = chunk_count(P.seqlen, P.chunk);
  return P;
}

// dt after bias, softplus and clamp, and d(dt)/d(raw dt); as process_dt in
// the kernels (softplus threshold 20, torch.clamp's gradient mask).
std::pair<at::Tensor, at::Tensor> process_dt(const at::Tensor &dt, const OptT &dt_bias,
                                             const Params &P) {
  at::Tensor v = given(dt_bias) ? dt + *dt_bias : dt.clone();
  at::Tensor f = at::ones_like(v);
  if (P.dt_softplus) {
    const at::Tensor small = v <= 20;
    f = at::where(small, at::sigmoid(v), f);
    v = at::where(small, at::log1p(at::exp(v)), v);
  }
  if (P.dt_clamp) {
    f = f * ((v >= P.dt_min) & (v <= P.dt_max)).to(f.scalar_type());
    v = v.clamp(P.dt_min, P.dt_max);
  }
  return {v, f};
}

// (b, h, nchunks): exp(A * sum of dt over each chunk), the decay across it.
at::Tensor chunk_decay(const at::Tensor &dtv, const at::Tensor &A, const Params &P) {
  const int64_t pad = P.nchunks * P.chunk - P.seqlen;
  at::Tensor d = pad ? at::constant_pad_nd(dtv, {0, 0, 0, pad}) : dtv;  // (b, nc * chunk, h)
  d = d.view({P.batch, P.nchunks, P.chunk, P.nheads}).sum(2);          // (b, nc, h)
  return at::exp(d * A).permute({0, 2, 1}).contiguous();
}

void launch_check(const char *err) { TORCH_CHECK(err == nullptr, err ? err : ""); }

}  // namespace

std::vector<at::Tensor> ssd_fwd_cuda(const at::Tensor &x, const at::Tensor &dt,
                                     const at::Tensor &A, const at::Tensor &B,
                                     const at::Tensor &C, const OptT &D, const OptT &z,
                                     const OptT &dt_bias, const OptT &initial_states,
                                     bool dt_softplus, double dt_min, double dt_max,
                                     int64_t chunk_size, bool save_states) {
  const c10::cuda::CUDAGuard guard(x.device());
  Params P = make_params(x, dt, A, B, C, D, z, dt_bias, initial_states, dt_softplus, dt_min,
                         dt_max, chunk_size);
  at::Tensor out = at::empty_like(x);
  at::Tensor fin = at::zeros({P.batch, P.nheads, P.headdim, P.dstate}, x.options());
  at::Tensor states =
      at::empty({P.batch, P.nheads, P.nchunks, P.dstate, P.headdim}, x.options());
  at::Tensor decay = chunk_decay(process_dt(dt, dt_bias, P).first, A, P);
  P.decay = decay.data_ptr();
  P.states = states.data_ptr();
  P.out = out.data_ptr();
  P.final_state = fin.data_ptr();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  launch_check(x.scalar_type() == at::kDouble ? forward<double>(P, stream)
                                              : forward<float>(P, stream));
  return {out, fin, save_states ? states : at::empty({0}, x.options())};
}

std::vector<at::Tensor> ssd_bwd_cuda(const at::Tensor &dout, const OptT &dfinal,
                                     const at::Tensor &x, const at::Tensor &dt,
                                     const at::Tensor &A, const at::Tensor &B,
                                     const at::Tensor &C, const OptT &D, const OptT &z,
                                     const OptT &dt_bias, const OptT &initial_states,
                                     const at::Tensor &chunk_states, bool dt_softplus,
                                     double dt_min, double dt_max, int64_t chunk_size) {
  const c10::cuda::CUDAGuard guard(x.device());
  Params P = make_params(x, dt, A, B, C, D, z, dt_bias, initial_states, dt_softplus, dt_min,
                         dt_max, chunk_size);
  patchscale_ssd_inputs::check_grad_inputs(kOp, P, x, dout, dfinal, chunk_states);
  const int64_t b = P.batch, l = P.seqlen, h = P.nheads, p = P.headdim, g = P.ngroups,
                n = P.dstate;
  const auto opt = x.options();
  const auto dt_f = process_dt(dt, dt_bias, P);
  at::Tensor decay = chunk_decay(dt_f.first, A, P);
  at::Tensor dstates = at::empty_like(chunk_states);
  at::Tensor dx = at::empty_like(x);
  at::Tensor dz = given(z) ? at::empty_like(x) : at::empty({0}, opt);
  at::Tensor dinit = given(initial_states) ? at::empty({b, h, p, n}, opt) : at::empty({0}, opt);
  at::Tensor dB = at::zeros({b, l, g, n}, opt), dC = at::zeros({b, l, g, n}, opt);
  at::Tensor ada = at::zeros({b, l, h}, opt), dtx = at::zeros({b, l, h}, opt);
  at::Tensor dD = given(D) ? at::zeros({h, p}, opt) : at::empty({0}, opt);
  P.decay = decay.data_ptr();
  P.states = const_cast<void *>(chunk_states.data_ptr());
  P.dout = dout.data_ptr();
  P.dfinal = ptr_or_null(dfinal);
  P.dstates = dstates.data_ptr();
  P.dx = dx.data_ptr();
  P.dz = given(z) ? dz.data_ptr() : nullptr;
  P.dinit = given(initial_states) ? dinit.data_ptr() : nullptr;
  P.dB = dB.data_ptr();
  P.dC = dC.data_ptr();
  P.ada = ada.data_ptr();
  P.dtx = dtx.data_ptr();
  P.dD = given(D) ? dD.data_ptr() : nullptr;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  launch_check(x.scalar_type() == at::kDouble ? backward<double>(P, stream)
                                              : backward<float>(P, stream));
  // dt = f(raw) feeds u = dt x (<x, du>) and a = exp(dt A) (a * da).
  at::Tensor ddt = (dtx + ada * A) * dt_f.second;
  at::Tensor dA = (ada * dt_f.first).sum(at::IntArrayRef{0, 1});
  at::Tensor ddt_bias = given(dt_bias) ? ddt.sum(at::IntArrayRef{0, 1}) : at::empty({0}, opt);
  return {dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinit};
}

}  // namespace patchscale_ssd_cuda

TORCH_LIBRARY_IMPL(patchscale_mm, CUDA, m) {
  m.impl("ssd_fwd", &patchscale_ssd_cuda::ssd_fwd_cuda);
  m.impl("ssd_bwd", &patchscale_ssd_cuda::ssd_bwd_cuda);
}

// Importing the module registers the CUDA implementations above.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {}
