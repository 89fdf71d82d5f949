// s3dgs native SSIM: the colour loss's structural similarity, forward and backward, fused for CPUs.
//
// Written for s3dgs. Same definition as s3dgs.losses.ssim (the readable torch reference) and the
// official 3DGS: a (2r+1)^2 Gaussian window (the product of a 1-D window with itself), zero
// padding of r ("same" size), C1 and C2, the mean over every pixel, channel and image. The idea of
// a fused kernel that saves the derivatives of the SSIM map w.r.t. the filtered maps for the
// backward is the one of the "fused-ssim" CUDA package that gsplat's trainer uses; the code is not.
//
// Ops in torch.ops.s3dgs_native (images channels last, [N, H, W, Ch], float32 or float64):
//
//   ssim_fwd(x, y, window, c1, c2, want_map, want_grad, n_threads) -> (mean [], map, partials)
//       the mean SSIM (dtype of x); the SSIM map [N,H,W,Ch] when want_map (else empty); when
//       want_grad, partials [3,N,H,W,Ch] = dS/dmu_x, 2 dS/dE[x^2], dS/dE[xy] per pixel (else empty).
//   ssim_bwd(x, y, partials, grad, window, n_threads) -> dL/dx [N,H,W,Ch]
//       grad: dL/dS, one element (the same for every pixel, e.g. g / (N H W Ch) for the mean) or
//       a map [N,H,W,Ch]. The second image gets no gradient (it is the target).
//
// The passes. A row of a channels-last image is one run of L = W Ch values; the horizontal filter
// of channel c at pixel j reads the values at the same offset every Ch elements, so it runs over
// the row's elements as one contiguous loop (vectorised; the taps are k Ch apart). Forward: the
// five maps x, y, x^2, y^2, xy are filtered horizontally row by row into a ring of 2r+1 filtered
// rows; each output row filters the ring vertically (the two-pass separable trick: 2 (2r+1)
// multiply-adds per map and pixel instead of (2r+1)^2), then the SSIM map, its row sums and, when
// asked, the three partial derivatives are computed from the five filtered values in the same pass.
// Backward, by the chain rule through mu_x = F(x), E[x^2] = F(x^2), E[xy] = F(xy):
//     dL/dx = F^T(G dS/dmu_x) + 2 x F^T(G dS/dE[x^2]) + y F^T(G dS/dE[xy]),   G = dL/dS,
// and F^T = F: the window is symmetric, and the transpose of a zero-padded "same" filter is the
// same zero-padded filter (out-of-image values are zeros in both directions). So the backward is
// the forward's filtering pass on three maps, then one combination per pixel.
//
// What is saved for the backward: the three partial maps (3 image-sized buffers), written by the
// forward's last pass where every needed value is in registers. The alternative, recomputing the
// five filtered maps in the backward, costs the forward's filtering again (5 maps, 2 passes) to
// save 3 buffers of memory that a training step can spare (960x540 RGB float32: 19 MB).
//
// Work units: (image, band of rows, strip of a row's elements); a strip is at most kStrip
// elements so that its ring (5 maps x (2r+1) rows) stays in the L2 cache; a band recomputes the
// r filtered rows above and below it. Every value is computed by the same operations in the same
// order whatever unit or thread computes it, and the mean is a sum of fixed per-(row, strip)
// partial sums (each over 8 fixed lanes, in double) added in row order: results are bitwise
// identical run to run and for any thread count. No atomics.
//
// SIMD: the loops are written so that GCC vectorises them (-O3; no FMA contraction:
// -ffp-contract=off). On x86-64 each unit is compiled for AVX2 and for the baseline (GCC
// target_clones, as in rasterize_cpu.cpp); both do the same IEEE operations element by element,
// so they give the same bits, except the lane sums of the mean, which are in a fixed order too.

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/scalar_tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

