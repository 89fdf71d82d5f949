// s3dgs native projection + colour features: per Gaussian and camera, in one pass, the EWA projection
// of s3dgs/render/projection.py (project_gaussians) and the features of s3dgs/render/types.py
// (color_features: RGB from spherical harmonics the gsplat way, the extra channels) with the depth
// channel that render() appends, forward and backward.
//
// Written for s3dgs; the maths is projection.py's (3DGS / gsplat's), the code is not gsplat's. Loaded
// by s3dgs/render/native_project.py. Ops in torch.ops.s3dgs_native (this file adds them with
// TORCH_LIBRARY_FRAGMENT; rasterize_cpu.cpp holds the TORCH_LIBRARY):
//
//   project_sh_fwd  means [N,3], quats [N,4], scales [N,3] (activated), opacities [N], colors
//                   (SH [N,K,3] with sh_degree >= 0, RGB [N,3] with sh_degree = -1; any strides),
//                   extra [N,E] or None, viewmats [C,4,4], Ks [C,3,3], camera centres [C,3]
//                   -> means2d [C,N,2], conics [C,N,3], depths [C,N], opacities [C,N],
//                   radii [C,N,2] int32 (0: culled), features [C,N,3+E(+1 with depth)].
//   project_sh_bwd  the same inputs and the gradients of those outputs (each may be None)
//                   -> gradients of means, quats, scales, opacities, colors, extra.
//
// The maths, value for value as projection.py writes it (the order of every operation included,
// so that most results are bitwise those of the torch code): quaternion -> rotation,
// M = R S, world -> camera, the EWA Jacobian at the mean clamped to 1.3x the field of view,
// cov2d = (J W M)(J W M)^T + eps2d, det by Cauchy-Binet, conic, means2d, opacity (times the
// antialiasing compensation when asked), the opacity-aware 3.33-sigma radii and the culling rules
// (near/far, det <= 0, opacity < 1/255, outside the image, zero radius). SH: direction from the
// camera centre to the mean, basis of degree 0..4, + 0.5, clamped at 0. The backward is the
// derivative of exactly that, as torch's autograd takes it: no gradient through a clamped
// Jacobian coordinate or a clamped colour, half of it at a tie of torch.maximum/minimum, none
// through a clamped quaternion norm or direction length, none through the culling (radii).
// Two deliberate differences, both where the torch code's result is not usable: a Gaussian whose
// compensation is 0 (zero-area footprint, antialiased) gets no gradient through the compensation
// (torch: 0/0 = NaN; projection.py now guards this too), and a camera whose output gradients are
// all zero for a Gaussian adds nothing (torch adds 0 * inf = NaN there, if anything non-finite).
//
// SIMD: the passes take 8 Gaussians at a time, one per lane of a GCC vector (8 floats: one AVX
// register, two SSE ones; 8 doubles), so that the per-Gaussian arithmetic is 8 times fewer
// instructions; the branches of the maths (culling, clamps) are per-lane selects. Each lane does
// the IEEE operations the scalar formula does, in the same order (no FMA: -ffp-contract=off;
// sqrt is correctly rounded, log and ceil are the C library's, lane by lane), so a Gaussian's
// results do not depend on its neighbours in the block. Inputs and outputs are moved between
// their row layouts ([N, 3], [N, K, 3], [C, N, D] ...) and one vector per field by 8x8
// transposes. On x86-64 the passes are compiled for AVX2 and for the baseline (target_clones).
// Measured (callgrind, 20k Gaussians, SH degree 3, 4 extra channels, depth, one camera,
// float32, AVX2 clone): forward 290 instructions per Gaussian (+ 33 in logf), backward 635,
// against 1065 and 2440 for the same maths written one Gaussian at a time.
//
// Determinism: OpenMP threads over blocks of Gaussians; each Gaussian's outputs (forward) and the
// gradients of its own inputs (backward, summed over the cameras in camera order) are written by
// the one thread that owns it. No atomics, no shared sums: bitwise the same for any thread count.

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace {

using at::Tensor;

constexpr double kAlphaThreshold = 1.0 / 255.0;  // projection.py ALPHA_THRESHOLD
constexpr double kExtentSigmas = 3.33;           // projection.py EXTENT_SIGMAS
constexpr double kNormMin = 1e-12;               // quaternion norm clamp
constexpr double kDirMin = 1e-24;                // clamp of the squared camera-to-mean distance
constexpr int kMaxBasis = 25;                    // SH degree 4

// Real SH basis constants (projection.py _SH_C0.._SH_C4)
constexpr double kC0 = 0.28209479177387814;
constexpr double kC1 = 0.4886025119029199;
constexpr double kC2[5] = {1.0925484305920792, -1.0925484305920792, 0.31539156525252005,
                           -1.0925484305920792, 0.5462742152960396};
constexpr double kC3[7] = {-0.5900435899266435, 2.890611442640554, -0.4570457994644658,
                           0.3731763325901154,  -0.4570457994644658, 1.445305721320277,
                           -0.5900435899266435};
constexpr double kC4[9] = {2.5033429417967046,  -1.7701307697799304, 0.9461746957575601,
                           -0.6690465435572892, 0.10578554691520431, -0.6690465435572892,
                           0.47308734787878004, -1.7701307697799304, 0.6258357354491761};

int threads_of(int64_t n) { return n < 1 ? 1 : static_cast<int>(n); }

// ---------------------------------------------------------------------------------- SIMD
constexpr int kL = 8;  // Gaussians per block, one per lane

template <typename T>
struct Simd;
template <>
struct Simd<float> {
  typedef float V __attribute__((vector_size(32)));
  typedef int32_t M __attribute__((vector_size(32)));  // comparison results: 0 or -1 per lane
};
template <>
struct Simd<double> {
  typedef double V __attribute__((vector_size(64)));
  typedef int64_t M __attribute__((vector_size(64)));
};

#define S3P_INLINE inline __attribute__((always_inline))

template <typename V>
S3P_INLINE V vload(const void* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V>
S3P_INLINE void vstore(void* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}
template <typename T>
S3P_INLINE typename Simd<T>::V splat(T x) {
  typename Simd<T>::V v;
  for (int i = 0; i < kL; ++i) v[i] = x;
  return v;
}
template <typename M>
S3P_INLINE bool any(const M& m) {  // any lane set: OR the 16-byte parts
  typedef uint64_t H __attribute__((vector_size(16)));
  H h[sizeof(M) / 16];
  std::memcpy(h, &m, sizeof(M));
  H o = h[0];
  for (size_t i = 1; i < sizeof(M) / 16; ++i) o |= h[i];
  return (o[0] | o[1]) != 0;
}

// Correctly rounded square roots (SSE on x86-64, whose baseline has SSE2; std::sqrt elsewhere).
S3P_INLINE Simd<float>::V vsqrt(Simd<float>::V x) {
#if defined(__SSE2__)
  __m128 h[2];
  std::memcpy(h, &x, sizeof(x));
  h[0] = _mm_sqrt_ps(h[0]);
  h[1] = _mm_sqrt_ps(h[1]);
  std::memcpy(&x, h, sizeof(x));
#else
  for (int i = 0; i < kL; ++i) x[i] = std::sqrt(x[i]);
#endif
  return x;
}
S3P_INLINE Simd<double>::V vsqrt(Simd<double>::V x) {
#if defined(__SSE2__)
  __m128d h[4];
  std::memcpy(h, &x, sizeof(x));
  for (int i = 0; i < 4; ++i) h[i] = _mm_sqrt_pd(h[i]);
  std::memcpy(&x, h, sizeof(x));
#else
  for (int i = 0; i < kL; ++i) x[i] = std::sqrt(x[i]);
#endif
  return x;
}
template <typename V>
S3P_INLINE V vlog(V x) {
  for (int i = 0; i < kL; ++i) x[i] = std::log(x[i]);
  return x;
}
template <typename V>
S3P_INLINE V vceil(V x) {
  for (int i = 0; i < kL; ++i) x[i] = std::ceil(x[i]);
  return x;
}

// out[i][l] = in[l][i] (8 vectors of 8 lanes), by three rounds of shuffles.
template <typename V>
S3P_INLINE void transpose8(const V* r, V* out) {
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
  V t[8], u[8];
  for (int i = 0; i < 4; ++i) {  // interleave row pairs: (r0[0], r1[0], r0[1], r1[1] | r0[4], ...)
    t[2 * i] = __builtin_shufflevector(r[2 * i], r[2 * i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[2 * i + 1] = __builtin_shufflevector(r[2 * i], r[2 * i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int h = 0; h < 2; ++h) {  // rows 4h..4h+3: columns (0|4), (1|5), (2|6), (3|7)
    const V* a = t + 4 * h;
    u[4 * h] = __builtin_shufflevector(a[0], a[2], 0, 1, 8, 9, 4, 5, 12, 13);
    u[4 * h + 1] = __builtin_shufflevector(a[0], a[2], 2, 3, 10, 11, 6, 7, 14, 15);
    u[4 * h + 2] = __builtin_shufflevector(a[1], a[3], 0, 1, 8, 9, 4, 5, 12, 13);
    u[4 * h + 3] = __builtin_shufflevector(a[1], a[3], 2, 3, 10, 11, 6, 7, 14, 15);
  }
  for (int i = 0; i < 4; ++i) {
    out[i] = __builtin_shufflevector(u[i], u[4 + i], 0, 1, 2, 3, 8, 9, 10, 11);
    out[4 + i] = __builtin_shufflevector(u[i], u[4 + i], 4, 5, 6, 7, 12, 13, 14, 15);
  }
#else
  for (int i = 0; i < kL; ++i)
    for (int l = 0; l < kL; ++l) out[i][l] = r[l][i];
#endif
}

// A block's rows <-> one vector per column: cols[k][l] = base[l * stride + k] for k < ncols (the
// rows are contiguous in k). Lanes from `lanes` on repeat row 0 when loading (finite values to
// compute with) and are not stored. Full groups of 8 columns are transposed straight between
// the rows and `cols` (no copy of the 8 vectors: GCC would make it a `rep movs`).
template <typename T>
S3P_INLINE void load_rows(const T* base, int64_t stride, int64_t ncols, int lanes,
                          typename Simd<T>::V* cols) {
  using V = typename Simd<T>::V;
  for (int64_t k0 = 0; k0 < ncols; k0 += kL) {
    const int64_t w = std::min<int64_t>(kL, ncols - k0);
    V r[kL];
    for (int l = 0; l < kL; ++l) {
      const T* src = base + (l < lanes ? l : 0) * stride + k0;
      if (w == kL) {
        r[l] = vload<V>(src);
      } else {
        T buf[kL] = {};
        std::memcpy(buf, src, sizeof(T) * w);
        r[l] = vload<V>(buf);
      }
    }
    if (w == kL) {
      transpose8(r, cols + k0);
    } else {
      V o[kL];
      transpose8(r, o);
      for (int64_t i = 0; i < w; ++i) cols[k0 + i] = o[i];
    }
  }
}
template <typename T>
S3P_INLINE void store_rows(T* base, int64_t stride, int64_t ncols, int lanes,
                           const typename Simd<T>::V* cols) {
  using V = typename Simd<T>::V;
  for (int64_t k0 = 0; k0 < ncols; k0 += kL) {
    const int64_t w = std::min<int64_t>(kL, ncols - k0);
    V r[kL];
    if (w == kL) {
      transpose8(cols + k0, r);
    } else {
      V c[kL];
      for (int i = 0; i < kL; ++i) c[i] = i < w ? cols[k0 + i] : V{};
      transpose8(c, r);
    }
    for (int l = 0; l < lanes; ++l) {
      T* dst = base + l * stride + k0;
      if (w == kL)
        vstore(dst, r[l]);
      else
        std::memcpy(dst, &r[l], sizeof(T) * w);
    }
  }
}
template <typename T>
S3P_INLINE typename Simd<T>::V gather(const T* base, int64_t stride, int lanes) {
  typename Simd<T>::V v;
  for (int l = 0; l < kL; ++l) v[l] = base[(l < lanes ? l : 0) * stride];
  return v;
}

// -------------------------------------------------------------------------------- settings
// Python scalars meet float32 tensors in projection.py as float32 values: every constant below is
// rounded to T once, as torch does it, so that T = float follows the torch code's rounding.
template <typename T>
struct Settings {
  T eps, eps_sq, near, far, width, height;
  T alpha_min, sigmas, norm_min, dir_min;
  int degree;          // SH degree 0..4, or -1: colors are RGB
  int64_t nb, E, D;    // basis functions used, extra channels, feature channels
  bool depth, antialiased;
};

template <typename T>
struct Camera {
  T w[3][3], t[3];     // world -> camera rotation and translation
  T k[2][3];           // first two rows of K
  T fx, fy;
  T lim_xp, lim_xn, lim_yp, lim_yn;  // Jacobian clamp, in units of x/z and y/z
  T cam[3];            // camera centre in the world (for the SH direction)
};

template <typename T>
Camera<T> camera_of(const T* V, const T* K, const T* cp, const Settings<T>& st) {
  Camera<T> c;
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) c.w[i][j] = V[4 * i + j];
    c.t[i] = V[4 * i + 3];
    c.cam[i] = cp[i];
  }
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j) c.k[i][j] = K[3 * i + j];
  c.fx = K[0];
  c.fy = K[4];
  const T cx = K[2], cy = K[5];
  // as projection.py: 0.5 * width / fx is (1 / fx) * (0.5 width) in torch (Tensor.__rtruediv__)
  const T tan_fovx = (T(1) / c.fx) * static_cast<T>(0.5 * static_cast<double>(st.width));
  const T tan_fovy = (T(1) / c.fy) * static_cast<T>(0.5 * static_cast<double>(st.height));
  const T p3 = static_cast<T>(0.3);
  c.lim_xp = (st.width - cx) / c.fx + p3 * tan_fovx;
  c.lim_xn = cx / c.fx + p3 * tan_fovx;
  c.lim_yp = (st.height - cy) / c.fy + p3 * tan_fovy;
  c.lim_yn = cy / c.fy + p3 * tan_fovy;
  return c;
}

// ------------------------------------------------------------------ camera-independent shape
template <typename T>
struct Shape {
  using V = typename Simd<T>::V;
  using M = typename Simd<T>::M;
  V q[4];      // unit quaternion (w, x, y, z)
  V n;         // the norm it was divided by (clamped)
  M n_ok;      // the norm was not clamped: the gradient goes through it
  V r[9];      // rotation, row-major
  V s[3];
  V M9[9];     // R S, row-major
};

template <typename T>
S3P_INLINE void shape_of(const typename Simd<T>::V* quat, const typename Simd<T>::V* scale,
                         const Settings<T>& st, Shape<T>& g) {
  using V = typename Simd<T>::V;
  const V n = vsqrt(quat[0] * quat[0] + quat[1] * quat[1] + quat[2] * quat[2] + quat[3] * quat[3]);
  const V nmin = splat(st.norm_min);
  g.n_ok = ~(n < nmin);  // NaN stays NaN, as torch's clamp_min
  g.n = g.n_ok ? n : nmin;
  for (int i = 0; i < 4; ++i) g.q[i] = quat[i] / g.n;
  const V w = g.q[0], x = g.q[1], y = g.q[2], z = g.q[3];
  const V xx = x * x, yy = y * y, zz = z * z, xy = x * y, xz = x * z, yz = y * z;
  const V wx = w * x, wy = w * y, wz = w * z;
  const T one(1), two(2);
  g.r[0] = one - two * (yy + zz);
  g.r[1] = two * (xy - wz);
  g.r[2] = two * (xz + wy);
  g.r[3] = two * (xy + wz);
  g.r[4] = one - two * (xx + zz);
  g.r[5] = two * (yz - wx);
  g.r[6] = two * (xz - wy);
  g.r[7] = two * (yz + wx);
  g.r[8] = one - two * (xx + yy);
  for (int j = 0; j < 3; ++j) g.s[j] = scale[j];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) g.M9[3 * i + j] = g.r[3 * i + j] * g.s[j];
}

// Gradient of R S w.r.t. the quaternion (before normalisation) and the scales, from that of M.
template <typename T>
S3P_INLINE void shape_vjp(const Shape<T>& g, const typename Simd<T>::V* vM, typename Simd<T>::V* v_quat,
                          typename Simd<T>::V* v_scale) {
  using V = typename Simd<T>::V;
  V vr[9];
  for (int j = 0; j < 3; ++j) v_scale[j] = vM[j] * g.r[j] + vM[3 + j] * g.r[3 + j] + vM[6 + j] * g.r[6 + j];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) vr[3 * i + j] = vM[3 * i + j] * g.s[j];
  const V w = g.q[0], x = g.q[1], y = g.q[2], z = g.q[3];
  const T two(2), four(4);
  // d r / d (w, x, y, z), entry by entry (see shape_of)
  const V vw = two * (-vr[1] * z + vr[2] * y + vr[3] * z - vr[5] * x - vr[6] * y + vr[7] * x);
  const V vx = -four * x * (vr[4] + vr[8]) +
               two * (vr[1] * y + vr[2] * z + vr[3] * y - vr[5] * w + vr[6] * z + vr[7] * w);
  const V vy = -four * y * (vr[0] + vr[8]) +
               two * (vr[1] * x + vr[2] * w + vr[3] * x + vr[5] * z - vr[6] * w + vr[7] * z);
  const V vz = -four * z * (vr[0] + vr[4]) +
               two * (-vr[1] * w + vr[2] * x + vr[3] * w + vr[5] * y + vr[6] * x + vr[7] * y);
  const V vq[4] = {vw, vx, vy, vz};
  // q = Q / n: dq/dQ = (I - q q^T) / n, or 1 / n where the norm was clamped
  const V dot = g.n_ok ? vq[0] * g.q[0] + vq[1] * g.q[1] + vq[2] * g.q[2] + vq[3] * g.q[3] : V{};
  for (int i = 0; i < 4; ++i) v_quat[i] = (vq[i] - g.q[i] * dot) / g.n;
}

// ------------------------------------------------------------------------- projection
// Everything the forward computes for a block of Gaussians in one camera, kept for the backward.
template <typename T>
struct Proj {
  using V = typename Simd<T>::V;
  using M = typename Simd<T>::M;
  V x, y, z, zs;
  M in_depth;
  V qx, qy, u, v;
  V gu, gv;             // d u / d qx, d v / d qy: 1 inside the clamp, 0 outside, 1/2 on it
  V ax, bx, ay, by;
  V T0[3], T1[3], A0[3], A1[3];
  V cov00, c01, cov11, c00, c11;
  V m01, m02, m12, det_orig, det, det_s;
  M det_ok;
  V con[3], m2[2];
  V comp;               // antialiasing compensation (1 without)
};

// torch.minimum(torch.maximum(a, lo), hi), and in g the factor its gradient passes to a
template <typename T>
S3P_INLINE typename Simd<T>::V clamp_grad(typename Simd<T>::V a, T lo_, T hi_, typename Simd<T>::V& g) {
  using V = typename Simd<T>::V;
  using M = typename Simd<T>::M;
  const V lo = splat(lo_), hi = splat(hi_), one = splat(T(1)), half = splat(T(0.5)), zero{};
  const M nan = a != a;  // NaN propagates, as in torch
  const M gt = a > lo, eq = a == lo;
  const V m = (gt | eq) ? a : lo;
  const V g1 = gt ? one : (eq ? half : zero);
  const M lt = m < hi, eq2 = m == hi;
  const V r = (lt | eq2) ? m : hi;
  const V g2 = lt ? one : (eq2 ? half : zero);
  g = nan ? one : g1 * g2;
  return nan ? a : r;
}

template <typename T>
S3P_INLINE void project_one(const Camera<T>& c, const Shape<T>& g, const typename Simd<T>::V* mean,
                            const Settings<T>& st, Proj<T>& p) {
  using V = typename Simd<T>::V;
  const V mx = mean[0], my = mean[1], mz = mean[2];
  p.x = c.w[0][0] * mx + c.w[0][1] * my + c.w[0][2] * mz + c.t[0];
  p.y = c.w[1][0] * mx + c.w[1][1] * my + c.w[1][2] * mz + c.t[1];
  p.z = c.w[2][0] * mx + c.w[2][1] * my + c.w[2][2] * mz + c.t[2];
  p.in_depth = (p.z > splat(st.near)) & (p.z < splat(st.far));
  p.zs = p.in_depth ? p.z : splat(T(1));
  p.qx = p.x / p.zs;
  p.qy = p.y / p.zs;
  p.u = clamp_grad(p.qx, -c.lim_xn, c.lim_xp, p.gu);
  p.v = clamp_grad(p.qy, -c.lim_yn, c.lim_yp, p.gv);
  p.ax = c.fx / p.zs;
  p.bx = c.fx * p.u / p.zs;
  p.ay = c.fy / p.zs;
  p.by = c.fy * p.v / p.zs;
  for (int k = 0; k < 3; ++k) {
    p.T0[k] = p.ax * c.w[0][k] - p.bx * c.w[2][k];
    p.T1[k] = p.ay * c.w[1][k] - p.by * c.w[2][k];
  }
  const V* M = g.M9;
  for (int k = 0; k < 3; ++k) {
    p.A0[k] = p.T0[0] * M[k] + p.T0[1] * M[3 + k] + p.T0[2] * M[6 + k];
    p.A1[k] = p.T1[0] * M[k] + p.T1[1] * M[3 + k] + p.T1[2] * M[6 + k];
  }
  const V* A0 = p.A0;
  const V* A1 = p.A1;
  p.cov00 = A0[0] * A0[0] + A0[1] * A0[1] + A0[2] * A0[2];
  p.c01 = A0[0] * A1[0] + A0[1] * A1[1] + A0[2] * A1[2];
  p.cov11 = A1[0] * A1[0] + A1[1] * A1[1] + A1[2] * A1[2];
  p.c00 = p.cov00 + st.eps;
  p.c11 = p.cov11 + st.eps;
  p.m01 = A0[0] * A1[1] - A0[1] * A1[0];
  p.m02 = A0[0] * A1[2] - A0[2] * A1[0];
  p.m12 = A0[1] * A1[2] - A0[2] * A1[1];
  p.det_orig = p.m01 * p.m01 + p.m02 * p.m02 + p.m12 * p.m12;
  p.det = p.det_orig + st.eps * (p.cov00 + p.cov11) + st.eps_sq;
  p.det_ok = p.det > V{};
  p.det_s = p.det_ok ? p.det : splat(T(1));
  p.con[0] = p.c11 / p.det_s;
  p.con[1] = -p.c01 / p.det_s;
  p.con[2] = p.c00 / p.det_s;
  p.m2[0] = (c.k[0][0] * p.x + c.k[0][1] * p.y + c.k[0][2] * p.z) / p.zs;
  p.m2[1] = (c.k[1][0] * p.x + c.k[1][1] * p.y + c.k[1][2] * p.z) / p.zs;
  if (st.antialiased) {
    const V ratio = p.det_orig / p.det_s;
    const auto pos = ratio > V{};
    p.comp = pos ? vsqrt(pos ? ratio : splat(T(1))) : V{};
  } else {
    p.comp = splat(T(1));
  }
}

// The opacity-aware extents and the culling rules of projection.py (no gradient): the radii,
// 0 where culled.
template <typename T>
S3P_INLINE void radii_of(const Proj<T>& p, typename Simd<T>::V opac, const Settings<T>& st,
                         typename Simd<T>::V& rx, typename Simd<T>::V& ry) {
  using V = typename Simd<T>::V;
  using M = typename Simd<T>::M;
  const V amin = splat(st.alpha_min);
  M valid = p.in_depth & p.det_ok & (opac >= amin);
  if (!any(valid)) {
    rx = ry = V{};
    return;
  }
  V extend = vsqrt(T(2) * vlog((opac > amin ? opac : amin) / amin));
  extend = extend < splat(st.sigmas) ? extend : splat(st.sigmas);
  rx = vceil(extend * vsqrt(p.c00 > V{} ? p.c00 : V{}));
  ry = vceil(extend * vsqrt(p.c11 > V{} ? p.c11 : V{}));
  valid = valid & (p.m2[0] + rx > V{}) & (p.m2[0] - rx < splat(st.width)) & (p.m2[1] + ry > V{}) &
          (p.m2[1] - ry < splat(st.height)) & (rx > V{}) & (ry > V{});
  rx = valid ? rx : V{};
  ry = valid ? ry : V{};
}

// Upstream gradients of a block in one camera -> gradients of the means, of M = R S and of the
// opacities, added where `active` (the lanes with a nonzero upstream gradient).
template <typename T>
S3P_INLINE void project_vjp(const Camera<T>& c, const Shape<T>& g, const Proj<T>& p,
                            const Settings<T>& st, typename Simd<T>::V opac_in,
                            const typename Simd<T>::V* v_m2, const typename Simd<T>::V* v_con,
                            typename Simd<T>::V v_z, typename Simd<T>::V v_op,
                            typename Simd<T>::M active, typename Simd<T>::V* v_mean,
                            typename Simd<T>::V* vM, typename Simd<T>::V& v_opac) {
  using V = typename Simd<T>::V;
  const V zero{};
  V v_det_orig{}, v_det_s{};
  if (st.antialiased) {
    v_opac += active ? v_op * p.comp : zero;
    const V v_comp = v_op * opac_in;
    const V v_ratio = p.comp > zero ? v_comp / (T(2) * p.comp) : zero;
    v_det_orig += v_ratio / p.det_s;
    v_det_s -= v_ratio * p.det_orig / (p.det_s * p.det_s);
  } else {
    v_opac += active ? v_op : zero;
  }
  // conics = (c11, -c01, c00) / det_s
  const V v_c11 = v_con[0] / p.det_s;
  const V v_c01 = -v_con[1] / p.det_s;
  const V v_c00 = v_con[2] / p.det_s;
  v_det_s -= (v_con[0] * p.c11 - v_con[1] * p.c01 + v_con[2] * p.c00) / (p.det_s * p.det_s);
  const V v_det = p.det_ok ? v_det_s : zero;
  v_det_orig += v_det;
  const V v_cov00 = v_c00 + st.eps * v_det;
  const V v_cov11 = v_c11 + st.eps * v_det;
  const V v_m01 = T(2) * p.m01 * v_det_orig;
  const V v_m02 = T(2) * p.m02 * v_det_orig;
  const V v_m12 = T(2) * p.m12 * v_det_orig;
  const V* A0 = p.A0;
  const V* A1 = p.A1;
  V vA0[3], vA1[3];
  for (int k = 0; k < 3; ++k) {
    vA0[k] = T(2) * v_cov00 * A0[k] + v_c01 * A1[k];
    vA1[k] = T(2) * v_cov11 * A1[k] + v_c01 * A0[k];
  }
  vA0[0] += v_m01 * A1[1] + v_m02 * A1[2];
  vA0[1] += -v_m01 * A1[0] + v_m12 * A1[2];
  vA0[2] += -v_m02 * A1[0] - v_m12 * A1[1];
  vA1[0] += -v_m01 * A0[1] - v_m02 * A0[2];
  vA1[1] += v_m01 * A0[0] - v_m12 * A0[2];
  vA1[2] += v_m02 * A0[0] + v_m12 * A0[1];
  // A = T M
  const V* M = g.M9;
  V vT0[3], vT1[3];
  for (int i = 0; i < 3; ++i) {
    vT0[i] = vA0[0] * M[3 * i] + vA0[1] * M[3 * i + 1] + vA0[2] * M[3 * i + 2];
    vT1[i] = vA1[0] * M[3 * i] + vA1[1] * M[3 * i + 1] + vA1[2] * M[3 * i + 2];
    for (int k = 0; k < 3; ++k) vM[3 * i + k] += active ? vA0[k] * p.T0[i] + vA1[k] * p.T1[i] : zero;
  }
  // T0 = ax W0 - bx W2, T1 = ay W1 - by W2
  const V v_ax = vT0[0] * c.w[0][0] + vT0[1] * c.w[0][1] + vT0[2] * c.w[0][2];
  const V v_bx = -(vT0[0] * c.w[2][0] + vT0[1] * c.w[2][1] + vT0[2] * c.w[2][2]);
  const V v_ay = vT1[0] * c.w[1][0] + vT1[1] * c.w[1][1] + vT1[2] * c.w[1][2];
  const V v_by = -(vT1[0] * c.w[2][0] + vT1[1] * c.w[2][1] + vT1[2] * c.w[2][2]);
  // ax = fx / zs, bx = fx u / zs (u the clamped x / zs), likewise y
  V v_zs = -(v_ax * p.ax + v_bx * p.bx + v_ay * p.ay + v_by * p.by) / p.zs;
  const V v_qx = v_bx * c.fx / p.zs * p.gu;
  const V v_qy = v_by * c.fy / p.zs * p.gv;
  V v_x = v_qx / p.zs, v_y = v_qy / p.zs, vz = v_z;
  v_zs -= (v_qx * p.qx + v_qy * p.qy) / p.zs;
  // means2d = K[:2] (x, y, z) / zs
  v_x += (v_m2[0] * c.k[0][0] + v_m2[1] * c.k[1][0]) / p.zs;
  v_y += (v_m2[0] * c.k[0][1] + v_m2[1] * c.k[1][1]) / p.zs;
  vz += (v_m2[0] * c.k[0][2] + v_m2[1] * c.k[1][2]) / p.zs;
  v_zs -= (v_m2[0] * p.m2[0] + v_m2[1] * p.m2[1]) / p.zs;
  vz += p.in_depth ? v_zs : zero;
  for (int j = 0; j < 3; ++j)
    v_mean[j] += active ? c.w[0][j] * v_x + c.w[1][j] * v_y + c.w[2][j] * vz : zero;
}

// ------------------------------------------------------------------------------------ SH
// The basis at unit directions, as projection.py's _sh_terms writes it (degree >= 1).
template <typename T>
S3P_INLINE void sh_basis(int degree, typename Simd<T>::V x, typename Simd<T>::V y,
                         typename Simd<T>::V z, typename Simd<T>::V* b) {
  using V = typename Simd<T>::V;
  b[0] = splat(static_cast<T>(kC0));
  b[1] = static_cast<T>(-kC1) * y;
  b[2] = static_cast<T>(kC1) * z;
  b[3] = static_cast<T>(-kC1) * x;
  if (degree < 2) return;
  const V xx = x * x, yy = y * y, zz = z * z, xy = x * y, yz = y * z, xz = x * z;
  b[4] = static_cast<T>(kC2[0]) * xy;
  b[5] = static_cast<T>(kC2[1]) * yz;
  b[6] = static_cast<T>(kC2[2]) * (T(2) * zz - xx - yy);
  b[7] = static_cast<T>(kC2[3]) * xz;
  b[8] = static_cast<T>(kC2[4]) * (xx - yy);
  if (degree < 3) return;
  b[9] = static_cast<T>(kC3[0]) * y * (T(3) * xx - yy);
  b[10] = static_cast<T>(kC3[1]) * xy * z;
  b[11] = static_cast<T>(kC3[2]) * y * (T(4) * zz - xx - yy);
  b[12] = static_cast<T>(kC3[3]) * z * (T(2) * zz - T(3) * xx - T(3) * yy);
  b[13] = static_cast<T>(kC3[4]) * x * (T(4) * zz - xx - yy);
  b[14] = static_cast<T>(kC3[5]) * z * (xx - yy);
  b[15] = static_cast<T>(kC3[6]) * x * (xx - T(3) * yy);
  if (degree < 4) return;
  b[16] = static_cast<T>(kC4[0]) * xy * (xx - yy);
  b[17] = static_cast<T>(kC4[1]) * yz * (T(3) * xx - yy);
  b[18] = static_cast<T>(kC4[2]) * xy * (T(7) * zz - T(1));
  b[19] = static_cast<T>(kC4[3]) * yz * (T(7) * zz - T(3));
  b[20] = static_cast<T>(kC4[4]) * (zz * (T(35) * zz - T(30)) + T(3));
  b[21] = static_cast<T>(kC4[5]) * xz * (T(7) * zz - T(3));
  b[22] = static_cast<T>(kC4[6]) * (xx - yy) * (T(7) * zz - T(1));
  b[23] = static_cast<T>(kC4[7]) * xz * (xx - T(3) * yy);
  b[24] = static_cast<T>(kC4[8]) * (xx * (xx - T(3) * yy) - yy * (T(3) * xx - yy));
}

// Gradient w.r.t. the direction components (x, y, z), each taken as independent, from that of
// the basis values vb (degree >= 1).
template <typename T>
S3P_INLINE void sh_basis_vjp(int degree, typename Simd<T>::V x, typename Simd<T>::V y,
                             typename Simd<T>::V z, const typename Simd<T>::V* vb,
                             typename Simd<T>::V* v) {
  using V = typename Simd<T>::V;
  const T C1 = static_cast<T>(kC1);
  V vx = -C1 * vb[3], vy = -C1 * vb[1], vz = C1 * vb[2];
  if (degree >= 2) {
    const V xx = x * x, yy = y * y, zz = z * z, xy = x * y, yz = y * z, xz = x * z;
    T c;
    c = static_cast<T>(kC2[0]);  // xy
    vx += c * y * vb[4];
    vy += c * x * vb[4];
    c = static_cast<T>(kC2[1]);  // yz
    vy += c * z * vb[5];
    vz += c * y * vb[5];
    c = static_cast<T>(kC2[2]);  // 2zz - xx - yy
    vx += c * T(-2) * x * vb[6];
    vy += c * T(-2) * y * vb[6];
    vz += c * T(4) * z * vb[6];
    c = static_cast<T>(kC2[3]);  // xz
    vx += c * z * vb[7];
    vz += c * x * vb[7];
    c = static_cast<T>(kC2[4]);  // xx - yy
    vx += c * T(2) * x * vb[8];
    vy += c * T(-2) * y * vb[8];
    if (degree >= 3) {
      c = static_cast<T>(kC3[0]);  // y (3xx - yy)
      vx += c * T(6) * xy * vb[9];
      vy += c * T(3) * (xx - yy) * vb[9];
      c = static_cast<T>(kC3[1]);  // xyz
      vx += c * yz * vb[10];
      vy += c * xz * vb[10];
      vz += c * xy * vb[10];
      c = static_cast<T>(kC3[2]);  // y (4zz - xx - yy)
      vx += c * T(-2) * xy * vb[11];
      vy += c * (T(4) * zz - xx - T(3) * yy) * vb[11];
      vz += c * T(8) * yz * vb[11];
      c = static_cast<T>(kC3[3]);  // z (2zz - 3xx - 3yy)
      vx += c * T(-6) * xz * vb[12];
      vy += c * T(-6) * yz * vb[12];
      vz += c * (T(6) * zz - T(3) * xx - T(3) * yy) * vb[12];
      c = static_cast<T>(kC3[4]);  // x (4zz - xx - yy)
      vx += c * (T(4) * zz - T(3) * xx - yy) * vb[13];
      vy += c * T(-2) * xy * vb[13];
      vz += c * T(8) * xz * vb[13];
      c = static_cast<T>(kC3[5]);  // z (xx - yy)
      vx += c * T(2) * xz * vb[14];
      vy += c * T(-2) * yz * vb[14];
      vz += c * (xx - yy) * vb[14];
      c = static_cast<T>(kC3[6]);  // x (xx - 3yy)
      vx += c * T(3) * (xx - yy) * vb[15];
      vy += c * T(-6) * xy * vb[15];
    }
    if (degree >= 4) {
      c = static_cast<T>(kC4[0]);  // xy (xx - yy)
      vx += c * y * (T(3) * xx - yy) * vb[16];
      vy += c * x * (xx - T(3) * yy) * vb[16];
      c = static_cast<T>(kC4[1]);  // yz (3xx - yy)
      vx += c * T(6) * xy * z * vb[17];
      vy += c * T(3) * z * (xx - yy) * vb[17];
      vz += c * y * (T(3) * xx - yy) * vb[17];
      c = static_cast<T>(kC4[2]);  // xy (7zz - 1)
      vx += c * y * (T(7) * zz - T(1)) * vb[18];
      vy += c * x * (T(7) * zz - T(1)) * vb[18];
      vz += c * T(14) * xy * z * vb[18];
      c = static_cast<T>(kC4[3]);  // yz (7zz - 3)
      vy += c * z * (T(7) * zz - T(3)) * vb[19];
      vz += c * y * (T(21) * zz - T(3)) * vb[19];
      c = static_cast<T>(kC4[4]);  // zz (35zz - 30) + 3
      vz += c * z * (T(140) * zz - T(60)) * vb[20];
      c = static_cast<T>(kC4[5]);  // xz (7zz - 3)
      vx += c * z * (T(7) * zz - T(3)) * vb[21];
      vz += c * x * (T(21) * zz - T(3)) * vb[21];
      c = static_cast<T>(kC4[6]);  // (xx - yy)(7zz - 1)
      vx += c * T(2) * x * (T(7) * zz - T(1)) * vb[22];
      vy += c * T(-2) * y * (T(7) * zz - T(1)) * vb[22];
      vz += c * T(14) * z * (xx - yy) * vb[22];
      c = static_cast<T>(kC4[7]);  // xz (xx - 3yy)
      vx += c * T(3) * z * (xx - yy) * vb[23];
      vy += c * T(-6) * xy * z * vb[23];
      vz += c * x * (xx - T(3) * yy) * vb[23];
      c = static_cast<T>(kC4[8]);  // xx (xx - 3yy) - yy (3xx - yy)
      vx += c * T(4) * x * (xx - T(3) * yy) * vb[24];
      vy += c * T(4) * y * (yy - T(3) * xx) * vb[24];
    }
  }
  v[0] = vx;
  v[1] = vy;
  v[2] = vz;
}

// Unit direction from the camera centre to the mean, as projection.py's sh_colors.
template <typename T>
struct Dir {
  using V = typename Simd<T>::V;
  V d[3];     // mean - camera centre
  V s2;       // its squared length
  V inv;      // 1 / sqrt(max(s2, 1e-24)): torch.rsqrt on the CPU
  V u[3];     // d * inv
};

template <typename T>
S3P_INLINE void dir_of(const Camera<T>& c, const typename Simd<T>::V* mean, const Settings<T>& st,
                       Dir<T>& r) {
  for (int i = 0; i < 3; ++i) r.d[i] = mean[i] - c.cam[i];
  r.s2 = r.d[0] * r.d[0] + r.d[1] * r.d[1] + r.d[2] * r.d[2];
  const auto dmin = splat(st.dir_min);
  r.inv = T(1) / vsqrt(r.s2 < dmin ? dmin : r.s2);
  for (int i = 0; i < 3; ++i) r.u[i] = r.d[i] * r.inv;
}

// The raw SH sum (before + 0.5 and the clamp) of coefficients cf[3 k + j] along unit directions
// u, basis values in b.
template <typename T>
S3P_INLINE void sh_rgb(const Settings<T>& st, const typename Simd<T>::V* cf, const typename Simd<T>::V* u,
                       typename Simd<T>::V* b, typename Simd<T>::V* rgb) {
  sh_basis<T>(st.degree, u[0], u[1], u[2], b);
  for (int j = 0; j < 3; ++j) rgb[j] = typename Simd<T>::V{};
  for (int64_t k = 0; k < st.nb; ++k)
    for (int j = 0; j < 3; ++j) rgb[j] += b[k] * cf[3 * k + j];
}

// ------------------------------------------------------------------------------- the passes
template <typename T>
struct Io {
  // inputs
  const T *means, *quats, *scales, *opac, *colors, *extra;
  int64_t cs0, cs1, cs2;  // strides of colors (elements)
  const Camera<T>* cams;
  int64_t C, N, K;        // K: rows of SH coefficients per Gaussian (or 1 for RGB)
  // forward outputs
  T *m2, *con, *dep, *op_out, *feats;
  int32_t* radii;
  // upstream gradients (null: zero)
  const T *g_m2, *g_con, *g_dep, *g_op, *g_feats;
  // gradients of the inputs
  T *v_means, *v_quats, *v_scales, *v_opac, *v_colors, *v_extra;
};

// The colour coefficients of a block, cf[3 k + j] (SH), or the RGB (cf[j]).
template <typename T>
S3P_INLINE void load_colors(const Io<T>& io, const Settings<T>& st, int64_t n0, int lanes,
                            typename Simd<T>::V* cf) {
  const T* base = io.colors + n0 * io.cs0;
  const int64_t rows = st.degree < 0 ? 1 : st.nb;
  const bool packed = st.degree < 0 ? io.cs1 == 1 : (io.cs2 == 1 && io.cs1 == 3);
  if (packed) {
    load_rows(base, io.cs0, rows * 3, lanes, cf);
  } else if (st.degree < 0) {
    for (int j = 0; j < 3; ++j) cf[j] = gather(base + j * io.cs1, io.cs0, lanes);
  } else {
    for (int64_t k = 0; k < rows; ++k)
      for (int j = 0; j < 3; ++j) cf[3 * k + j] = gather(base + k * io.cs1 + j * io.cs2, io.cs0, lanes);
  }
}

template <typename T>
S3P_INLINE void load_shape_inputs(const Io<T>& io, int64_t n0, int lanes, typename Simd<T>::V* mean,
                                  typename Simd<T>::V* quat, typename Simd<T>::V* scale,
                                  typename Simd<T>::V& o) {
  load_rows(io.means + 3 * n0, 3, 3, lanes, mean);
  load_rows(io.quats + 4 * n0, 4, 4, lanes, quat);
  load_rows(io.scales + 3 * n0, 3, 3, lanes, scale);
  o = gather(io.opac + n0, 1, lanes);
}

// The clamped colour + 0.5 (torch.clamp_min: NaN stays NaN), and its gradient mask.
template <typename T>
S3P_INLINE typename Simd<T>::V clamp_color(typename Simd<T>::V r) {
  using V = typename Simd<T>::V;
  return ((r >= V{}) | (r != r)) ? r : V{};
}

template <typename T>
S3P_INLINE void forward_range(const Io<T>& io, const Settings<T>& st, int64_t n0, int64_t n1) {
  using V = typename Simd<T>::V;
  const int64_t C = io.C, N = io.N, D = st.D, E = st.E;
  V cols[3];  // the block's RGB, one vector per channel
  V cf[kMaxBasis * 3];
  for (int64_t b0 = n0; b0 < n1; b0 += kL) {
    const int lanes = static_cast<int>(std::min<int64_t>(kL, n1 - b0));
    V mean[3], quat[4], scale[3], o;
    load_shape_inputs(io, b0, lanes, mean, quat, scale, o);
    Shape<T> g;
    shape_of<T>(quat, scale, st, g);
    load_colors(io, st, b0, lanes, cf);
    // the colour is the same for every camera without SH or at degree 0
    if (st.degree == 0) {
      for (int j = 0; j < 3; ++j) cols[j] = clamp_color<T>(static_cast<T>(kC0) * cf[j] + T(0.5));
    } else if (st.degree < 0) {
      for (int j = 0; j < 3; ++j) cols[j] = cf[j];
    }
    for (int64_t c = 0; c < C; ++c) {
      const Camera<T>& cam = io.cams[c];
      Proj<T> p;
      project_one(cam, g, mean, st, p);
      const int64_t cn = c * N + b0;
      const V opac = st.antialiased ? o * p.comp : o;
      V rx, ry;
      radii_of(p, opac, st, rx, ry);
      for (int l = 0; l < lanes; ++l) {
        T* m2 = io.m2 + 2 * (cn + l);
        m2[0] = p.m2[0][l];
        m2[1] = p.m2[1][l];
        T* con = io.con + 3 * (cn + l);
        for (int k = 0; k < 3; ++k) con[k] = p.con[k][l];
        io.dep[cn + l] = p.z[l];
        io.op_out[cn + l] = opac[l];
        // (a radius past int32 is kept as the largest int32: the rasteriser clamps it to the image)
        const T big = static_cast<T>(std::numeric_limits<int32_t>::max());
        int32_t* rad = io.radii + 2 * (cn + l);
        rad[0] = rx[l] < big ? static_cast<int32_t>(rx[l]) : std::numeric_limits<int32_t>::max();
        rad[1] = ry[l] < big ? static_cast<int32_t>(ry[l]) : std::numeric_limits<int32_t>::max();
      }
      if (st.degree >= 1) {
        Dir<T> d;
        dir_of(cam, mean, st, d);
        V b[kMaxBasis], rgb[3];
        sh_rgb(st, cf, d.u, b, rgb);
        for (int j = 0; j < 3; ++j) cols[j] = clamp_color<T>(rgb[j] + T(0.5));
      }
      store_rows(io.feats + cn * D, D, 3, lanes, cols);
      for (int l = 0; l < lanes; ++l) {  // the extra channels are copied, the depth appended
        T* f = io.feats + (cn + l) * D;
        if (E) std::memcpy(f + 3, io.extra + (b0 + l) * E, sizeof(T) * E);
        if (st.depth) f[3 + E] = p.z[l];
      }
    }
  }
}

template <typename T>
S3P_INLINE void backward_range(const Io<T>& io, const Settings<T>& st, int64_t n0, int64_t n1) {
  using V = typename Simd<T>::V;
  using M = typename Simd<T>::M;
  const int64_t C = io.C, N = io.N, D = st.D, E = st.E;
  const int64_t ncf = 3 * (st.degree >= 0 ? st.nb : 1);
  V cf[kMaxBasis * 3], v_cf[kMaxBasis * 3];
  const V zero{};
  for (int64_t b0 = n0; b0 < n1; b0 += kL) {
    const int lanes = static_cast<int>(std::min<int64_t>(kL, n1 - b0));
    V mean[3], quat[4], scale[3], o;
    load_shape_inputs(io, b0, lanes, mean, quat, scale, o);
    Shape<T> g;
    shape_of<T>(quat, scale, st, g);
    load_colors(io, st, b0, lanes, cf);
    V vM[9] = {}, v_mean[3] = {}, v_o{};
    for (int64_t i = 0; i < ncf; ++i) v_cf[i] = zero;
    for (int64_t c = 0; c < C; ++c) {
      const Camera<T>& cam = io.cams[c];
      const int64_t cn = c * N + b0;
      V vm2[2] = {}, vcon[3] = {}, vz{}, vop{};
      if (io.g_m2) load_rows(io.g_m2 + 2 * cn, 2, 2, lanes, vm2);
      if (io.g_con) load_rows(io.g_con + 3 * cn, 3, 3, lanes, vcon);
      if (io.g_dep) vz = gather(io.g_dep + cn, 1, lanes);
      if (io.g_op) vop = gather(io.g_op + cn, 1, lanes);
      V vf[3] = {};
      if (io.g_feats) {
        load_rows(io.g_feats + cn * D, D, 3, lanes, vf);
        if (st.depth) vz += gather(io.g_feats + cn * D + 3 + E, D, lanes);
      }
      M active = (vm2[0] != zero) | (vm2[1] != zero) | (vcon[0] != zero) | (vcon[1] != zero) |
                 (vcon[2] != zero) | (vz != zero) | (vop != zero);
      if (lanes < kL) {  // padding lanes add nothing (they are not stored either)
        for (int l = lanes; l < kL; ++l) active[l] = 0;
      }
      if (any(active)) {
        Proj<T> p;
        project_one(cam, g, mean, st, p);
        project_vjp(cam, g, p, st, o, vm2, vcon, vz, vop, active, v_mean, vM, v_o);
      }
      if (!io.g_feats) continue;
      M act = (vf[0] != zero) | (vf[1] != zero) | (vf[2] != zero);
      if (!any(act)) continue;
      if (st.degree < 0) {
        for (int j = 0; j < 3; ++j) v_cf[j] += vf[j];
      } else if (st.degree == 0) {
        for (int j = 0; j < 3; ++j) {
          const V r = static_cast<T>(kC0) * cf[j] + T(0.5);
          v_cf[j] += r >= zero ? static_cast<T>(kC0) * vf[j] : zero;
        }
      } else {
        Dir<T> d;
        dir_of(cam, mean, st, d);
        V b[kMaxBasis], rgb[3], gr[3];
        sh_rgb(st, cf, d.u, b, rgb);
        for (int j = 0; j < 3; ++j) gr[j] = rgb[j] + T(0.5) >= zero ? vf[j] : zero;
        V vb[kMaxBasis];
        for (int64_t k = 0; k < st.nb; ++k) {
          vb[k] = cf[3 * k] * gr[0] + cf[3 * k + 1] * gr[1] + cf[3 * k + 2] * gr[2];
          for (int j = 0; j < 3; ++j) v_cf[3 * k + j] += b[k] * gr[j];
        }
        V vu[3];
        sh_basis_vjp<T>(st.degree, d.u[0], d.u[1], d.u[2], vb, vu);
        // u = d * inv, inv = rsqrt(max(s2, 1e-24))
        const V v_inv = vu[0] * d.d[0] + vu[1] * d.d[1] + vu[2] * d.d[2];
        const V v_s2 = d.s2 < splat(st.dir_min) ? zero : T(-0.5) * v_inv * (d.inv * d.inv * d.inv);
        for (int i = 0; i < 3; ++i) v_mean[i] += act ? vu[i] * d.inv + T(2) * d.d[i] * v_s2 : zero;
      }
    }
    V v_quat[4], v_scale[3];
    shape_vjp<T>(g, vM, v_quat, v_scale);
    store_rows(io.v_means + 3 * b0, 3, 3, lanes, v_mean);
    store_rows(io.v_quats + 4 * b0, 4, 4, lanes, v_quat);
    store_rows(io.v_scales + 3 * b0, 3, 3, lanes, v_scale);
    for (int l = 0; l < lanes; ++l) io.v_opac[b0 + l] = v_o[l];
    const int64_t row = st.degree < 0 ? 3 : io.K * 3;
    store_rows(io.v_colors + b0 * row, row, ncf, lanes, v_cf);
    for (int l = 0; l < lanes; ++l)  // rows past the degree
      std::fill(io.v_colors + (b0 + l) * row + ncf, io.v_colors + (b0 + l + 1) * row, T(0));
    for (int l = 0; l < lanes && E; ++l) {  // the extra channels: summed over the cameras
      T* ve = io.v_extra + (b0 + l) * E;
      std::fill(ve, ve + E, T(0));
      for (int64_t c = 0; c < C && io.g_feats; ++c) {
        const T* gf = io.g_feats + (c * N + b0 + l) * D + 3;
        for (int64_t e = 0; e < E; ++e) ve[e] += gf[e];
      }
    }
  }
}

// The passes once per instruction set (as the rasteriser's tile kernels): on x86-64 an AVX2 clone
// and a baseline one, picked at load time. Both do the same IEEE operations in the same order
// (-ffp-contract=off: no FMA), so they give the same bits.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(S3DGS_NO_CLONES)
#define S3P_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define S3P_CLONES
#endif

S3P_CLONES void forward_f32(const Io<float>& io, const Settings<float>& st, int64_t n0, int64_t n1) {
  forward_range(io, st, n0, n1);
}
S3P_CLONES void forward_f64(const Io<double>& io, const Settings<double>& st, int64_t n0, int64_t n1) {
  forward_range(io, st, n0, n1);
}
S3P_CLONES void backward_f32(const Io<float>& io, const Settings<float>& st, int64_t n0, int64_t n1) {
  backward_range(io, st, n0, n1);
}
S3P_CLONES void backward_f64(const Io<double>& io, const Settings<double>& st, int64_t n0, int64_t n1) {
  backward_range(io, st, n0, n1);
}
inline void run_forward(const Io<float>& io, const Settings<float>& st, int64_t a, int64_t b) { forward_f32(io, st, a, b); }
inline void run_forward(const Io<double>& io, const Settings<double>& st, int64_t a, int64_t b) { forward_f64(io, st, a, b); }
inline void run_backward(const Io<float>& io, const Settings<float>& st, int64_t a, int64_t b) { backward_f32(io, st, a, b); }
inline void run_backward(const Io<double>& io, const Settings<double>& st, int64_t a, int64_t b) { backward_f64(io, st, a, b); }

constexpr int64_t kChunk = 256;  // Gaussians per call of a pass (a multiple of kL)

template <typename F>
void parallel_chunks(int64_t N, int nt, F&& fn) {
  const int64_t chunks = (N + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t i = 0; i < chunks; ++i) fn(i * kChunk, std::min(N, (i + 1) * kChunk));
}

// ------------------------------------------------------------------------------ the ops
struct Common {
  Tensor means, quats, scales, opac, colors, viewmats, Ks, campos;
  std::optional<Tensor> extra;
  int64_t width, height, degree;
  bool depth, antialiased;
  double eps2d, near, far;
};

void check(const Common& a) {
  const auto dt = a.means.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble, "s3dgs native projection: float32 or float64 only");
  for (const Tensor* t : {&a.quats, &a.scales, &a.opac, &a.colors, &a.viewmats, &a.Ks, &a.campos})
    TORCH_CHECK(t->scalar_type() == dt, "s3dgs native projection: every input in the dtype of means");
  if (a.extra) TORCH_CHECK(a.extra->scalar_type() == dt, "s3dgs native projection: extra in the dtype of means");
  for (const Tensor* t : {&a.means, &a.quats, &a.scales, &a.opac, &a.viewmats, &a.Ks, &a.campos})
    TORCH_CHECK(t->is_contiguous() && t->device().is_cpu(), "s3dgs native projection: contiguous CPU tensors");
  TORCH_CHECK(a.colors.device().is_cpu(), "s3dgs native projection: CPU tensors");
  const int64_t N = a.means.size(0), C = a.viewmats.size(0);
  TORCH_CHECK(a.means.dim() == 2 && a.means.size(1) == 3, "means must be [N, 3]");
  TORCH_CHECK(a.quats.sizes() == at::IntArrayRef({N, 4}), "quats must be [N, 4]");
  TORCH_CHECK(a.scales.sizes() == at::IntArrayRef({N, 3}), "scales must be [N, 3]");
  TORCH_CHECK(a.opac.sizes() == at::IntArrayRef({N}), "opacities must be [N]");
  TORCH_CHECK(a.viewmats.sizes() == at::IntArrayRef({C, 4, 4}), "viewmats must be [C, 4, 4]");
  TORCH_CHECK(a.Ks.sizes() == at::IntArrayRef({C, 3, 3}), "Ks must be [C, 3, 3]");
  TORCH_CHECK(a.campos.sizes() == at::IntArrayRef({C, 3}), "campos must be [C, 3]");
  TORCH_CHECK(a.degree >= -1 && a.degree <= 4, "sh_degree must be in 0..4 (or -1: RGB)");
  if (a.degree < 0) {
    TORCH_CHECK(a.colors.dim() == 2 && a.colors.size(0) == N && a.colors.size(1) == 3, "colors must be RGB [N, 3]");
  } else {
    TORCH_CHECK(a.colors.dim() == 3 && a.colors.size(0) == N && a.colors.size(2) == 3 &&
                    a.colors.size(1) >= (a.degree + 1) * (a.degree + 1),
                "colors must be SH [N, >= (sh_degree + 1)^2, 3]");
  }
  if (a.extra) {
    TORCH_CHECK(a.extra->dim() == 2 && a.extra->size(0) == N, "extra must be [N, E]");
    TORCH_CHECK(a.extra->is_contiguous() && a.extra->device().is_cpu(), "s3dgs native projection: extra must be contiguous, on the CPU");
  }
}

