// Fused elementwise kernels of Adventurer's blocks (see mixer_cpu.h) for one
// instruction set.
//
// Included by ssd_cpu_{avx512,avx2,generic}.cpp inside a `#pragma GCC target`
// region and a namespace of its own, with SSD_VB (vector bytes) defined, like
// ssd_cpu_kernel.h. Float rows run SSD_VB / 4 channels per step with GCC
// vector extensions and a vectorised exp; the channels that remain, and
// double, run one at a time with std::exp.

struct bf16 {  // bit pattern of a bfloat16 (torch's at::BFloat16 layout)
  uint16_t bits;
};

template <typename T>
struct VecOf {
  typedef T v __attribute__((vector_size(SSD_VB), __may_alias__));
};
using VF = typename VecOf<float>::v;
typedef int32_t VI __attribute__((vector_size(SSD_VB), __may_alias__));
typedef uint32_t VU __attribute__((vector_size(SSD_VB), __may_alias__));
typedef uint16_t VH __attribute__((vector_size(SSD_VB / 2), __may_alias__));
static constexpr int WF = SSD_VB / sizeof(float);

// exp for float lanes, Cephes' expf: x = n ln2 + r, |r| <= ln2 / 2, a
// degree-7 polynomial in r, 2^n through the exponent bits; about 1 ulp. The
// input is clamped to [-87, 88], where 2^n stays a normal float.
static inline VF vexp(VF x) {
  const VF lo = VF{} - 87.0f, hi = VF{} + 88.0f, magic = VF{} + 12582912.0f;  // 1.5 * 2^23
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  // Adding 1.5 * 2^23 rounds x / ln2 to an integer held in the low mantissa bits.
  const VF m = x * 1.44269504088896341f + magic;
  const VF n = m - magic;
  const VF r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  VF p = VF{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const VI e = ((reinterpret_cast<const VI &>(m) - reinterpret_cast<const VI &>(magic)) + 127)
               << 23;
  return p * reinterpret_cast<const VF &>(e);
}
static inline float vexp(float x) { return std::exp(x); }
static inline double vexp(double x) { return std::exp(x); }

// Loads and stores of SSD_VB / 4 channels (Lanes) or of one (One), converting
// between the storage dtype S and the compute dtype. Rows have no particular
// alignment, hence memcpy (an unaligned vector move).
template <typename S>
struct Lanes {
  using T = float;
  using val = VF;
  static constexpr int W = WF;
  static inline VF splat(float s) { return VF{} + s; }
  static inline VF load(const float *p) {
    VF v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static inline void store(float *p, VF v) { std::memcpy(p, &v, sizeof v); }
  static inline VF load(const bf16 *p) {
    VH h;
    std::memcpy(&h, p, sizeof h);
    const VU u = __builtin_convertvector(h, VU) << 16;
    return reinterpret_cast<const VF &>(u);
  }
  static inline void store(bf16 *p, VF v) {
    VU u = reinterpret_cast<const VU &>(v);
    u = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;  // round to nearest even
    const VH h = __builtin_convertvector(u, VH);
    std::memcpy(p, &h, sizeof h);
  }
};

template <typename S, typename T>
struct One {
  using val = T;
  static constexpr int W = 1;
  static inline T splat(T s) { return s; }
  static inline T load(const T *p) { return *p; }
  static inline void store(T *p, T v) { *p = v; }
  static inline T load(const bf16 *p) {
    const uint32_t u = static_cast<uint32_t>(p->bits) << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
  }
  static inline void store(bf16 *p, T v) {
    float f = static_cast<float>(v);
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    p->bits = static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
  }
};

// Calls f(ops, c) for c = 0, W, 2W, ... over [0, n): whole vectors first (float
// compute only), then single channels.
template <typename S, typename T, typename F>
static inline void for_channels(int64_t n, F &&f) {
  int64_t c = 0;
  if constexpr (std::is_same<T, float>::value)
    for (; c + WF <= n; c += WF) f(Lanes<S>{}, c);
  for (; c < n; ++c) f(One<S, T>{}, c);
}

// Sum of a value over the channel loop: vectors add lane-wise, one
// horizontal sum at the end.
template <typename T>
struct Sum {
  VF v{};
  T s = 0;
  inline void add(VF x) { v += x; }
  inline void add(T x) { s += x; }
  inline T get() const {
    float h = 0;
    for (int i = 0; i < WF; ++i) h += v[i];
    return s + static_cast<T>(h);
  }
};

template <typename V>
static inline V sigmoid(V x) {
  return 1.0f / (1.0f + vexp(-x));
}
static inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// ---------------------------------------------------------------------------
// Causal depthwise convolution (+ SiLU)
// ---------------------------------------------------------------------------
// Pre-activation of channels [c, c + W) at token t: bias + sum_k w[k] x[t-K+1+k].
template <typename O, typename S, typename T>
static inline typename O::val conv_at(const ConvParams &P, const S *xb, const T *w,
                                      const T *bias, int64_t t, int64_t c) {
  const int64_t K = P.width;
  typename O::val acc = bias ? O::load(bias + c) : O::splat(T(0));
  for (int64_t k = std::max<int64_t>(0, K - 1 - t); k < K; ++k)
    acc += O::load(w + k * P.channels + c) * O::load(xb + (t - K + 1 + k) * P.x_rs + c);
  return acc;
}

template <typename S, typename T>
static void conv_fwd(const ConvParams &P, int64_t b, int64_t t0, int64_t t1) {
  const S *xb = static_cast<const S *>(P.x) + b * P.x_bs;
  const T *w = static_cast<const T *>(P.w), *bias = static_cast<const T *>(P.bias);
  for (int64_t t = t0; t < t1; ++t) {
    int64_t c0 = 0;
    for (int j = 0; j < P.nsplit; ++j) {
      const int64_t n = P.split_size[j];
      T *o = static_cast<T *>(P.out[j]) + (b * P.seqlen + t) * n;
      for_channels<S, T>(n, [&](auto ops, int64_t c) {
        using O = decltype(ops);
        auto a = conv_at<O>(P, xb, w, bias, t, c0 + c);
        if (P.silu) a = a * sigmoid(a);
        O::store(o + c, a);
      });
      c0 += n;
    }
  }
}

// Tokens are visited last to first, keeping the gradients of the K
// pre-activations that a token's input feeds in a ring of K rows; tokens in
// [t1, t1 + K - 1) are recomputed (not accumulated) so that token blocks can
// run on different threads.
template <typename S, typename T>
static void conv_bwd(const ConvParams &P, int64_t b, int64_t t0, int64_t t1) {
  const int64_t K = P.width, C = P.channels, L = P.seqlen;
  const S *xb = static_cast<const S *>(P.x) + b * P.x_bs;
  S *dxb = static_cast<S *>(P.dx) + b * P.dx_bs;
  const T *w = static_cast<const T *>(P.w), *bias = static_cast<const T *>(P.bias);
  T *dw = static_cast<T *>(P.dw), *dbias = static_cast<T *>(P.dbias);
  std::vector<T> ring(static_cast<size_t>(K * C));
  const int64_t te = std::min(L, t1 + K - 1);
  for (int64_t t = te - 1; t >= t0; --t) {
    T *g = ring.data() + (t % K) * C;  // gradient of the pre-activation at t
    int64_t c0 = 0;
    for (int j = 0; j < P.nsplit; ++j) {
      const int64_t n = P.split_size[j];
      const T *go = static_cast<const T *>(P.dout[j]) + (b * L + t) * n;
      for_channels<S, T>(n, [&](auto ops, int64_t c) {
        using O = decltype(ops);
        auto d = O::load(go + c);
        if (P.silu) {
          const auto a = conv_at<O>(P, xb, w, bias, t, c0 + c);
          const auto s = sigmoid(a);
          d = d * s * (1.0f + a * (1.0f - s));
        }
        O::store(g + c0 + c, d);
      });
      c0 += n;
    }
    if (t >= t1) continue;  // halo: gradient only
    for_channels<S, T>(C, [&](auto ops, int64_t c) {
      using O = decltype(ops);
      const auto d = O::load(g + c);
      if (dbias) O::store(dbias + c, O::load(dbias + c) + d);
      auto dx = O::splat(T(0));
      for (int64_t k = 0; k < K; ++k) {
        // Weight: input t-K+1+k feeds this token through tap k.
        if (t - K + 1 + k >= 0)
          O::store(dw + k * C + c,
                   O::load(dw + k * C + c) + d * O::load(xb + (t - K + 1 + k) * P.x_rs + c));
        // Input t feeds token t+j through tap K-1-j.
        const int64_t j = K - 1 - k;
        if (t + j < L) dx += O::load(w + k * C + c) * O::load(ring.data() + ((t + j) % K) * C + c);
      }
      O::store(dxb + t * P.dx_rs + c, dx);
    });
  }
}

// ---------------------------------------------------------------------------
// Gated RMSNorm: out = rmsnorm(y * silu(z)) * w per group
// ---------------------------------------------------------------------------
template <typename S, typename T>
static void gnorm_fwd(const GatedNormParams &P, int64_t r0, int64_t r1) {
  const int64_t D = P.dim, G = P.group;
  const T *w = static_cast<const T *>(P.w);
  std::vector<T> gbuf(static_cast<size_t>(D));
  T *gv = gbuf.data();
  for (int64_t r = r0; r < r1; ++r) {
    const T *y = static_cast<const T *>(P.y) + r * D;
    const S *z = static_cast<const S *>(P.z) + (r / P.seqlen) * P.z_bs + (r % P.seqlen) * P.z_rs;
    S *out = static_cast<S *>(P.out) + r * D;
    for (int64_t g0 = 0; g0 < D; g0 += G) {
      Sum<T> ss;
      for_channels<S, T>(G, [&](auto ops, int64_t c) {
        using O = decltype(ops);
        const auto zz = O::load(z + g0 + c);
        const auto v = O::load(y + g0 + c) * zz * sigmoid(zz);
        O::store(gv + g0 + c, v);
        ss.add(v * v);
      });
      const T rstd = T(1) / std::sqrt(ss.get() / T(G) + T(P.eps));
      for_channels<S, T>(G, [&](auto ops, int64_t c) {
        using O = decltype(ops);
        O::store(out + g0 + c, O::load(gv + g0 + c) * rstd * O::load(w + g0 + c));
      });
    }
  }
}

// With g = y silu(z), n = g rstd and dn = dout w:
//   dg = rstd (dn - n mean(dn n)),  dy = dg silu(z),
//   dz = dg y sigmoid(z) (1 + z (1 - sigmoid(z))),  dw = sum_rows dout n.
// dy may be y itself: each channel of y is read before dy is written.
template <typename S, typename T>
static void gnorm_bwd(const GatedNormParams &P, int64_t r0, int64_t r1) {
  const int64_t D = P.dim, G = P.group;
  const T *w = static_cast<const T *>(P.w);
  T *dw = static_cast<T *>(P.dw);
  std::vector<T> buf(static_cast<size_t>(2 * D));
  T *gv = buf.data(), *sg = buf.data() + D;
  for (int64_t r = r0; r < r1; ++r) {
    const T *y = static_cast<const T *>(P.y) + r * D;
    const int64_t b = r / P.seqlen, t = r % P.seqlen;
    const S *z = static_cast<const S *>(P.z) + b * P.z_bs + t * P.z_rs;
    S *dz = static_cast<S *>(P.dz) + b * P.dz_bs + t * P.dz_rs;
    const S *dout = static_cast<const S *>(P.dout) + r * D;
    T *dy = static_cast<T *>(P.dy) + r * D;
    for (int64_t g0 = 0; g0 < D; g0 += G) {
      Sum<T> ss, dot;
      for_channels<S, T>(G, [&](auto ops, int64_t c) {
        using O = decltype(ops);
        const auto zz = O::load(z + g0 + c), s = sigmoid(zz);
        const auto v = O::load(y + g0 + c) * zz * s;
        O::store(gv + g0 + c, v);
        O::store(sg + g0 + c, s);
        ss.add(v * v);
      });
      const T rstd = T(1) / std::sqrt(ss.get() / T(G) + T(P.eps));
      for_channels<S, T>(G, [&](auto ops, int64_t c) {
        using O = decltype(ops);
        const auto n = O::load(gv + g0 + c) * rstd, go = O::load(dout + g0 + c);
        O::store(dw + g0 + c, O::load(dw + g0 + c) + go * n);
        dot.add(go * O::load(w + g0 + c) * n);
      });
      const T mean_dot = dot.get() / T(G);
      for_channels<S, T>(G, [&](auto ops, int64_t c) {
        using O = decltype(ops);
        const auto n = O::load(gv + g0 + c) * rstd;
        const auto dg = (O::load(dout + g0 + c) * O::load(w + g0 + c) - n * mean_dot) * rstd;
        const auto zz = O::load(z + g0 + c), s = O::load(sg + g0 + c), yy = O::load(y + g0 + c);
        O::store(dy + g0 + c, dg * zz * s);
        O::store(dz + g0 + c, dg * yy * s * (1.0f + zz * (1.0f - s)));
      });
    }
  }
}

// ---------------------------------------------------------------------------
// SwiGLU gate: s = silu(a) * b
// ---------------------------------------------------------------------------
template <typename S, typename T>
static void glu_fwd(const GluParams &P, int64_t r0, int64_t r1) {
  const int64_t H = P.hidden;
  for (int64_t r = r0; r < r1; ++r) {
    const S *a = static_cast<const S *>(P.ab) + r * 2 * H, *bb = a + H;
    S *s = static_cast<S *>(P.s) + r * H;
    for_channels<S, T>(H, [&](auto ops, int64_t c) {
      using O = decltype(ops);
      const auto av = O::load(a + c);
      O::store(s + c, av * sigmoid(av) * O::load(bb + c));
    });
  }
}

// dab may be ab itself: each channel is read before it is written.
template <typename S, typename T>
static void glu_bwd(const GluParams &P, int64_t r0, int64_t r1) {
  const int64_t H = P.hidden;
  for (int64_t r = r0; r < r1; ++r) {
    const S *a = static_cast<const S *>(P.ab) + r * 2 * H, *bb = a + H;
    const S *ds = static_cast<const S *>(P.ds) + r * H;
    S *da = static_cast<S *>(P.dab) + r * 2 * H, *db = da + H;
    for_channels<S, T>(H, [&](auto ops, int64_t c) {
      using O = decltype(ops);
      const auto av = O::load(a + c), bv = O::load(bb + c), g = O::load(ds + c);
      const auto sg = sigmoid(av);
      O::store(da + c, g * bv * sg * (1.0f + av * (1.0f - sg)));
      O::store(db + c, g * av * sg);
    });
  }
}

// ---------------------------------------------------------------------------
// RMSNorm
// ---------------------------------------------------------------------------
template <typename S, typename T>
static void rms_fwd(const RmsParams &P, int64_t r0, int64_t r1) {
  const int64_t D = P.dim;
  const T *w = static_cast<const T *>(P.w);
  for (int64_t r = r0; r < r1; ++r) {
    const S *x = static_cast<const S *>(P.x) + r * D;
    S *out = static_cast<S *>(P.out) + r * D;
    Sum<T> ss;
    for_channels<S, T>(D, [&](auto ops, int64_t c) {
      using O = decltype(ops);
      const auto v = O::load(x + c);
      ss.add(v * v);
    });
    const T rstd = T(1) / std::sqrt(ss.get() / T(D) + T(P.eps));
    static_cast<T *>(P.rstd)[r] = rstd;
    for_channels<S, T>(D, [&](auto ops, int64_t c) {
      using O = decltype(ops);
      O::store(out + c, O::load(x + c) * rstd * O::load(w + c));
    });
  }
}

// dx = rstd (dn - n mean(dn n)) with n = x rstd, dn = dout w; dw = sum dout n.
template <typename S, typename T>
static void rms_bwd(const RmsParams &P, int64_t r0, int64_t r1) {
  const int64_t D = P.dim;
  const T *w = static_cast<const T *>(P.w);
  T *dw = static_cast<T *>(P.dw);
  for (int64_t r = r0; r < r1; ++r) {
    const S *x = static_cast<const S *>(P.x) + r * D, *dout = static_cast<const S *>(P.dout) + r * D;
    S *dx = static_cast<S *>(P.dx) + r * D;
    const T rstd = static_cast<const T *>(P.rstd)[r];
    Sum<T> dot;
    for_channels<S, T>(D, [&](auto ops, int64_t c) {
      using O = decltype(ops);
      const auto n = O::load(x + c) * rstd, go = O::load(dout + c);
      O::store(dw + c, O::load(dw + c) + go * n);
      dot.add(go * O::load(w + c) * n);
    });
    const T mean_dot = dot.get() / T(D);
    for_channels<S, T>(D, [&](auto ops, int64_t c) {
      using O = decltype(ops);
      const auto n = O::load(x + c) * rstd;
      O::store(dx + c, (O::load(dout + c) * O::load(w + c) - n * mean_dot) * rstd);
    });
  }
}

static inline MixerKernelSet make_mixer_kernel_set() {
  MixerKernelSet k{};
#define PATCHSCALE_MIXER_SET(name)                    \
  k.name[kFloat] = &name<float, float>;               \
  k.name[kBFloat16] = &name<bf16, float>;             \
  k.name[kDouble] = &name<double, double>;
  PATCHSCALE_MIXER_SET(conv_fwd)
  PATCHSCALE_MIXER_SET(conv_bwd)
  PATCHSCALE_MIXER_SET(gnorm_fwd)
  PATCHSCALE_MIXER_SET(gnorm_bwd)
  PATCHSCALE_MIXER_SET(glu_fwd)
  PATCHSCALE_MIXER_SET(glu_bwd)
  PATCHSCALE_MIXER_SET(rms_fwd)
  PATCHSCALE_MIXER_SET(rms_bwd)
#undef PATCHSCALE_MIXER_SET
  return k;
}
