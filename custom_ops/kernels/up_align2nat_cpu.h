// CPU kernels of up_align2nat (dense and gathered, forward and gradient).
// TF-free, parallel through a `ParallelFor` (parallel_for.h). Every unit writes a disjoint part of its output and
// sums in a fixed order, so results, gradients included, are bit-reproducible
// whatever the thread count. The taps come from up_align2nat_math.h.
#ifndef TENSORMASK_CUSTOM_OPS_KERNELS_UP_ALIGN2NAT_CPU_H_
#define TENSORMASK_CUSTOM_OPS_KERNELS_UP_ALIGN2NAT_CPU_H_

#include <algorithm>
#include <cstdint>
#include <functional>
#include <vector>

#include "parallel_for.h"
#include "up_align2nat_math.h"

namespace tensormask {
namespace cpu {

// The taps of one axis for every (position, offset): [P * T] lists.
template <typename Acc>
struct UpAxisTable {
  std::vector<int> count;         // [P * T]
  std::vector<int64_t> spatial;   // [P * T * kMaxAxisTaps]
  std::vector<int> window;        // [P * T * kMaxAxisTaps]
  std::vector<Acc> weight;        // [P * T * kMaxAxisTaps]
  std::vector<Acc> outside;       // [P * T]
};

template <typename Acc>
UpAxisTable<Acc> MakeUpAxisTable(const UpGeometry& g, int64_t size) {
  const int t_size = g.out_window;
  UpAxisTable<Acc> table;
  table.count.resize(size * t_size);
  table.spatial.assign(size * t_size * kMaxAxisTaps, 0);
  table.window.assign(size * t_size * kMaxAxisTaps, 0);
  table.weight.assign(size * t_size * kMaxAxisTaps, Acc(0));
  table.outside.resize(size * t_size);
  AxisTap taps[kMaxAxisTaps];
  for (int64_t p = 0; p < size; ++p) {
    for (int t = 0; t < t_size; ++t) {
      const int64_t pt = p * t_size + t;
      double outside;
      const int count = UpAxisTaps(p, t, g, size, taps, &outside);
      table.count[pt] = count;
      table.outside[pt] = static_cast<Acc>(outside);
      for (int k = 0; k < count; ++k) {
        table.spatial[pt * kMaxAxisTaps + k] = taps[k].spatial;
        table.window[pt * kMaxAxisTaps + k] = taps[k].window;
        table.weight[pt * kMaxAxisTaps + k] = static_cast<Acc>(taps[k].weight);
      }
    }
  }
  return table;
}

// The inverse taps of one axis for every input (a, c): CSR lists of
// (position, offset, weight), in UpAxisHits' order.
template <typename Acc>
struct UpAxisHitTable {
  std::vector<int64_t> start;     // [size * S + 1]
  std::vector<int64_t> position;  // [hits]
  std::vector<int> offset;        // [hits]
  std::vector<Acc> weight;        // [hits]
};

template <typename Acc>
UpAxisHitTable<Acc> MakeUpAxisHitTable(const UpGeometry& g, int64_t size) {
  UpAxisHitTable<Acc> table;
  table.start.reserve(size * g.window + 1);
  table.start.push_back(0);
  for (int64_t a = 0; a < size; ++a) {
    for (int c = 0; c < g.window; ++c) {
      UpAxisHits(a, c, g, size, [&](int64_t p, int t, double w) {
        table.position.push_back(p);
        table.offset.push_back(t);
        table.weight.push_back(static_cast<Acc>(w));
      });
      table.start.push_back(static_cast<int64_t>(table.position.size()));
    }
  }
  return table;
}

// One output window (n, y, x): [T * T] values into `out`.
template <typename T, typename Acc>
void UpWindow(const UpGeometry& g, T pad, const T* x, int64_t n, int64_t y,
              int64_t xx, const UpAxisTable<Acc>& rows,
              const UpAxisTable<Acc>& cols, T* out) {
  const int t_size = g.out_window;
  const int s = g.window;
  const T* image = x + n * g.height * g.width * s * s;
  for (int v = 0; v < t_size; ++v) {
    const int64_t rv = y * t_size + v;
    const Acc row_out = rows.outside[rv];
    for (int u = 0; u < t_size; ++u) {
      const int64_t cu = xx * t_size + u;
      const Acc col_out = cols.outside[cu];
      Acc sum = Acc(0);
      for (int i = 0; i < rows.count[rv]; ++i) {
        const int64_t ri = rv * kMaxAxisTaps + i;
        const T* row = image + rows.spatial[ri] * g.width * s * s +
                       rows.window[ri] * s;
        Acc partial = Acc(0);
        for (int j = 0; j < cols.count[cu]; ++j) {
          const int64_t cj = cu * kMaxAxisTaps + j;
          partial += cols.weight[cj] *
                     static_cast<Acc>(row[cols.spatial[cj] * s * s +
                                          cols.window[cj]]);
        }
        sum += rows.weight[ri] * partial;
      }
      const Acc outside = static_cast<Acc>(
          OutsideWeight(static_cast<double>(row_out),
                        static_cast<double>(col_out)));
      out[v * t_size + u] =
          static_cast<T>(sum + static_cast<Acc>(pad) * outside);
    }
  }
}

// x [N, H, W, S*S] -> y [N, H, W, T*T]; parallel over (n, y) rows.
template <typename T, typename Acc>
void UpAlign2NatForward(const UpGeometry& g, T pad, const T* x, T* y,
                        const ParallelFor& parallel_for) {
  const auto rows = MakeUpAxisTable<Acc>(g, g.height);
  const auto cols = MakeUpAxisTable<Acc>(g, g.width);
  const int64_t window_size = int64_t{g.out_window} * g.out_window;
  parallel_for(g.batch * g.height, g.width * window_size * 16,
               [&](int64_t begin, int64_t end) {
    for (int64_t ny = begin; ny < end; ++ny) {
      const int64_t n = ny / g.height, yy = ny % g.height;
      for (int64_t xx = 0; xx < g.width; ++xx) {
        UpWindow<T, Acc>(g, pad, x, n, yy, xx, rows, cols,
                         y + (ny * g.width + xx) * window_size);
      }
    }
  });
}

// dy [N, H, W, T*T] -> dx [N, H, W, S*S], each input element gathering its
// hits; parallel over (n, a) rows.
template <typename T, typename Acc>
void UpAlign2NatBackward(const UpGeometry& g, const T* dy, T* dx,
                         const ParallelFor& parallel_for) {
  const auto rows = MakeUpAxisHitTable<Acc>(g, g.height);
  const auto cols = MakeUpAxisHitTable<Acc>(g, g.width);
  const int s = g.window;
  const int t_size = g.out_window;
  const int64_t window_size = int64_t{t_size} * t_size;
  parallel_for(g.batch * g.height, g.width * s * s * 16,
               [&](int64_t begin, int64_t end) {
    for (int64_t na = begin; na < end; ++na) {
      const int64_t n = na / g.height, a = na % g.height;
      const T* grads = dy + n * g.height * g.width * window_size;
      for (int64_t b = 0; b < g.width; ++b) {
        for (int c = 0; c < s; ++c) {
          const int64_t r = a * s + c;
          for (int d = 0; d < s; ++d) {
            const int64_t q = b * s + d;
            Acc sum = Acc(0);
            for (int64_t i = rows.start[r]; i < rows.start[r + 1]; ++i) {
              const T* row = grads + rows.position[i] * g.width * window_size +
                             int64_t{rows.offset[i]} * t_size;
              Acc partial = Acc(0);
              for (int64_t j = cols.start[q]; j < cols.start[q + 1]; ++j) {
                partial += cols.weight[j] *
                           static_cast<Acc>(row[cols.position[j] * window_size +
                                                cols.offset[j]]);
              }
              sum += rows.weight[i] * partial;
            }
            dx[((na * g.width) + b) * s * s + c * s + d] = static_cast<T>(sum);
          }
        }
      }
    }
  });
}

// x [N, H, W, S*S], indices [K, 3] (checked) -> y [K, T, T]; parallel over
// windows.
template <typename T, typename Acc>
void UpAlign2NatGatherForward(const UpGeometry& g, T pad, const T* x,
                              const int32_t* indices, int64_t num_indices,
                              T* y, const ParallelFor& parallel_for) {
  const auto rows = MakeUpAxisTable<Acc>(g, g.height);
  const auto cols = MakeUpAxisTable<Acc>(g, g.width);
  const int64_t window_size = int64_t{g.out_window} * g.out_window;
  parallel_for(num_indices, window_size * 16, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      UpWindow<T, Acc>(g, pad, x, indices[3 * k], indices[3 * k + 1],
                       indices[3 * k + 2], rows, cols, y + k * window_size);
    }
  });
}

