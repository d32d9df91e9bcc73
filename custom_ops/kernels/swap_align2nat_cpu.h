// CPU kernels of swap_align2nat (dense and gathered, forward and gradient).
// TF-free: parallelism comes in as a callable
//   parallel_for(int64_t num_units, int64_t cost_per_unit,
//                std::function<void(int64_t begin, int64_t end)>)
// (TensorFlow's Shard in the op wrapper). Every unit writes a disjoint part of
// the output and sums in a fixed order, so results, gradients included, are
// bit-reproducible whatever the thread count. Geometry and taps come from
// swap_align2nat_math.h; see there for the layouts.
#ifndef TENSORMASK_CUSTOM_OPS_KERNELS_SWAP_ALIGN2NAT_CPU_H_
#define TENSORMASK_CUSTOM_OPS_KERNELS_SWAP_ALIGN2NAT_CPU_H_

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <vector>

#if defined(__AVX__)
#include <immintrin.h>
#endif

#include "parallel_for.h"
#include "swap_align2nat_math.h"
#include "swap_align2nat_shift_cpu.h"

namespace tensormask {
namespace cpu {

// The taps of one axis for every (position, offset), padded to a fixed slot
// count (unused slots have weight 0 and index 0) so inner loops are
// branch-free. Window weights depend only on the offset and lam, spatial
// validity only on the position, so the table is small: P x T x slots.
template <typename Acc>
struct AxisTable {
  int slots = 1;
  std::vector<int64_t> spatial;  // [P, T, slots]
  std::vector<int> window;       // [P, T, slots]
  std::vector<Acc> weight;       // [P, T, slots]
  std::vector<Acc> outside;      // [P, T]
};

template <typename Acc>
AxisTable<Acc> MakeAxisTable(int64_t positions, int lam, int window,
                             int64_t size) {
  const int t_size = lam * window;
  AxisTable<Acc> table;
  std::vector<AxisTap> taps(positions * t_size * kMaxAxisTaps);
  std::vector<int> counts(positions * t_size);
  table.outside.resize(positions * t_size);
  for (int64_t p = 0; p < positions; ++p) {
    for (int t = 0; t < t_size; ++t) {
      const int64_t pt = p * t_size + t;
      double outside;
      counts[pt] = AxisTaps(p, t, lam, window, size, &taps[pt * kMaxAxisTaps],
                            &outside);
      table.outside[pt] = static_cast<Acc>(outside);
      table.slots = std::max(table.slots, counts[pt]);
    }
  }
  const int slots = table.slots;
  table.spatial.assign(positions * t_size * slots, 0);
  table.window.assign(positions * t_size * slots, 0);
  table.weight.assign(positions * t_size * slots, Acc(0));
  for (int64_t pt = 0; pt < positions * t_size; ++pt) {
    for (int k = 0; k < counts[pt]; ++k) {
      const AxisTap& tap = taps[pt * kMaxAxisTaps + k];
      table.spatial[pt * slots + k] = tap.spatial;
      table.window[pt * slots + k] = tap.window;
      table.weight[pt * slots + k] = static_cast<Acc>(tap.weight);
    }
  }
  return table;
}

// Column taps of the dense forward, shared by every output column x: on a
// line of the input row with `margin` zero columns on each side, output (x, u)
// reads line[x*lam*S + offset[j][u]] with weight weight[j][u], j < taps. Taps
// past the image read a zero margin; window taps past the window have weight
// 0; both are accounted for by the outside weight of the pad term. For even T
// the two spatial taps (0.5 each) are pre-summed into the line (see below),
// so only the window taps remain: 1 when lam = 1, else 2.
template <typename Acc>
struct LineTaps {
  int taps = 1;
  int64_t margin = 0;                  // zero columns on each side of the line
  bool pair_sum = false;               // line[b] = 0.5 * (L[b] + L[b+1])
  std::vector<int32_t> offset[2];      // [T] each
  std::vector<Acc> weight[2];          // [T] each
};

template <typename Acc>
LineTaps<Acc> MakeLineTaps(int lam, int window) {
  const int t_size = lam * window;
  LineTaps<Acc> taps;
  taps.pair_sum = NumSpatialTaps(t_size) == 2;
  taps.margin = SpatialShift(t_size) + 2;
  taps.taps = lam == 1 ? 1 : 2;
  for (int j = 0; j < taps.taps; ++j) {
    taps.offset[j].assign(t_size, 0);
    taps.weight[j].assign(t_size, Acc(0));
  }
  for (int u = 0; u < t_size; ++u) {
    int index[2];
    double weight[2];
    const int count = WindowTaps(u, lam, index, weight);
    const int64_t column = u - SpatialShift(t_size) + taps.margin;
    for (int j = 0; j < count; ++j) {
      const bool inside = index[j] >= 0 && index[j] < window;
      taps.offset[j][u] = static_cast<int32_t>(
          column * window + (inside ? index[j] : 0));
      taps.weight[j][u] = inside ? static_cast<Acc>(weight[j]) : Acc(0);
    }
  }
  return taps;
}

template <int kTaps, typename T, typename Acc>
void WriteOutputRow(const Acc* line, const LineTaps<Acc>& taps,
                    const Acc* col_outside, Acc pad, Acc row_outside,
                    int64_t x_begin, int64_t x_end, int lam, int window,
                    int64_t out_stride, T* out_row) {
  const int t_size = lam * window;
  const int32_t* o0 = taps.offset[0].data();
  const int32_t* o1 = taps.offset[kTaps - 1].data();
  const Acc* w0 = taps.weight[0].data();
  const Acc* w1 = taps.weight[kTaps - 1].data();
  // pad * (r + c - r*c) = alpha + beta * c for this row's r.
  const Acc alpha = pad * row_outside, beta = pad * (Acc(1) - row_outside);
  for (int64_t x = x_begin; x < x_end; ++x) {
    const Acc* p = line + x * lam * window;
    const Acc* c_out = col_outside + x * t_size;
    T* out = out_row + x * out_stride;
    if (pad != Acc(0)) {
      for (int u = 0; u < t_size; ++u) {
        Acc acc = w0[u] * p[o0[u]];
        if (kTaps == 2) acc += w1[u] * p[o1[u]];
        out[u] = static_cast<T>(acc + alpha + beta * c_out[u]);
      }
    } else {
      for (int u = 0; u < t_size; ++u) {
        Acc acc = w0[u] * p[o0[u]];
        if (kTaps == 2) acc += w1[u] * p[o1[u]];
        out[u] = static_cast<T>(acc);
      }
    }
  }
}

// line[b*S + d] = sum_i w[i] * src[i][b*S*S + d], all row taps in one pass
// (one store per element instead of a read-modify-write per tap).
template <int kTaps, typename T, typename Acc>
void CombineRowTapsN(const T* const* src, const Acc* w, int64_t width,
                     int window, Acc* line) {
  const int64_t block = static_cast<int64_t>(window) * window;
  for (int64_t b = 0; b < width; ++b) {
    Acc* out = line + b * window;
    const int64_t offset = b * block;
    for (int d = 0; d < window; ++d) {
      Acc acc = w[0] * static_cast<Acc>(src[0][offset + d]);
      for (int i = 1; i < kTaps; ++i) {
        acc += w[i] * static_cast<Acc>(src[i][offset + d]);
      }
      out[d] = acc;
    }
  }
}

template <typename T, typename Acc>
void CombineRowTaps(int taps, const T* const* src, const Acc* w,
                    int64_t width, int window, Acc* line) {
  switch (taps) {
    case 0:
      std::fill(line, line + width * window, Acc(0));
      return;
    case 1:
      return CombineRowTapsN<1>(src, w, width, window, line);
    case 2:
      return CombineRowTapsN<2>(src, w, width, window, line);
    case 3:
      return CombineRowTapsN<3>(src, w, width, window, line);
    default:
      return CombineRowTapsN<kMaxAxisTaps>(src, w, width, window, line);
  }
}

// How many window rows v one work unit of the dense forward takes. When a
// whole output row (n, y) fits in cache, one unit takes all its v, so each
// output window is completed while it is in cache instead of being written
// one short piece (a partial cache line) per v by different units; measured
// 15.6 -> 10.1 ms at lam = 1 on the benchmark. Otherwise one v per unit.
template <typename T>
int WindowRowsPerUnit(const Geometry& g) {
  constexpr int64_t kCacheBytes = 512 << 10;
  const int64_t t_size = g.out_window;
  const int64_t row_bytes =
      t_size * t_size * static_cast<int64_t>(sizeof(T)) * g.out_width;
  return row_bytes <= kCacheBytes ? g.out_window : 1;
}

// Dense forward. For each window row v of an output row (n, y), the row taps
// of (y, v) are combined once into a zero-margined line L[b*S + d] over the
// image width (cache resident), then every output (x, u)
// reads its column taps from L through the x-independent LineTaps. About
// (row taps + 1..2) loads per output instead of the product of the row and
// column taps.
template <typename T, typename Acc>
void SwapAlign2NatForward(const Geometry& g, T pad, const T* x, T* y,
                          const ParallelFor& parallel_for) {
  if (IsPureShift(g)) return ShiftForward(g, pad, x, y, parallel_for);
  const int s = g.window, t_size = g.out_window;
  const AxisTable<Acc> rows =
      MakeAxisTable<Acc>(g.out_height, g.lam, s, g.height);
  const AxisTable<Acc> cols =
      MakeAxisTable<Acc>(g.out_width, g.lam, s, g.width);
  const LineTaps<Acc> line_taps = MakeLineTaps<Acc>(g.lam, s);
  const int v_per_unit = WindowRowsPerUnit<T>(g);
  const int64_t margin = line_taps.margin;
  const int64_t line_size = (g.width + 2 * margin) * s;
  const Acc pad_acc = static_cast<Acc>(pad);
  const int64_t out_stride = static_cast<int64_t>(t_size) * t_size;
  const int64_t units = g.batch * g.out_height * (t_size / v_per_unit);
  const int64_t cost = v_per_unit * (g.width * s * (rows.slots + 2) +
                                     g.out_width * t_size * 3);
  parallel_for(units, cost, [&](int64_t begin, int64_t end) {
    std::vector<Acc> line(line_size, Acc(0));  // margins stay zero
    std::vector<Acc> summed(line_taps.pair_sum ? line_size : 0, Acc(0));
    for (int64_t v_all = begin * v_per_unit; v_all < end * v_per_unit;
         ++v_all) {
      const int v = static_cast<int>(v_all % t_size);
      const int64_t yy = (v_all / t_size) % g.out_height;
      const int64_t n = v_all / (t_size * g.out_height);
      {
        const int64_t rt = yy * t_size + v;
        const T* src[kMaxAxisTaps];
        Acc w[kMaxAxisTaps];
        int taps = 0;
        for (int i = 0; i < rows.slots; ++i) {
          w[taps] = rows.weight[rt * rows.slots + i];
          if (w[taps] == Acc(0)) continue;
          src[taps++] = x + ((n * g.height +
                              rows.spatial[rt * rows.slots + i]) *
                             g.width) * s * s +
                        rows.window[rt * rows.slots + i] * s;
        }
        CombineRowTaps<T, Acc>(taps, src, w, g.width, s,
                               line.data() + margin * s);
        const Acc* read = line.data();
        if (line_taps.pair_sum) {
          // summed[b] = 0.5 * (L[b] + L[b+1]) over the image columns and one
          // zero margin column each side, all that the windows read.
          const Acc* l = line.data();
          Acc* out = summed.data();
          const int64_t k_end = (margin + g.width) * s;
          for (int64_t k = (margin - 1) * s; k < k_end; ++k) {
            out[k] = Acc(0.5) * (l[k] + l[k + s]);
          }
          read = summed.data();
        }
        T* out_row = y + ((n * g.out_height + yy) * g.out_width) * out_stride +
                     static_cast<int64_t>(v) * t_size;
        if (line_taps.taps == 1) {
          WriteOutputRow<1, T, Acc>(read, line_taps, cols.outside.data(),
                                    pad_acc, rows.outside[rt], 0, g.out_width,
                                    g.lam, s, out_stride, out_row);
        } else {
          WriteOutputRow<2, T, Acc>(read, line_taps, cols.outside.data(),
                                    pad_acc, rows.outside[rt], 0, g.out_width,
                                    g.lam, s, out_stride, out_row);
        }
      }
    }
  });
}

// The (position, offset) pairs of one axis that read each input (spatial a,
// window c), padded to a fixed slot count like AxisTable.
template <typename Acc>
struct HitTable {
  int slots = 1;
  std::vector<int64_t> position;  // [size, S, slots]
  std::vector<int> offset;        // [size, S, slots]
  std::vector<Acc> weight;        // [size, S, slots]
};

template <typename Acc>
HitTable<Acc> MakeHitTable(int64_t size, int lam, int window,
                           int64_t out_size) {
  HitTable<Acc> table;
  std::vector<AxisHit> hits(size * window * kMaxAxisHits);
  std::vector<int> counts(size * window);
  for (int64_t a = 0; a < size; ++a) {
    for (int c = 0; c < window; ++c) {
      const int64_t ac = a * window + c;
      counts[ac] = AxisHits(a, c, lam, window, out_size,
                            &hits[ac * kMaxAxisHits]);
      table.slots = std::max(table.slots, counts[ac]);
    }
  }
  const int slots = table.slots;
  table.position.assign(size * window * slots, 0);
  table.offset.assign(size * window * slots, 0);
  table.weight.assign(size * window * slots, Acc(0));
  for (int64_t ac = 0; ac < size * window; ++ac) {
    for (int k = 0; k < counts[ac]; ++k) {
      const AxisHit& hit = hits[ac * kMaxAxisHits + k];
      table.position[ac * slots + k] = hit.position;
      table.offset[ac * slots + k] = hit.offset;
      table.weight[ac * slots + k] = static_cast<Acc>(hit.weight);
    }
  }
  return table;
}

// Workspace of the dense gradient, in elements of Acc: one line of the
// input width per output row (n, y) and window row v.
inline int64_t BackwardWorkspaceSize(const Geometry& g) {
  if (IsPureShift(g)) return 0;
  return g.batch * g.out_height * g.out_window * g.width * g.window;
}

// Dense gradient, the exact adjoint of SwapAlign2NatForward in two phases,
// each deterministic (every element is summed by one thread in a fixed
// order, no atomics):
// 1. Unit (n, y, v): scatter dy[n, y, :, v, :] through the column taps of
//    the line (the adjoint of WriteOutputRow, and of the pair sum for even
//    T) into D[n, y, v] = the gradient of the line, [W*S].
// 2. Unit (n, a), an input row: dx[n, a, b, c, d] = sum over the <= 4 row
//    hits (y, v, w) of (a, c) of w * D[n, y, v][b*S + d]: contiguous FMAs.
template <typename T, typename Acc>
void SwapAlign2NatBackward(const Geometry& g, const T* dy, T* dx,
                           Acc* workspace, const ParallelFor& parallel_for) {
  if (IsPureShift(g)) return ShiftBackward(g, dy, dx, parallel_for);
  const int s = g.window, t_size = g.out_window;
  const int64_t out_stride = static_cast<int64_t>(t_size) * t_size;
  const int64_t line_width = g.width * s;
  const LineTaps<Acc> line_taps = MakeLineTaps<Acc>(g.lam, s);
  const int64_t margin = line_taps.margin;
  const int64_t line_size = (g.width + 2 * margin) * s;

  parallel_for(
      g.batch * g.out_height * t_size, g.out_width * t_size * 3 + line_width,
      [&](int64_t begin, int64_t end) {
        std::vector<Acc> line(line_size);
        const int32_t* o0 = line_taps.offset[0].data();
        const int32_t* o1 = line_taps.offset[line_taps.taps - 1].data();
        const Acc* w0 = line_taps.weight[0].data();
        const Acc* w1 = line_taps.weight[line_taps.taps - 1].data();
        for (int64_t unit = begin; unit < end; ++unit) {
          const int v = static_cast<int>(unit % t_size);
          const int64_t ny = unit / t_size;  // n * Ho + y
          std::fill(line.begin(), line.end(), Acc(0));
          const T* dy_row = dy + ny * g.out_width * out_stride +
                            static_cast<int64_t>(v) * t_size;
          for (int64_t x = 0; x < g.out_width; ++x) {
            Acc* p = line.data() + x * g.lam * s;
            const T* grad = dy_row + x * out_stride;
            if (line_taps.taps == 1) {
              for (int u = 0; u < t_size; ++u) {
                p[o0[u]] += w0[u] * static_cast<Acc>(grad[u]);
              }
            } else {
              for (int u = 0; u < t_size; ++u) {
                const Acc gu = static_cast<Acc>(grad[u]);
                p[o0[u]] += w0[u] * gu;
                p[o1[u]] += w1[u] * gu;
              }
            }
          }
          Acc* d_line = workspace + unit * line_width;
          const Acc* l = line.data() + margin * s;
          if (line_taps.pair_sum) {  // Forward: S[k] = 0.5 (L[k] + L[k+s]).
            for (int64_t k = 0; k < line_width; ++k) {
              d_line[k] = Acc(0.5) * (l[k] + l[k - s]);
            }
          } else {
            std::copy(l, l + line_width, d_line);
          }
        }
      });

  const HitTable<Acc> rows = MakeHitTable<Acc>(g.height, g.lam, s, g.out_height);
  const int rs = rows.slots;
  parallel_for(
      g.batch * g.height, line_width * s * (rs + 1),
      [&](int64_t begin, int64_t end) {
        std::vector<Acc> acc(line_width);
        for (int64_t unit = begin; unit < end; ++unit) {
          const int64_t a = unit % g.height;
          const int64_t n = unit / g.height;
          T* dx_row = dx + unit * g.width * s * s;
          for (int c = 0; c < s; ++c) {
            std::fill(acc.begin(), acc.end(), Acc(0));
            const int64_t ac = (a * s + c) * rs;
            for (int i = 0; i < rs; ++i) {
              const Acc w = rows.weight[ac + i];
              if (w == Acc(0)) continue;
              const Acc* d_line =
                  workspace + ((n * g.out_height + rows.position[ac + i]) *
                                   t_size + rows.offset[ac + i]) * line_width;
              for (int64_t k = 0; k < line_width; ++k) acc[k] += w * d_line[k];
            }
            for (int64_t b = 0; b < g.width; ++b) {
              T* out = dx_row + (b * s + c) * s;
              const Acc* in = acc.data() + b * s;
              for (int d = 0; d < s; ++d) out[d] = static_cast<T>(in[d]);
            }
          }
        }
      });
}

// One output window row of the gather forward with compile-time tap counts:
// out[u] = sum_i row_w[i] * sum_j col_w[j][u] * row_ptr[i][col_off[j][u]].
template <int kRows, int kCols, typename T, typename Acc>
void GatherWindowRow(const T* const* row_ptr, const Acc* row_w,
                     const int64_t* const* col_off, const Acc* const* col_w,
                     const Acc* col_outside, Acc pad, Acc row_outside,
                     int t_size, T* out) {
  const Acc alpha = pad * row_outside, beta = pad * (Acc(1) - row_outside);
  for (int u = 0; u < t_size; ++u) {
    Acc acc = Acc(0);
    for (int i = 0; i < kRows; ++i) {
      Acc partial = Acc(0);
      for (int j = 0; j < kCols; ++j) {
        partial += col_w[j][u] * static_cast<Acc>(row_ptr[i][col_off[j][u]]);
      }
      acc += row_w[i] * partial;
    }
    out[u] = static_cast<T>(acc + alpha + beta * col_outside[u]);
  }
}

template <int kRows, typename T, typename Acc>
void GatherWindowRowDispatch(int cols, const T* const* row_ptr,
                             const Acc* row_w, const int64_t* const* col_off,
                             const Acc* const* col_w, const Acc* col_outside,
                             Acc pad, Acc row_outside, int t_size, T* out) {
  switch (cols) {
    case 1:
      return GatherWindowRow<kRows, 1>(row_ptr, row_w, col_off, col_w,
                                       col_outside, pad, row_outside, t_size,
                                       out);
    case 2:
      return GatherWindowRow<kRows, 2>(row_ptr, row_w, col_off, col_w,
                                       col_outside, pad, row_outside, t_size,
                                       out);
    default:
      return GatherWindowRow<kRows, kMaxAxisTaps>(
          row_ptr, row_w, col_off, col_w, col_outside, pad, row_outside,
          t_size, out);
  }
}

// Gather forward. Unit k, one window: its column taps are laid out once per
// window as [tap][u] arrays (contiguous in u), then each window row v reads
// its <= 4 row taps x <= 4 column taps straight from x. Windows are visited
// in raster order of (n, y, x), so that neighbouring windows, which read
// other channels of the same input pixels, find their cache lines still in
// cache; each output is written to its own slot k. Index rows must be valid
// (the op wrapper checks them).
template <typename T, typename Acc>
void SwapAlign2NatGatherForward(const Geometry& g, T pad, const T* x,
                                const int32_t* indices, int64_t num_indices,
                                T* y, const ParallelFor& parallel_for) {
  const int s = g.window, t_size = g.out_window;
  const AxisTable<Acc> rows =
      MakeAxisTable<Acc>(g.out_height, g.lam, s, g.height);
  const AxisTable<Acc> cols =
      MakeAxisTable<Acc>(g.out_width, g.lam, s, g.width);
  const int rs = rows.slots, cs = cols.slots;
  const Acc pad_acc = static_cast<Acc>(pad);
  const int64_t out_pixels = static_cast<int64_t>(t_size) * t_size;
  std::vector<int64_t> order(num_indices);
  for (int64_t k = 0; k < num_indices; ++k) order[k] = k;
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return std::lexicographical_compare(indices + 3 * a, indices + 3 * a + 3,
                                        indices + 3 * b, indices + 3 * b + 3);
  });
  parallel_for(num_indices, out_pixels * rs * cs,
               [&](int64_t begin, int64_t end) {
    std::vector<int64_t> offsets(kMaxAxisTaps * t_size, 0);
    std::vector<Acc> weights(kMaxAxisTaps * t_size, Acc(0));
    for (int64_t position = begin; position < end; ++position) {
      const int64_t k = order[position];
      const int64_t n = indices[3 * k], yy = indices[3 * k + 1],
                    xx = indices[3 * k + 2];
      const int64_t* col_off[kMaxAxisTaps];
      const Acc* col_w[kMaxAxisTaps];
      for (int j = 0; j < cs; ++j) {
        int64_t* o = offsets.data() + j * t_size;
        Acc* w = weights.data() + j * t_size;
        for (int u = 0; u < t_size; ++u) {
          const int64_t ct = (xx * t_size + u) * cs + j;
          o[u] = cols.spatial[ct] * s * s + cols.window[ct];
          w[u] = cols.weight[ct];
        }
        col_off[j] = o;
        col_w[j] = w;
      }
      const Acc* col_outside = cols.outside.data() + xx * t_size;
      // Start of the input row (n, a, c) that row-table slot `slot` reads.
      const auto row_start = [&](int64_t slot) {
        return x + ((n * g.height + rows.spatial[slot]) * g.width) * s * s +
               rows.window[slot] * s;
      };
      for (int v = 0; v < t_size; ++v) {
        const int64_t rt = yy * t_size + v;
        // Prefetch the lines that window row v + 2 reads through its row
        // taps and first column tap: column u's first tap is pixel b + u,
        // S*S elements after column u - 1's, a new line per u in each row
        // tap, which the hardware prefetcher does not run far enough ahead
        // of. (Written here, not in a helper: GCC 12 takes a function that
        // only prefetches for one without side effects and drops its calls.)
#if defined(__GNUC__)
        if (v + 2 < t_size) {
          const int64_t ahead = (rt + 2) * rs;
          for (int i = 0; i < rs; ++i) {
            if (rows.weight[ahead + i] == Acc(0)) continue;
            const T* row = row_start(ahead + i);
            for (int u = 0; u < t_size; ++u) {
              __builtin_prefetch(row + col_off[0][u]);
            }
          }
        }
#endif
        const T* row_ptr[kMaxAxisTaps];
        Acc row_w[kMaxAxisTaps];
        for (int i = 0; i < rs; ++i) {
          row_ptr[i] = row_start(rt * rs + i);
          row_w[i] = rows.weight[rt * rs + i];
        }
        T* out = y + k * out_pixels + static_cast<int64_t>(v) * t_size;
        const Acc row_outside = rows.outside[rt];
        switch (rs) {
          case 1:
            GatherWindowRowDispatch<1>(cs, row_ptr, row_w, col_off, col_w,
                                       col_outside, pad_acc, row_outside,
                                       t_size, out);
            break;
          case 2:
            GatherWindowRowDispatch<2>(cs, row_ptr, row_w, col_off, col_w,
                                       col_outside, pad_acc, row_outside,
                                       t_size, out);
            break;
          default:
            GatherWindowRowDispatch<kMaxAxisTaps>(
                cs, row_ptr, row_w, col_off, col_w, col_outside, pad_acc,
                row_outside, t_size, out);
        }
      }
    }
  });
}