namespace s3dgs_ssim {

using at::Tensor;

#define SS_INLINE inline __attribute__((always_inline))
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(S3DGS_NO_CLONES)
#define SS_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define SS_CLONES
#endif

constexpr int64_t kStrip = 1024;   // at most this many elements of a row per work unit
constexpr int64_t kBandRows = 64;  // rows per work unit (before balancing over threads)
constexpr int64_t kChunk = 256;    // elements per vertical-filter chunk (its outputs stay in L1)
constexpr int kLanes = 8;          // partial sums of the mean per (row, strip)
static_assert(kChunk % kLanes == 0 && kStrip % kLanes == 0, "chunks hold whole lane groups");

// The decomposition into work units; strips depend only on L, so the partial sums of the mean do
// not depend on the thread count (bands do, which changes nothing: see above).
struct Units {
  int64_t N, H, L, nb, ns;
  int64_t count() const { return N * nb * ns; }
  int64_t row0(int64_t b) const { return b * H / nb; }
  int64_t col0(int64_t s) const { return s == ns ? L : (s * L / ns) / kLanes * kLanes; }
  int64_t max_width() const {
    int64_t w = 0;
    for (int64_t s = 0; s < ns; ++s) w = std::max(w, col0(s + 1) - col0(s));
    return w;
  }
};

Units make_units(int64_t N, int64_t H, int64_t L, int nt) {
  Units u{N, H, L, 1, 1};
  u.ns = std::max<int64_t>(1, (L + kStrip - 1) / kStrip);
  u.nb = std::min<int64_t>(H, std::max<int64_t>(1, (H + kBandRows - 1) / kBandRows));
  while (u.count() % nt != 0 && u.nb < H) ++u.nb;  // whole rounds of units for the threads
  return u;
}

int threads_of(int64_t n) { return n < 1 ? 1 : static_cast<int>(n); }

// 8 lanes of T (GCC vector extensions: one AVX register of floats, two of doubles); loads and
// stores through memcpy (unaligned). Each lane does the same IEEE operations as the scalar tails.
template <typename T>
struct Vec {
  typedef T V __attribute__((vector_size(kLanes * sizeof(T))));
};
template <typename V>
SS_INLINE V vload(const void* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V>
SS_INLINE void vstore(void* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}

// out[j] = sum_k g[k] in[j + (k - r) ch] for j in [0, n): in[-r ch, n + r ch) must be readable
// (zeros where the image has none). The centre tap first, then the pairs of equal weights.
template <typename T, int RC>
SS_INLINE void hfilter(const T* __restrict in, T* __restrict out, int64_t n, int64_t ch,
                       const T* __restrict g, int r_) {
  using V = typename Vec<T>::V;
  const int r = RC > 0 ? RC : r_;
  const T gc = g[r];
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    V acc = gc * vload<V>(in + j);
    for (int k = 1; k <= r; ++k)
      acc += g[r + k] * (vload<V>(in + j - k * ch) + vload<V>(in + j + k * ch));
    vstore(out + j, acc);
  }
  for (; j < n; ++j) {
    T acc = gc * in[j];
    for (int k = 1; k <= r; ++k) acc += g[r + k] * (in[j - k * ch] + in[j + k * ch]);
    out[j] = acc;
  }
}

// out[j] = sum_k g[k] rows[k][off + j] for j in [0, n), rows[k] the filtered row i - r + k; the
// same order of operations as hfilter.
template <typename T, int RC>
SS_INLINE void vfilter(const T* const* rows, int64_t off, T* __restrict out, int64_t n,
                       const T* __restrict g, int r_) {
  using V = typename Vec<T>::V;
  const int r = RC > 0 ? RC : r_;
  const T* c = rows[r] + off;
  const T gc = g[r];
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    V acc = gc * vload<V>(c + j);
    for (int k = 1; k <= r; ++k)
      acc += g[r + k] * (vload<V>(rows[r - k] + off + j) + vload<V>(rows[r + k] + off + j));
    vstore(out + j, acc);
  }
  for (; j < n; ++j) {
    T acc = gc * c[j];
    for (int k = 1; k <= r; ++k) acc += g[r + k] * (rows[r - k][off + j] + rows[r + k][off + j]);
    out[j] = acc;
  }
}

// p[e] = p[e] * s for e in [0, n).
template <typename T>
SS_INLINE void vscale(T* p, T s, int64_t n) {
  using V = typename Vec<T>::V;
  int64_t e = 0;
  for (; e + kLanes <= n; e += kLanes) vstore(p + e, vload<V>(p + e) * s);
  for (; e < n; ++e) p[e] = p[e] * s;
}

// o[e] = a[e] * b[e] for e in [0, n).
template <typename T>
SS_INLINE void vmul(const T* a, const T* b, T* o, int64_t n) {
  using V = typename Vec<T>::V;
  int64_t e = 0;
  for (; e + kLanes <= n; e += kLanes) vstore(o + e, vload<V>(a + e) * vload<V>(b + e));
  for (; e < n; ++e) o[e] = a[e] * b[e];
}

