// Torch glue of the fused mixer kernels (mixer_cpu.h): argument checks,
// outputs, threading, and the op implementations registered by ssd_cpu.cpp.
// Included once, by ssd_cpu.cpp, the extension's torch-facing unit.
#pragma once
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include "kernel_threads.h"
#include "mixer_cpu.h"

namespace patchscale_mixer {

// The kernel set of the instruction set the scan uses (ssd_cpu.cpp).
const MixerKernelSet &kernels();

namespace {

Dtype storage_dtype(const at::Tensor &t, const char *op) {
  switch (t.scalar_type()) {
    case at::kFloat: return kFloat;
    case at::kBFloat16: return kBFloat16;
    case at::kDouble: return kDouble;
    default: TORCH_CHECK(false, op, ": float32, bfloat16 or float64 expected, got ", t.scalar_type());
  }
}

at::ScalarType compute_type(Dtype d) { return d == kDouble ? at::kDouble : at::kFloat; }

// (b, l, c) with unit channel stride: rows may be strided (slices of a wider
// tensor).
void check_rows(const at::Tensor &t, const char *op, const char *name) {
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor");
  TORCH_CHECK(t.dim() == 3, op, ": ", name, " must be (batch, seqlen, channels), got ", t.sizes());
  TORCH_CHECK(t.stride(2) == 1 || t.size(2) == 1, op, ": ", name,
              " must have contiguous channels");
}

void check_same(const at::Tensor &t, const at::Tensor &like, const char *op, const char *name) {
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), op, ": ", name, " has dtype ",
              t.scalar_type(), ", expected ", like.scalar_type());
  TORCH_CHECK(t.sizes() == like.sizes(), op, ": ", name, " has shape ", t.sizes(), ", expected ",
              like.sizes());
}

// Runs fn(begin, end, buffer) over [0, n) in fixed slices (kernel_threads.h),
// each with its own zeroed accumulator of acc_numel elements; returns their
// sum in slice order (the same bits on any number of threads).
template <typename F>
at::Tensor parallel_accumulate(int64_t n, int64_t grain, int64_t acc_numel, at::ScalarType dtype,
                               F &&fn) {
  const int64_t slices = patchscale_threads::slice_count(n, grain);
  at::Tensor acc = at::zeros({slices, acc_numel}, at::TensorOptions().dtype(dtype));
  patchscale_threads::parallel_slices(n, slices, [&](int64_t begin, int64_t end, int64_t i) {
    fn(begin, end, static_cast<char *>(acc.data_ptr()) + i * acc_numel * acc.element_size());
  });
  return patchscale_threads::sum_slices(acc);
}

constexpr int64_t kTokenBlock = 512;  // tokens per convolution task
constexpr int64_t kRowGrain = 64;     // rows per norm / gate task

ConvParams conv_params(const at::Tensor &x, const at::Tensor &w, const at::Tensor &bias,
                       bool silu) {
  ConvParams P{};
  P.batch = x.size(0);
  P.seqlen = x.size(1);
  P.channels = x.size(2);
  P.width = w.size(0);
  P.silu = silu;
  P.x = x.data_ptr();
  P.x_bs = x.stride(0);
  P.x_rs = x.stride(1);
  P.w = w.data_ptr();
  P.bias = bias.defined() ? bias.data_ptr() : nullptr;
  return P;
}

// weight (C, K) -> tap-major (K, C) in the compute dtype; bias likewise.
std::pair<at::Tensor, at::Tensor> conv_weights(const at::Tensor &x, const at::Tensor &weight,
                                               const c10::optional<at::Tensor> &bias,
                                               at::ScalarType ct) {
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == x.size(2),
              "conv1d_silu: weight must be (channels, width), got ", weight.sizes());
  at::Tensor w = weight.to(ct).t().contiguous();
  at::Tensor b;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->numel() == x.size(2), "conv1d_silu: bias must have one value per channel");
    b = bias->to(ct).contiguous();
  }
  return {w, b};
}

}  // namespace

