// swap_align2nat with lam = 1 and odd S on the CPU: the pure shift of
// docs/ops.md (the paper's eq. (1)),
//
//   Y[n, y, x, v*S + u] = X[n, y + v - c, x + u - c, v*S + u],  c = (S-1)/2,
//
// reading `pad` outside the image, and its gradient, the inverse shift
//
//   dX[n, a, b, v*S + u] = dY[n, a - v + c, b - u + c, v*S + u]
//
// with zeros outside. Every output element is one input element or the fill
// value: the general kernels compute the same values (their other taps have
// weight 0, their pad term is 0 inside; only the sign of a zero gradient
// can differ, as they add to +0), so this path only makes it cheaper.
// TF-free like swap_align2nat_cpu.h.
//
// Why blends and not gathers: for one output pixel the S*S elements come
// from S*S different input pixels, so any per-pixel loop touches S*S cache
// lines per pixel and runs from L2 (measured 7-10 ms at S = 15 on the
// benchmark's [1, 200, 336, 225], against ~2.5 ms to copy the same bytes).
// Instead, for 8 consecutive output pixels and 8 consecutive u, the inputs
// are 15 contiguous 8-float loads (one per source pixel) of which output
// pixel i takes lane j from load i + j (forward) or i + 7 - j (gradient):
// seven blends per output vector, every load and store contiguous.
#ifndef TENSORMASK_CUSTOM_OPS_KERNELS_SWAP_ALIGN2NAT_SHIFT_CPU_H_
#define TENSORMASK_CUSTOM_OPS_KERNELS_SWAP_ALIGN2NAT_SHIFT_CPU_H_

#include <algorithm>
#include <cstdint>
#include <type_traits>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "swap_align2nat_math.h"