template <typename T>
Settings<T> settings_of(const Common& a) {
  Settings<T> st;
  st.eps = static_cast<T>(a.eps2d);
  st.eps_sq = static_cast<T>(a.eps2d * a.eps2d);
  st.near = static_cast<T>(a.near);
  st.far = static_cast<T>(a.far);
  st.width = static_cast<T>(a.width);
  st.height = static_cast<T>(a.height);
  st.alpha_min = static_cast<T>(kAlphaThreshold);
  st.sigmas = static_cast<T>(kExtentSigmas);
  st.norm_min = static_cast<T>(kNormMin);
  st.dir_min = static_cast<T>(kDirMin);
  st.degree = static_cast<int>(a.degree);
  st.nb = a.degree < 0 ? 0 : (a.degree + 1) * (a.degree + 1);
  st.E = a.extra ? a.extra->size(1) : 0;
  st.depth = a.depth;
  st.D = 3 + st.E + (a.depth ? 1 : 0);
  st.antialiased = a.antialiased;
  return st;
}

template <typename T>
std::vector<Camera<T>> cameras_of(const Common& a, const Settings<T>& st) {
  const int64_t C = a.viewmats.size(0);
  std::vector<Camera<T>> cams;
  cams.reserve(static_cast<size_t>(C));
  const T* V = a.viewmats.data_ptr<T>();
  const T* K = a.Ks.data_ptr<T>();
  const T* P = a.campos.data_ptr<T>();
  for (int64_t c = 0; c < C; ++c) cams.push_back(camera_of(V + 16 * c, K + 9 * c, P + 3 * c, st));
  return cams;
}

