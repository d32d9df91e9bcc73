// CUDA kernels of up_align2nat; see up_align2nat_cuda.h.
#include "up_align2nat_cuda.h"

namespace tensormask {
namespace {

constexpr int kThreads = 256;

inline int64_t Blocks(int64_t n) { return (n + kThreads - 1) / kThreads; }

// One output element (n, y, x, v, u) of the window at (n, y, x).
template <typename T>
__device__ T UpElement(const UpGeometry& g, T pad, const T* x, int64_t n,
                       int64_t y, int64_t xx, int v, int u) {
  AxisTap rows[kMaxAxisTaps], cols[kMaxAxisTaps];
  double row_out, col_out;
  const int num_rows = UpAxisTaps(y, v, g, g.height, rows, &row_out);
  const int num_cols = UpAxisTaps(xx, u, g, g.width, cols, &col_out);
  const int s = g.window;
  const T* image = x + n * g.height * g.width * s * s;
  T sum = T(0);
  for (int i = 0; i < num_rows; ++i) {
    const T* row = image + rows[i].spatial * g.width * s * s +
                   rows[i].window * s;
    T partial = T(0);
    for (int j = 0; j < num_cols; ++j) {
      partial += static_cast<T>(cols[j].weight) *
                 row[cols[j].spatial * s * s + cols[j].window];
    }
    sum += static_cast<T>(rows[i].weight) * partial;
  }
  return sum + pad * static_cast<T>(OutsideWeight(row_out, col_out));
}

template <typename T>
__global__ void UpForwardKernel(UpGeometry g, T pad, const T* x, T* y,
                                int64_t total) {
  const int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (e >= total) return;
  const int t_size = g.out_window;
  const int u = static_cast<int>(e % t_size);
  const int v = static_cast<int>((e / t_size) % t_size);
  const int64_t window = e / (int64_t{t_size} * t_size);
  const int64_t xx = window % g.width;
  const int64_t yy = (window / g.width) % g.height;
  const int64_t n = window / (g.width * g.height);
  y[e] = UpElement(g, pad, x, n, yy, xx, v, u);
}

template <typename T>
__global__ void UpBackwardKernel(UpGeometry g, const T* dy, T* dx,
                                 int64_t total) {
  const int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (e >= total) return;
  const int s = g.window;
  const int d = static_cast<int>(e % s);
  const int c = static_cast<int>((e / s) % s);
  const int64_t cell = e / (int64_t{s} * s);
  const int64_t b = cell % g.width;
  const int64_t a = (cell / g.width) % g.height;
  const int64_t n = cell / (g.width * g.height);
  const int t_size = g.out_window;
  const int64_t window_size = int64_t{t_size} * t_size;
  const T* grads = dy + n * g.height * g.width * window_size;
  T sum = T(0);
  UpAxisHits(a, c, g, g.height, [&](int64_t p, int t, double row_weight) {
    const T* row = grads + p * g.width * window_size + int64_t{t} * t_size;
    T partial = T(0);
    UpAxisHits(b, d, g, g.width, [&](int64_t q, int w, double col_weight) {
      partial += static_cast<T>(col_weight) * row[q * window_size + w];
    });
    sum += static_cast<T>(row_weight) * partial;
  });
  dx[e] = sum;
}

template <typename T>
__global__ void UpGatherForwardKernel(UpGeometry g, T pad, const T* x,
                                      const int32_t* indices, T* y,
                                      int64_t total) {
  const int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (e >= total) return;
  const int t_size = g.out_window;
  const int u = static_cast<int>(e % t_size);
  const int v = static_cast<int>((e / t_size) % t_size);
  const int64_t k = e / (int64_t{t_size} * t_size);
  const int64_t n = indices[3 * k], yy = indices[3 * k + 1],
                xx = indices[3 * k + 2];
  if (n < 0 || n >= g.batch || yy < 0 || yy >= g.height || xx < 0 ||
      xx >= g.width) {
    y[e] = pad;
    return;
  }
  y[e] = UpElement(g, pad, x, n, yy, xx, v, u);
}

template <typename T>
__global__ void UpGatherBackwardKernel(UpGeometry g, const T* dy,
                                       const int32_t* indices, T* dx,
                                       int64_t total) {
  const int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (e >= total) return;
  const int t_size = g.out_window;
  const int u = static_cast<int>(e % t_size);
  const int v = static_cast<int>((e / t_size) % t_size);
  const int64_t k = e / (int64_t{t_size} * t_size);
  const int64_t n = indices[3 * k], yy = indices[3 * k + 1],
                xx = indices[3 * k + 2];
  if (n < 0 || n >= g.batch || yy < 0 || yy >= g.height || xx < 0 ||
      xx >= g.width) {
    return;
  }
  AxisTap rows[kMaxAxisTaps], cols[kMaxAxisTaps];
  double row_out, col_out;
  const int num_rows = UpAxisTaps(yy, v, g, g.height, rows, &row_out);
  const int num_cols = UpAxisTaps(xx, u, g, g.width, cols, &col_out);
  const int s = g.window;
  T* image = dx + n * g.height * g.width * s * s;
  const T grad = dy[e];
  for (int i = 0; i < num_rows; ++i) {
    T* row = image + rows[i].spatial * g.width * s * s + rows[i].window * s;
    const T row_grad = static_cast<T>(rows[i].weight) * grad;
    for (int j = 0; j < num_cols; ++j) {
      atomicAdd(row + cols[j].spatial * s * s + cols[j].window,
                row_grad * static_cast<T>(cols[j].weight));
    }
  }
}

}  // namespace

template <typename T>
cudaError_t LaunchUpAlign2NatForward(const UpGeometry& g, T pad, const T* x,
                                     T* y, cudaStream_t stream) {
  const int64_t total =
      g.batch * g.height * g.width * int64_t{g.out_window} * g.out_window;
  if (total > 0) {
    UpForwardKernel<T><<<Blocks(total), kThreads, 0, stream>>>(g, pad, x, y,
                                                               total);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t LaunchUpAlign2NatBackward(const UpGeometry& g, const T* dy, T* dx,
                                      cudaStream_t stream) {
  const int64_t total =
      g.batch * g.height * g.width * int64_t{g.window} * g.window;
  if (total > 0) {
    UpBackwardKernel<T><<<Blocks(total), kThreads, 0, stream>>>(g, dy, dx,
                                                                total);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t LaunchUpAlign2NatGatherForward(const UpGeometry& g, T pad,
                                           const T* x, const int32_t* indices,
                                           int64_t num_indices, T* y,
                                           cudaStream_t stream) {
  const int64_t total = num_indices * int64_t{g.out_window} * g.out_window;
  if (total > 0) {
    UpGatherForwardKernel<T><<<Blocks(total), kThreads, 0, stream>>>(
        g, pad, x, indices, y, total);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t LaunchUpAlign2NatGatherBackward(const UpGeometry& g, const T* dy,
                                            const int32_t* indices,
                                            int64_t num_indices, T* dx,
                                            cudaStream_t stream) {
  const int64_t dx_size =
      g.batch * g.height * g.width * int64_t{g.window} * g.window;
  if (dx_size == 0) return cudaGetLastError();
  const cudaError_t err =
      cudaMemsetAsync(dx, 0, dx_size * sizeof(T), stream);
  if (err != cudaSuccess) return err;
  const int64_t total = num_indices * int64_t{g.out_window} * g.out_window;
  if (total > 0) {
    UpGatherBackwardKernel<T><<<Blocks(total), kThreads, 0, stream>>>(
        g, dy, indices, dx, total);
  }
  return cudaGetLastError();
}

#define INSTANTIATE(T)                                                       \
  template cudaError_t LaunchUpAlign2NatForward<T>(                          \
      const UpGeometry&, T, const T*, T*, cudaStream_t);                     \
  template cudaError_t LaunchUpAlign2NatBackward<T>(const UpGeometry&,       \
                                                    const T*, T*,            \
                                                    cudaStream_t);           \
  template cudaError_t LaunchUpAlign2NatGatherForward<T>(                    \
      const UpGeometry&, T, const T*, const int32_t*, int64_t, T*,           \
      cudaStream_t);                                                         \
  template cudaError_t LaunchUpAlign2NatGatherBackward<T>(                   \
      const UpGeometry&, const T*, const int32_t*, int64_t, T*, cudaStream_t);

INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace tensormask