namespace tensormask {
namespace cpu {

// Whether swap_align2nat with this geometry is the pure shift.
inline bool IsPureShift(const Geometry& g) {
  return g.lam == 1 && g.window % 2 == 1;
}

namespace shift_internal {

// One output row r (of image n) of the shift in direction kSign: +1 is the
// forward (dst = Y, src = X), -1 the gradient (dst = dX, src = dY).
// dst[n, r, p, v*S + u] = src[n, r + kSign*(v - c), p + kSign*(u - c), ...],
// `fill` where that is outside. Pixels [p_begin, p_end) only.
template <int kSign, typename T>
void ShiftRowScalar(const Geometry& g, T fill, const T* src, T* dst,
                    int64_t n, int64_t r, int64_t p_begin, int64_t p_end) {
  const int s = g.window, c = s / 2;
  const int64_t block = static_cast<int64_t>(s) * s;
  for (int v = 0; v < s; ++v) {
    const int64_t sr = r + kSign * (v - c);
    const bool row_inside = sr >= 0 && sr < g.height;
    const T* src_row =
        row_inside ? src + ((n * g.height + sr) * g.width) * block + v * s
                   : src;
    for (int64_t p = p_begin; p < p_end; ++p) {
      T* out = dst + ((n * g.height + r) * g.width + p) * block + v * s;
      for (int u = 0; u < s; ++u) {
        const int64_t sp = p + kSign * (u - c);
        out[u] = row_inside && sp >= 0 && sp < g.width
                     ? src_row[sp * block + u]
                     : fill;
      }
    }
  }
}

#if defined(__AVX2__)
// Output pixel i of a block of 8 takes lane j from q[i + j] (forward) or
// q[i + 7 - j] (gradient).
template <int kSign>
inline __m256 Diagonal(const __m256* q) {
  constexpr int k0 = kSign > 0 ? 0 : 7, step = kSign > 0 ? 1 : -1;
  __m256 r = q[k0];
  r = _mm256_blend_ps(r, q[k0 + 1 * step], 0x02);
  r = _mm256_blend_ps(r, q[k0 + 2 * step], 0x04);
  r = _mm256_blend_ps(r, q[k0 + 3 * step], 0x08);
  r = _mm256_blend_ps(r, q[k0 + 4 * step], 0x10);
  r = _mm256_blend_ps(r, q[k0 + 5 * step], 0x20);
  r = _mm256_blend_ps(r, q[k0 + 6 * step], 0x40);
  return _mm256_blend_ps(r, q[k0 + 7 * step], 0x80);
}

// ShiftRowScalar for float with S >= 8, 8 output pixels at a time; the
// pixels past the last multiple of 8 go through the scalar loop. The lane
// groups u0 = 0, 8, ... end with u0 = S - 8, which may overlap the previous
// group: both write the same values.
template <int kSign>
void ShiftRowAvx2(const Geometry& g, float fill, const float* src, float* dst,
                  int64_t n, int64_t r) {
  const int s = g.window, c = s / 2;
  const int64_t block = static_cast<int64_t>(s) * s, w = g.width;
  const int64_t w8 = w / 8 * 8;
  const __m256 vfill = _mm256_set1_ps(fill);
  float* dst_row = dst + (n * g.height + r) * w * block;
  for (int v = 0; v < s; ++v) {
    const int64_t sr = r + kSign * (v - c);
    if (sr < 0 || sr >= g.height) {
      for (int64_t p = 0; p < w8; ++p) {
        std::fill_n(dst_row + p * block + v * s, s, fill);
      }
      continue;
    }
    const float* src_row = src + (n * g.height + sr) * w * block + v * s;
    for (int64_t p0 = 0; p0 < w8; p0 += 8) {
      for (int u0 = 0;; u0 = std::min(u0 + 8, s - 8)) {
        // Source pixels b0 .. b0 + 14 feed output pixels p0 .. p0 + 7.
        const int64_t b0 = kSign > 0 ? p0 + u0 - c : p0 - u0 + c - 7;
        __m256 q[15];
        if (b0 >= 0 && b0 + 15 <= w) {
          for (int k = 0; k < 15; ++k) {
            q[k] = _mm256_loadu_ps(src_row + (b0 + k) * block + u0);
          }
        } else {
          for (int k = 0; k < 15; ++k) {
            const int64_t b = b0 + k;
            q[k] = b >= 0 && b < w ? _mm256_loadu_ps(src_row + b * block + u0)
                                   : vfill;
          }
        }
        float* out = dst_row + p0 * block + v * s + u0;
        for (int i = 0; i < 8; ++i) {
          _mm256_storeu_ps(out + i * block, Diagonal<kSign>(q + i));
        }
        if (u0 == s - 8) break;
      }
    }
  }
  ShiftRowScalar<kSign, float>(g, fill, src, dst, n, r, w8, w);
}
#endif  // __AVX2__

// parallel_for: as in swap_align2nat_cpu.h (TensorFlow's Shard in the op).
template <int kSign, typename T, typename ParallelForFn>
void Shift(const Geometry& g, T fill, const T* src, T* dst,
           const ParallelForFn& parallel_for) {
  const int64_t row_elements = g.width * g.window * g.window;
  parallel_for(g.batch * g.height, 2 * row_elements,
               [&](int64_t begin, int64_t end) {
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t n = unit / g.height, r = unit % g.height;
#if defined(__AVX2__)
      if constexpr (std::is_same_v<T, float>) {
        if (g.window >= 8) {
          ShiftRowAvx2<kSign>(g, fill, src, dst, n, r);
          continue;
        }
      }
#endif
      ShiftRowScalar<kSign, T>(g, fill, src, dst, n, r, 0, g.width);
    }
  });
}

}  // namespace shift_internal

// y = swap_align2nat(x, lam = 1, pad) for odd S (IsPureShift).
template <typename T, typename ParallelForFn>
void ShiftForward(const Geometry& g, T pad, const T* x, T* y,
                  const ParallelForFn& parallel_for) {
  shift_internal::Shift<1>(g, pad, x, y, parallel_for);
}

// dx of ShiftForward for the output gradient dy.
template <typename T, typename ParallelForFn>
void ShiftBackward(const Geometry& g, const T* dy, T* dx,
                   const ParallelForFn& parallel_for) {
  shift_internal::Shift<-1>(g, T(0), dy, dx, parallel_for);
}

}  // namespace cpu
}  // namespace tensormask

#endif  // TENSORMASK_CUSTOM_OPS_KERNELS_SWAP_ALIGN2NAT_SHIFT_CPU_H_