// Copies n elements to dst with non-temporal stores where AVX has them
// (whole 32-byte blocks; the unaligned head and tail by memcpy): dst is
// written once and not read back, so its lines need not be fetched first.
// The caller issues StreamFence() before another thread may read dst.
template <typename T>
void StreamCopy(T* dst, const T* src, int64_t n) {
  char* d = reinterpret_cast<char*>(dst);
  const char* s = reinterpret_cast<const char*>(src);
  int64_t bytes = n * static_cast<int64_t>(sizeof(T));
#if defined(__AVX__)
  const int64_t head = std::min<int64_t>(
      bytes, (32 - reinterpret_cast<uintptr_t>(d) % 32) % 32);
  std::memcpy(d, s, head);
  d += head, s += head, bytes -= head;
  for (; bytes >= 32; d += 32, s += 32, bytes -= 32) {
    _mm256_stream_si256(
        reinterpret_cast<__m256i*>(d),
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s)));
  }
#endif
  std::memcpy(d, s, bytes);
}

inline void StreamFence() {
#if defined(__AVX__)
  _mm_sfence();
#endif
}

// The gather gradient's column taps of one window column position xx,
// grouped by the element they add to: target t (b*S*S + d, relative to the
// start of the input row's channel row c) receives the terms
// [begin[t], begin[t + 1]), weight[e] * g[u[e]], in the order (u, slot) in
// which the taps are listed; zero-weight slots are dropped. Targets are
// ordered by their term count, then by offset, and group_end[m] is the end
// of the targets with m + 1 terms, so the scatter's inner loops have fixed
// trip counts: an element gets one or two terms (the one or two u whose
// spatial tap is its pixel), and a trip count that changes from one element
// to the next is a branch mispredicted about every time.
template <typename Acc>
struct ColumnScatterPlan {
  std::vector<int64_t> target;
  std::vector<int32_t> begin;  // targets + 1 entries
  std::vector<int32_t> u;
  std::vector<Acc> weight;
  std::vector<int64_t> group_end;  // [max terms per target]
};

