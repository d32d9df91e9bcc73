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

// Dense forward. Unit (n, y, v): the row taps of (y, v) are combined once
// into a line L[b*S + d] over the whole input width (W*S values, cache
// resident), then every output (x, u) of that row reads its <= 4 column taps
// from L. About (row taps + column taps) multiply-adds per output instead of
// their product.
template <typename T, typename Acc>
void SwapAlign2NatForward(const Geometry& g, T pad, const T* x, T* y,
                          const ParallelFor& parallel_for) {
  const int s = g.window, t_size = g.out_window;
  const int64_t line_size = g.width * s;
  const AxisTable<Acc> rows =
      MakeAxisTable<Acc>(g.out_height, g.lam, s, g.height);
  const AxisTable<Acc> cols =
      MakeAxisTable<Acc>(g.out_width, g.lam, s, g.width);
  // Column taps as indices into L.
  const int cs = cols.slots;
  std::vector<int64_t> col_index(cols.spatial.size());
  for (size_t k = 0; k < col_index.size(); ++k) {
    col_index[k] = cols.spatial[k] * s + cols.window[k];
  }
  const Acc pad_acc = static_cast<Acc>(pad);
  const int64_t units = g.batch * g.out_height * t_size;
  const int64_t cost = line_size * rows.slots + g.out_width * t_size * cs;
  parallel_for(units, cost, [&](int64_t begin, int64_t end) {
    std::vector<Acc> line(line_size);
    for (int64_t unit = begin; unit < end; ++unit) {
      const int v = static_cast<int>(unit % t_size);
      const int64_t yy = (unit / t_size) % g.out_height;
      const int64_t n = unit / (t_size * g.out_height);
      const int64_t rt = yy * t_size + v;
      std::fill(line.begin(), line.end(), Acc(0));
      for (int i = 0; i < rows.slots; ++i) {
        const Acc w = rows.weight[rt * rows.slots + i];
        if (w == Acc(0)) continue;
        const T* src = x + ((n * g.height + rows.spatial[rt * rows.slots + i]) *
                                g.width) * s * s +
                       rows.window[rt * rows.slots + i] * s;
        for (int64_t b = 0; b < g.width; ++b) {
          const T* px = src + b * s * s;
          Acc* pl = line.data() + b * s;
          for (int d = 0; d < s; ++d) pl[d] += w * static_cast<Acc>(px[d]);
        }
      }
      const Acc row_outside = rows.outside[rt];
      T* out_row = y + ((n * g.out_height + yy) * g.out_width) * t_size * t_size +
                   static_cast<int64_t>(v) * t_size;
      for (int64_t xx = 0; xx < g.out_width; ++xx) {
        T* out = out_row + xx * t_size * t_size;
        const int64_t ct0 = xx * t_size;
        for (int u = 0; u < t_size; ++u) {
          const int64_t ct = ct0 + u;
          const Acc* w = &cols.weight[ct * cs];
          const int64_t* idx = &col_index[ct * cs];
          Acc acc = Acc(0);
          for (int j = 0; j < cs; ++j) acc += w[j] * line[idx[j]];
          const Acc c_out = cols.outside[ct];
          acc += pad_acc * (row_outside + c_out - row_outside * c_out);
          out[u] = static_cast<T>(acc);
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
