// The arithmetic of up_align2nat (docs/ops.md), shared by its CPU and CUDA
// kernels; TF-free like swap_align2nat_math.h.
//
// Layout: x is [N, H, W, S*S] (NHWC), channel c*S + d; y is [N, H, W, T*T]
// with T = lam*S a whole number, channel v*T + u. lam = lam_num / lam_den
// >= 1 is a fraction in lowest terms (1.5 = 3/2), so every coordinate is
// evaluated in exact integer arithmetic. Per axis (rows shown):
//
//   oy = y + v - T/2 + 0.5        (bilinear)  ov = (v + 0.5)/lam - 0.5
//                                 (nearest)   ov = floor(v / lam)
//
// oy is integral when T is odd and a half-integer otherwise: its taps are
// y + v - floor(T/2) and, for even T, the next row, each with weight 1/2.
// ov = ((2v + 1) lam_den - lam_num) / (2 lam_num): its taps are its floor
// (weight 1 - frac) and, when it is not integral, the next index (frac).
// Taps outside [0, H) or [0, S) read `pad`. With lam_den = 1 these are
// swap_align2nat_math.h's AxisTaps at stride 1.
#ifndef TENSORMASK_CUSTOM_OPS_KERNELS_UP_ALIGN2NAT_MATH_H_
#define TENSORMASK_CUSTOM_OPS_KERNELS_UP_ALIGN2NAT_MATH_H_

#include <cstdint>

#include "swap_align2nat_math.h"

namespace tensormask {

struct UpGeometry {
  int64_t batch, height, width;  // N, H, W of the input (and the output)
  int window;                    // S
  int lam_num, lam_den;          // lam = lam_num / lam_den >= 1
  bool nearest;                  // window taps floor(v / lam)
  int out_window;                // T = lam * S
};

// T = lam * S, or -1 when it is not a whole number.
TM_HOST_DEVICE int UpOutputWindow(int window, int lam_num, int lam_den) {
  const int64_t scaled = static_cast<int64_t>(window) * lam_num;
  return scaled % lam_den == 0 ? static_cast<int>(scaled / lam_den) : -1;
}

// Window taps of offset t: returns 1 or 2 and fills index/weight.
TM_HOST_DEVICE int UpWindowTaps(int t, const UpGeometry& g, int index[2],
                                double weight[2]) {
  if (g.nearest) {
    index[0] = static_cast<int>(
        FloorDiv(static_cast<int64_t>(t) * g.lam_den, g.lam_num));
    weight[0] = 1.0;
    return 1;
  }
  const int64_t num =
      (2 * static_cast<int64_t>(t) + 1) * g.lam_den - g.lam_num;
  const int64_t den = 2 * static_cast<int64_t>(g.lam_num);
  const int64_t low = FloorDiv(num, den);
  const int64_t rem = num - low * den;
  index[0] = static_cast<int>(low);
  if (rem == 0) {
    weight[0] = 1.0;
    return 1;
  }
  const double frac = static_cast<double>(rem) / static_cast<double>(den);
  weight[0] = 1.0 - frac;
  index[1] = static_cast<int>(low + 1);
  weight[1] = frac;
  return 2;
}

// The in-range taps of one axis at position p and offset t (<= kMaxAxisTaps);
// *outside receives the summed weight of the taps that read `pad`.
TM_HOST_DEVICE int UpAxisTaps(int64_t p, int t, const UpGeometry& g,
                              int64_t size, AxisTap taps[kMaxAxisTaps],
                              double* outside) {
  const int num_spatial = NumSpatialTaps(g.out_window);
  const double spatial_weight = num_spatial == 2 ? 0.5 : 1.0;
  const int64_t first = p + t - SpatialShift(g.out_window);
  int w_index[2];
  double w_weight[2];
  const int num_window = UpWindowTaps(t, g, w_index, w_weight);
  int count = 0;
  double out = 0.0;
  for (int i = 0; i < num_spatial; ++i) {
    const int64_t a = first + i;
    const bool a_inside = a >= 0 && a < size;
    for (int j = 0; j < num_window; ++j) {
      const double w = spatial_weight * w_weight[j];
      if (a_inside && w_index[j] >= 0 && w_index[j] < g.window) {
        taps[count].spatial = a;
        taps[count].window = w_index[j];
        taps[count].weight = w;
        ++count;
      } else {
        out += w;
      }
    }
  }
  *outside = out;
  return count;
}

// The offsets t whose window taps can reach window index c lie in
// [*t_low, *t_high] (a superset: callers check each tap).
TM_HOST_DEVICE void UpOffsetRange(int c, const UpGeometry& g, int* t_low,
                                  int* t_high) {
  // ov(t) >= c - 1 needs t >= lam (c - 1) - 1; ov(t) <= c + 1 needs
  // t <= lam (c + 2).
  const int64_t low = FloorDiv(static_cast<int64_t>(c - 1) * g.lam_num,
                               g.lam_den) - 1;
  const int64_t high = FloorDiv(static_cast<int64_t>(c + 2) * g.lam_num,
                                g.lam_den) + 1;
  *t_low = low < 0 ? 0 : static_cast<int>(low);
  *t_high = high > g.out_window - 1 ? g.out_window - 1
                                    : static_cast<int>(high);
}

// Calls visit(p, t, weight) for every (position p in [0, size), offset t)
// whose taps read input (a, c): the inverse of UpAxisTaps, in a fixed order
// (the gradients gather through it, so every input element's gradient is
// summed by one thread in one order).
template <typename Visit>
TM_HOST_DEVICE void UpAxisHits(int64_t a, int c, const UpGeometry& g,
                               int64_t size, Visit visit) {
  const int num_spatial = NumSpatialTaps(g.out_window);
  const double spatial_weight = num_spatial == 2 ? 0.5 : 1.0;
  int t_low, t_high;
  UpOffsetRange(c, g, &t_low, &t_high);
  for (int t = t_low; t <= t_high; ++t) {
    int w_index[2];
    double w_weight[2];
    const int num_window = UpWindowTaps(t, g, w_index, w_weight);
    for (int j = 0; j < num_window; ++j) {
      if (w_index[j] != c) continue;
      for (int i = 0; i < num_spatial; ++i) {
        // a = p + t - shift + i.
        const int64_t p = a - t + SpatialShift(g.out_window) - i;
        if (p >= 0 && p < size) visit(p, t, spatial_weight * w_weight[j]);
      }
    }
  }
}

}  // namespace tensormask

#endif  // TENSORMASK_CUSTOM_OPS_KERNELS_UP_ALIGN2NAT_MATH_H_
