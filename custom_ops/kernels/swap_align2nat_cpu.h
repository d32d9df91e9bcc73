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
#include <functional>
#include <vector>

#include "swap_align2nat_math.h"

namespace tensormask {
namespace cpu {

using ParallelFor =
    std::function<void(int64_t, int64_t, std::function<void(int64_t, int64_t)>)>;

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
        Acc* inner = line.data() + margin * s;
        std::fill(inner, inner + g.width * s, Acc(0));
        for (int i = 0; i < rows.slots; ++i) {
          const Acc w = rows.weight[rt * rows.slots + i];
          if (w == Acc(0)) continue;
          const T* src = x + ((n * g.height +
                               rows.spatial[rt * rows.slots + i]) *
                              g.width) * s * s +
                         rows.window[rt * rows.slots + i] * s;
          for (int64_t b = 0; b < g.width; ++b) {
            const T* px = src + b * s * s;
            Acc* pl = inner + b * s;
            for (int d = 0; d < s; ++d) pl[d] += w * static_cast<Acc>(px[d]);
          }
        }
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

// Dense gradient. Unit (n, a), an input row: every dx[n, a, b, c, d] gathers
// wr*wc*dy over its <= 4 row hits x <= 4 column hits. No two units write the
// same element and each sums in a fixed order: deterministic, no atomics.
template <typename T, typename Acc>
void SwapAlign2NatBackward(const Geometry& g, const T* dy, T* dx,
                           const ParallelFor& parallel_for) {
  const int s = g.window, t_size = g.out_window;
  const int64_t out_pixels = static_cast<int64_t>(t_size) * t_size;
  const HitTable<Acc> rows = MakeHitTable<Acc>(g.height, g.lam, s, g.out_height);
  const HitTable<Acc> cols = MakeHitTable<Acc>(g.width, g.lam, s, g.out_width);
  const int rs = rows.slots, cs = cols.slots;
  // Column hits as offsets into one dy row (n, y): x*T*T + u.
  std::vector<int64_t> col_offset(cols.position.size());
  for (size_t k = 0; k < col_offset.size(); ++k) {
    col_offset[k] = cols.position[k] * out_pixels + cols.offset[k];
  }
  const int64_t units = g.batch * g.height;
  parallel_for(units, g.width * s * s * rs * cs, [&](int64_t begin, int64_t end) {
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t a = unit % g.height;
      const int64_t n = unit / g.height;
      T* dx_row = dx + unit * g.width * s * s;
      for (int c = 0; c < s; ++c) {
        const int64_t ac = (a * s + c) * rs;
        int64_t row_offset[kMaxAxisHits];
        Acc row_weight[kMaxAxisHits];
        for (int i = 0; i < rs; ++i) {
          row_offset[i] = ((n * g.out_height + rows.position[ac + i]) *
                           g.out_width) * out_pixels +
                          static_cast<int64_t>(rows.offset[ac + i]) * t_size;
          row_weight[i] = rows.weight[ac + i];
        }
        for (int64_t b = 0; b < g.width; ++b) {
          for (int d = 0; d < s; ++d) {
            const int64_t bd = (b * s + d) * cs;
            Acc acc = Acc(0);
            for (int i = 0; i < rs; ++i) {
              if (row_weight[i] == Acc(0)) continue;
              Acc partial = Acc(0);
              for (int j = 0; j < cs; ++j) {
                partial += cols.weight[bd + j] *
                           static_cast<Acc>(dy[row_offset[i] + col_offset[bd + j]]);
              }
              acc += row_weight[i] * partial;
            }
            dx_row[(b * s + c) * s + d] = static_cast<T>(acc);
          }
        }
      }
    }
  });
}

// Gather forward. Unit (k, v): output row v of window k reads its <= 4 row
// taps x <= 4 column taps straight from x. Index rows must be valid (the op
// wrapper checks them).
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
  std::vector<int64_t> col_offset(cols.spatial.size());  // b*S*S + d
  for (size_t k = 0; k < col_offset.size(); ++k) {
    col_offset[k] = cols.spatial[k] * s * s + cols.window[k];
  }
  const Acc pad_acc = static_cast<Acc>(pad);
  parallel_for(num_indices * t_size, t_size * rs * cs,
               [&](int64_t begin, int64_t end) {
    for (int64_t unit = begin; unit < end; ++unit) {
      const int v = static_cast<int>(unit % t_size);
      const int64_t k = unit / t_size;
      const int64_t n = indices[3 * k], yy = indices[3 * k + 1],
                    xx = indices[3 * k + 2];
      const int64_t rt = yy * t_size + v;
      const T* row_ptr[kMaxAxisTaps];
      Acc row_weight[kMaxAxisTaps];
      for (int i = 0; i < rs; ++i) {
        row_ptr[i] = x + ((n * g.height + rows.spatial[rt * rs + i]) *
                          g.width) * s * s +
                     rows.window[rt * rs + i] * s;
        row_weight[i] = rows.weight[rt * rs + i];
      }
      const Acc row_outside = rows.outside[rt];
      T* out = y + unit * t_size;
      for (int u = 0; u < t_size; ++u) {
        const int64_t ct = xx * t_size + u;
        Acc acc = Acc(0);
        for (int i = 0; i < rs; ++i) {
          Acc partial = Acc(0);
          for (int j = 0; j < cs; ++j) {
            partial += cols.weight[ct * cs + j] *
                       static_cast<Acc>(row_ptr[i][col_offset[ct * cs + j]]);
          }
          acc += row_weight[i] * partial;
        }
        const Acc c_out = cols.outside[ct];
        out[u] = static_cast<T>(
            acc + pad_acc * (row_outside + c_out - row_outside * c_out));
      }
    }
  });
}