template <typename Acc>
ColumnScatterPlan<Acc> MakeColumnScatterPlan(const AxisTable<Acc>& cols,
                                             int64_t xx, int t_size,
                                             int window) {
  const int slots = cols.slots;
  const int64_t base = xx * t_size * slots;
  std::vector<int32_t> taps;  // slot index ct - base of every nonzero tap
  for (int32_t e = 0; e < t_size * slots; ++e) {
    if (cols.weight[base + e] != Acc(0)) taps.push_back(e);
  }
  const auto offset = [&](int32_t e) {
    return cols.spatial[base + e] * window * window + cols.window[base + e];
  };
  std::stable_sort(taps.begin(), taps.end(), [&](int32_t a, int32_t b) {
    return offset(a) < offset(b);
  });
  // Runs of equal offset, each a target with its terms in (u, slot) order.
  std::vector<std::pair<size_t, size_t>> runs;
  for (size_t i = 0; i < taps.size(); ++i) {
    if (i == 0 || offset(taps[i]) != offset(taps[i - 1])) {
      runs.emplace_back(i, i);
    }
    runs.back().second = i + 1;
  }
  std::stable_sort(runs.begin(), runs.end(), [](const auto& a, const auto& b) {
    return a.second - a.first < b.second - b.first;
  });
  ColumnScatterPlan<Acc> plan;
  for (const auto& [first, last] : runs) {
    const size_t terms = last - first;
    plan.group_end.resize(std::max(plan.group_end.size(), terms),
                          static_cast<int64_t>(plan.target.size()));
    plan.target.push_back(offset(taps[first]));
    plan.begin.push_back(static_cast<int32_t>(plan.u.size()));
    for (size_t i = first; i < last; ++i) {
      plan.u.push_back(taps[i] / slots);
      plan.weight.push_back(cols.weight[base + taps[i]]);
    }
    plan.group_end[terms - 1] = static_cast<int64_t>(plan.target.size());
  }
  plan.begin.push_back(static_cast<int32_t>(plan.u.size()));
  return plan;
}