// dst[e - lo] = row[e] for e in [lo, hi), zero outside [0, L).
template <typename T>
SS_INLINE void fill_padded(T* dst, const T* row, int64_t lo, int64_t hi, int64_t L) {
  const int64_t a = std::max<int64_t>(lo, 0), b = std::min<int64_t>(hi, L);
  if (a - lo > 0) std::memset(dst, 0, sizeof(T) * (a - lo));
  if (b > a) std::memcpy(dst + (a - lo), row + a, sizeof(T) * (b - a));
  if (hi - std::max(b, a) > 0) std::memset(dst + (std::max(b, a) - lo), 0, sizeof(T) * (hi - std::max(b, a)));
}

template <typename T>
struct Args {
  const T* x;
  const T* y;
  const T* g;  // the 1-D window, 2r+1 values
  int r;
  int64_t N, H, L, Ch;
  T c1, c2;
  // forward outputs
  T* map;        // [N,H,L] or null
  T* part;       // [3,N,H,L] or null
  double* sums;  // [N,H,ns]
  // backward
  const T* gmap;  // [N,H,L] or null (then gs for every pixel)
  T gs;
  T* dx;  // [N,H,L]
};

// Per-thread buffers for one strip: padded input rows, the ring of filtered rows, a zero row,
// the vertical outputs of one chunk.
template <typename T>
struct Scratch {
  int nm, R;
  int64_t ws, pw;  // strip width (max), padded width
  std::vector<T> pad, ring, zero, tmp;
  Scratch(int nm_, int r, int64_t ws_, int64_t ch)
      : nm(nm_), R(2 * r + 1), ws(ws_), pw(ws_ + 2 * r * ch),
        pad(static_cast<size_t>(nm_ * pw)), ring(static_cast<size_t>(R * nm_ * ws_)),
        zero(static_cast<size_t>(ws_), T(0)), tmp(static_cast<size_t>((nm_ + 1) * kChunk)) {}
  T* slot(int64_t row, int m) { return ring.data() + ((row % R) * nm + m) * ws; }
};

// The filtered rows i - r .. i + r of map m for output row i (the zero row outside the image).
template <typename T>
SS_INLINE void ring_rows(Scratch<T>& sc, const T** rows, int64_t i, int r, int64_t H, int m) {
  for (int k = 0; k <= 2 * r; ++k) {
    const int64_t ii = i - r + k;
    rows[k] = (ii < 0 || ii >= H) ? sc.zero.data() : sc.slot(ii, m);
  }
}

// ------------------------------------------------------------------------------------ forward
// The five maps of input row ii, filtered horizontally over the strip [j0, j1), into the ring.
template <typename T, int RC>
SS_INLINE void forward_hrow(const Args<T>& a, Scratch<T>& sc, int64_t n, int64_t ii, int64_t j0,
                            int64_t j1) {
  const int r = RC > 0 ? RC : a.r;
  const int64_t pc = r * a.Ch, pw = j1 - j0 + 2 * pc, L = a.L;
  const int64_t base = (n * a.H + ii) * L;
  T* px = sc.pad.data();
  T* py = px + sc.pw;
  T* pxx = py + sc.pw;
  T* pyy = pxx + sc.pw;
  T* pxy = pyy + sc.pw;
  fill_padded(px, a.x + base, j0 - pc, j1 + pc, L);
  fill_padded(py, a.y + base, j0 - pc, j1 + pc, L);
  vmul(px, px, pxx, pw);
  vmul(py, py, pyy, pw);
  vmul(px, py, pxy, pw);
  const T* ins[5] = {px, py, pxx, pyy, pxy};
  for (int m = 0; m < 5; ++m) hfilter<T, RC>(ins[m] + pc, sc.slot(ii, m), j1 - j0, a.Ch, a.g, r);
}