template <typename T>
Io<T> inputs_of(const Common& a, const std::vector<Camera<T>>& cams) {
  Io<T> io{};
  io.means = a.means.data_ptr<T>();
  io.quats = a.quats.data_ptr<T>();
  io.scales = a.scales.data_ptr<T>();
  io.opac = a.opac.data_ptr<T>();
  io.colors = a.colors.data_ptr<T>();
  io.cs0 = a.colors.stride(0);
  io.cs1 = a.colors.stride(1);
  io.cs2 = a.colors.dim() == 3 ? a.colors.stride(2) : 1;
  io.extra = a.extra ? a.extra->data_ptr<T>() : nullptr;
  io.cams = cams.data();
  io.C = a.viewmats.size(0);
  io.N = a.means.size(0);
  io.K = a.degree < 0 ? 1 : a.colors.size(1);
  return io;
}

template <typename T>
void forward_impl(const Common& a, int nt, Tensor& m2, Tensor& con, Tensor& dep, Tensor& op,
                  Tensor& radii, Tensor& feats) {
  const Settings<T> st = settings_of<T>(a);
  const std::vector<Camera<T>> cams = cameras_of(a, st);
  Io<T> io = inputs_of(a, cams);
  io.m2 = m2.data_ptr<T>();
  io.con = con.data_ptr<T>();
  io.dep = dep.data_ptr<T>();
  io.op_out = op.data_ptr<T>();
  io.radii = radii.data_ptr<int32_t>();
  io.feats = feats.data_ptr<T>();
  parallel_chunks(io.N, nt, [&](int64_t n0, int64_t n1) { run_forward(io, st, n0, n1); });
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> project_sh_fwd(
    const Tensor& means, const Tensor& quats, const Tensor& scales, const Tensor& opacities,
    const Tensor& colors, const std::optional<Tensor>& extra, const Tensor& viewmats,
    const Tensor& Ks, const Tensor& campos, int64_t width, int64_t height, int64_t sh_degree,
    bool render_depth, double eps2d, double near, double far, bool antialiased,
    int64_t n_threads) {
  const Common a{means, quats, scales, opacities, colors, viewmats, Ks, campos, extra,
                 width, height, sh_degree, render_depth, antialiased, eps2d, near, far};
  check(a);
  const int64_t N = means.size(0), C = viewmats.size(0);
  const int64_t D = 3 + (extra ? extra->size(1) : 0) + (render_depth ? 1 : 0);
  auto opt = means.options();
  Tensor m2 = at::empty({C, N, 2}, opt), con = at::empty({C, N, 3}, opt);
  Tensor dep = at::empty({C, N}, opt), op = at::empty({C, N}, opt);
  Tensor radii = at::empty({C, N, 2}, opt.dtype(at::kInt));
  Tensor feats = at::empty({C, N, D}, opt);
  const int nt = threads_of(n_threads);
  if (means.scalar_type() == at::kFloat)
    forward_impl<float>(a, nt, m2, con, dep, op, radii, feats);
  else
    forward_impl<double>(a, nt, m2, con, dep, op, radii, feats);
  return {m2, con, dep, op, radii, feats};
}

template <typename T>
const T* grad_ptr(const std::optional<Tensor>& g, at::IntArrayRef shape, const char* name) {
  if (!g || !g->defined()) return nullptr;
  TORCH_CHECK(g->sizes() == shape, "s3dgs native projection: gradient of ", name, " has the wrong shape");
  TORCH_CHECK(g->is_contiguous() && g->scalar_type() == c10::CppTypeToScalarType<T>::value,
              "s3dgs native projection: gradient of ", name, " must be contiguous, in the dtype of means");
  return g->data_ptr<T>();
}

template <typename T>
void backward_impl(const Common& a, const std::optional<Tensor>& g_m2, const std::optional<Tensor>& g_con,
                   const std::optional<Tensor>& g_dep, const std::optional<Tensor>& g_op,
                   const std::optional<Tensor>& g_feats, int nt, Tensor& v_means, Tensor& v_quats,
                   Tensor& v_scales, Tensor& v_opac, Tensor& v_colors, Tensor& v_extra) {
  const Settings<T> st = settings_of<T>(a);
  const std::vector<Camera<T>> cams = cameras_of(a, st);
  Io<T> io = inputs_of(a, cams);
  const int64_t C = io.C, N = io.N;
  io.g_m2 = grad_ptr<T>(g_m2, {C, N, 2}, "means2d");
  io.g_con = grad_ptr<T>(g_con, {C, N, 3}, "conics");
  io.g_dep = grad_ptr<T>(g_dep, {C, N}, "depths");
  io.g_op = grad_ptr<T>(g_op, {C, N}, "opacities");
  io.g_feats = grad_ptr<T>(g_feats, {C, N, st.D}, "features");
  io.v_means = v_means.data_ptr<T>();
  io.v_quats = v_quats.data_ptr<T>();
  io.v_scales = v_scales.data_ptr<T>();
  io.v_opac = v_opac.data_ptr<T>();
  io.v_colors = v_colors.data_ptr<T>();
  io.v_extra = st.E ? v_extra.data_ptr<T>() : nullptr;
  parallel_chunks(N, nt, [&](int64_t n0, int64_t n1) { run_backward(io, st, n0, n1); });
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> project_sh_bwd(
    const Tensor& means, const Tensor& quats, const Tensor& scales, const Tensor& opacities,
    const Tensor& colors, const std::optional<Tensor>& extra, const Tensor& viewmats,
    const Tensor& Ks, const Tensor& campos, int64_t width, int64_t height, int64_t sh_degree,
    bool render_depth, double eps2d, double near, double far, bool antialiased,
    const std::optional<Tensor>& v_means2d, const std::optional<Tensor>& v_conics,
    const std::optional<Tensor>& v_depths, const std::optional<Tensor>& v_opacities,
    const std::optional<Tensor>& v_feats, int64_t n_threads) {
  const Common a{means, quats, scales, opacities, colors, viewmats, Ks, campos, extra,
                 width, height, sh_degree, render_depth, antialiased, eps2d, near, far};
  check(a);
  const int64_t N = means.size(0);
  auto opt = means.options();
  Tensor v_means = at::empty({N, 3}, opt), v_quats = at::empty({N, 4}, opt);
  Tensor v_scales = at::empty({N, 3}, opt), v_opac = at::empty({N}, opt);
  Tensor v_colors = at::empty(colors.sizes(), opt);
  Tensor v_extra = extra ? at::empty({N, extra->size(1)}, opt) : at::empty({0}, opt);
  const int nt = threads_of(n_threads);
  if (means.scalar_type() == at::kFloat)
    backward_impl<float>(a, v_means2d, v_conics, v_depths, v_opacities, v_feats, nt, v_means, v_quats,
                         v_scales, v_opac, v_colors, v_extra);
  else
    backward_impl<double>(a, v_means2d, v_conics, v_depths, v_opacities, v_feats, nt, v_means,
                          v_quats, v_scales, v_opac, v_colors, v_extra);
  return {v_means, v_quats, v_scales, v_opac, v_colors, v_extra};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(s3dgs_native, m) {
  m.def(
      "project_sh_fwd(Tensor means, Tensor quats, Tensor scales, Tensor opacities, Tensor colors, "
      "Tensor? extra, Tensor viewmats, Tensor Ks, Tensor campos, int width, int height, "
      "int sh_degree, bool render_depth, float eps2d, float near, float far, bool antialiased, "
      "int n_threads) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
      &project_sh_fwd);
  m.def(
      "project_sh_bwd(Tensor means, Tensor quats, Tensor scales, Tensor opacities, Tensor colors, "
      "Tensor? extra, Tensor viewmats, Tensor Ks, Tensor campos, int width, int height, "
      "int sh_degree, bool render_depth, float eps2d, float near, float far, bool antialiased, "
      "Tensor? v_means2d, Tensor? v_conics, Tensor? v_depths, Tensor? v_opacities, "
      "Tensor? v_feats, int n_threads) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
      &project_sh_bwd);
}
