// The arithmetic of swap_align2nat (docs/ops.md), shared by the CPU and
// CUDA kernels. Depends on no TensorFlow header, so the CUDA kernels can be
// compiled and tested standalone (nvcc, CuPy) against the numpy reference.
//
// Layout: x is [N, H, W, S*S] (NHWC), channel c*S + d; y is
// [N, Ho, Wo, T*T] with T = lam*S, Ho = ceil(H/lam), Wo = ceil(W/lam),
// channel v*T + u. Per axis (rows shown; columns are the same with x, u, W):
//
//   oy = lam*y + v - T/2 + 0.5       ov = (v + 0.5)/lam - 0.5
//
// Each coordinate has taps floor(o) (weight 1 - frac) and ceil(o) (weight
// frac); taps outside [0, H) or [0, S) read `pad`. Both coordinates are
// evaluated in exact integer arithmetic: oy is integral when T is odd and a
// half-integer otherwise, and ov = (2v + 1 - lam) / (2 lam).
#ifndef TENSORMASK_CUSTOM_OPS_KERNELS_SWAP_ALIGN2NAT_MATH_H_
#define TENSORMASK_CUSTOM_OPS_KERNELS_SWAP_ALIGN2NAT_MATH_H_

#include <cstdint>

#if defined(__CUDACC__)
#define TM_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define TM_HOST_DEVICE inline
#endif