template <typename T, int RC>
SS_INLINE void forward_unit(const Args<T>& a, Scratch<T>& sc, int64_t n, int64_t i0, int64_t i1,
                            int64_t j0, int64_t j1, int64_t s, int64_t ns) {
  const int r = RC > 0 ? RC : a.r;
  const int64_t w = j1 - j0, H = a.H, L = a.L, plane = a.N * H * L;
  // the filtered rows above the band (and the first r of it), then one more per output row
  for (int64_t ii = std::max<int64_t>(0, i0 - r); ii < std::min<int64_t>(H, i0 + r); ++ii)
    forward_hrow<T, RC>(a, sc, n, ii, j0, j1);

  const T c1 = a.c1, c2 = a.c2;
  const bool want_map = a.map != nullptr, want_grad = a.part != nullptr;
  const T* rows[5][2 * 64 + 1];
  T* t = sc.tmp.data();
  for (int64_t i = i0; i < i1; ++i) {
    if (i + r < H) forward_hrow<T, RC>(a, sc, n, i + r, j0, j1);
    for (int m = 0; m < 5; ++m) ring_rows(sc, rows[m], i, r, H, m);
    const int64_t obase = (n * H + i) * L + j0;
    double acc[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t c0 = 0; c0 < w; c0 += kChunk) {
      const int64_t cn = std::min(kChunk, w - c0);
      for (int m = 0; m < 5; ++m) vfilter<T, RC>(rows[m], c0, t + m * kChunk, cn, a.g, r);
      const T* __restrict f1 = t;
      const T* __restrict f2 = t + kChunk;
      const T* __restrict f11 = t + 2 * kChunk;
      const T* __restrict f22 = t + 3 * kChunk;
      const T* __restrict f12 = t + 4 * kChunk;
      T* __restrict sv = t + 5 * kChunk;
      if (want_grad) {
        T* __restrict d1 = a.part + obase + c0;
        T* __restrict d2 = a.part + plane + obase + c0;
        T* __restrict d3 = a.part + 2 * plane + obase + c0;
        for (int64_t j = 0; j < cn; ++j) {
          const T mu1 = f1[j], mu2 = f2[j];
          const T m11 = mu1 * mu1, m22 = mu2 * mu2, m12 = mu1 * mu2;
          const T s11 = f11[j] - m11, s22 = f22[j] - m22, s12 = f12[j] - m12;
          const T A = T(2) * m12 + c1, B = T(2) * s12 + c2;
          const T Cc = m11 + m22 + c1, D = s11 + s22 + c2;
          const T den = Cc * D;
          const T S = (A * B) / den;
          const T rden = T(1) / den;
          sv[j] = S;
          d1[j] = T(2) * rden * (mu2 * (B - A) + mu1 * S * (Cc - D));
          d2[j] = T(-2) * S * Cc * rden;
          d3[j] = T(2) * A * rden;
        }
      } else {
        for (int64_t j = 0; j < cn; ++j) {
          const T mu1 = f1[j], mu2 = f2[j];
          const T m11 = mu1 * mu1, m22 = mu2 * mu2, m12 = mu1 * mu2;
          const T s11 = f11[j] - m11, s22 = f22[j] - m22, s12 = f12[j] - m12;
          const T A = T(2) * m12 + c1, B = T(2) * s12 + c2;
          const T Cc = m11 + m22 + c1, D = s11 + s22 + c2;
          sv[j] = (A * B) / (Cc * D);
        }
      }
      if (want_map) std::memcpy(a.map + obase + c0, sv, sizeof(T) * cn);
      int64_t j = 0;
      for (; j + kLanes <= cn; j += kLanes)
        for (int l = 0; l < kLanes; ++l) acc[l] += static_cast<double>(sv[j + l]);
      for (; j < cn; ++j) acc[j % kLanes] += static_cast<double>(sv[j]);
    }
    a.sums[(n * H + i) * ns + s] =
        ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  }
}

// ----------------------------------------------------------------------------------- backward
// The three maps G dS/d(.) of row ii, filtered horizontally over the strip [j0, j1), into the ring.
template <typename T, int RC>
SS_INLINE void backward_hrow(const Args<T>& a, Scratch<T>& sc, int64_t n, int64_t ii, int64_t j0,
                             int64_t j1) {
  const int r = RC > 0 ? RC : a.r;
  const int64_t pc = r * a.Ch, pw = j1 - j0 + 2 * pc, L = a.L;
  const int64_t base = (n * a.H + ii) * L, plane = a.N * a.H * L;
  // the in-image part of the padded row (the rest are zeros and stay zeros)
  const int64_t lo = std::max<int64_t>(0, pc - j0), hi = std::min<int64_t>(pw, L - j0 + pc);
  for (int m = 0; m < 3; ++m) {
    T* p = sc.pad.data() + m * sc.pw;
    fill_padded(p, a.part + m * plane + base, j0 - pc, j1 + pc, L);
    if (a.gmap) {
      vmul(p + lo, a.gmap + base + (j0 - pc + lo), p + lo, hi - lo);
    } else {
      vscale(p + lo, a.gs, hi - lo);
    }
    hfilter<T, RC>(p + pc, sc.slot(ii, m), j1 - j0, a.Ch, a.g, r);
  }
}