// Targets [t_begin, t_end) of a plan, each with kTerms terms (0: read from
// begin).
template <int kTerms, typename T, typename Acc>
void ScatterTargets(const ColumnScatterPlan<Acc>& plan, int64_t t_begin,
                    int64_t t_end, const Acc* g, T* target) {
  const int64_t* offsets = plan.target.data();
  const int32_t* begin = plan.begin.data();
  const int32_t* us = plan.u.data();
  const Acc* weights = plan.weight.data();
  for (int64_t t = t_begin; t < t_end; ++t) {
    T& cell = target[offsets[t]];
    T value = cell;
    const int32_t e0 = begin[t];
    const int32_t e1 = kTerms > 0 ? e0 + kTerms : begin[t + 1];
    for (int32_t e = e0; e < e1; ++e) {
      value = static_cast<T>(static_cast<Acc>(value) + weights[e] * g[us[e]]);
    }
    cell = value;
  }
}

// Adds one window's share of the gather gradient into one input row (a, c):
// target[plan.target[t]] += plan.weight[e] * g[plan.u[e]] for each target's
// terms in order, g the window's dy rows that read (a, c), weighted by their
// row taps and summed. Each element is loaded and stored once and its terms
// are added in a register, in the same order and with the same roundings as
// one read-modify-write per term.
template <typename T, typename Acc>
void ScatterWindowRow(const ColumnScatterPlan<Acc>& plan, const Acc* g,
                      T* target) {
  int64_t t = 0;
  for (size_t m = 0; m < plan.group_end.size(); ++m) {
    const int64_t t_end = plan.group_end[m];
    switch (m + 1) {
      case 1: ScatterTargets<1>(plan, t, t_end, g, target); break;
      case 2: ScatterTargets<2>(plan, t, t_end, g, target); break;
      default: ScatterTargets<0>(plan, t, t_end, g, target);
    }
    t = t_end;
  }
}