// dy [K, T, T] -> dx [N, H, W, S*S]: each window's taps scattered in
// ascending k (windows may overlap), one thread per batch image.
template <typename T, typename Acc>
void UpAlign2NatGatherBackward(const UpGeometry& g, const T* dy,
                               const int32_t* indices, int64_t num_indices,
                               T* dx, const ParallelFor& parallel_for) {
  const auto rows = MakeUpAxisTable<Acc>(g, g.height);
  const auto cols = MakeUpAxisTable<Acc>(g, g.width);
  const int s = g.window;
  const int t_size = g.out_window;
  const int64_t window_size = int64_t{t_size} * t_size;
  const int64_t image_size = g.height * g.width * s * s;
  parallel_for(g.batch, (num_indices / std::max<int64_t>(g.batch, 1) + 1) *
                            window_size * 16,
               [&](int64_t begin, int64_t end) {
    std::vector<Acc> sums(image_size);
    for (int64_t n = begin; n < end; ++n) {
      std::fill(sums.begin(), sums.end(), Acc(0));
      for (int64_t k = 0; k < num_indices; ++k) {
        if (indices[3 * k] != n) continue;
        const int64_t yy = indices[3 * k + 1], xx = indices[3 * k + 2];
        const T* grads = dy + k * window_size;
        for (int v = 0; v < t_size; ++v) {
          const int64_t rv = yy * t_size + v;
          for (int u = 0; u < t_size; ++u) {
            const int64_t cu = xx * t_size + u;
            const Acc grad = static_cast<Acc>(grads[v * t_size + u]);
            for (int i = 0; i < rows.count[rv]; ++i) {
              const int64_t ri = rv * kMaxAxisTaps + i;
              const Acc row_grad = rows.weight[ri] * grad;
              const int64_t row = rows.spatial[ri] * g.width * s * s +
                                  rows.window[ri] * s;
              for (int j = 0; j < cols.count[cu]; ++j) {
                const int64_t cj = cu * kMaxAxisTaps + j;
                sums[row + cols.spatial[cj] * s * s + cols.window[cj]] +=
                    row_grad * cols.weight[cj];
              }
            }
          }
        }
      }
      T* image = dx + n * image_size;
      for (int64_t i = 0; i < image_size; ++i) {
        image[i] = static_cast<T>(sums[i]);
      }
    }
  });
}

}  // namespace cpu
}  // namespace tensormask

#endif  // TENSORMASK_CUSTOM_OPS_KERNELS_UP_ALIGN2NAT_CPU_H_
