// CPU kernels of project_swap_align2nat_gather: the natural masks
//
//   swap_align2nat_gather(conv1x1(f, w) + bias, indices, lam, pad)
//
// computed from the features f without ever forming the projection
// conv1x1(f, w), which is [N, H, W, S*S] for every level of the bipyramid
// (docs/ops.md, the fused ops). TF-free, parallel through the same callable as
// swap_align2nat_cpu.h; every unit writes a disjoint part of its output and
// sums in a fixed order, so results and gradients are bit-reproducible
// whatever the thread count.
//
// Layouts: f [N, H, W, C]; w [S*S, C], row c*S + d is the conv1x1 kernel of
// aligned channel (c, d) (the Keras kernel [1, 1, C, S*S] transposed); bias
// [S*S]; indices [K, 3] rows (n, y, x) on the output grid; out [K, T, T],
// T = lam*S.
//
// Why it factors. Per axis (rows shown) the taps of docs/ops.md are the product
// of spatial taps a (one of weight 1 when T is odd, two of weight 1/2 when T
// is even: SpatialShift) and window taps c (WindowTaps), and a 4D tap reads
// the input only when all four indices are inside. So, for output (k, v, u),
//
//   out = sum_d wd(u) <Q(k, v, u), Kr(v)[d]>          (projection term)
//       + rs * cs * sum_d wd(u) Br(v)[d]               (bias term)
//       + pad * (1 - rs * cs * mr(v) * mc(u))          (taps outside)
//
// with Q = sum over in-range spatial taps (a, b) of ws_a ws_b f[n, a, b, :],
// Kr(v)[d] = sum over in-range window taps c of wc(v) w[c*S + d, :], Br the
// same of bias, rs / cs the in-range spatial weight of the row / column and
// mr / mc the in-range window weight. Each output costs one or two dot
// products of length C (one per window column tap) instead of the
// projection's S*S per input pixel.
#ifndef TENSORMASK_CUSTOM_OPS_KERNELS_PROJECT_SWAP_ALIGN2NAT_CPU_H_
#define TENSORMASK_CUSTOM_OPS_KERNELS_PROJECT_SWAP_ALIGN2NAT_CPU_H_

#include <algorithm>
#include <cstdint>
#include <vector>

#include "swap_align2nat_cpu.h"
#include "swap_align2nat_math.h"