template <typename T, int RC>
SS_INLINE void backward_unit(const Args<T>& a, Scratch<T>& sc, int64_t n, int64_t i0, int64_t i1,
                             int64_t j0, int64_t j1) {
  const int r = RC > 0 ? RC : a.r;
  const int64_t w = j1 - j0, H = a.H, L = a.L;
  // the filtered rows above the band (and the first r of it), then one more per output row
  for (int64_t ii = std::max<int64_t>(0, i0 - r); ii < std::min<int64_t>(H, i0 + r); ++ii)
    backward_hrow<T, RC>(a, sc, n, ii, j0, j1);

  const T* rows[3][2 * 64 + 1];
  T* t = sc.tmp.data();
  for (int64_t i = i0; i < i1; ++i) {
    if (i + r < H) backward_hrow<T, RC>(a, sc, n, i + r, j0, j1);
    for (int m = 0; m < 3; ++m) ring_rows(sc, rows[m], i, r, H, m);
    const int64_t obase = (n * H + i) * L + j0;
    for (int64_t c0 = 0; c0 < w; c0 += kChunk) {
      const int64_t cn = std::min(kChunk, w - c0);
      for (int m = 0; m < 3; ++m) vfilter<T, RC>(rows[m], c0, t + m * kChunk, cn, a.g, r);
      const T* __restrict f1 = t;
      const T* __restrict f2 = t + kChunk;
      const T* __restrict f3 = t + 2 * kChunk;
      const T* __restrict xs = a.x + obase + c0;
      const T* __restrict ys = a.y + obase + c0;
      T* __restrict out = a.dx + obase + c0;
      for (int64_t j = 0; j < cn; ++j) out[j] = f1[j] + xs[j] * f2[j] + ys[j] * f3[j];
    }
  }
}

// One work unit per call, compiled per instruction set (see SIMD above); radius 5 (the 11x11
// window of 3DGS) with the taps unrolled at compile time, any other radius at run time.
#define SS_UNIT_FNS(T, SUF)                                                                      \
  SS_CLONES void forward_unit_##SUF(const Args<T>& a, Scratch<T>& sc, int64_t n, int64_t i0,    \
                                    int64_t i1, int64_t j0, int64_t j1, int64_t s, int64_t ns) { \
    if (a.r == 5)                                                                                \
      forward_unit<T, 5>(a, sc, n, i0, i1, j0, j1, s, ns);                                       \
    else                                                                                         \
      forward_unit<T, 0>(a, sc, n, i0, i1, j0, j1, s, ns);                                       \
  }                                                                                              \
  SS_CLONES void backward_unit_##SUF(const Args<T>& a, Scratch<T>& sc, int64_t n, int64_t i0,   \
                                     int64_t i1, int64_t j0, int64_t j1) {                       \
    if (a.r == 5)                                                                                \
      backward_unit<T, 5>(a, sc, n, i0, i1, j0, j1);                                             \
    else                                                                                         \
      backward_unit<T, 0>(a, sc, n, i0, i1, j0, j1);                                             \
  }
SS_UNIT_FNS(float, f32)
SS_UNIT_FNS(double, f64)
#undef SS_UNIT_FNS

inline void run_forward_unit(const Args<float>& a, Scratch<float>& sc, int64_t n, int64_t i0,
                             int64_t i1, int64_t j0, int64_t j1, int64_t s, int64_t ns) {
  forward_unit_f32(a, sc, n, i0, i1, j0, j1, s, ns);
}
inline void run_forward_unit(const Args<double>& a, Scratch<double>& sc, int64_t n, int64_t i0,
                             int64_t i1, int64_t j0, int64_t j1, int64_t s, int64_t ns) {
  forward_unit_f64(a, sc, n, i0, i1, j0, j1, s, ns);
}
inline void run_backward_unit(const Args<float>& a, Scratch<float>& sc, int64_t n, int64_t i0,
                              int64_t i1, int64_t j0, int64_t j1) {
  backward_unit_f32(a, sc, n, i0, i1, j0, j1);
}
inline void run_backward_unit(const Args<double>& a, Scratch<double>& sc, int64_t n, int64_t i0,
                              int64_t i1, int64_t j0, int64_t j1) {
  backward_unit_f64(a, sc, n, i0, i1, j0, j1);
}

