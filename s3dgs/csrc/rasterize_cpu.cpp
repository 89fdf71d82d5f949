// s3dgs native CPU rasteriser: gsplat's tile algorithm (bin Gaussians into tiles, blend each pixel
// front to back with an early stop, replay back to front for the gradients) on a CPU, with OpenMP
// threads over tiles and SIMD over the pixels of a tile row.
//
// Written for s3dgs; the algorithm is the one of 3DGS / gsplat's CUDA kernels, the code is not.
// Loaded by s3dgs/render/native.py (see there for the build route and flags). Ops in the
// torch.ops.s3dgs_native namespace, in the order a training step calls them:
//
//   bin_tiles      means2d [C,N,2], radii [C,N,2] int32, depths [C,N], conics [C,N,3],
//                  opacities [C,N] -> the visible Gaussians sorted by depth, the (camera, tile)
//                  lists of Gaussians front to back, and the order of the per-Gaussian table.
//   make_table     -> the per-Gaussian table [V', 12 + D] the tile kernels read (built once per
//                  render, kept for the backward).
//   rasterize_fwd  -> image [C,H,W,D], alpha [C,H,W,1], final transmittance [C,H,W], index of the
//                  last blended Gaussian of each pixel in its tile's list [C,H,W] int32 (-1: none).
//   rasterize_bwd  -> per intersection, the gradient summed over the tile's pixels [M, 8 + D].
//   reduce_grads   -> gradients of means2d [C,N,2], conics [C,N,3], opacities [C,N], features
//                  [C,N,D] and the AbsGS sums of |per-pixel dL/dmeans2d| [C,N,2].
//   vexp           the kernels' vectorised exp on its own, for tests.
//
// Blending (identical to raster.py and the dense reference): sigma = 0.5 (a dx^2 + c dy^2) + b dx dy
// with d = mean - pixel centre; alpha = min(0.999, o exp(-sigma)); alpha < 1/255 is skipped; a pixel
// stops, exclusively, before the Gaussian that would take its transmittance to <= 1e-4.
//
// Determinism: every tile writes only its own pixels and its own rows of the per-intersection
// gradient buffer; each Gaussian's gradient is then the sum of its rows in tile order. Results are
// therefore bitwise identical run to run and for any thread count, whatever the schedule.

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <tuple>
#include <type_traits>
#include <vector>

