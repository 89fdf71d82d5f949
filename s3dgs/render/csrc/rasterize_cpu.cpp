// s3dgs native CPU rasteriser: gsplat's tile algorithm (bin Gaussians into tiles, blend each pixel
// front to back with an early stop, replay back to front for the gradients) on a CPU with OpenMP.
//
// Written for s3dgs; the algorithm is the one of 3DGS / gsplat's CUDA kernels, the code is not.
// Loaded by s3dgs/render/native.py (see there for the build route and flags). Three ops in the
// torch.ops.s3dgs_native namespace:
//
//   bin_tiles      means2d [C,N,2], radii [C,N,2] int32, depths [C,N], conics [C,N,3],
//                  opacities [C,N]  ->  the visible Gaussians sorted by depth and the
//                  (camera, tile) -> Gaussians lists, front to back.
//   rasterize_fwd  -> image [C,H,W,D], alpha [C,H,W,1], final transmittance [C,H,W], index of the
//                  last blended Gaussian per pixel [C,H,W] int32 (-1: none).
//   rasterize_bwd  -> gradients of means2d [C,N,2], conics [C,N,3], opacities [C,N],
//                  features [C,N,D] and, if asked, the AbsGS sums |dL/dmeans2d| per pixel [C,N,2].
//
// Blending (identical to raster.py and the dense reference): sigma = 0.5 (a dx^2 + c dy^2) + b dx dy
// with d = mean - pixel centre; alpha = min(0.999, o exp(-sigma)); alpha < 1/255 is skipped; a pixel
// stops, exclusively, before the Gaussian that would take its transmittance to <= 1e-4.
//
// Determinism: every tile writes only its own pixels and its own rows of a per-intersection
// gradient buffer; each Gaussian's gradient is then the sum of its rows in tile order. Results are
// therefore bitwise identical run to run and for any thread count, whatever the schedule.

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
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

inline bool ellipse_touches_tile(double mx, double my, double a, double b, double c,
                                 double tau, int64_t tx, int64_t ty, int64_t tile) {
  if (!(a > 0.0 && c > 0.0)) return true;  // degenerate conic: keep (conservative)
  const double x0 = static_cast<double>(tx * tile) - (mx - 0.5);
  const double x1 = x0 + static_cast<double>(tile - 1);
  const double y0 = static_cast<double>(ty * tile) - (my - 0.5);
  const double y1 = y0 + static_cast<double>(tile - 1);
  if (x0 <= 0.0 && x1 >= 0.0 && y0 <= 0.0 && y1 >= 0.0) return true;
  const double b_c = b / c, b_a = b / a;
  double best = std::numeric_limits<double>::infinity();
  for (double X : {x0, x1}) {
    const double dy = std::min(std::max(-b_c * X, y0), y1);
    best = std::min(best, (0.5 * a * X + b * dy) * X + 0.5 * c * dy * dy);
  }
  for (double Y : {y0, y1}) {
    const double dx = std::min(std::max(-b_a * Y, x0), x1);
    best = std::min(best, (0.5 * c * Y + b * dx) * Y + 0.5 * a * dx * dx);
  }
  return best <= tau;
}