namespace tensormask {

// The most taps one axis has: 2 spatial x 2 window.
constexpr int kMaxAxisTaps = 4;
// The most (position, offset) pairs of one axis that read one input (a, c):
// per spatial tap, at most two offsets of the residue class fall in the 2*lam
// wide range whose window taps reach c.
constexpr int kMaxAxisHits = 4;

struct Geometry {
  int64_t batch, height, width;  // N, H, W of the input
  int window;                    // S
  int lam;                       // upscale factor, >= 1
  int64_t out_height, out_width; // ceil(H/lam), ceil(W/lam)
  int out_window;                // T = lam * S
};

TM_HOST_DEVICE Geometry MakeGeometry(int64_t batch, int64_t height,
                                     int64_t width, int window, int lam) {
  Geometry g;
  g.batch = batch;
  g.height = height;
  g.width = width;
  g.window = window;
  g.lam = lam;
  g.out_height = (height + lam - 1) / lam;
  g.out_width = (width + lam - 1) / lam;
  g.out_window = lam * window;
  return g;
}

// Window side S from a channel count, or -1 if it is not a non-zero square
// (host code: the op wrappers' shape checks).
inline int64_t WindowSide(int64_t channels) {
  if (channels < 1) return -1;
  int64_t s = 1;
  while ((s + 1) * (s + 1) <= channels) ++s;
  return s * s == channels ? s : -1;
}

// project_swap_align2nat_gather: the geometry of the projected
// [N, H, W, S*S] tensor it never forms, and the features' channel count C.
struct ProjectionGeometry {
  Geometry g;
  int64_t channels;
};

TM_HOST_DEVICE int64_t FloorDiv(int64_t a, int64_t b) {  // b > 0
  const int64_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}

// One tap of one axis: spatial index, window index and weight.
struct AxisTap {
  int64_t spatial;
  int window;
  double weight;
};

// One (output position, window offset) that reads a given input (a, c).
struct AxisHit {
  int64_t position;
  int offset;
  double weight;
};

// Window taps of offset t = lam*k + r (0 <= r < lam) in closed form: the low
// tap is k + WindowLowShift(r, lam) with weight 1 - rem/(2 lam), the high tap
// (present when rem != 0) the next index with weight rem/(2 lam), where
// rem = WindowRemainder(r, lam); the same taps as WindowTaps(t). The CUDA
// kernels use it per element, where the residue is at hand. (WindowTaps is
// not written in terms of it: that changed the tiled forward kernel's code
// generation and slowed it to 0.64-0.92x of its speed on an H100.)
TM_HOST_DEVICE int WindowLowShift(int r, int lam) {
  return 2 * r + 1 < lam ? -1 : 0;
}
TM_HOST_DEVICE int WindowRemainder(int r, int lam) {
  return 2 * r + 1 - lam - 2 * lam * WindowLowShift(r, lam);
}

// Window taps of offset t: returns 1 or 2 (the second only when ov is not
// integral) and fills index/weight.
TM_HOST_DEVICE int WindowTaps(int t, int lam, int index[2], double weight[2]) {
  const int64_t num = 2 * static_cast<int64_t>(t) + 1 - lam;
  const int64_t den = 2 * static_cast<int64_t>(lam);
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

// First spatial tap of (position p, offset t) is p*lam + t - SpatialShift(T);
// there is a second one (weight 0.5 each) exactly when T is even.
TM_HOST_DEVICE int SpatialShift(int out_window) { return out_window / 2; }
TM_HOST_DEVICE int NumSpatialTaps(int out_window) {
  return (out_window % 2 == 0) ? 2 : 1;
}

// The in-range taps of one axis for output position p and window offset t.
// Returns their count (<= kMaxAxisTaps); *outside receives the summed weight
// of the taps that fall outside the input and so read `pad`.
TM_HOST_DEVICE int AxisTaps(int64_t p, int t, int lam, int window,
                            int64_t size, AxisTap taps[kMaxAxisTaps],
                            double* outside) {
  const int out_window = lam * window;
  const int num_spatial = NumSpatialTaps(out_window);
  const double spatial_weight = num_spatial == 2 ? 0.5 : 1.0;
  const int64_t first = p * lam + t - SpatialShift(out_window);
  int w_index[2];
  double w_weight[2];
  const int num_window = WindowTaps(t, lam, w_index, w_weight);
  int count = 0;
  double out = 0.0;
  for (int i = 0; i < num_spatial; ++i) {
    const int64_t a = first + i;
    const bool a_inside = a >= 0 && a < size;
    for (int j = 0; j < num_window; ++j) {
      const double w = spatial_weight * w_weight[j];
      if (a_inside && w_index[j] >= 0 && w_index[j] < window) {
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

// The inverse of AxisTaps: every (position p in [0, out_size), offset t) whose
// taps read input (a, c), with the tap's weight. Returns the count
// (<= kMaxAxisHits). The gradients gather through this, so each input
// element's gradient is summed by one thread in a fixed order.
TM_HOST_DEVICE int AxisHits(int64_t a, int c, int lam, int window,
                            int64_t out_size, AxisHit hits[kMaxAxisHits]) {
  const int out_window = lam * window;
  const int num_spatial = NumSpatialTaps(out_window);
  const double spatial_weight = num_spatial == 2 ? 0.5 : 1.0;
  // Offsets whose window taps can reach c lie in [lam*(c-1), lam*(c+2)].
  const int64_t t_low = static_cast<int64_t>(lam) * (c - 1) > 0
                            ? static_cast<int64_t>(lam) * (c - 1) : 0;
  const int64_t t_high_raw = static_cast<int64_t>(lam) * (c + 2);
  const int64_t t_high =
      t_high_raw < out_window - 1 ? t_high_raw : out_window - 1;
  int count = 0;
  for (int i = 0; i < num_spatial; ++i) {
    // a = p*lam + t - shift + i  =>  t = m - p*lam with m = a + shift - i.
    const int64_t m = a + SpatialShift(out_window) - i;
    int64_t p_low = -FloorDiv(-(m - t_high), lam);  // ceil((m - t_high)/lam)
    int64_t p_high = FloorDiv(m - t_low, lam);
    if (p_low < 0) p_low = 0;
    if (p_high > out_size - 1) p_high = out_size - 1;
    for (int64_t p = p_low; p <= p_high; ++p) {
      const int t = static_cast<int>(m - p * lam);
      int w_index[2];
      double w_weight[2];
      const int num_window = WindowTaps(t, lam, w_index, w_weight);
      for (int j = 0; j < num_window; ++j) {
        if (w_index[j] == c && count < kMaxAxisHits) {
          hits[count].position = p;
          hits[count].offset = t;
          hits[count].weight = spatial_weight * w_weight[j];
          ++count;
        }
      }
    }
  }
  return count;
}

// Up to two taps of one kind (spatial or window) along one axis, in range
// (project_swap_align2nat's kernels).
template <typename T>
struct Taps2 {
  int count = 0;
  int64_t index[2] = {0, 0};
  T weight[2] = {T(0), T(0)};
  T total = T(0);  // summed in-range weight
};

// Spatial taps of (position p, offset t) inside [0, size). Written on fixed
// slots (no index computed at run time) so that CUDA keeps the taps in
// registers.
template <typename T>
TM_HOST_DEVICE Taps2<T> SpatialTapsInRange(int64_t p, int t, int lam,
                                           int out_window, int64_t size) {
  const int64_t first = p * lam + t - SpatialShift(out_window);
  const bool two = NumSpatialTaps(out_window) == 2;
  const bool low_in = first >= 0 && first < size;
  const bool high_in = two && first + 1 >= 0 && first + 1 < size;
  Taps2<T> taps;
  taps.count = static_cast<int>(low_in) + static_cast<int>(high_in);
  taps.index[0] = low_in ? first : first + 1;
  taps.index[1] = first + 1;
  taps.weight[0] = taps.weight[1] = two ? T(0.5) : T(1);
  taps.total = taps.weight[0] * static_cast<T>(taps.count);
  return taps;
}

// Weight of the 4D taps outside the input, from the per-axis weights: a 4D
// tap reads the input only if both its row and its column tap do.
TM_HOST_DEVICE double OutsideWeight(double row_outside, double col_outside) {
  return row_outside + col_outside - row_outside * col_outside;
}

}  // namespace tensormask

#endif  // TENSORMASK_CUSTOM_OPS_KERNELS_SWAP_ALIGN2NAT_MATH_H_