namespace s3dgs_native {

using at::Tensor;

constexpr double kAlphaMin = 1.0 / 255.0;  // alphas below are skipped
constexpr double kAlphaMax = 0.999;         // alphas are clamped to this
constexpr double kTStop = 1e-4;             // a pixel stops before T would reach this
// Margin on tau = log(255 o) for the conservative tests (tile binning, pixel boxes, cheap skip):
// keeping an extra pair or pixel only costs time, the exact alpha test decides.
constexpr double kTauRel = 1e-3;
constexpr double kTauAbs = 1e-3;

inline double tau_margin(double o) {
  double tau = std::log(255.0 * o);
  return tau + kTauRel * std::fabs(tau) + kTauAbs;
}

int threads_of(int64_t n) { return n < 1 ? 1 : static_cast<int>(n); }

// ------------------------------------------------------------------------------------- binning
// Order-preserving unsigned keys of floating-point depths, for a stable LSD radix sort.
inline uint32_t sort_key(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
inline uint64_t sort_key(double f) {
  uint64_t u;
  std::memcpy(&u, &f, 8);
  return (u & 0x8000000000000000ull) ? ~u : (u | 0x8000000000000000ull);
}

template <typename U>
void radix_sort(std::vector<U>& keys, std::vector<int32_t>& vals) {
  const size_t n = keys.size();
  std::vector<U> k2(n);
  std::vector<int32_t> v2(n);
  for (int shift = 0; shift < static_cast<int>(sizeof(U) * 8); shift += 8) {
    size_t cnt[257] = {0};
    for (size_t i = 0; i < n; ++i) cnt[((keys[i] >> shift) & 255u) + 1]++;
    bool trivial = false;
    for (int d = 1; d <= 256; ++d) trivial |= (cnt[d] == n);
    if (trivial) continue;  // every key has the same digit here
    for (int d = 1; d <= 256; ++d) cnt[d] += cnt[d - 1];
    for (size_t i = 0; i < n; ++i) {
      size_t pos = cnt[(keys[i] >> shift) & 255u]++;
      k2[pos] = keys[i];
      v2[pos] = vals[i];
    }
    keys.swap(k2);
    vals.swap(v2);
  }
}

// Tile range of a Gaussian from its radii (as raster.py's build_plan) and the exact test of
// whether its alpha can reach 1/255 at some pixel centre of tile (tx, ty) (as raster.py's
// _ellipse_touches_tile): the minimum of the quadratic form over the tile's rectangle of pixel
// centres, on the rectangle's edges when the mean lies outside it.
struct TileRange {
  int64_t x0, x1, y0, y1;  // [x0, x1) x [y0, y1)
};

inline TileRange tile_range(double mx, double my, double rx, double ry, int64_t tile,
                            int64_t tiles_x, int64_t tiles_y) {
  auto clampi = [](double v, int64_t hi) -> int64_t {
    if (!(v > 0.0)) return 0;  // also NaN
    if (v > static_cast<double>(hi)) return hi;
    return static_cast<int64_t>(v);
  };
  const double t = static_cast<double>(tile);
  const double m0 = mx / t, m1 = my / t, r0 = rx / t, r1 = ry / t;
  return {clampi(std::floor(m0 - r0), tiles_x), clampi(std::ceil(m0 + r0), tiles_x),
          clampi(std::floor(m1 - r1), tiles_y), clampi(std::ceil(m1 + r1), tiles_y)};
}

// A Gaussian's quantities for the tile test, computed once per Gaussian.
struct Ellipse {
  double mx, my, a, b, c, tau, b_c, b_a;
  bool degenerate;
};

inline Ellipse ellipse_of(double mx, double my, double a, double b, double c, double o) {
  const bool degenerate = !(a > 0.0 && c > 0.0);
  return {mx, my, a, b, c, tau_margin(o), degenerate ? 0.0 : b / c, degenerate ? 0.0 : b / a,
          degenerate};
}

inline bool ellipse_touches_tile(const Ellipse& e, int64_t tx, int64_t ty, int64_t tile) {
  if (e.degenerate) return true;  // keep (conservative)
  const double x0 = static_cast<double>(tx * tile) - (e.mx - 0.5);
  const double x1 = x0 + static_cast<double>(tile - 1);
  const double y0 = static_cast<double>(ty * tile) - (e.my - 0.5);
  const double y1 = y0 + static_cast<double>(tile - 1);
  if (x0 <= 0.0 && x1 >= 0.0 && y0 <= 0.0 && y1 >= 0.0) return true;
  double best = std::numeric_limits<double>::infinity();
  for (double X : {x0, x1}) {
    const double dy = std::min(std::max(-e.b_c * X, y0), y1);
    best = std::min(best, (0.5 * e.a * X + e.b * dy) * X + 0.5 * e.c * dy * dy);
  }
  for (double Y : {y0, y1}) {
    const double dx = std::min(std::max(-e.b_a * Y, x0), x1);
    best = std::min(best, (0.5 * e.c * Y + e.b * dx) * Y + 0.5 * e.a * dx * dx);
  }
  return best <= e.tau;
}

template <typename T>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> bin_tiles_impl(
    const Tensor& means2d, const Tensor& radii, const Tensor& depths, const Tensor& conics,
    const Tensor& opacities, int64_t width, int64_t height, int64_t tile, int nt) {
  const int64_t C = depths.size(0), N = depths.size(1), CN = C * N;
  const int64_t tiles_x = (width + tile - 1) / tile, tiles_y = (height + tile - 1) / tile;
  const int64_t n_tiles = tiles_x * tiles_y;
  TORCH_CHECK(CN < std::numeric_limits<int32_t>::max(), "s3dgs native: too many Gaussians");
  TORCH_CHECK(C * n_tiles < std::numeric_limits<int32_t>::max(), "s3dgs native: too many tiles");
  const T* m2 = means2d.data_ptr<T>();
  const int32_t* rad = radii.data_ptr<int32_t>();
  const T* dep = depths.data_ptr<T>();
  const T* con = conics.data_ptr<T>();
  const T* op = opacities.data_ptr<T>();

  // pass 1 (flat order, so the inputs are read sequentially): each visible Gaussian's tile range
  // from its radii, as raster.py's build_plan; the tiles it touches are at most that many. (The
  // range is recomputed in pass 2 rather than stored: memory traffic, not arithmetic, is what
  // costs here.)
  auto range_of = [&](int64_t g) {
    if (!(rad[2 * g] > 0 && rad[2 * g + 1] > 0)) return TileRange{0, 0, 0, 0};
    return tile_range(m2[2 * g], m2[2 * g + 1], rad[2 * g], rad[2 * g + 1], tile, tiles_x, tiles_y);
  };
  std::vector<int64_t> boff(static_cast<size_t>(CN + 1), 0);
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t g = 0; g < CN; ++g) {
    const TileRange r = range_of(g);
    boff[g + 1] = (r.x1 - r.x0) * (r.y1 - r.y0);
  }
  for (int64_t g = 0; g < CN; ++g) boff[g + 1] += boff[g];
  // pass 2: the (camera, tile) keys of the tiles each Gaussian really touches (the exact test of
  // raster.py's _ellipse_touches_tile), written from boff[g] on; cnt[g] of them
  std::vector<int32_t> kbuf(static_cast<size_t>(boff[CN]));
  std::vector<int32_t> cnt(static_cast<size_t>(CN), 0);
#pragma omp parallel for schedule(dynamic, 1024) num_threads(nt)
  for (int64_t g = 0; g < CN; ++g) {
    const TileRange r = range_of(g);
    if (r.x1 <= r.x0 || r.y1 <= r.y0) continue;
    const Ellipse e = ellipse_of(m2[2 * g], m2[2 * g + 1], con[3 * g], con[3 * g + 1],
                                 con[3 * g + 2], op[g]);
    const int64_t base = (g / N) * n_tiles;
    int32_t* out = kbuf.data() + boff[g];
    int32_t n = 0;
    for (int64_t ty = r.y0; ty < r.y1; ++ty)
      for (int64_t tx = r.x0; tx < r.x1; ++tx)
        if (ellipse_touches_tile(e, tx, ty, tile))
          out[n++] = static_cast<int32_t>(base + ty * tiles_x + tx);
    cnt[g] = n;
  }
  // visible Gaussians (radii > 0), sorted front to back; ties keep the flat index order
  std::vector<int32_t> vis;
  vis.reserve(static_cast<size_t>(CN));
  for (int64_t g = 0; g < CN; ++g)
    if (rad[2 * g] > 0 && rad[2 * g + 1] > 0) vis.push_back(static_cast<int32_t>(g));
  const int64_t V = static_cast<int64_t>(vis.size());
  {
    using U = decltype(sort_key(T(0)));
    std::vector<U> keys(vis.size());
    for (size_t i = 0; i < vis.size(); ++i) keys[i] = sort_key(dep[vis[i]]);
    radix_sort(keys, vis);
  }
  // per visible Gaussian (depth order), where its intersections start in Gaussian-major order
  Tensor gauss_offsets = at::empty({V + 1}, at::TensorOptions().dtype(at::kLong));
  int64_t* goff = gauss_offsets.data_ptr<int64_t>();
  goff[0] = 0;
  for (int64_t v = 0; v < V; ++v) goff[v + 1] = goff[v] + cnt[vis[v]];
  const int64_t M = goff[V];
  TORCH_CHECK(M < std::numeric_limits<int32_t>::max(), "s3dgs native: too many intersections");

  // The rasteriser's per-Gaussian table is ordered by the tile under each mean (then flat id), so
  // that the Gaussians of a tile, and of the next tiles a thread takes, lie close in memory:
  // in depth or flat order every Gaussian of every tile was a cache (and TLB) miss.
  Tensor table_ids;
  std::vector<int32_t> tindex(static_cast<size_t>(CN), -1);
  {
    std::vector<int64_t> ctr(static_cast<size_t>(C * n_tiles + 1), 0);
    std::vector<int32_t> center(static_cast<size_t>(CN), 0);
    int64_t Vt = 0;
    for (int64_t g = 0; g < CN; ++g) {
      if (cnt[g] == 0) continue;
      const double tx = std::floor(static_cast<double>(m2[2 * g]) / tile);
      const double ty = std::floor(static_cast<double>(m2[2 * g + 1]) / tile);
      const int64_t cx = tx < 0 ? 0 : (tx >= tiles_x ? tiles_x - 1 : static_cast<int64_t>(tx));
      const int64_t cy = ty < 0 ? 0 : (ty >= tiles_y ? tiles_y - 1 : static_cast<int64_t>(ty));
      center[g] = static_cast<int32_t>((g / N) * n_tiles + cy * tiles_x + cx);
      ctr[center[g] + 1]++;
      ++Vt;
    }
    for (int64_t t = 0; t < C * n_tiles; ++t) ctr[t + 1] += ctr[t];
    table_ids = at::empty({Vt}, at::TensorOptions().dtype(at::kInt));
    int32_t* tid = table_ids.data_ptr<int32_t>();
    for (int64_t g = 0; g < CN; ++g) {
      if (cnt[g] == 0) continue;
      const int64_t j = ctr[center[g]]++;
      tid[j] = static_cast<int32_t>(g);
      tindex[g] = static_cast<int32_t>(j);
    }
  }

  // Stable counting sort of the intersections by (camera, tile), visiting the Gaussians front to
  // back, so depth order is kept inside every tile. In parallel: each thread takes a contiguous
  // range of the depth order, counts its keys per tile, and writes from its own cursor (after the
  // ranges of the threads before it): the same positions for any number of threads.
  const int64_t K = C * n_tiles;
  Tensor tile_offsets = at::empty({K + 1}, at::TensorOptions().dtype(at::kLong));
  int64_t* toff = tile_offsets.data_ptr<int64_t>();
  Tensor isect_ids = at::empty({M}, at::TensorOptions().dtype(at::kInt));
  Tensor gauss_isects = at::empty({M}, at::TensorOptions().dtype(at::kInt));
  int32_t* ids = isect_ids.data_ptr<int32_t>();
  int32_t* gi = gauss_isects.data_ptr<int32_t>();
  {
    const int64_t nparts = std::max<int64_t>(1, std::min<int64_t>(nt, V / 4096 + 1));
    std::vector<int64_t> hist(static_cast<size_t>(nparts * K), 0);
    auto part_begin = [&](int64_t t) { return V * t / nparts; };
#pragma omp parallel for schedule(static, 1) num_threads(nt)
    for (int64_t t = 0; t < nparts; ++t) {
      int64_t* h = hist.data() + t * K;
      for (int64_t v = part_begin(t); v < part_begin(t + 1); ++v) {
        const int32_t g = vis[v];
        const int32_t* keys = kbuf.data() + boff[g];
        for (int64_t i = 0; i < cnt[g]; ++i) h[keys[i]]++;
      }
    }
    // cursors: tile-major, then part: hist becomes each part's first position in each tile
    int64_t pos = 0;
    for (int64_t k = 0; k < K; ++k) {
      toff[k] = pos;
      for (int64_t t = 0; t < nparts; ++t) {
        const int64_t n = hist[t * K + k];
        hist[t * K + k] = pos;
        pos += n;
      }
    }
    toff[K] = pos;
#pragma omp parallel for schedule(static, 1) num_threads(nt)
    for (int64_t t = 0; t < nparts; ++t) {
      int64_t* cursor = hist.data() + t * K;
      for (int64_t v = part_begin(t); v < part_begin(t + 1); ++v) {
        const int32_t g = vis[v], row = tindex[g];
        const int32_t* keys = kbuf.data() + boff[g];
        for (int64_t i = 0, j = goff[v]; i < cnt[g]; ++i, ++j) {
          const int64_t at = cursor[keys[i]]++;
          ids[at] = row;
          gi[j] = static_cast<int32_t>(at);
        }
      }
    }
  }
  Tensor vis_ids = at::empty({V}, at::TensorOptions().dtype(at::kInt));
  if (V) std::memcpy(vis_ids.data_ptr<int32_t>(), vis.data(), sizeof(int32_t) * V);
  return {vis_ids, tile_offsets, isect_ids, gauss_offsets, gauss_isects, table_ids};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> bin_tiles(
    const Tensor& means2d, const Tensor& radii, const Tensor& depths, const Tensor& conics,
    const Tensor& opacities, int64_t width, int64_t height, int64_t tile, int64_t n_threads) {
  TORCH_CHECK(radii.scalar_type() == at::kInt, "radii must be int32");
  const int nt = threads_of(n_threads);
  if (means2d.scalar_type() == at::kFloat)
    return bin_tiles_impl<float>(means2d, radii, depths, conics, opacities, width, height, tile, nt);
  TORCH_CHECK(means2d.scalar_type() == at::kDouble, "s3dgs native: float32 or float64 only");
  return bin_tiles_impl<double>(means2d, radii, depths, conics, opacities, width, height, tile, nt);
}

// ---------------------------------------------------------------------------------- SIMD
// The tile kernels work on kL pixels of a tile row at once with GCC/Clang vector extensions:
// 8 floats (one AVX register, two SSE ones) or 8 doubles. On x86-64 the per-tile kernels are
// compiled twice, for AVX2 and for the baseline, and the loader picks one (target_clones), so the
// cached binary runs on any x86-64. Both do the same IEEE operations lane by lane in the same
// order (no FMA contraction: -ffp-contract=off), so they give the same bits (checked on the render
// benchmark's 20k-Gaussian scene, forward image and backward rows, with a build that defines
// S3DGS_NO_CLONES). The baseline one is much slower (8x on that scene): 8-lane vectors on SSE2.
constexpr int kL = 8;

template <typename T>
struct Simd;
template <>
struct Simd<float> {
  typedef float V __attribute__((vector_size(32)));
  typedef int32_t I __attribute__((vector_size(32)));
  typedef int32_t IT;
};
template <>
struct Simd<double> {
  typedef double V __attribute__((vector_size(64)));
  typedef int64_t I __attribute__((vector_size(64)));
  typedef int64_t IT;
};

#define S3_INLINE inline __attribute__((always_inline))

template <typename V>
S3_INLINE V vload(const void* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V>
S3_INLINE void vstore(void* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}
template <typename V, typename S>
S3_INLINE V splat(S x) {
  V v;
  for (int i = 0; i < kL; ++i) v[i] = x;
  return v;
}
template <typename I>
S3_INLINE bool any(const I& m) {  // any lane set (lanes are 0 or -1): OR the halves as vectors
  typedef uint64_t H __attribute__((vector_size(16)));
  H h[sizeof(I) / 16];
  std::memcpy(h, &m, sizeof(I));
  H o = h[0];
  for (size_t i = 1; i < sizeof(I) / 16; ++i) o |= h[i];
  return (o[0] | o[1]) != 0;
}
template <typename V>
S3_INLINE auto hsum(const V& v) -> decltype(v[0] + v[1]) {  // fixed order
  auto s = ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
  return s;
}

// Horizontal sums of 8 vectors at once: out[i] = hsum(v[i]), by the same pairwise tree (so the
// same bits) but with three levels of shuffles and adds instead of 8 x 7 lane extractions.
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
template <typename V, typename T>
S3_INLINE void hsum8(const V* v, T* out) {
  V l1[4], l2[2];
  for (int i = 0; i < 4; ++i)  // (a0+a1, b0+b1, a2+a3, b2+b3, ...) of a = v[2i], b = v[2i+1]
    l1[i] = __builtin_shufflevector(v[2 * i], v[2 * i + 1], 0, 8, 2, 10, 4, 12, 6, 14) +
            __builtin_shufflevector(v[2 * i], v[2 * i + 1], 1, 9, 3, 11, 5, 13, 7, 15);
  for (int i = 0; i < 2; ++i)  // (a0..3, b0..3, c0..3, d0..3, a4..7, b4..7, c4..7, d4..7)
    l2[i] = __builtin_shufflevector(l1[2 * i], l1[2 * i + 1], 0, 1, 8, 9, 4, 5, 12, 13) +
            __builtin_shufflevector(l1[2 * i], l1[2 * i + 1], 2, 3, 10, 11, 6, 7, 14, 15);
  const V r = __builtin_shufflevector(l2[0], l2[1], 0, 1, 2, 3, 8, 9, 10, 11) +
              __builtin_shufflevector(l2[0], l2[1], 4, 5, 6, 7, 12, 13, 14, 15);
  std::memcpy(out, &r, sizeof(V));
}
#else
template <typename V, typename T>
S3_INLINE void hsum8(const V* v, T* out) {
  for (int i = 0; i < 8; ++i) out[i] = hsum(v[i]);
}
#endif

// exp of x <= 0 (here -sigma for sigma >= 0), vectorised: n = round(x / ln 2), r = x - n ln 2 in
// two parts (Cody-Waite), a polynomial in r, times 2^n built in the exponent bits. Arguments are
// clamped to [-80, 1] first (lanes outside that range are never used: alpha < 1/255 there). Within
// 2 ulp of the correctly rounded result; tests/test_render.py checks it against torch.exp.
S3_INLINE Simd<float>::V vexp(Simd<float>::V x) {
  using V = Simd<float>::V;
  using I = Simd<float>::I;
  const V lo = splat<V>(-80.0f), hi = splat<V>(1.0f);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const V fx = x * 1.44269504088896341f + 0.5f;
  I n = __builtin_convertvector(fx, I);  // truncates: floor for fx >= 0, else fix below
  V nf = __builtin_convertvector(n, V);
  n = n + (nf > fx);  // true lanes are -1
  nf = __builtin_convertvector(n, V);
  V r = x - nf * 0.693359375f;
  r = r + nf * 2.12194440e-4f;
  // the polynomial by Estrin's scheme: a short dependency chain (no FMA here)
  const V r2 = r * r, r4 = r2 * r2;
  const V q01 = r * 1.6666665459e-1f + 5.0000001201e-1f;
  const V q23 = r * 8.3334519073e-3f + 4.1665795894e-2f;
  const V q45 = r * 1.9875691500e-4f + 1.3981999507e-3f;
  const V p = ((q01 + r2 * q23) + r4 * q45) * r2 + r + 1.0f;
  const I bits = (n + 127) << 23;
  V scale;
  std::memcpy(&scale, &bits, sizeof(V));
  return p * scale;
}

S3_INLINE Simd<double>::V vexp(Simd<double>::V x) {
  using V = Simd<double>::V;
  using I = Simd<double>::I;
  const V lo = splat<V>(-700.0), hi = splat<V>(1.0);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const V fx = x * 1.4426950408889634074 + 0.5;
  I n = __builtin_convertvector(fx, I);
  V nf = __builtin_convertvector(n, V);
  n = n + (nf > fx);
  nf = __builtin_convertvector(n, V);
  V r = x - nf * 6.93145751953125e-1;
  r = r - nf * 1.42860682030941723212e-6;
  // Taylor series to r^13/13! (|r| <= 0.35: the remainder is below 1e-17 relative)
  V p = splat<V>(1.0 / 6227020800.0);
  const double inv_fact[] = {1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0,
                             1.0 / 362880.0,    1.0 / 40320.0,    1.0 / 5040.0,
                             1.0 / 720.0,       1.0 / 120.0,      1.0 / 24.0,
                             1.0 / 6.0,         0.5,              1.0,
                             1.0};
  for (double cf : inv_fact) p = p * r + cf;
  const I bits = (n + 1023) << 52;
  V scale;
  std::memcpy(&scale, &bits, sizeof(V));
  return p * scale;
}

// ------------------------------------------------------------------------ per-Gaussian table
// Rows [V', kCols + D] in the order of table_ids (see bin_tiles): x, y, a, b, c, o, tau_skip, the
// pixel box x0, x1, y0, y1 (inclusive, inside the image) outside which alpha < 1/255, a pad, then
// the features. One row is what a tile needs of a Gaussian: a couple of cache lines instead of
// five arrays. Built once per render by the forward and kept for the backward.
constexpr int64_t kCols = 12;

template <typename T>
void make_table_impl(const T* m2, const T* con, const T* op, const T* feats, const int32_t* tids,
                     int64_t Vt, int64_t CN, int64_t D, int64_t width, int64_t height, int nt,
                     T* rows) {
  const int64_t stride = kCols + D;
  // rows are written where they go and the inputs read in flat order: scattered writes do not
  // stall the loop as scattered reads would
  std::vector<int32_t> where(static_cast<size_t>(CN), -1);
  for (int64_t j = 0; j < Vt; ++j) where[tids[j]] = static_cast<int32_t>(j);
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t g = 0; g < CN; ++g) {
    if (where[g] < 0) continue;
    T* r = rows + static_cast<int64_t>(where[g]) * stride;
    const double x = m2[2 * g], y = m2[2 * g + 1];
    const double a = con[3 * g], b = con[3 * g + 1], c = con[3 * g + 2];
    const double tau = tau_margin(static_cast<double>(op[g]));
    r[0] = m2[2 * g];
    r[1] = m2[2 * g + 1];
    r[2] = con[3 * g];
    r[3] = con[3 * g + 1];
    r[4] = con[3 * g + 2];
    r[5] = op[g];
    r[6] = static_cast<T>(tau);
    r[11] = T(0);
    for (int64_t d = 0; d < D; ++d) r[kCols + d] = feats[g * D + d];
    // The ellipse {0.5 d^T Q d <= tau} has half extents sqrt(2 tau cov_xx), sqrt(2 tau cov_yy)
    // with cov = Q^-1; a small absolute margin covers rounding.
    const double det = a * c - b * b;
    double x0 = 0.0, x1 = static_cast<double>(width - 1), y0 = 0.0,
           y1 = static_cast<double>(height - 1);
    if (!(tau >= 0.0)) {  // opacity below 1/255 (or NaN): nothing to draw
      x0 = 1.0;
      x1 = 0.0;
    } else if (det > 0.0 && a > 0.0 && c > 0.0 && std::isfinite(det)) {
      const double ex = std::sqrt(2.0 * tau * c / det) + 1e-3;
      const double ey = std::sqrt(2.0 * tau * a / det) + 1e-3;
      x0 = std::max(x0, std::ceil(x - ex - 0.5));
      x1 = std::min(x1, std::floor(x + ex - 0.5));
      y0 = std::max(y0, std::ceil(y - ey - 0.5));
      y1 = std::min(y1, std::floor(y + ey - 0.5));
      if (!(x0 <= x1 && y0 <= y1)) {  // also NaN
        x0 = 1.0;
        x1 = 0.0;
      }
    }
    r[7] = static_cast<T>(x0);
    r[8] = static_cast<T>(x1);
    r[9] = static_cast<T>(y0);
    r[10] = static_cast<T>(y1);
  }
}

Tensor make_table(const Tensor& means2d, const Tensor& conics, const Tensor& opacities,
                  const Tensor& feats, const Tensor& table_ids, int64_t width, int64_t height,
                  int64_t n_threads) {
  const int64_t CN = opacities.numel(), D = feats.size(-1), Vt = table_ids.size(0);
  Tensor table = at::empty({Vt, kCols + D}, feats.options());
  const int nt = threads_of(n_threads);
  if (feats.scalar_type() == at::kFloat) {
    make_table_impl<float>(means2d.data_ptr<float>(), conics.data_ptr<float>(),
                           opacities.data_ptr<float>(), feats.data_ptr<float>(),
                           table_ids.data_ptr<int32_t>(), Vt, CN, D, width, height, nt,
                           table.data_ptr<float>());
  } else {
    TORCH_CHECK(feats.scalar_type() == at::kDouble, "s3dgs native: float32 or float64 only");
    make_table_impl<double>(means2d.data_ptr<double>(), conics.data_ptr<double>(),
                            opacities.data_ptr<double>(), feats.data_ptr<double>(),
                            table_ids.data_ptr<int32_t>(), Vt, CN, D, width, height, nt,
                            table.data_ptr<double>());
  }
  return table;
}

// Tile geometry: pixel ranges of a tile (inclusive), clipped to the image.
struct TileGeom {
  int64_t cam, x0, x1, y0, y1;
};

inline TileGeom tile_geom(int64_t t, int64_t n_tiles, int64_t tiles_x, int64_t tile, int64_t W,
                          int64_t H) {
  const int64_t cam = t / n_tiles, lt = t % n_tiles;
  const int64_t x0 = (lt % tiles_x) * tile, y0 = (lt / tiles_x) * tile;
  return {cam, x0, std::min(x0 + tile, W) - 1, y0, std::min(y0 + tile, H) - 1};
}

// How far ahead the tile loops prefetch the rows of the Gaussians they will read next. The index
// is clamped by the callers rather than tested here: GCC 12 at -O2 and above dropped a
// __builtin_prefetch under such a test (seen in the disassembly).
constexpr int64_t kAhead = 8;

template <typename T>
S3_INLINE void prefetch_row(const T* rows, int64_t stride, const int32_t* ids, int64_t i) {
  const char* p = reinterpret_cast<const char*>(rows + static_cast<int64_t>(ids[i]) * stride);
  for (int64_t b = 0; b < stride * static_cast<int64_t>(sizeof(T)); b += 64) __builtin_prefetch(p + b);
}

// The pixel box of row r inside tile tg (inclusive); empty when x0 > x1 or y0 > y1.
template <typename T>
S3_INLINE void box_in_tile(const T* r, const TileGeom& tg, int64_t& x0, int64_t& x1, int64_t& y0,
                           int64_t& y1) {
  x0 = std::max<int64_t>(static_cast<int64_t>(r[7]), tg.x0);
  x1 = std::min<int64_t>(static_cast<int64_t>(r[8]), tg.x1);
  y0 = std::max<int64_t>(static_cast<int64_t>(r[9]), tg.y0);
  y1 = std::min<int64_t>(static_cast<int64_t>(r[10]), tg.y1);
}

// Per-tile pixel state is stored row by row with rows padded to whole vectors: pixel (px, py) of
// the tile is at (py - y0) * RW + (px - x0), RW = kL * ceil(tile / kL); per-channel arrays are
// channel-major ([D][tile * RW]) so that one vector holds kL pixels of one channel.
struct Layout {
  int64_t tile, RW, P;  // tile edge, padded row width, padded pixel count
  explicit Layout(int64_t t) : tile(t), RW((t + kL - 1) / kL * kL), P(t * ((t + kL - 1) / kL * kL)) {}
};

// What the tile kernels read and write, for one call.
template <typename T>
struct Args {
  const T* tab;
  int64_t stride, D, W, H, n_tiles, tiles_x;
  const int64_t* toff;
  const int32_t* ids;
  Layout lay;
  // forward outputs
  T *out = nullptr, *out_a = nullptr, *out_t = nullptr;
  int32_t* out_l = nullptr;
  // backward inputs and output
  const T *tf = nullptr, *vi = nullptr, *va = nullptr;
  const int32_t* ls = nullptr;
  T* part = nullptr;
};

// Per-thread scratch, reused from tile to tile.
template <typename T>
struct Scratch {
  std::vector<T> Tt, Tf, GA, acc, S, G, sf;
  std::vector<typename Simd<T>::IT> lst, done;
  Scratch(const Layout& lay, int64_t D, bool backward)
      : Tt(lay.P), Tf(backward ? lay.P : 0), GA(backward ? lay.P : 0),
        acc(backward ? 0 : lay.P * D), S(backward ? lay.P * D : 0), G(backward ? lay.P * D : 0),
        sf(backward ? kL * D : 0), lst(lay.P), done(lay.P) {}
};

// --------------------------------------------------------------------------------- forward
// One tile: Gaussians front to back, each on the pixels of its box inside the tile, kL at a time.
// Whether every pixel of the tile has stopped is checked every kDoneCheck Gaussians (a count per
// vector of pixels cost more than the blending it saved).
constexpr int64_t kDoneCheck = 16;
template <typename T, int DC>
S3_INLINE void forward_tile(const Args<T>& a, Scratch<T>& sc, int64_t t) {
  using V = typename Simd<T>::V;
  using I = typename Simd<T>::I;
  using IT = typename Simd<T>::IT;
  const Layout& lay = a.lay;
  const int64_t D = DC > 0 ? DC : a.D, P = lay.P, RW = lay.RW;
  const TileGeom tg = tile_geom(t, a.n_tiles, a.tiles_x, lay.tile, a.W, a.H);
  const int64_t npix = (tg.x1 - tg.x0 + 1) * (tg.y1 - tg.y0 + 1);
  T* Tt = sc.Tt.data();
  T* acc = sc.acc.data();
  IT* lst = sc.lst.data();
  IT* done = sc.done.data();
  std::fill(sc.Tt.begin(), sc.Tt.end(), T(1));
  std::fill(sc.acc.begin(), sc.acc.end(), T(0));
  std::fill(sc.lst.begin(), sc.lst.end(), IT(-1));
  std::fill(sc.done.begin(), sc.done.end(), IT(0));
  I lane;
  for (int i = 0; i < kL; ++i) lane[i] = i;
  const V lanef = __builtin_convertvector(lane, V) + T(0.5);
  const V amin = splat<V>(static_cast<T>(kAlphaMin)), amax = splat<V>(static_cast<T>(kAlphaMax));
  const V tstop = splat<V>(static_cast<T>(kTStop)), zero = splat<V>(T(0)), one = splat<V>(T(1));
  const int64_t start = a.toff[t], end = a.toff[t + 1];
  for (int64_t i = start; i < std::min(end, start + kAhead); ++i)
    prefetch_row(a.tab, a.stride, a.ids, i);
  for (int64_t i = start; i < end; ++i) {
    // every kDoneCheck Gaussians: stop the tile once all its pixels have stopped
    if ((i - start) % kDoneCheck == kDoneCheck - 1) {
      int64_t ndone = 0;
      for (int64_t p = 0; p < P; ++p) ndone += done[p] != 0;
      if (ndone == npix) break;
    }
    prefetch_row(a.tab, a.stride, a.ids, std::min(i + kAhead, end - 1));
    const T* r = a.tab + static_cast<int64_t>(a.ids[i]) * a.stride;
    int64_t x0, x1, y0, y1;
    box_in_tile(r, tg, x0, x1, y0, y1);
    if (x0 > x1 || y0 > y1) continue;
    const T gx = r[0], gy = r[1], ga = r[2], gb = r[3], gc = r[4], go = r[5], gtau = r[6];
    const T* f = r + kCols;
    const I kv = splat<I>(static_cast<IT>(i - start));
    // the vectors (columns of kL pixels) that cover [x0, x1], then the rows; what depends only
    // on the column is computed once per column
    const int64_t c0 = (x0 - tg.x0) / kL, c1 = (x1 - tg.x0) / kL;
    for (int64_t c = c0; c <= c1; ++c) {
      const int64_t cx = tg.x0 + c * kL;  // image x of lane 0
      const I inbox = (lane >= static_cast<IT>(x0 - cx)) & (lane <= static_cast<IT>(x1 - cx));
      const V dx = gx - (lanef + static_cast<T>(cx));
      const V adxx = ga * dx * dx, bdx = gb * dx;
      for (int64_t py = y0; py <= y1; ++py) {
        const T dy = gy - (static_cast<T>(py) + T(0.5));
        const int64_t q = (py - tg.y0) * RW + c * kL;
        // sigma = 0.5 (a dx^2 + c dy^2) + b dx dy, in the reference's order of operations
        const V sigma = T(0.5) * (adxx + gc * dy * dy) + bdx * dy;
        const I dn = vload<I>(done + q);
        I m = inbox & ~dn & (sigma <= gtau);  // alpha >= 1/255 possible, pixel not stopped
        if (!any(m)) continue;
        V al = go * vexp(-sigma);
        al = al > amax ? amax : al;
        m &= (al >= amin);
        const V Tp = vload<V>(Tt + q);
        const V nT = Tp * (one - al);
        const I stop = m & (nT <= tstop);  // exclusive early stop
        vstore(done + q, dn | stop);
        m &= ~stop;
        const V w = m ? al * Tp : zero;
        for (int64_t d = 0; d < D; ++d) {
          T* ac = acc + d * P + q;
          vstore(ac, vload<V>(ac) + w * f[d]);
        }
        vstore(Tt + q, m ? nT : Tp);
        vstore(lst + q, m ? kv : vload<I>(lst + q));
      }
    }
  }
  for (int64_t py = tg.y0; py <= tg.y1; ++py)
    for (int64_t px = tg.x0; px <= tg.x1; ++px) {
      const int64_t p = (py - tg.y0) * RW + (px - tg.x0);
      const int64_t q = (tg.cam * a.H + py) * a.W + px;
      for (int64_t d = 0; d < D; ++d) a.out[q * D + d] = acc[d * P + p];
      a.out_t[q] = Tt[p];
      a.out_a[q] = T(1) - Tt[p];
      a.out_l[q] = static_cast<int32_t>(lst[p]);
    }
}

// -------------------------------------------------------------------------------- backward
// One tile, back to front from each pixel's last blended Gaussian, with T recovered by
// division; the tile's gradient of each of its Gaussians (summed over the tile's pixels) goes to
// that intersection's row of `part` [M, kG + D]: mx, my, a, b, c, o, |mx|, |my|, features.
constexpr int kG = 8;

template <typename T, int DC>
S3_INLINE void backward_tile(const Args<T>& a, Scratch<T>& sc, int64_t t) {
  using V = typename Simd<T>::V;
  using I = typename Simd<T>::I;
  using IT = typename Simd<T>::IT;
  const Layout& lay = a.lay;
  const int64_t D = DC > 0 ? DC : a.D, P = lay.P, RW = lay.RW, RS = kG + D;
  const int64_t start = a.toff[t], end = a.toff[t + 1];
  if (start == end) return;
  const TileGeom tg = tile_geom(t, a.n_tiles, a.tiles_x, lay.tile, a.W, a.H);
  // per pixel: T in front of the current Gaussian (Tc), final T (Tf), dL/dalpha (GA), last
  // blended Gaussian (L); per channel and pixel: features blended behind the current Gaussian
  // (S) and dL/dimage (G); sf: the current Gaussian's feature gradient, per channel and lane
  T* Tc = sc.Tt.data();
  T* Tf = sc.Tf.data();
  T* GA = sc.GA.data();
  T* S = sc.S.data();
  T* G = sc.G.data();
  T* sf = sc.sf.data();
  IT* L = sc.lst.data();
  std::fill(sc.lst.begin(), sc.lst.end(), IT(-1));
  std::fill(sc.S.begin(), sc.S.end(), T(0));
  std::fill(sc.G.begin(), sc.G.end(), T(0));
  std::fill(sc.GA.begin(), sc.GA.end(), T(0));
  std::fill(sc.Tt.begin(), sc.Tt.end(), T(1));
  std::fill(sc.Tf.begin(), sc.Tf.end(), T(1));
  IT kmax = -1;
  for (int64_t py = tg.y0; py <= tg.y1; ++py)
    for (int64_t px = tg.x0; px <= tg.x1; ++px) {
      const int64_t p = (py - tg.y0) * RW + (px - tg.x0);
      const int64_t q = (tg.cam * a.H + py) * a.W + px;
      L[p] = a.ls[q];
      kmax = std::max<IT>(kmax, L[p]);
      Tc[p] = Tf[p] = a.tf[q];
      GA[p] = a.va[q];
      for (int64_t d = 0; d < D; ++d) G[d * P + p] = a.vi[q * D + d];
    }
  // rows behind every pixel's last Gaussian get nothing
  std::fill(a.part + (start + kmax + 1) * RS, a.part + end * RS, T(0));
  I lane;
  for (int i = 0; i < kL; ++i) lane[i] = i;
  const V lanef = __builtin_convertvector(lane, V) + T(0.5);
  const V amin = splat<V>(static_cast<T>(kAlphaMin)), amax = splat<V>(static_cast<T>(kAlphaMax));
  const V zero = splat<V>(T(0)), one = splat<V>(T(1));
  for (int64_t i = start + kmax; i > start + kmax - kAhead && i >= start; --i)
    prefetch_row(a.tab, a.stride, a.ids, i);
  for (int64_t k = kmax; k >= 0; --k) {
    const int64_t i = start + k;
    prefetch_row(a.tab, a.stride, a.ids, std::max(i - kAhead, start));
    T* out = a.part + i * RS;
    std::fill(out, out + RS, T(0));
    const T* r = a.tab + static_cast<int64_t>(a.ids[i]) * a.stride;
    int64_t x0, x1, y0, y1;
    box_in_tile(r, tg, x0, x1, y0, y1);
    if (x0 > x1 || y0 > y1) continue;
    const T gx = r[0], gy = r[1], ga = r[2], gb = r[3], gc = r[4], go = r[5], gtau = r[6];
    const T* f = r + kCols;
    const I kv = splat<I>(static_cast<IT>(k));
    // per-lane sums over the tile's pixels: dL/d(mx, my, a, b, c, o), |dL/dmx|, |dL/dmy|
    V acc8[kG] = {zero, zero, zero, zero, zero, zero, zero, zero};
    std::fill(sc.sf.begin(), sc.sf.end(), T(0));
    bool touched = false;
    const int64_t c0 = (x0 - tg.x0) / kL, c1 = (x1 - tg.x0) / kL;
    for (int64_t c = c0; c <= c1; ++c) {
      const int64_t cx = tg.x0 + c * kL;
      const I inbox = (lane >= static_cast<IT>(x0 - cx)) & (lane <= static_cast<IT>(x1 - cx));
      const V dx = gx - (lanef + static_cast<T>(cx));
      const V adx = ga * dx, bdx = gb * dx, adxx = adx * dx;
      for (int64_t py = y0; py <= y1; ++py) {
        const T dy = gy - (static_cast<T>(py) + T(0.5));
        const int64_t q = (py - tg.y0) * RW + c * kL;
        const V sigma = T(0.5) * (adxx + gc * dy * dy) + bdx * dy;  // as in the forward
        I m = inbox & (vload<I>(L + q) >= kv) & (sigma <= gtau);
        if (!any(m)) continue;
        const V vis = vexp(-sigma);
        const V ao = go * vis;
        const V al = ao > amax ? amax : ao;
        m &= (al >= amin);  // (no test for an empty m here: rare, and cheaper to blend zeros)
        touched = true;
        const V ra = one / (one - al);
        const V Tcur = vload<V>(Tc + q);
        const V Tk = Tcur * ra;  // transmittance in front of this Gaussian
        vstore(Tc + q, m ? Tk : Tcur);
        const V fac = m ? al * Tk : zero;
        // dL/dalpha = sum_d (f_d T_k - S_d / (1 - alpha)) dL/dout_d + T_final / (1 - alpha) dL/dA
        V vsum = zero;
        for (int64_t d = 0; d < D; ++d) {
          const V g = vload<V>(G + d * P + q);
          const V sv = vload<V>(S + d * P + q);
          vstore(sf + d * kL, vload<V>(sf + d * kL) + fac * g);
          vsum += (f[d] * Tk - sv * ra) * g;
          vstore(S + d * P + q, sv + f[d] * fac);
        }
        const V v_al = vsum + vload<V>(Tf + q) * ra * vload<V>(GA + q);
        const I mg = m & (ao <= amax);  // not clamped: alpha depends on o, mean and conic
        const V v_sig = mg ? -ao * v_al : zero;
        const V lx = v_sig * (adx + gb * dy);
        const V ly = v_sig * (bdx + gc * dy);
        acc8[0] += lx;
        acc8[1] += ly;
        acc8[2] += T(0.5) * v_sig * dx * dx;
        acc8[3] += v_sig * dx * dy;
        acc8[4] += T(0.5) * v_sig * dy * dy;
        acc8[5] += mg ? vis * v_al : zero;
        acc8[6] += lx < zero ? -lx : lx;
        acc8[7] += ly < zero ? -ly : ly;
      }
    }
    if (!touched) continue;
    hsum8(acc8, out);
    int64_t d = 0;
    for (; d + 8 <= D; d += 8) {
      V fv[8];
      for (int j = 0; j < 8; ++j) fv[j] = vload<V>(sf + (d + j) * kL);
      hsum8(fv, out + kG + d);
    }
    for (; d < D; ++d) out[kG + d] = hsum(vload<V>(sf + d * kL));
  }
}

// The tile kernels once per instruction set (see SIMD above), as plain functions of one tile.
// For float, the channel counts of training renders (8: RGB, 4 semantic channels, depth; 4: RGB
// and depth) get kernels with the count known at compile time (unrolled channel loops).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(S3DGS_NO_CLONES)
#define S3_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define S3_CLONES
#endif

S3_CLONES void forward_tile_f32(const Args<float>& a, Scratch<float>& sc, int64_t t) {
  switch (a.D) {
    case 8: forward_tile<float, 8>(a, sc, t); break;
    case 4: forward_tile<float, 4>(a, sc, t); break;
    default: forward_tile<float, 0>(a, sc, t);
  }
}
S3_CLONES void forward_tile_f64(const Args<double>& a, Scratch<double>& sc, int64_t t) {
  forward_tile<double, 0>(a, sc, t);
}
S3_CLONES void backward_tile_f32(const Args<float>& a, Scratch<float>& sc, int64_t t) {
  switch (a.D) {
    case 8: backward_tile<float, 8>(a, sc, t); break;
    case 4: backward_tile<float, 4>(a, sc, t); break;
    default: backward_tile<float, 0>(a, sc, t);
  }
}
S3_CLONES void backward_tile_f64(const Args<double>& a, Scratch<double>& sc, int64_t t) {
  backward_tile<double, 0>(a, sc, t);
}
inline void run_forward_tile(const Args<float>& a, Scratch<float>& sc, int64_t t) { forward_tile_f32(a, sc, t); }
inline void run_forward_tile(const Args<double>& a, Scratch<double>& sc, int64_t t) { forward_tile_f64(a, sc, t); }
inline void run_backward_tile(const Args<float>& a, Scratch<float>& sc, int64_t t) { backward_tile_f32(a, sc, t); }
inline void run_backward_tile(const Args<double>& a, Scratch<double>& sc, int64_t t) { backward_tile_f64(a, sc, t); }

template <typename T>
Args<T> make_args(const Tensor& table, int64_t W, int64_t H, int64_t tile,
                  const Tensor& tile_offsets, const Tensor& isect_ids) {
  const int64_t tiles_x = (W + tile - 1) / tile, tiles_y = (H + tile - 1) / tile;
  const int64_t D = table.size(1) - kCols;
  return Args<T>{table.data_ptr<T>(), kCols + D, D, W, H, tiles_x * tiles_y, tiles_x,
                 tile_offsets.data_ptr<int64_t>(), isect_ids.data_ptr<int32_t>(), Layout(tile)};
}

template <typename T>
void forward_impl(const Tensor& table, const Tensor& tile_offsets, const Tensor& isect_ids,
                  int64_t C, int64_t W, int64_t H, int64_t tile, int nt, Tensor& img,
                  Tensor& alpha, Tensor& tfin, Tensor& last) {
  Args<T> a = make_args<T>(table, W, H, tile, tile_offsets, isect_ids);
  a.out = img.data_ptr<T>();
  a.out_a = alpha.data_ptr<T>();
  a.out_t = tfin.data_ptr<T>();
  a.out_l = last.data_ptr<int32_t>();
#pragma omp parallel num_threads(nt)
  {
    Scratch<T> sc(a.lay, a.D, false);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < C * a.n_tiles; ++t) run_forward_tile(a, sc, t);
  }
}

std::tuple<Tensor, Tensor, Tensor, Tensor> rasterize_fwd(const Tensor& table,
                                                         const Tensor& tile_offsets,
                                                         const Tensor& isect_ids, int64_t C,
                                                         int64_t width, int64_t height,
                                                         int64_t tile, int64_t n_threads) {
  const int64_t D = table.size(1) - kCols;
  auto opt = table.options();
  Tensor img = at::empty({C, height, width, D}, opt);
  Tensor alpha = at::empty({C, height, width, 1}, opt);
  Tensor tfin = at::empty({C, height, width}, opt);
  Tensor last = at::empty({C, height, width}, opt.dtype(at::kInt));
  const int nt = threads_of(n_threads);
  if (table.scalar_type() == at::kFloat) {
    forward_impl<float>(table, tile_offsets, isect_ids, C, width, height, tile, nt, img, alpha,
                        tfin, last);
  } else {
    TORCH_CHECK(table.scalar_type() == at::kDouble, "s3dgs native: float32 or float64 only");
    forward_impl<double>(table, tile_offsets, isect_ids, C, width, height, tile, nt, img, alpha,
                         tfin, last);
  }
  return {img, alpha, tfin, last};
}

template <typename T>
void backward_impl(const Tensor& table, const Tensor& tile_offsets, const Tensor& isect_ids,
                   const Tensor& tfin, const Tensor& last, const Tensor& v_img,
                   const Tensor& v_alpha, int64_t C, int64_t W, int64_t H, int64_t tile, int nt,
                   Tensor& partial) {
  Args<T> a = make_args<T>(table, W, H, tile, tile_offsets, isect_ids);
  a.tf = tfin.data_ptr<T>();
  a.ls = last.data_ptr<int32_t>();
  a.vi = v_img.data_ptr<T>();
  a.va = v_alpha.data_ptr<T>();
  a.part = partial.data_ptr<T>();
#pragma omp parallel num_threads(nt)
  {
    Scratch<T> sc(a.lay, a.D, true);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < C * a.n_tiles; ++t) run_backward_tile(a, sc, t);
  }
}