// Gather gradient, a scatter of each window's taps into dx. Unit (n, a), one
// input row, built in a per-thread copy that stays in cache: zeroed, then
// for every window whose taps reach row a (ascending k), dy's window rows v
// that read row a are summed per channel row c (over v, then row taps), and
// each sum goes through the window's ColumnScatterPlan; the finished row is
// streamed to dx, which is written once and never read. Every dx element
// receives its terms in an order fixed by (k, c, plan) whatever the
// partition, so the result is deterministic; the cost is O(K * T^2 * taps)
// plus writing dx, independent of the grid size.
template <typename T, typename Acc>
void SwapAlign2NatGatherBackward(const Geometry& g, const T* dy,
                                 const int32_t* indices, int64_t num_indices,
                                 T* dx, const ParallelFor& parallel_for) {
  const int s = g.window, t_size = g.out_window;
  const int64_t out_pixels = static_cast<int64_t>(t_size) * t_size;
  const int64_t row_elements = g.width * s * s;
  const int shift = SpatialShift(t_size);
  const AxisTable<Acc> rows =
      MakeAxisTable<Acc>(g.out_height, g.lam, s, g.height);
  const AxisTable<Acc> cols =
      MakeAxisTable<Acc>(g.out_width, g.lam, s, g.width);
  const int rs = rows.slots;
  // One plan per window column position in use (they depend on xx only).
  std::vector<int> plan_of(g.out_width, -1);
  std::vector<ColumnScatterPlan<Acc>> plans;
  for (int64_t k = 0; k < num_indices; ++k) {
    int& p = plan_of[indices[3 * k + 2]];
    if (p >= 0) continue;
    p = static_cast<int>(plans.size());
    plans.push_back(MakeColumnScatterPlan(cols, indices[3 * k + 2], t_size, s));
  }
  // A window's taps reach rows [lam*y - T/2, + T + 1): T + 1 of them.
  const int64_t cost =
      row_elements + num_indices * std::min<int64_t>(g.height, t_size + 1) *
                         2 * t_size * cols.slots /
                         std::max<int64_t>(1, g.height);
  parallel_for(g.batch * g.height, cost, [&](int64_t begin, int64_t end) {
    // Row a's share of a window: dy's rows v combined per channel row c,
    // row_sums[j][u] = sum over the row taps (v, i) that read (a, c_j) of
    // weight * dy[v][u]; then one scatter per c_j.
    std::vector<Acc> row_sums(2 * kMaxAxisTaps * t_size);
    int channel_rows[2 * kMaxAxisTaps];
    // The row is built in `staged` (in cache: zeroed, then the adds) and
    // streamed out to dx once.
    std::vector<T> staged(row_elements);
    T* dx_row = staged.data();
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t n = unit / g.height, a = unit % g.height;
      std::fill(dx_row, dx_row + row_elements, T(0));
      for (int64_t k = 0; k < num_indices; ++k) {
        if (indices[3 * k] != n) continue;
        const int64_t yy = indices[3 * k + 1], xx = indices[3 * k + 2];
        // Window row v's spatial taps are rows lam*y + v - T/2 (+ 1).
        const int64_t first = a - g.lam * yy + shift;
        const int64_t v_lo = std::max<int64_t>(0, first - 1);
        const int64_t v_hi = std::min<int64_t>(t_size - 1, first);
        if (v_lo > v_hi) continue;
        const T* grad = dy + k * out_pixels;
        int num_channel_rows = 0;
        for (int64_t v = v_lo; v <= v_hi; ++v) {
          const int64_t rt = (yy * t_size + v) * rs;
          const T* grad_row = grad + v * t_size;
          for (int i = 0; i < rs; ++i) {
            const Acc wr = rows.weight[rt + i];
            if (wr == Acc(0) || rows.spatial[rt + i] != a) continue;
            const int c = rows.window[rt + i];
            int j = 0;
            while (j < num_channel_rows && channel_rows[j] != c) ++j;
            Acc* sum = row_sums.data() + j * t_size;
            if (j == num_channel_rows) {
              channel_rows[num_channel_rows++] = c;
              for (int u = 0; u < t_size; ++u) {
                sum[u] = wr * static_cast<Acc>(grad_row[u]);
              }
            } else {
              for (int u = 0; u < t_size; ++u) {
                sum[u] += wr * static_cast<Acc>(grad_row[u]);
              }
            }
          }
        }
        const ColumnScatterPlan<Acc>& plan = plans[plan_of[xx]];
        for (int j = 0; j < num_channel_rows; ++j) {
          ScatterWindowRow(plan, row_sums.data() + j * t_size,
                           dx_row + channel_rows[j] * s);
        }
      }
      StreamCopy(dx + unit * row_elements, dx_row, row_elements);
    }
    StreamFence();
  });
}

}  // namespace cpu
}  // namespace tensormask

#endif  // TENSORMASK_CUSTOM_OPS_KERNELS_SWAP_ALIGN2NAT_CPU_H_