// Causal depthwise conv1d over tokens (+ SiLU) of (b, l, C) rows; returns the
// output cut along channels into contiguous (b, l, splits[i]) tensors of the
// compute dtype.
std::vector<at::Tensor> conv1d_silu_fwd_cpu(const at::Tensor &x, const at::Tensor &weight,
                                            const c10::optional<at::Tensor> &bias,
                                            at::IntArrayRef splits, bool silu) {
  const char *op = "conv1d_silu_fwd";
  check_rows(x, op, "x");
  const Dtype d = storage_dtype(x, op);
  const at::ScalarType ct = compute_type(d);
  auto [w, b] = conv_weights(x, weight, bias, ct);
  TORCH_CHECK(!splits.empty() && splits.size() <= 4, op, ": 1 to 4 splits");
  ConvParams P = conv_params(x, w, b, silu);
  std::vector<at::Tensor> outs;
  int64_t total = 0;
  P.nsplit = static_cast<int>(splits.size());
  for (size_t j = 0; j < splits.size(); ++j) {
    outs.push_back(at::empty({P.batch, P.seqlen, splits[j]}, x.options().dtype(ct)));
    P.split_size[j] = splits[j];
    P.out[j] = outs.back().data_ptr();
    total += splits[j];
  }
  TORCH_CHECK(total == P.channels, op, ": splits sum to ", total, ", not ", P.channels);
  const ConvFn fn = kernels().conv_fwd[d];
  const int64_t nblk = (P.seqlen + kTokenBlock - 1) / kTokenBlock;
  patchscale_threads::parallel_for(P.batch * nblk, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t t0 = (i % nblk) * kTokenBlock;
      fn(P, i / nblk, t0, std::min(P.seqlen, t0 + kTokenBlock));
    }
  });
  return outs;
}

// Writes the input gradient into dx (same layout rules as x); returns
// (dweight (C, K), dbias (C) or empty) in the compute dtype.
std::vector<at::Tensor> conv1d_silu_bwd_cpu(const at::Tensor &x, const at::Tensor &weight,
                                            const c10::optional<at::Tensor> &bias,
                                            at::TensorList douts, const at::Tensor &dx,
                                            bool silu) {
  const char *op = "conv1d_silu_bwd";
  check_rows(x, op, "x");
  check_rows(dx, op, "dx");
  check_same(dx, x, op, "dx");
  const Dtype d = storage_dtype(x, op);
  const at::ScalarType ct = compute_type(d);
  auto [w, b] = conv_weights(x, weight, bias, ct);
  ConvParams P = conv_params(x, w, b, silu);
  TORCH_CHECK(!douts.empty() && douts.size() <= 4, op, ": 1 to 4 gradient pieces");
  P.nsplit = static_cast<int>(douts.size());
  int64_t total = 0;
  for (size_t j = 0; j < douts.size(); ++j) {
    const at::Tensor &g = douts[j];
    TORCH_CHECK(g.scalar_type() == ct && g.is_contiguous() && g.dim() == 3 &&
                    g.size(0) == P.batch && g.size(1) == P.seqlen,
                op, ": gradient ", j, " must be contiguous (b, l, c) of dtype ", ct);
    P.split_size[j] = g.size(2);
    P.dout[j] = g.data_ptr();
    total += g.size(2);
  }
  TORCH_CHECK(total == P.channels, op, ": gradients have ", total, " channels, not ", P.channels);
  P.dx = dx.data_ptr();
  P.dx_bs = dx.stride(0);
  P.dx_rs = dx.stride(1);
  const int64_t C = P.channels, K = P.width;
  const ConvFn fn = kernels().conv_bwd[d];
  const int64_t nblk = (P.seqlen + kTokenBlock - 1) / kTokenBlock;
  at::Tensor acc = parallel_accumulate(P.batch * nblk, 1, (K + 1) * C, ct,
                                       [&](int64_t begin, int64_t end, void *buf) {
    ConvParams Pt = P;
    Pt.dw = buf;
    Pt.dbias = static_cast<char *>(buf) + K * C * (d == kDouble ? 8 : 4);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t t0 = (i % nblk) * kTokenBlock;
      fn(Pt, i / nblk, t0, std::min(P.seqlen, t0 + kTokenBlock));
    }
  });
  at::Tensor dw = acc.narrow(0, 0, K * C).view({K, C}).t().contiguous();
  at::Tensor db = b.defined() ? acc.narrow(0, K * C, C).clone() : at::empty({0}, acc.options());
  return {dw, db};
}