Tensor rasterize_bwd(const Tensor& table, const Tensor& tile_offsets, const Tensor& isect_ids,
                     const Tensor& tfin, const Tensor& last, const Tensor& v_img,
                     const Tensor& v_alpha, int64_t width, int64_t height, int64_t tile,
                     int64_t n_threads) {
  const int64_t D = table.size(1) - kCols, M = isect_ids.size(0), C = tfin.size(0);
  Tensor partial = at::empty({M, kG + D}, table.options());
  const int nt = threads_of(n_threads);
  if (table.scalar_type() == at::kFloat) {
    backward_impl<float>(table, tile_offsets, isect_ids, tfin, last, v_img, v_alpha, C, width,
                         height, tile, nt, partial);
  } else {
    TORCH_CHECK(table.scalar_type() == at::kDouble, "s3dgs native: float32 or float64 only");
    backward_impl<double>(table, tile_offsets, isect_ids, tfin, last, v_img, v_alpha, C, width,
                          height, tile, nt, partial);
  }
  return partial;
}

// The vectorised exp on its own, for tests: exp(x) of every element of x (float or double).
Tensor vexp_op(const Tensor& x) {
  Tensor xc = x.contiguous();
  Tensor out = at::empty_like(xc);
  const int64_t n = xc.numel();
  auto run = [&](auto* src, auto* dst) {
    using T = std::remove_pointer_t<decltype(dst)>;
    using V = typename Simd<T>::V;
    for (int64_t i = 0; i < n; i += kL) {
      T buf[kL] = {};
      for (int64_t l = 0; l < kL && i + l < n; ++l) buf[l] = src[i + l];
      const V y = vexp(vload<V>(buf));
      for (int64_t l = 0; l < kL && i + l < n; ++l) dst[i + l] = y[l];
    }
  };
  if (xc.scalar_type() == at::kFloat) {
    run(xc.data_ptr<float>(), out.data_ptr<float>());
  } else {
    TORCH_CHECK(xc.scalar_type() == at::kDouble, "s3dgs native: float32 or float64 only");
    run(xc.data_ptr<double>(), out.data_ptr<double>());
  }
  return out;
}