template <typename T>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> bin_tiles_impl(
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

  // Calls emit(key) for every (camera, tile) the flat Gaussian g touches, row-major. Passes over
  // the Gaussians run in flat order so that their inputs are read sequentially.
  auto visit = [&](int64_t g, auto&& emit) {
    const double mx = static_cast<double>(m2[2 * g]), my = static_cast<double>(m2[2 * g + 1]);
    const double a = con[3 * g], b = con[3 * g + 1], c = con[3 * g + 2];
    const double tau = tau_margin(static_cast<double>(op[g]));
    const TileRange r = tile_range(mx, my, rad[2 * g], rad[2 * g + 1], tile, tiles_x, tiles_y);
    const int64_t cam = g / N;
    for (int64_t ty = r.y0; ty < r.y1; ++ty)
      for (int64_t tx = r.x0; tx < r.x1; ++tx)
        if (ellipse_touches_tile(mx, my, a, b, c, tau, tx, ty, tile))
          emit(cam * n_tiles + ty * tiles_x + tx);
  };
  // pass 1: how many tiles each Gaussian touches (0 when not visible)
  std::vector<int32_t> cnt(static_cast<size_t>(CN), 0);
#pragma omp parallel for schedule(dynamic, 1024) num_threads(nt)
  for (int64_t g = 0; g < CN; ++g) {
    if (rad[2 * g] > 0 && rad[2 * g + 1] > 0) {
      int32_t n = 0;
      visit(g, [&](int64_t) { ++n; });
      cnt[g] = n;
    }
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
  // per visible Gaussian (depth order), where its intersections start
  Tensor gauss_offsets = at::empty({V + 1}, at::TensorOptions().dtype(at::kLong));
  int64_t* goff = gauss_offsets.data_ptr<int64_t>();
  goff[0] = 0;
  std::vector<int64_t> start_of(static_cast<size_t>(CN), 0);
  for (int64_t v = 0; v < V; ++v) {
    start_of[vis[v]] = goff[v];
    goff[v + 1] = goff[v] + cnt[vis[v]];
  }
  const int64_t M = goff[V];
  TORCH_CHECK(M < std::numeric_limits<int32_t>::max(), "s3dgs native: too many intersections");

  // pass 2: the (camera, tile) key of every intersection, Gaussian-major in depth order
  std::vector<int32_t> key(static_cast<size_t>(M));
#pragma omp parallel for schedule(dynamic, 1024) num_threads(nt)
  for (int64_t g = 0; g < CN; ++g) {
    if (cnt[g] > 0) {
      int64_t j = start_of[g];
      visit(g, [&](int64_t k) { key[j++] = static_cast<int32_t>(k); });
    }
  }

  // stable counting sort by key: depth order is kept inside every tile
  Tensor tile_offsets = at::zeros({C * n_tiles + 1}, at::TensorOptions().dtype(at::kLong));
  int64_t* toff = tile_offsets.data_ptr<int64_t>();
  for (int64_t j = 0; j < M; ++j) toff[key[j] + 1]++;
  for (int64_t t = 0; t < C * n_tiles; ++t) toff[t + 1] += toff[t];
  Tensor isect_ids = at::empty({M}, at::TensorOptions().dtype(at::kInt));
  Tensor isect_slots = at::empty({M}, at::TensorOptions().dtype(at::kInt));
  int32_t* ids = isect_ids.data_ptr<int32_t>();
  int32_t* slot = isect_slots.data_ptr<int32_t>();
  {
    std::vector<int64_t> cursor(toff, toff + C * n_tiles);
    for (int64_t v = 0; v < V; ++v) {
      const int32_t g = vis[v];
      for (int64_t j = goff[v]; j < goff[v + 1]; ++j) {
        const int64_t pos = cursor[key[j]]++;
        ids[pos] = g;
        slot[pos] = static_cast<int32_t>(j);
      }
    }
  }
  Tensor vis_ids = at::empty({V}, at::TensorOptions().dtype(at::kInt));
  if (V) std::memcpy(vis_ids.data_ptr<int32_t>(), vis.data(), sizeof(int32_t) * V);
  return {vis_ids, tile_offsets, isect_ids, isect_slots, gauss_offsets};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> bin_tiles(
    const Tensor& means2d, const Tensor& radii, const Tensor& depths, const Tensor& conics,
    const Tensor& opacities, int64_t width, int64_t height, int64_t tile, int64_t n_threads) {
  TORCH_CHECK(radii.scalar_type() == at::kInt, "radii must be int32");
  const int nt = threads_of(n_threads);
  if (means2d.scalar_type() == at::kFloat)
    return bin_tiles_impl<float>(means2d, radii, depths, conics, opacities, width, height, tile, nt);
  TORCH_CHECK(means2d.scalar_type() == at::kDouble, "s3dgs native: float32 or float64 only");
  return bin_tiles_impl<double>(means2d, radii, depths, conics, opacities, width, height, tile, nt);
}

// ------------------------------------------------------------------------------ channels
// Feature channels are processed in blocks of kLanes with GCC/Clang vector extensions (SSE on a
// baseline x86-64 build, NEON on ARM, scalar code elsewhere); D is padded with zeros to Dp, a
// multiple of kLanes, in every per-Gaussian and per-pixel buffer.
constexpr int64_t kLanes = 4;

template <typename T>
struct VecOf {
  typedef T type __attribute__((vector_size(kLanes * sizeof(T))));
};
template <typename T>
using Vec = typename VecOf<T>::type;

template <typename T>
inline Vec<T> vload(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T>
inline void vstore(T* p, const Vec<T>& v) {
  std::memcpy(p, &v, sizeof(v));
}
template <typename T>
inline T hsum(const Vec<T>& v) {
  return (v[0] + v[1]) + (v[2] + v[3]);
}

inline int64_t padded(int64_t D) { return (D + kLanes - 1) / kLanes * kLanes; }

// ------------------------------------------------------------------------ per-Gaussian table
// Packed rows [C*N, kCols + Dp], by flat id: x, y, a, b, c, o, tau_skip, then the pixel box
// x0, x1, y0, y1 (inclusive, inside the image) outside which alpha < 1/255, then the features. One
// row is what a tile needs of a Gaussian: a couple of cache lines instead of five arrays.
constexpr int64_t kCols = 12;

template <typename T>
void make_table(const T* m2, const T* con, const T* op, const T* feats, int64_t CN, int64_t D,
                int64_t width, int64_t height, int nt, std::vector<T>& rows) {
  const int64_t Dp = padded(D), stride = kCols + Dp;
  rows.resize(static_cast<size_t>(CN * stride));
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t g = 0; g < CN; ++g) {
    T* r = rows.data() + g * stride;
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
    for (int64_t d = 0; d < Dp; ++d) r[kCols + d] = d < D ? feats[g * D + d] : T(0);
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

// How far ahead the tile loops prefetch the rows of the Gaussians they will read next: the rows
// are scattered in memory, so without it every Gaussian of every tile waits for a cache miss
// (the largest cost of the first version, by perf). The index is clamped by the callers rather
// than tested here: GCC 12 at -O2 and above dropped a __builtin_prefetch under such a test.
constexpr int64_t kAhead = 8;

template <typename T>
inline void prefetch_row(const T* rows, int64_t stride, const int32_t* ids, int64_t i) {
  const char* p = reinterpret_cast<const char*>(rows + static_cast<int64_t>(ids[i]) * stride);
  for (int64_t b = 0; b < stride * static_cast<int64_t>(sizeof(T)); b += 64) __builtin_prefetch(p + b);
}

// The pixel box of row r inside tile tg (inclusive); empty when x0 > x1 or y0 > y1.
template <typename T>
inline void box_in_tile(const T* r, const TileGeom& tg, int64_t& x0, int64_t& x1, int64_t& y0,
                        int64_t& y1) {
  x0 = std::max<int64_t>(static_cast<int64_t>(r[7]), tg.x0);
  x1 = std::min<int64_t>(static_cast<int64_t>(r[8]), tg.x1);
  y0 = std::max<int64_t>(static_cast<int64_t>(r[9]), tg.y0);
  y1 = std::min<int64_t>(static_cast<int64_t>(r[10]), tg.y1);
}

// --------------------------------------------------------------------------------- forward
template <typename T>
void forward_impl(const Tensor& means2d, const Tensor& conics, const Tensor& opacities,
                  const Tensor& feats, const Tensor& tile_offsets, const Tensor& isect_ids,
                  int64_t W, int64_t H, int64_t tile, int nt, Tensor& img, Tensor& alpha,
                  Tensor& tfin, Tensor& last) {
  const int64_t C = opacities.size(0), N = opacities.size(1), D = feats.size(2);
  const int64_t Dp = padded(D), stride = kCols + Dp;
  const int64_t tiles_x = (W + tile - 1) / tile, tiles_y = (H + tile - 1) / tile;
  const int64_t n_tiles = tiles_x * tiles_y, P = tile * tile;
  std::vector<T> rows;
  make_table<T>(means2d.data_ptr<T>(), conics.data_ptr<T>(), opacities.data_ptr<T>(),
                feats.data_ptr<T>(), C * N, D, W, H, nt, rows);
  const T* tab = rows.data();
  const int64_t* toff = tile_offsets.data_ptr<int64_t>();
  const int32_t* ids = isect_ids.data_ptr<int32_t>();
  T* out = img.data_ptr<T>();
  T* out_a = alpha.data_ptr<T>();
  T* out_t = tfin.data_ptr<T>();
  int32_t* out_l = last.data_ptr<int32_t>();
  const T amin = static_cast<T>(kAlphaMin), amax = static_cast<T>(kAlphaMax);
  const T tstop = static_cast<T>(kTStop);

#pragma omp parallel num_threads(nt)
  {
    // per pixel of the tile: transmittance, blended features, last blended Gaussian, stopped
    std::vector<T> Ts(P), acc(P * Dp);
    std::vector<int32_t> lst(P);
    std::vector<uint8_t> done(P);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < C * n_tiles; ++t) {
      const TileGeom tg = tile_geom(t, n_tiles, tiles_x, tile, W, H);
      const int64_t npix = (tg.x1 - tg.x0 + 1) * (tg.y1 - tg.y0 + 1);
      std::fill(Ts.begin(), Ts.end(), T(1));
      std::fill(acc.begin(), acc.end(), T(0));
      std::fill(lst.begin(), lst.end(), -1);
      std::fill(done.begin(), done.end(), 0);
      int64_t ndone = 0;
      const int64_t start = toff[t], end = toff[t + 1];
      for (int64_t i = start; i < std::min(end, start + kAhead); ++i)
        prefetch_row(tab, stride, ids, i);
      // Gaussians front to back; each visits only the pixels of its box inside the tile
      for (int64_t i = start; i < end && ndone < npix; ++i) {
        prefetch_row(tab, stride, ids, std::min(i + kAhead, end - 1));
        const T* r = tab + static_cast<int64_t>(ids[i]) * stride;
        int64_t x0, x1, y0, y1;
        box_in_tile(r, tg, x0, x1, y0, y1);
        if (x0 > x1 || y0 > y1) continue;
        const T gx = r[0], gy = r[1], ga = r[2], gb = r[3], gc = r[4], go = r[5], gtau = r[6];
        const T* f = r + kCols;
        const int32_t k = static_cast<int32_t>(i - start);
        for (int64_t py = y0; py <= y1; ++py) {
          const T dy = gy - (static_cast<T>(py) + T(0.5));
          const int64_t prow = (py - tg.y0) * tile - tg.x0;
          for (int64_t px = x0; px <= x1; ++px) {
            const int64_t p = prow + px;
            if (done[p]) continue;
            const T dx = gx - (static_cast<T>(px) + T(0.5));
            const T sigma = T(0.5) * (ga * dx * dx + gc * dy * dy) + gb * dx * dy;
            if (!(sigma <= gtau)) continue;  // alpha < 1/255 for sure: no exp
            const T al = std::min(amax, go * std::exp(-sigma));
            if (al < amin) continue;
            const T Tp = Ts[p];
            const T nT = Tp * (T(1) - al);
            if (nT <= tstop) {  // exclusive early stop
              done[p] = 1;
              ++ndone;
              continue;
            }
            const T w = al * Tp;
            T* ac = acc.data() + p * Dp;
            for (int64_t d = 0; d < Dp; d += kLanes)
              vstore(ac + d, vload(ac + d) + w * vload(f + d));
            Ts[p] = nT;
            lst[p] = k;
          }
        }
      }
      for (int64_t py = tg.y0; py <= tg.y1; ++py)
        for (int64_t px = tg.x0; px <= tg.x1; ++px) {
          const int64_t p = (py - tg.y0) * tile + (px - tg.x0);
          const int64_t q = (tg.cam * H + py) * W + px;
          std::memcpy(out + q * D, acc.data() + p * Dp, sizeof(T) * D);
          out_t[q] = Ts[p];
          out_a[q] = T(1) - Ts[p];
          out_l[q] = lst[p];
        }
    }
  }
}

std::tuple<Tensor, Tensor, Tensor, Tensor> rasterize_fwd(
    const Tensor& means2d, const Tensor& conics, const Tensor& opacities, const Tensor& feats,
    const Tensor& tile_offsets, const Tensor& isect_ids, int64_t width, int64_t height,
    int64_t tile, int64_t n_threads) {
  const int64_t C = opacities.size(0), D = feats.size(2);
  auto opt = feats.options();
  Tensor img = at::empty({C, height, width, D}, opt);
  Tensor alpha = at::empty({C, height, width, 1}, opt);
  Tensor tfin = at::empty({C, height, width}, opt);
  Tensor last = at::empty({C, height, width}, opt.dtype(at::kInt));
  const int nt = threads_of(n_threads);
  if (feats.scalar_type() == at::kFloat) {
    forward_impl<float>(means2d, conics, opacities, feats, tile_offsets, isect_ids, width, height,
                        tile, nt, img, alpha, tfin, last);
  } else {
    TORCH_CHECK(feats.scalar_type() == at::kDouble, "s3dgs native: float32 or float64 only");
    forward_impl<double>(means2d, conics, opacities, feats, tile_offsets, isect_ids, width,
                         height, tile, nt, img, alpha, tfin, last);
  }
  return {img, alpha, tfin, last};
}

// -------------------------------------------------------------------------------- backward
// Per tile, back to front from each pixel's last blended Gaussian, with T recovered by
// division; the tile's gradient of each of its Gaussians (summed over the tile's pixels) goes to
// that intersection's row of the result [M, kG + Dp]: mx, my, a, b, c, o, |mx|, |my|, features.
// Rows are laid out Gaussian-major (row isect_slots[i] for intersection i), so that the reduction
// reads each Gaussian's rows contiguously.
constexpr int64_t kG = 8;

template <typename T>
void backward_impl(const Tensor& means2d, const Tensor& conics, const Tensor& opacities,
                   const Tensor& feats, const Tensor& tile_offsets, const Tensor& isect_ids,
                   const Tensor& isect_slots, const Tensor& tfin, const Tensor& last,
                   const Tensor& v_img, const Tensor& v_alpha, int64_t W, int64_t H,
                   int64_t tile, int nt, Tensor& partial) {
  const int64_t C = opacities.size(0), N = opacities.size(1), D = feats.size(2);
  const int64_t Dp = padded(D), stride = kCols + Dp, RS = kG + Dp;
  const int64_t tiles_x = (W + tile - 1) / tile, tiles_y = (H + tile - 1) / tile;
  const int64_t n_tiles = tiles_x * tiles_y, P = tile * tile;
  std::vector<T> rows;
  make_table<T>(means2d.data_ptr<T>(), conics.data_ptr<T>(), opacities.data_ptr<T>(),
                feats.data_ptr<T>(), C * N, D, W, H, nt, rows);
  const T* tab = rows.data();
  const int64_t* toff = tile_offsets.data_ptr<int64_t>();
  const int32_t* ids = isect_ids.data_ptr<int32_t>();
  const int32_t* slot = isect_slots.data_ptr<int32_t>();
  const T* tf = tfin.data_ptr<T>();
  const int32_t* ls = last.data_ptr<int32_t>();
  const T* vi = v_img.data_ptr<T>();
  const T* va = v_alpha.data_ptr<T>();
  T* part = partial.data_ptr<T>();
  const T amin = static_cast<T>(kAlphaMin), amax = static_cast<T>(kAlphaMax);

#pragma omp parallel num_threads(nt)
  {
    // per pixel: T in front of the current Gaussian, final T, features blended behind it (S),
    // dL/dimage (G), dL/dalpha (GA), last blended Gaussian (L); sf: the current Gaussian's
    // feature gradient summed over the tile's pixels
    std::vector<T> Tc(P), Tf(P), S(P * Dp), G(P * Dp, T(0)), GA(P), sf(Dp);
    std::vector<int32_t> L(P);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < C * n_tiles; ++t) {
      const int64_t start = toff[t], end = toff[t + 1];
      if (start == end) continue;
      const TileGeom tg = tile_geom(t, n_tiles, tiles_x, tile, W, H);
      int32_t kmax = -1;
      std::fill(L.begin(), L.end(), -1);
      for (int64_t py = tg.y0; py <= tg.y1; ++py)
        for (int64_t px = tg.x0; px <= tg.x1; ++px) {
          const int64_t p = (py - tg.y0) * tile + (px - tg.x0);
          const int64_t q = (tg.cam * H + py) * W + px;
          L[p] = ls[q];
          kmax = std::max(kmax, ls[q]);
          Tc[p] = Tf[p] = tf[q];
          GA[p] = va[q];
          std::memcpy(G.data() + p * Dp, vi + q * D, sizeof(T) * D);  // padding stays 0
        }
      std::fill(S.begin(), S.end(), T(0));
      // rows behind every pixel's last Gaussian get nothing
      for (int64_t i = start + kmax + 1; i < end; ++i)
        std::fill(part + slot[i] * RS, part + (slot[i] + 1) * RS, T(0));
      for (int64_t i = start + kmax; i > start + kmax - kAhead && i >= start; --i)
        prefetch_row(tab, stride, ids, i);
      for (int32_t k = kmax; k >= 0; --k) {
        const int64_t i = start + k;
        prefetch_row(tab, stride, ids, std::max(i - kAhead, start));
        T* out = part + static_cast<int64_t>(slot[i]) * RS;
        std::fill(out, out + RS, T(0));
        const T* r = tab + static_cast<int64_t>(ids[i]) * stride;
        int64_t x0, x1, y0, y1;
        box_in_tile(r, tg, x0, x1, y0, y1);
        if (x0 > x1 || y0 > y1) continue;
        const T gx = r[0], gy = r[1], ga = r[2], gb = r[3], gc = r[4], go = r[5], gtau = r[6];
        const T* f = r + kCols;
        T sx = 0, sy = 0, sa = 0, sb = 0, sc = 0, so = 0, ax = 0, ay = 0;
        std::fill(sf.begin(), sf.end(), T(0));
        for (int64_t py = y0; py <= y1; ++py) {
          const T dy = gy - (static_cast<T>(py) + T(0.5));
          const int64_t prow = (py - tg.y0) * tile - tg.x0;
          for (int64_t px = x0; px <= x1; ++px) {
            const int64_t p = prow + px;
            if (L[p] < k) continue;
            const T dx = gx - (static_cast<T>(px) + T(0.5));
            const T sigma = T(0.5) * (ga * dx * dx + gc * dy * dy) + gb * dx * dy;
            if (!(sigma <= gtau)) continue;
            const T vis = std::exp(-sigma);
            const T ao = go * vis;
            const T al = std::min(amax, ao);
            if (al < amin) continue;
            const T ra = T(1) / (T(1) - al);
            const T Tk = Tc[p] * ra;  // transmittance in front of this Gaussian
            Tc[p] = Tk;
            const T fac = al * Tk;
            const T* g = G.data() + p * Dp;
            T* s = S.data() + p * Dp;
            // dL/dalpha = sum_d (f_d T_k - S_d / (1 - alpha)) dL/dout_d + T_final / (1 - alpha) dL/dA
            Vec<T> vsum = {};
            for (int64_t d = 0; d < Dp; d += kLanes) {
              const Vec<T> gv = vload(g + d), fv = vload(f + d), sv = vload(s + d);
              vstore(sf.data() + d, vload(sf.data() + d) + fac * gv);
              vsum += (fv * Tk - sv * ra) * gv;
              vstore(s + d, sv + fv * fac);
            }
            const T v_al = hsum<T>(vsum) + Tf[p] * ra * GA[p];
            if (ao <= amax) {  // not clamped
              const T v_sig = -ao * v_al;
              const T lx = v_sig * (ga * dx + gb * dy);
              const T ly = v_sig * (gb * dx + gc * dy);
              sx += lx;
              sy += ly;
              ax += std::fabs(lx);
              ay += std::fabs(ly);
              sa += T(0.5) * v_sig * dx * dx;
              sb += v_sig * dx * dy;
              sc += T(0.5) * v_sig * dy * dy;
              so += vis * v_al;
            }
          }
        }
        out[0] = sx;
        out[1] = sy;
        out[2] = sa;
        out[3] = sb;
        out[4] = sc;
        out[5] = so;
        out[6] = ax;
        out[7] = ay;
        std::memcpy(out + kG, sf.data(), sizeof(T) * Dp);
      }
    }
  }
}

Tensor rasterize_bwd(const Tensor& means2d, const Tensor& conics, const Tensor& opacities,
                     const Tensor& feats, const Tensor& tile_offsets, const Tensor& isect_ids,
                     const Tensor& isect_slots, const Tensor& tfin, const Tensor& last,
                     const Tensor& v_img, const Tensor& v_alpha, int64_t width, int64_t height,
                     int64_t tile, int64_t n_threads) {
  const int64_t Dp = padded(feats.size(2)), M = isect_ids.size(0);
  Tensor partial = at::empty({M, kG + Dp}, feats.options());
  const int nt = threads_of(n_threads);
  if (feats.scalar_type() == at::kFloat) {
    backward_impl<float>(means2d, conics, opacities, feats, tile_offsets, isect_ids, isect_slots,
                         tfin, last, v_img, v_alpha, width, height, tile, nt, partial);
  } else {
    TORCH_CHECK(feats.scalar_type() == at::kDouble, "s3dgs native: float32 or float64 only");
    backward_impl<double>(means2d, conics, opacities, feats, tile_offsets, isect_ids,
                          isect_slots, tfin, last, v_img, v_alpha, width, height, tile, nt,
                          partial);
  }
  return partial;
}

// ------------------------------------------------------------------------------- reduction
// Each visible Gaussian sums its intersections' rows of `partial` (contiguous, in tile order):
// no races, a fixed order. Returns the gradients of means2d [C,N,2], conics [C,N,3], opacities
// [C,N], features [C,N,D] and the absolute means2d sums [C,N,2] (empty unless absgrad).
template <typename T>
void reduce_impl(const Tensor& partial, const Tensor& vis_ids, const Tensor& gauss_offsets,
                 int64_t D, bool absgrad, int nt, Tensor& g_m, Tensor& g_con, Tensor& g_o,
                 Tensor& g_f, Tensor& g_abs) {
  const int64_t V = vis_ids.size(0), RS = partial.size(1);
  const T* part = partial.data_ptr<T>();
  const int32_t* vis = vis_ids.data_ptr<int32_t>();
  const int64_t* goff = gauss_offsets.data_ptr<int64_t>();
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
        const T* row = part + j * RS;
        for (int64_t c = 0; c < RS; c += kLanes)
          vstore(sum.data() + c, vload(sum.data() + c) + vload(row + c));
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
    const Tensor& partial, const Tensor& vis_ids, const Tensor& gauss_offsets, int64_t C,
    int64_t N, int64_t D, bool absgrad, int64_t n_threads) {
  auto opt = partial.options();
  Tensor g_m = at::zeros({C, N, 2}, opt);
  Tensor g_con = at::zeros({C, N, 3}, opt);
  Tensor g_o = at::zeros({C, N}, opt);
  Tensor g_f = at::zeros({C, N, D}, opt);
  Tensor g_abs = absgrad ? at::zeros({C, N, 2}, opt) : at::empty({0}, opt);
  const int nt = threads_of(n_threads);
  if (partial.scalar_type() == at::kFloat) {
    reduce_impl<float>(partial, vis_ids, gauss_offsets, D, absgrad, nt, g_m, g_con, g_o, g_f,
                       g_abs);
  } else {
    TORCH_CHECK(partial.scalar_type() == at::kDouble, "s3dgs native: float32 or float64 only");
    reduce_impl<double>(partial, vis_ids, gauss_offsets, D, absgrad, nt, g_m, g_con, g_o, g_f,
                        g_abs);
  }
  return {g_m, g_con, g_o, g_f, g_abs};
}

}  // namespace s3dgs_native

TORCH_LIBRARY(s3dgs_native, m) {
  m.def(
      "bin_tiles(Tensor means2d, Tensor radii, Tensor depths, Tensor conics, Tensor opacities, "
      "int width, int height, int tile, int n_threads) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
      &s3dgs_native::bin_tiles);
  m.def(
      "rasterize_fwd(Tensor means2d, Tensor conics, Tensor opacities, Tensor feats, "
      "Tensor tile_offsets, Tensor isect_ids, int width, int height, int tile, int n_threads) "
      "-> (Tensor, Tensor, Tensor, Tensor)",
      &s3dgs_native::rasterize_fwd);
  m.def(
      "rasterize_bwd(Tensor means2d, Tensor conics, Tensor opacities, Tensor feats, "
      "Tensor tile_offsets, Tensor isect_ids, Tensor isect_slots, Tensor tfin, Tensor last, "
      "Tensor v_img, Tensor v_alpha, int width, int height, int tile, int n_threads) -> Tensor",
      &s3dgs_native::rasterize_bwd);
  m.def(
      "reduce_grads(Tensor partial, Tensor vis_ids, Tensor gauss_offsets, int C, int N, int D, "
      "bool absgrad, int n_threads) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
      &s3dgs_native::reduce_grads);
}