namespace {

GatedNormParams gnorm_params(const at::Tensor &y, const at::Tensor &z, const at::Tensor &w,
                             int64_t group_size, double eps, const char *op) {
  check_rows(z, op, "z");
  TORCH_CHECK(y.is_contiguous() && y.sizes() == z.sizes(), op, ": y must be contiguous with z's shape");
  TORCH_CHECK(w.numel() == y.size(2), op, ": weight must have one value per channel");
  TORCH_CHECK(group_size > 0 && y.size(2) % group_size == 0, op,
              ": group_size must divide the channels");
  GatedNormParams P{};
  P.seqlen = y.size(1);
  P.rows = y.size(0) * P.seqlen;
  P.dim = y.size(2);
  P.group = group_size;
  P.eps = eps;
  P.y = y.data_ptr();
  P.z = z.data_ptr();
  P.z_bs = z.stride(0);
  P.z_rs = z.stride(1);
  P.w = w.data_ptr();
  return P;
}

}  // namespace

// rmsnorm(y * silu(z)) * weight per group; y (b, l, D) in the compute dtype
// of z, z strided rows. Returns (b, l, D) in z's dtype.
at::Tensor gated_rmsnorm_fwd_cpu(const at::Tensor &y, const at::Tensor &z,
                                 const at::Tensor &weight, int64_t group_size, double eps) {
  const char *op = "gated_rmsnorm_fwd";
  const Dtype d = storage_dtype(z, op);
  const at::ScalarType ct = compute_type(d);
  TORCH_CHECK(y.scalar_type() == ct, op, ": y must be ", ct);
  at::Tensor w = weight.to(ct).contiguous();
  GatedNormParams P = gnorm_params(y, z, w, group_size, eps, op);
  at::Tensor out = at::empty(y.sizes(), z.options());
  P.out = out.data_ptr();
  const GatedNormFn fn = kernels().gnorm_fwd[d];
  patchscale_threads::parallel_for(P.rows, kRowGrain,
                                   [&](int64_t b, int64_t e) { fn(P, b, e); });
  return out;
}

// Overwrites y with dy and writes dz (z's layout): the caller owns a
// recomputed or spent y, and no (rows, dim) buffer is allocated. Returns
// dweight in the compute dtype.
at::Tensor gated_rmsnorm_bwd_cpu(const at::Tensor &dout, const at::Tensor &y, const at::Tensor &z,
                                 const at::Tensor &weight, const at::Tensor &dz,
                                 int64_t group_size, double eps) {
  const char *op = "gated_rmsnorm_bwd";
  const Dtype d = storage_dtype(z, op);
  const at::ScalarType ct = compute_type(d);
  TORCH_CHECK(y.scalar_type() == ct, op, ": y must be ", ct);
  check_rows(dz, op, "dz");
  check_same(dz, z, op, "dz");
  TORCH_CHECK(dout.is_contiguous(), op, ": dout must be contiguous");
  check_same(dout, z, op, "dout");
  at::Tensor w = weight.to(ct).contiguous();
  GatedNormParams P = gnorm_params(y, z, w, group_size, eps, op);
  P.dout = dout.data_ptr();
  P.dy = y.data_ptr();
  P.dz = dz.data_ptr();
  P.dz_bs = dz.stride(0);
  P.dz_rs = dz.stride(1);
  const GatedNormFn fn = kernels().gnorm_bwd[d];
  return parallel_accumulate(P.rows, kRowGrain, P.dim, ct, [&](int64_t b, int64_t e, void *buf) {
    GatedNormParams Pt = P;
    Pt.dw = buf;
    fn(Pt, b, e);
  });
}

// silu(a) * b for contiguous rows [a | b] (..., 2H) -> (..., H), same dtype.
at::Tensor swiglu_fwd_cpu(const at::Tensor &ab) {
  const char *op = "swiglu_fwd";
  const Dtype d = storage_dtype(ab, op);
  TORCH_CHECK(ab.is_contiguous() && ab.dim() >= 1 && ab.size(-1) % 2 == 0, op,
              ": ab must be contiguous with an even last dimension");
  GluParams P{};
  P.hidden = ab.size(-1) / 2;
  P.rows = P.hidden ? ab.numel() / (2 * P.hidden) : 0;
  auto shape = ab.sizes().vec();
  shape.back() = P.hidden;
  at::Tensor s = at::empty(shape, ab.options());
  P.ab = ab.data_ptr();
  P.s = s.data_ptr();
  const GluFn fn = kernels().glu_fwd[d];
  patchscale_threads::parallel_for(P.rows, kRowGrain,
                                   [&](int64_t b, int64_t e) { fn(P, b, e); });
  return s;
}