namespace tensormask {
namespace cpu {

// Window taps of every offset t < T inside [0, S) (the same for rows and
// columns).
template <typename T>
std::vector<Taps2<T>> WindowTapTable(int lam, int window) {
  std::vector<Taps2<T>> table(static_cast<size_t>(lam) * window);
  for (int t = 0; t < lam * window; ++t) {
    int index[2];
    double weight[2];
    const int num = WindowTaps(t, lam, index, weight);
    Taps2<T>& taps = table[t];
    for (int j = 0; j < num; ++j) {
      if (index[j] < 0 || index[j] >= window) continue;
      taps.index[taps.count] = index[j];
      taps.weight[taps.count] = static_cast<T>(weight[j]);
      taps.total += static_cast<T>(weight[j]);
      ++taps.count;
    }
  }
  return table;
}

template <typename T>
inline T Dot(const T* a, const T* b, int64_t n) {
  // Eight partial sums in a fixed order: vectorises without -ffast-math and
  // stays deterministic.
  T acc[8] = {T(0), T(0), T(0), T(0), T(0), T(0), T(0), T(0)};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  }
  T sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) +
          ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

template <typename T>
inline void Axpy(T alpha, const T* x, T* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

// sum_i taps.weight[i] * base[taps.index[i] * stride + j] for j < n: into
// `scratch` (room for n), or a pointer into base when there is one tap of
// weight 1 (no copy). Every combination of the kernels below is this one:
// Kr(v) and Br(v) over the window row taps, the sampled feature row over the
// spatial row taps, Q over the spatial column taps, the gradient of Q over
// the window column taps.
template <typename T>
const T* Combine(const Taps2<T>& taps, const T* base, int64_t stride,
                 int64_t n, T* scratch) {
  if (taps.count == 1 && taps.weight[0] == T(1)) {
    return base + taps.index[0] * stride;
  }
  std::fill(scratch, scratch + n, T(0));
  for (int i = 0; i < taps.count; ++i) {
    Axpy(taps.weight[i], base + taps.index[i] * stride, scratch, n);
  }
  return scratch;
}

// The sampled feature row of window row (k, v): sum_a ws_a f[n, a, b, :] for
// the columns b in [b_lo, b_hi]. Returns a pointer p with p + b*C the
// sample at column b (`scratch` has room for (T + 1) * C values).
template <typename T>
const T* SampledRow(const ProjectionGeometry& pg, const T* f, int64_t n,
                    const Taps2<T>& rows, int64_t b_lo, int64_t b_hi,
                    T* scratch) {
  const int64_t c = pg.channels, row = pg.g.width * c;
  return Combine(rows, f + n * pg.g.height * row + b_lo * c, row,
                 (b_hi - b_lo + 1) * c, scratch) - b_lo * c;
}

// Columns [b_lo, b_hi] that window column x reads (clipped to the input);
// b_lo > b_hi when none.
inline void WindowColumns(const Geometry& g, int64_t x, int64_t* b_lo,
                          int64_t* b_hi) {
  const int64_t first = x * g.lam - SpatialShift(g.out_window);
  *b_lo = std::max<int64_t>(0, first);
  *b_hi = std::min<int64_t>(g.width - 1, first + g.out_window - 1 +
                                             NumSpatialTaps(g.out_window) - 1);
}

// Forward. Unit: one window row (k, v).
template <typename T>
void ProjectSwapAlign2NatGatherForward(const ProjectionGeometry& pg,
                                       const T* f, const T* w, const T* bias,
                                       T pad, const int32_t* indices,
                                       int64_t num_indices, T* out,
                                       const ParallelFor& parallel_for) {
  const Geometry& g = pg.g;
  const int s = g.window, t_size = g.out_window;
  const int64_t c = pg.channels;
  const std::vector<Taps2<T>> window_taps = WindowTapTable<T>(g.lam, s);
  parallel_for(num_indices * t_size, 4 * t_size * c,
               [&](int64_t begin, int64_t end) {
    std::vector<T> kr_scratch(s * c), br_scratch(s);
    std::vector<T> row_scratch((t_size + 1) * c), pixel_scratch(c);
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t k = unit / t_size;
      const int v = static_cast<int>(unit % t_size);
      const int64_t n = indices[3 * k], yy = indices[3 * k + 1],
                    xx = indices[3 * k + 2];
      T* out_row = out + unit * t_size;
      const Taps2<T> rows =
          SpatialTapsInRange<T>(yy, v, g.lam, t_size, g.height);
      int64_t b_lo, b_hi;
      WindowColumns(g, xx, &b_lo, &b_hi);
      if (rows.count == 0 || b_lo > b_hi) {
        std::fill(out_row, out_row + t_size, pad);
        continue;
      }
      // Kr(v) and Br(v) of the header.
      const Taps2<T>& window_row = window_taps[v];
      const T* kr = Combine(window_row, w, s * c, s * c, kr_scratch.data());
      const T* br = Combine(window_row, bias, int64_t{s}, int64_t{s},
                            br_scratch.data());
      const T* sampled = SampledRow(pg, f, n, rows, b_lo, b_hi,
                                    row_scratch.data());
      for (int u = 0; u < t_size; ++u) {
        const Taps2<T> cols =
            SpatialTapsInRange<T>(xx, u, g.lam, t_size, g.width);
        if (cols.count == 0) {
          out_row[u] = pad;
          continue;
        }
        const Taps2<T>& window_col = window_taps[u];
        const T* q = Combine(cols, sampled, c, c, pixel_scratch.data());
        T projection = T(0), bias_term = T(0);
        for (int j = 0; j < window_col.count; ++j) {
          const int64_t d = window_col.index[j];
          projection += window_col.weight[j] * Dot(q, kr + d * c, c);
          bias_term += window_col.weight[j] * br[d];
        }
        const T inside = rows.total * cols.total;
        out_row[u] = projection + inside * bias_term +
                     pad * (T(1) - inside * window_row.total * window_col.total);
      }
    }
  });
}

// Size of the workspace of the gradient of w and bias: [T, S, C + 1].
inline int64_t ProjectionGradWorkspaceSize(const ProjectionGeometry& pg) {
  return static_cast<int64_t>(pg.g.out_window) * pg.g.window *
         (pg.channels + 1);
}

template <typename T>
bool AllZero(const T* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if (x[i] != T(0)) return false;
  }
  return true;
}