// ------------------------------------------------------------------------------- reduction
// Each visible Gaussian sums the rows of its intersections (listed by gauss_isects, in tile
// order) of `partial`: no races, a fixed order. The rows are scattered, so the next ones are
// prefetched. Returns the gradients of means2d [C,N,2], conics [C,N,3], opacities [C,N],
// features [C,N,D] and the absolute means2d sums [C,N,2] (empty unless absgrad).
template <typename T>
void reduce_impl(const Tensor& partial, const Tensor& vis_ids, const Tensor& gauss_offsets,
                 const Tensor& gauss_isects, int64_t D, bool absgrad, int nt, Tensor& g_m,
                 Tensor& g_con, Tensor& g_o, Tensor& g_f, Tensor& g_abs) {
  const int64_t V = vis_ids.size(0), RS = partial.size(1), M = gauss_isects.size(0);
  const T* part = partial.data_ptr<T>();
  const int32_t* vis = vis_ids.data_ptr<int32_t>();
  const int64_t* goff = gauss_offsets.data_ptr<int64_t>();
  const int32_t* gi = gauss_isects.data_ptr<int32_t>();
  T* om = g_m.data_ptr<T>();
  T* oc = g_con.data_ptr<T>();
  T* oo = g_o.data_ptr<T>();
  T* of = g_f.data_ptr<T>();
  T* oa = absgrad ? g_abs.data_ptr<T>() : nullptr;
#pragma omp parallel num_threads(nt)
  {
    std::vector<T> sum(RS);
#pragma omp for schedule(static)
    for (int64_t v = 0; v < V; ++v) {
      std::fill(sum.begin(), sum.end(), T(0));
      for (int64_t j = goff[v]; j < goff[v + 1]; ++j) {
        const char* ahead = reinterpret_cast<const char*>(
            part + static_cast<int64_t>(gi[std::min(j + 16, M - 1)]) * RS);
        for (int64_t b = 0; b < RS * static_cast<int64_t>(sizeof(T)); b += 64) __builtin_prefetch(ahead + b);
        const T* row = part + static_cast<int64_t>(gi[j]) * RS;
        for (int64_t c = 0; c < RS; ++c) sum[c] += row[c];
      }
      const int64_t g = vis[v];
      om[2 * g] = sum[0];
      om[2 * g + 1] = sum[1];
      oc[3 * g] = sum[2];
      oc[3 * g + 1] = sum[3];
      oc[3 * g + 2] = sum[4];
      oo[g] = sum[5];
      if (oa) {
        oa[2 * g] = sum[6];
        oa[2 * g + 1] = sum[7];
      }
      std::memcpy(of + g * D, sum.data() + kG, sizeof(T) * D);
    }
  }
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> reduce_grads(
    const Tensor& partial, const Tensor& vis_ids, const Tensor& gauss_offsets,
    const Tensor& gauss_isects, int64_t C, int64_t N, bool absgrad, int64_t n_threads) {
  const int64_t D = partial.size(1) - kG;
  auto opt = partial.options();
  Tensor g_m = at::zeros({C, N, 2}, opt);
  Tensor g_con = at::zeros({C, N, 3}, opt);
  Tensor g_o = at::zeros({C, N}, opt);
  Tensor g_f = at::zeros({C, N, D}, opt);
  Tensor g_abs = absgrad ? at::zeros({C, N, 2}, opt) : at::empty({0}, opt);
  const int nt = threads_of(n_threads);
  if (partial.scalar_type() == at::kFloat) {
    reduce_impl<float>(partial, vis_ids, gauss_offsets, gauss_isects, D, absgrad, nt, g_m, g_con,
                       g_o, g_f, g_abs);
  } else {
    TORCH_CHECK(partial.scalar_type() == at::kDouble, "s3dgs native: float32 or float64 only");
    reduce_impl<double>(partial, vis_ids, gauss_offsets, gauss_isects, D, absgrad, nt, g_m,
                        g_con, g_o, g_f, g_abs);
  }
  return {g_m, g_con, g_o, g_f, g_abs};
}

}  // namespace s3dgs_native