// Overwrites ab with its gradient [da | db]: ab is spent once the gate's
// gradient is known, and the (rows, 2H) gradient needs no new buffer.
void swiglu_bwd_cpu(const at::Tensor &ds, const at::Tensor &ab) {
  const char *op = "swiglu_bwd";
  const Dtype d = storage_dtype(ab, op);
  TORCH_CHECK(ab.is_contiguous() && ds.is_contiguous() && ds.scalar_type() == ab.scalar_type() &&
                  ds.numel() * 2 == ab.numel(),
              op, ": ds must be contiguous, half of ab");
  GluParams P{};
  P.hidden = ab.size(-1) / 2;
  P.rows = P.hidden ? ab.numel() / (2 * P.hidden) : 0;
  P.ab = ab.data_ptr();
  P.ds = ds.data_ptr();
  P.dab = ab.data_ptr();
  const GluFn fn = kernels().glu_bwd[d];
  patchscale_threads::parallel_for(P.rows, kRowGrain,
                                   [&](int64_t b, int64_t e) { fn(P, b, e); });
}

// RMSNorm over the last dimension of a contiguous x; returns (out, rstd).
std::vector<at::Tensor> rms_norm_fwd_cpu(const at::Tensor &x, const at::Tensor &weight,
                                         double eps) {
  const char *op = "rms_norm_fwd";
  const Dtype d = storage_dtype(x, op);
  const at::ScalarType ct = compute_type(d);
  TORCH_CHECK(x.is_contiguous() && x.dim() >= 1 && weight.numel() == x.size(-1), op,
              ": x must be contiguous with weight.numel() channels");
  at::Tensor w = weight.to(ct).contiguous();
  RmsParams P{};
  P.dim = x.size(-1);
  P.rows = P.dim ? x.numel() / P.dim : 0;
  P.eps = eps;
  at::Tensor out = at::empty_like(x);
  auto rshape = x.sizes().vec();
  rshape.back() = 1;
  at::Tensor rstd = at::empty(rshape, x.options().dtype(ct));
  P.x = x.data_ptr();
  P.w = w.data_ptr();
  P.out = out.data_ptr();
  P.rstd = rstd.data_ptr();
  const RmsFn fn = kernels().rms_fwd[d];
  patchscale_threads::parallel_for(P.rows, kRowGrain,
                                   [&](int64_t b, int64_t e) { fn(P, b, e); });
  return {out, rstd};
}

// Returns (dx, dweight); dweight in the compute dtype.
std::vector<at::Tensor> rms_norm_bwd_cpu(const at::Tensor &dout, const at::Tensor &x,
                                         const at::Tensor &weight, const at::Tensor &rstd) {
  const char *op = "rms_norm_bwd";
  const Dtype d = storage_dtype(x, op);
  const at::ScalarType ct = compute_type(d);
  TORCH_CHECK(x.is_contiguous() && dout.is_contiguous(), op, ": x and dout must be contiguous");
  check_same(dout, x, op, "dout");
  TORCH_CHECK(rstd.scalar_type() == ct && rstd.is_contiguous() &&
                  rstd.numel() * x.size(-1) == x.numel(),
              op, ": rstd must be the forward's");
  at::Tensor w = weight.to(ct).contiguous();
  RmsParams P{};
  P.dim = x.size(-1);
  P.rows = P.dim ? x.numel() / P.dim : 0;
  at::Tensor dx = at::empty_like(x);
  P.x = x.data_ptr();
  P.w = w.data_ptr();
  P.rstd = const_cast<void *>(rstd.data_ptr());
  P.dout = dout.data_ptr();
  P.dx = dx.data_ptr();
  const RmsFn fn = kernels().rms_bwd[d];
  at::Tensor dw = parallel_accumulate(P.rows, kRowGrain, P.dim, ct,
                                      [&](int64_t b, int64_t e, void *buf) {
    RmsParams Pt = P;
    Pt.dw = buf;
    fn(Pt, b, e);
  });
  return {dx, dw};
}

}  // namespace patchscale_mixer
