// A baseline for the timings of run_cuda_kernels.py: swap_align2nat written
// the way the original TensorMask implementation computes it, one thread
// per output element sampling its 16 bilinear taps with float coordinates,
// and a gradient that adds each output's 16 weighted taps into dx with
// atomicAdd (so dx must be zeroed first, and the sum order is not fixed).
// The original has no gathered op: it computes every window's mask and then
// picks the positives, so its cost for K windows is the dense op's.
// Written from docs/ops.md's definitions, not from the original's source.
//   nvcc -std=c++17 -O3 -Xcompiler -fPIC -shared -arch=sm_90 \
//     custom_ops/cuda_test/naive_baseline.cu -o libnaive_baseline.so
#include <cuda_runtime.h>

#include <cstdint>

namespace {

struct Taps {
  int index[2];
  float weight[2];
};

__device__ __forceinline__ Taps Bilinear(float coordinate) {
  const float low = floorf(coordinate);
  const float frac = coordinate - low;
  Taps taps;
  taps.index[0] = static_cast<int>(low);
  taps.index[1] = taps.index[0] + 1;
  taps.weight[0] = 1.0f - frac;
  taps.weight[1] = frac;
  return taps;
}

// Output element e of y [N, Ho, Wo, T*T]: its taps, as (x offset or -1 for
// pad, weight).
template <typename Visit>
__device__ __forceinline__ void ForEachTap(int64_t e, int height, int width,
                                           int s, int lam, Visit visit) {
  const int t = lam * s;
  const int out_height = (height + lam - 1) / lam;
  const int out_width = (width + lam - 1) / lam;
  const int u = static_cast<int>(e % t);
  const int v = static_cast<int>((e / t) % t);
  const int64_t cell = e / (static_cast<int64_t>(t) * t);
  const int px = static_cast<int>(cell % out_width);
  const int py = static_cast<int>((cell / out_width) % out_height);
  const int64_t n = cell / (static_cast<int64_t>(out_width) * out_height);
  const float half = 0.5f * t;
  const Taps ty = Bilinear(lam * py + v - half + 0.5f);
  const Taps tx = Bilinear(lam * px + u - half + 0.5f);
  const Taps tv = Bilinear((v + 0.5f) / lam - 0.5f);
  const Taps tu = Bilinear((u + 0.5f) / lam - 0.5f);
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j)
      for (int k = 0; k < 2; ++k)
        for (int l = 0; l < 2; ++l) {
          const float w =
              ty.weight[i] * tx.weight[j] * tv.weight[k] * tu.weight[l];
          const int a = ty.index[i], b = tx.index[j];
          const int c = tv.index[k], d = tu.index[l];
          const bool inside = a >= 0 && a < height && b >= 0 && b < width &&
                              c >= 0 && c < s && d >= 0 && d < s;
          visit(inside ? ((n * height + a) * width + b) * s * s + c * s + d
                       : int64_t{-1},
                w);
        }
}

__global__ void NaiveForward(int height, int width, int s, int lam,
                             float pad, const float* x, float* y,
                             int64_t total) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) +
                   threadIdx.x;
       e < total; e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float acc = 0.0f;
    ForEachTap(e, height, width, s, lam,
               [&](int64_t offset, float w) {
                 acc += w * (offset >= 0 ? x[offset] : pad);
               });
    y[e] = acc;
  }
}

__global__ void NaiveBackward(int height, int width, int s, int lam,
                              const float* dy, float* dx, int64_t total) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) +
                   threadIdx.x;
       e < total; e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = dy[e];
    ForEachTap(e, height, width, s, lam,
               [&](int64_t offset, float w) {
                 if (offset >= 0 && w != 0.0f) atomicAdd(dx + offset, w * g);
               });
  }
}

int64_t OutputSize(int batch, int height, int width, int s, int lam) {
  const int64_t t = static_cast<int64_t>(lam) * s;
  return static_cast<int64_t>(batch) * ((height + lam - 1) / lam) *
         ((width + lam - 1) / lam) * t * t;
}

unsigned Blocks(int64_t total) {
  const int64_t blocks = (total + 255) / 256;
  return static_cast<unsigned>(blocks < (1 << 20) ? blocks : (1 << 20));
}

}  // namespace

extern "C" int naive_forward_f32(int batch, int height, int width, int s,
                                 int lam, float pad, const void* x, void* y,
                                 void* stream) {
  const int64_t total = OutputSize(batch, height, width, s, lam);
  NaiveForward<<<Blocks(total), 256, 0, static_cast<cudaStream_t>(stream)>>>(
      height, width, s, lam, pad, static_cast<const float*>(x),
      static_cast<float*>(y), total);
  return static_cast<int>(cudaGetLastError());
}

// Zeroes dx, then accumulates (both in the timed call, as the original must).
extern "C" int naive_backward_f32(int batch, int height, int width, int s,
                                  int lam, const void* dy, void* dx,
                                  void* stream) {
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  const size_t dx_bytes = sizeof(float) * static_cast<size_t>(batch) *
                          height * width * s * s;
  cudaError_t status = cudaMemsetAsync(dx, 0, dx_bytes, st);
  if (status != cudaSuccess) return static_cast<int>(status);
  const int64_t total = OutputSize(batch, height, width, s, lam);
  NaiveBackward<<<Blocks(total), 256, 0, st>>>(
      height, width, s, lam, static_cast<const float*>(dy),
      static_cast<float*>(dx), total);
  return static_cast<int>(cudaGetLastError());
}