// What df starts from: zeros (accumulate false), df's own values
// (accumulate, values null: an input buffer forwarded in place), or a copy of
// values.
template <typename T>
struct FeaturesGradInit {
  bool accumulate = false;
  const T* values = nullptr;
};

// Gradient w.r.t. f, w and bias (df added to its initial values, see
// FeaturesGradInit).
//
// df: threads own disjoint ranges of feature rows (n, a) and walk every
// window in ascending k, adding only the taps that land in their rows, as
// the swap_align2nat_gather gradient does: every element receives its terms
// in the order (k, v, u, row tap, column tap) whatever the partition.
// w, bias: unit v sums sum_k sum_u dy[k, v, u] wd(u) Q(k, v, u) (and the
// bias terms) into its own slice of the workspace, in ascending k and u;
// then unit c adds the slices of the offsets v whose window taps read c,
// in ascending v. Window rows whose dy is all zero (padding rows of the
// mask caps) are skipped.
template <typename T>
void ProjectSwapAlign2NatGatherBackward(
    const ProjectionGeometry& pg, const T* dy, const T* f, const T* w,
    const int32_t* indices, int64_t num_indices,
    const FeaturesGradInit<T>& df_init, T* df, T* dw, T* dbias, T* workspace,
    const ParallelFor& parallel_for) {
  const Geometry& g = pg.g;
  const int s = g.window, t_size = g.out_window;
  const int64_t c = pg.channels;
  const int64_t out_pixels = static_cast<int64_t>(t_size) * t_size;
  const std::vector<Taps2<T>> window_taps = WindowTapTable<T>(g.lam, s);

  // df.
  const int64_t row_elements = g.width * c;
  const int64_t rows_per_window = std::min<int64_t>(g.height, t_size + 1);
  parallel_for(
      g.batch * g.height,
      row_elements + num_indices * rows_per_window * t_size * 3 * c /
                         std::max<int64_t>(1, g.height),
      [&](int64_t begin, int64_t end) {
        if (!df_init.accumulate) {
          std::fill(df + begin * row_elements, df + end * row_elements, T(0));
        } else if (df_init.values != nullptr) {
          std::copy(df_init.values + begin * row_elements,
                    df_init.values + end * row_elements,
                    df + begin * row_elements);
        }
        std::vector<T> kr_scratch(s * c), wi_scratch(c);
        for (int64_t k = 0; k < num_indices; ++k) {
          const int64_t n = indices[3 * k], yy = indices[3 * k + 1],
                        xx = indices[3 * k + 2];
          const int64_t first = n * g.height + yy * g.lam -
                                SpatialShift(t_size);
          if (first + t_size + 1 <= begin || first >= end) continue;
          for (int v = 0; v < t_size; ++v) {
            const Taps2<T> rows =
                SpatialTapsInRange<T>(yy, v, g.lam, t_size, g.height);
            bool mine = false;
            for (int i = 0; i < rows.count; ++i) {
              const int64_t row = n * g.height + rows.index[i];
              mine |= row >= begin && row < end;
            }
            const T* grad = dy + k * out_pixels + int64_t{v} * t_size;
            if (!mine || AllZero(grad, t_size)) continue;
            const T* kr =
                Combine(window_taps[v], w, s * c, s * c, kr_scratch.data());
            for (int u = 0; u < t_size; ++u) {
              if (grad[u] == T(0)) continue;
              const Taps2<T> cols =
                  SpatialTapsInRange<T>(xx, u, g.lam, t_size, g.width);
              if (cols.count == 0) continue;
              // wi = sum_d wd(u) Kr(v)[d]: the gradient of Q(k, v, u).
              const T* wi = Combine(window_taps[u], kr, c, c,
                                    wi_scratch.data());
              for (int i = 0; i < rows.count; ++i) {
                const int64_t row = n * g.height + rows.index[i];
                if (row < begin || row >= end) continue;
                for (int j = 0; j < cols.count; ++j) {
                  Axpy(grad[u] * rows.weight[i] * cols.weight[j], wi,
                       df + (row * g.width + cols.index[j]) * c, c);
                }
              }
            }
          }
        }
      });

  // Per offset v: [S, C] sums for w and [S] for bias, in the workspace.
  T* partial_w = workspace;
  T* partial_b = workspace + int64_t{t_size} * s * c;
  parallel_for(t_size, num_indices * t_size * 3 * c,
               [&](int64_t begin, int64_t end) {
    std::vector<T> row_scratch((t_size + 1) * c), pixel_scratch(c);
    for (int64_t v = begin; v < end; ++v) {
      T* pw = partial_w + v * s * c;
      T* pb = partial_b + v * s;
      std::fill(pw, pw + s * c, T(0));
      std::fill(pb, pb + s, T(0));
      for (int64_t k = 0; k < num_indices; ++k) {
        const int64_t n = indices[3 * k], yy = indices[3 * k + 1],
                      xx = indices[3 * k + 2];
        const T* grad = dy + k * out_pixels + v * t_size;
        const Taps2<T> rows = SpatialTapsInRange<T>(
            yy, static_cast<int>(v), g.lam, t_size, g.height);
        int64_t b_lo, b_hi;
        WindowColumns(g, xx, &b_lo, &b_hi);
        if (rows.count == 0 || b_lo > b_hi || AllZero(grad, t_size)) continue;
        const T* sampled = SampledRow(pg, f, n, rows, b_lo, b_hi,
                                      row_scratch.data());
        for (int u = 0; u < t_size; ++u) {
          if (grad[u] == T(0)) continue;
          const Taps2<T> cols =
              SpatialTapsInRange<T>(xx, u, g.lam, t_size, g.width);
          if (cols.count == 0) continue;
          const T* q = Combine(cols, sampled, c, c, pixel_scratch.data());
          const Taps2<T>& window_col = window_taps[u];
          const T inside = rows.total * cols.total;
          for (int j = 0; j < window_col.count; ++j) {
            const int64_t d = window_col.index[j];
            const T gd = grad[u] * window_col.weight[j];
            Axpy(gd, q, pw + d * c, c);
            pb[d] += gd * inside;
          }
        }
      }
    }
  });

  // dw[c*S + d] = sum over v with a window tap at c of wc(v) * partial(v)[d].
  parallel_for(s, int64_t{t_size} * s * c / std::max(1, s),
               [&](int64_t begin, int64_t end) {
    for (int64_t ci = begin; ci < end; ++ci) {
      T* out_w = dw + ci * s * c;
      T* out_b = dbias + ci * s;
      std::fill(out_w, out_w + s * c, T(0));
      std::fill(out_b, out_b + s, T(0));
      for (int v = 0; v < t_size; ++v) {
        const Taps2<T>& window_row = window_taps[v];
        for (int i = 0; i < window_row.count; ++i) {
          if (window_row.index[i] != ci) continue;
          Axpy(window_row.weight[i], partial_w + int64_t{v} * s * c, out_w,
               s * c);
          Axpy(window_row.weight[i], partial_b + int64_t{v} * s, out_b,
               int64_t{s});
        }
      }
    }
  });
}

}  // namespace cpu
}  // namespace tensormask

#endif  // TENSORMASK_CUSTOM_OPS_KERNELS_PROJECT_SWAP_ALIGN2NAT_CPU_H_