// ----------------------------------------------------------------------------------------- ops
constexpr int kMaxRadius = 64;  // the row-pointer arrays above hold 2 * 64 + 1

void check_images(const Tensor& x, const Tensor& y) {
  TORCH_CHECK(x.dim() == 4, "s3dgs ssim: images must be [N, H, W, C], got ", x.sizes());
  TORCH_CHECK(x.sizes() == y.sizes(), "s3dgs ssim: shapes differ, ", x.sizes(), " vs ", y.sizes());
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), "s3dgs ssim: dtypes differ");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "s3dgs ssim: float32 or float64 only");
  TORCH_CHECK(x.device().is_cpu() && y.device().is_cpu(), "s3dgs ssim: CPU tensors only");
  TORCH_CHECK(x.is_contiguous() && y.is_contiguous(), "s3dgs ssim: contiguous images only");
}

// The window as T values; checks it is odd-sized and symmetric (the backward relies on it).
template <typename T>
std::vector<T> window_of(const Tensor& window) {
  TORCH_CHECK(window.dim() == 1 && window.scalar_type() == at::kDouble && window.device().is_cpu(),
              "s3dgs ssim: window must be a 1-D float64 CPU tensor");
  const int64_t k = window.size(0);
  TORCH_CHECK(k % 2 == 1 && k <= 2 * kMaxRadius + 1, "s3dgs ssim: window size must be odd and at most ",
              2 * kMaxRadius + 1, ", got ", k);
  Tensor wc = window.contiguous();
  const double* src = wc.data_ptr<double>();
  std::vector<T> g(static_cast<size_t>(k));
  for (int64_t i = 0; i < k; ++i) {
    TORCH_CHECK(src[i] == src[k - 1 - i], "s3dgs ssim: the window must be symmetric");
    g[i] = static_cast<T>(src[i]);
  }
  return g;
}

template <typename T>
void forward_impl(Args<T>& a, const Units& u, int nt) {
  const int64_t ws = u.max_width();
#pragma omp parallel num_threads(nt)
  {
    Scratch<T> sc(5, a.r, ws, a.Ch);
#pragma omp for schedule(dynamic, 1)
    for (int64_t k = 0; k < u.count(); ++k) {
      const int64_t s = k % u.ns, b = (k / u.ns) % u.nb, n = k / (u.ns * u.nb);
      run_forward_unit(a, sc, n, u.row0(b), u.row0(b + 1), u.col0(s), u.col0(s + 1), s, u.ns);
    }
  }
}

template <typename T>
void backward_impl(Args<T>& a, const Units& u, int nt) {
  const int64_t ws = u.max_width();
#pragma omp parallel num_threads(nt)
  {
    Scratch<T> sc(3, a.r, ws, a.Ch);
#pragma omp for schedule(dynamic, 1)
    for (int64_t k = 0; k < u.count(); ++k) {
      const int64_t s = k % u.ns, b = (k / u.ns) % u.nb, n = k / (u.ns * u.nb);
      run_backward_unit(a, sc, n, u.row0(b), u.row0(b + 1), u.col0(s), u.col0(s + 1));
    }
  }
}