TORCH_LIBRARY(s3dgs_native, m) {
  m.def(
      "bin_tiles(Tensor means2d, Tensor radii, Tensor depths, Tensor conics, Tensor opacities, "
      "int width, int height, int tile, int n_threads) -> (Tensor, Tensor, Tensor, Tensor, Tensor, "
      "Tensor)",
      &s3dgs_native::bin_tiles);
  m.def(
      "make_table(Tensor means2d, Tensor conics, Tensor opacities, Tensor feats, Tensor table_ids, "
      "int width, int height, int n_threads) -> Tensor",
      &s3dgs_native::make_table);
  m.def(
      "rasterize_fwd(Tensor table, Tensor tile_offsets, Tensor isect_ids, int C, int width, "
      "int height, int tile, int n_threads) -> (Tensor, Tensor, Tensor, Tensor)",
      &s3dgs_native::rasterize_fwd);
  m.def(
      "rasterize_bwd(Tensor table, Tensor tile_offsets, Tensor isect_ids, Tensor tfin, "
      "Tensor last, Tensor v_img, Tensor v_alpha, int width, int height, int tile, int n_threads) "
      "-> Tensor",
      &s3dgs_native::rasterize_bwd);
  m.def(
      "reduce_grads(Tensor partial, Tensor vis_ids, Tensor gauss_offsets, Tensor gauss_isects, "
      "int C, int N, bool absgrad, int n_threads) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
      &s3dgs_native::reduce_grads);
  m.def("vexp(Tensor x) -> Tensor", &s3dgs_native::vexp_op);
}