// Gather gradient. Windows are bucketed by output cell (n, y, x) in ascending
// k (a CSR), then each input row (n, a) is owned by one unit that gathers
// from the windows whose taps read it, like the dense gradient. Rows no
// window reads are zero-filled without looking at dy. Deterministic.
template <typename T, typename Acc>
void SwapAlign2NatGatherBackward(const Geometry& g, const T* dy,
                                 const int32_t* indices, int64_t num_indices,
                                 T* dx, const ParallelFor& parallel_for) {
  const int s = g.window, t_size = g.out_window;
  const int64_t out_pixels = static_cast<int64_t>(t_size) * t_size;
  const int64_t cells = g.batch * g.out_height * g.out_width;
  std::vector<int64_t> cell_start(cells + 1, 0);
  std::vector<int64_t> items(num_indices);
  std::vector<char> row_used(g.batch * g.out_height, 0);
  for (int64_t k = 0; k < num_indices; ++k) {
    const int64_t cell =
        (indices[3 * k] * g.out_height + indices[3 * k + 1]) * g.out_width +
        indices[3 * k + 2];
    ++cell_start[cell + 1];
    row_used[indices[3 * k] * g.out_height + indices[3 * k + 1]] = 1;
  }
  for (int64_t c = 0; c < cells; ++c) cell_start[c + 1] += cell_start[c];
  {
    std::vector<int64_t> fill(cell_start.begin(), cell_start.end() - 1);
    for (int64_t k = 0; k < num_indices; ++k) {
      const int64_t cell =
          (indices[3 * k] * g.out_height + indices[3 * k + 1]) * g.out_width +
          indices[3 * k + 2];
      items[fill[cell]++] = k;
    }
  }
  const HitTable<Acc> rows = MakeHitTable<Acc>(g.height, g.lam, s, g.out_height);
  const HitTable<Acc> cols = MakeHitTable<Acc>(g.width, g.lam, s, g.out_width);
  const int rs = rows.slots, cs = cols.slots;
  const int64_t units = g.batch * g.height;
  parallel_for(units, g.width * s * s * rs, [&](int64_t begin, int64_t end) {
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t a = unit % g.height;
      const int64_t n = unit / g.height;
      T* dx_row = dx + unit * g.width * s * s;
      std::fill(dx_row, dx_row + g.width * s * s, T(0));
      for (int c = 0; c < s; ++c) {
        const int64_t ac = (a * s + c) * rs;
        for (int i = 0; i < rs; ++i) {
          const Acc wr = rows.weight[ac + i];
          const int64_t yy = rows.position[ac + i];
          if (wr == Acc(0) || !row_used[n * g.out_height + yy]) continue;
          const int64_t v_offset = static_cast<int64_t>(rows.offset[ac + i]) *
                                   t_size;
          const int64_t cell_row = (n * g.out_height + yy) * g.out_width;
          for (int64_t b = 0; b < g.width; ++b) {
            for (int d = 0; d < s; ++d) {
              const int64_t bd = (b * s + d) * cs;
              Acc partial = Acc(0);
              for (int j = 0; j < cs; ++j) {
                const Acc wc = cols.weight[bd + j];
                if (wc == Acc(0)) continue;
                const int64_t cell = cell_row + cols.position[bd + j];
                const int64_t pixel = v_offset + cols.offset[bd + j];
                for (int64_t q = cell_start[cell]; q < cell_start[cell + 1]; ++q) {
                  partial += wc * static_cast<Acc>(dy[items[q] * out_pixels + pixel]);
                }
              }
              T& target = dx_row[(b * s + c) * s + d];
              target = static_cast<T>(static_cast<Acc>(target) + wr * partial);
            }
          }
        }
      }
    }
  });
}

}  // namespace cpu
}  // namespace tensormask

#endif  // TENSORMASK_CUSTOM_OPS_KERNELS_SWAP_ALIGN2NAT_CPU_H_