template <typename T>
std::tuple<Tensor, Tensor, Tensor> ssim_fwd_t(const Tensor& x, const Tensor& y,
                                              const Tensor& window, double c1, double c2,
                                              bool want_map, bool want_grad, int nt) {
  const int64_t N = x.size(0), H = x.size(1), W = x.size(2), Ch = x.size(3), L = W * Ch;
  TORCH_CHECK(N * H * L > 0, "s3dgs ssim: empty images");
  std::vector<T> g = window_of<T>(window);
  auto opt = x.options();
  Tensor map = want_map ? at::empty({N, H, W, Ch}, opt) : at::empty({0}, opt);
  Tensor part = want_grad ? at::empty({3, N, H, W, Ch}, opt) : at::empty({0}, opt);
  const Units u = make_units(N, H, L, nt);
  std::vector<double> sums(static_cast<size_t>(N * H * u.ns));
  Args<T> a{};
  a.x = x.data_ptr<T>();
  a.y = y.data_ptr<T>();
  a.g = g.data();
  a.r = static_cast<int>(g.size() / 2);
  a.N = N, a.H = H, a.L = L, a.Ch = Ch;
  a.c1 = static_cast<T>(c1);
  a.c2 = static_cast<T>(c2);
  a.map = want_map ? map.data_ptr<T>() : nullptr;
  a.part = want_grad ? part.data_ptr<T>() : nullptr;
  a.sums = sums.data();
  forward_impl<T>(a, u, nt);
  double total = 0.0;  // row order, one thread
  for (double v : sums) total += v;
  Tensor mean = at::scalar_tensor(total / static_cast<double>(N * H * L), opt);
  return {mean, map, part};
}

std::tuple<Tensor, Tensor, Tensor> ssim_fwd(const Tensor& x, const Tensor& y, const Tensor& window,
                                            double c1, double c2, bool want_map, bool want_grad,
                                            int64_t n_threads) {
  check_images(x, y);
  const int nt = threads_of(n_threads);
  if (x.scalar_type() == at::kFloat)
    return ssim_fwd_t<float>(x, y, window, c1, c2, want_map, want_grad, nt);
  return ssim_fwd_t<double>(x, y, window, c1, c2, want_map, want_grad, nt);
}

template <typename T>
Tensor ssim_bwd_t(const Tensor& x, const Tensor& y, const Tensor& part, const Tensor& grad,
                  const Tensor& window, int nt) {
  const int64_t N = x.size(0), H = x.size(1), W = x.size(2), Ch = x.size(3), L = W * Ch;
  std::vector<T> g = window_of<T>(window);
  Tensor dx = at::empty({N, H, W, Ch}, x.options());
  const Units u = make_units(N, H, L, nt);
  Args<T> a{};
  a.x = x.data_ptr<T>();
  a.y = y.data_ptr<T>();
  a.g = g.data();
  a.r = static_cast<int>(g.size() / 2);
  a.N = N, a.H = H, a.L = L, a.Ch = Ch;
  a.part = const_cast<T*>(part.data_ptr<T>());
  if (grad.numel() == 1) {
    a.gmap = nullptr;
    a.gs = grad.data_ptr<T>()[0];
  } else {
    a.gmap = grad.data_ptr<T>();
  }
  a.dx = dx.data_ptr<T>();
  backward_impl<T>(a, u, nt);
  return dx;
}

Tensor ssim_bwd(const Tensor& x, const Tensor& y, const Tensor& partials, const Tensor& grad,
                const Tensor& window, int64_t n_threads) {
  check_images(x, y);
  const int64_t N = x.size(0), H = x.size(1), W = x.size(2), Ch = x.size(3);
  TORCH_CHECK(N * H * W * Ch > 0, "s3dgs ssim: empty images");
  TORCH_CHECK(partials.scalar_type() == x.scalar_type() && partials.is_contiguous() &&
                  partials.numel() == 3 * x.numel(),
              "s3dgs ssim: partials must be the forward's [3, N, H, W, C]");
  TORCH_CHECK(grad.scalar_type() == x.scalar_type() && grad.is_contiguous() &&
                  (grad.numel() == 1 || grad.numel() == x.numel()),
              "s3dgs ssim: grad must have one element or the image's shape");
  const int nt = threads_of(n_threads);
  if (x.scalar_type() == at::kFloat) return ssim_bwd_t<float>(x, y, partials, grad, window, nt);
  return ssim_bwd_t<double>(x, y, partials, grad, window, nt);
}

}  // namespace s3dgs_ssim

TORCH_LIBRARY_FRAGMENT(s3dgs_native, m) {
  m.def(
      "ssim_fwd(Tensor x, Tensor y, Tensor window, float c1, float c2, bool want_map, "
      "bool want_grad, int n_threads) -> (Tensor, Tensor, Tensor)",
      &s3dgs_ssim::ssim_fwd);
  m.def(
      "ssim_bwd(Tensor x, Tensor y, Tensor partials, Tensor grad, Tensor window, int n_threads) "
      "-> Tensor",
      &s3dgs_ssim::ssim_bwd);
}
