// CUDA kernels of project_swap_align2nat_gather; see
// project_swap_align2nat_cuda.h for the contract and
// project_swap_align2nat_cpu.h for the algebra. Compile as CUDA (nvcc -x cu,
// or TensorFlow's GPU build, which treats *.cu.cc as CUDA).
//
// Forward, direct (windows that read less than the dense projection costs):
// a block owns one window row v of a run of windows. It stages Kr(v) (the
// conv1x1 kernel combined over v's window row taps, [S, C]) in shared
// memory once for the run, then each warp computes whole outputs (k, v, u):
// its lanes sum sampled features times combined kernel over channels, a
// fixed butterfly of shuffles adds the lanes. Otherwise (large lam, many
// windows) the projection is a tiled matrix product into scratch, read by
// swap_align2nat_gather's kernel.
//
// Backward: the projection's gradient dP = swap_align2nat_gather's backward
// (the verified kernel of swap_align2nat_cuda.cu.cc) into scratch, then
// df = dP w, dw = dP^T f and dbias = column sums of dP as tiled matrix
// products summed in a fixed order (dw and dbias over fixed pixel chunks,
// then the chunks in ascending order).
//
// The scratch is one op's temporary: on a GPU it is released before the
// next op of the stream runs, unlike the dense path's projection and its
// gradient, which are tensors of the graph (the projection held from the
// forward to the backward pass).
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "project_swap_align2nat_cuda.h"
#include "swap_align2nat_cuda.h"

namespace tensormask {
namespace {
// Nested so that both kernel files can share one translation unit (the
// standalone test build) without their internal names colliding.
namespace projection {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// Forward: windows per block so that a block has about this many outputs.
constexpr int kForwardOutputsPerBlock = 128;
// Matrix products: 16-deep steps; output tiles per mode (ProductTiling).
constexpr int kStep = 16;
// [dw | dbias] sums pixel chunks of about this many pixels, at most
// kMaxChunks of them (bounds the partial sums' scratch).
constexpr int64_t kChunkPixels = 1024;
constexpr int64_t kMaxChunks = 128;

// Window taps of offset u inside [0, S), in 32-bit arithmetic from the
// closed form of swap_align2nat_math.h (u = lam * q + r), on fixed slots like
// SpatialTapsInRange: the outputs' 64-bit divisions and taps in local memory
// would cost more than their dot products.
template <typename T>
__device__ __forceinline__ Taps2<T> WindowTapsInRange(int u, int lam,
                                                      int window) {
  const int q = u / lam, r = u - q * lam;
  const int low = q + WindowLowShift(r, lam);
  const int rem = WindowRemainder(r, lam);
  const T high_weight = rem == 0 ? T(0) : T(rem) / T(2 * lam);
  const T low_weight = T(1) - high_weight;
  const bool low_in = low >= 0 && low < window;
  const bool high_in = rem != 0 && low + 1 >= 0 && low + 1 < window;
  Taps2<T> taps;
  taps.count = static_cast<int>(low_in) + static_cast<int>(high_in);
  taps.index[0] = low_in ? low : low + 1;
  taps.weight[0] = low_in ? low_weight : high_weight;
  taps.index[1] = low + 1;
  taps.weight[1] = high_weight;
  taps.total = (low_in ? low_weight : T(0)) + (high_in ? high_weight : T(0));
  return taps;
}

int64_t NumChunks(int64_t pixels) {
  const int64_t chunks = CeilDiv(pixels, kChunkPixels);
  return chunks < 1 ? 1 : (chunks > kMaxChunks ? kMaxChunks : chunks);
}

int WindowsPerBlock(int out_window) {
  const int windows = kForwardOutputsPerBlock / out_window;
  return windows < 1 ? 1 : windows;
}

size_t KernelStageBytes(const ProjectionGeometry& pg, size_t element_bytes) {
  const int64_t s = pg.g.window;
  return static_cast<size_t>(s * pg.channels + s) * element_bytes;
}

// ---------------------------------------------------------------------------
// Forward.
// ---------------------------------------------------------------------------
template <typename T>
__global__ void __launch_bounds__(kThreads)
    ForwardKernel(ProjectionGeometry pg, T pad, const T* __restrict__ f,
                  const T* __restrict__ w, const T* __restrict__ bias,
                  const int32_t* __restrict__ indices, int64_t num_indices,
                  int windows_per_block, T* __restrict__ out) {
  extern __shared__ unsigned char stage_bytes[];
  const Geometry& g = pg.g;
  const int s = g.window, t_size = g.out_window, lam = g.lam;
  const int64_t c = pg.channels;
  T* kr = reinterpret_cast<T*>(stage_bytes);  // Kr(v): [S, C]
  T* br = kr + s * c;                          // Br(v): [S]
  const int v = blockIdx.y;
  const Taps2<T> window_row = WindowTapsInRange<T>(v, lam, s);
  for (int64_t e = threadIdx.x; e < s * c; e += blockDim.x) {
    T sum = T(0);
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      if (i < window_row.count) {
        sum += window_row.weight[i] * w[window_row.index[i] * s * c + e];
      }
    }
    kr[e] = sum;
  }
  for (int d = threadIdx.x; d < s; d += blockDim.x) {
    T sum = T(0);
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      if (i < window_row.count) {
        sum += window_row.weight[i] * bias[window_row.index[i] * s + d];
      }
    }
    br[d] = sum;
  }
  __syncthreads();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t first_window =
      static_cast<int64_t>(blockIdx.x) * windows_per_block;
  const int items = windows_per_block * t_size;
  // Everything below is uniform over a warp (it depends on k and u only),
  // so the shuffles run with the whole warp.
  for (int item = warp; item < items; item += kWarps) {
    const int64_t k = first_window + item / t_size;
    if (k >= num_indices) break;
    const int u = item % t_size;
    const int64_t n = indices[3 * k], yy = indices[3 * k + 1],
                  xx = indices[3 * k + 2];
    T value = pad;
    if (n >= 0 && n < g.batch && yy >= 0 && yy < g.out_height && xx >= 0 &&
        xx < g.out_width) {
      const Taps2<T> rows =
          SpatialTapsInRange<T>(yy, v, lam, t_size, g.height);
      const Taps2<T> cols =
          SpatialTapsInRange<T>(xx, u, lam, t_size, g.width);
      if (rows.count > 0 && cols.count > 0) {
        const Taps2<T> window_col = WindowTapsInRange<T>(u, lam, s);
        // The (<= 4) features and (<= 2) kernel rows this output reads.
        // Loops over fixed slots: no run-time index into the taps.
        const T* tap[2][2];
        T tap_weight[2][2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            tap[i][j] = f + ((n * g.height + rows.index[i]) * g.width +
                             cols.index[j]) * c;
            tap_weight[i][j] = rows.weight[i] * cols.weight[j];
          }
        }
        const T* kernel_row[2] = {kr + window_col.index[0] * c,
                                  kr + window_col.index[1] * c};
        T partial = T(0);
        for (int64_t ch = lane; ch < c; ch += 32) {
          T q = T(0);
#pragma unroll
          for (int i = 0; i < 2; ++i) {
#pragma unroll
            for (int j = 0; j < 2; ++j) {
              if (i < rows.count && j < cols.count) {
                q += tap_weight[i][j] * tap[i][j][ch];
              }
            }
          }
          T kernel = T(0);
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            if (j < window_col.count) {
              kernel += window_col.weight[j] * kernel_row[j][ch];
            }
          }
          partial += q * kernel;
        }
        for (int offset = 16; offset > 0; offset /= 2) {
          partial += __shfl_xor_sync(0xffffffffu, partial, offset);
        }
        T bias_term = T(0);
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          if (j < window_col.count) {
            bias_term += window_col.weight[j] * br[window_col.index[j]];
          }
        }
        const T inside = rows.total * cols.total;
        value = partial + inside * bias_term +
                pad * (T(1) - inside * window_row.total * window_col.total);
      }
    }
    if (lane == 0) out[(k * t_size + v) * t_size + u] = value;
  }
}

// The matrix products, tiled (kTileM x kTileN outputs per block). Every
// output sums its terms in ascending reduction index, so the products are
// deterministic; a step whose A tile is all zero (pixels no window reads)
// is skipped.
// ---------------------------------------------------------------------------
enum class Product {
  // P[p, j] = sum_ch f[p, ch] w[j, ch] + bias[j]: the projection (forward,
  // when the windows read more than the dense projection costs).
  kProject,
  // df[p, ch] = sum_j dP[p, j] w[j, ch] (added to df's values when
  // accumulating).
  kToFeatures,
  // Per pixel chunk z: dw_z[j, ch] = sum_p dP[p, j] f[p, ch] and
  // dbias_z[j] = sum_p dP[p, j].
  kToWeights,
};

// Loads tile[kk][i] = load(i0 + i, k0 + kk) for i < kSize, kk < kStep (zero
// outside [.., size) x [.., k_end)), walking the operand's contiguous axis
// across threads. Returns whether this thread loaded a non-zero value.
template <typename T, int kSize, bool kContiguousInK, int kBlockThreads,
          typename Load>
__device__ __forceinline__ bool LoadTile(T (*tile)[kSize + 1], int64_t i0,
                                         int64_t size, int64_t k0,
                                         int64_t k_end, Load load) {
  bool nonzero = false;
  for (int e = threadIdx.x; e < kSize * kStep; e += kBlockThreads) {
    const int i = kContiguousInK ? e / kStep : e % kSize;
    const int kk = kContiguousInK ? e % kStep : e / kSize;
    T value = T(0);
    if (i0 + i < size && k0 + kk < k_end) value = load(i0 + i, k0 + kk);
    nonzero |= value != T(0);
    tile[kk][i] = value;
  }
  return nonzero;
}

// Output tile and register tile per thread. The products over all pixels
// (M = pixels) take 128 x 64 tiles with 8 x 8 per thread (8 shared-memory
// reads per 64 multiply-adds); the weights' product (M = S*S, N = C, one
// grid per pixel chunk) takes 64 x 64 tiles with 4 x 4 per thread, which
// gives it twice the blocks.
template <Product kMode>
struct ProductTiling {
  static constexpr bool kSmall = kMode == Product::kToWeights;
  static constexpr int kTileM = kSmall ? 64 : 128;
  static constexpr int kTileN = 64;
  static constexpr int kMicroM = kSmall ? 4 : 8;
  static constexpr int kMicroN = kSmall ? 4 : 8;
  static constexpr int kRowsOfThreads = kTileM / kMicroM;
  static constexpr int kColsOfThreads = kTileN / kMicroN;
  static constexpr int kThreads = kRowsOfThreads * kColsOfThreads;
  static_assert(kThreads >= kTileM, "one tile row per thread for dbias");
};

template <typename T, Product kMode>
__global__ void __launch_bounds__(ProductTiling<kMode>::kThreads)
    ProductKernel(const T* __restrict__ a, const T* __restrict__ b,
                  const T* __restrict__ bias, int64_t pixels, int64_t s2,
                  int64_t c, int64_t chunk_pixels, bool accumulate,
                  T* __restrict__ out, T* __restrict__ out_bias) {
  using Tiling = ProductTiling<kMode>;
  constexpr int kTileM = Tiling::kTileM, kTileN = Tiling::kTileN;
  constexpr int kMicroM = Tiling::kMicroM, kMicroN = Tiling::kMicroN;
  constexpr int kRowsOfThreads = Tiling::kRowsOfThreads;
  constexpr int kColsOfThreads = Tiling::kColsOfThreads;
  constexpr int kProductThreads = Tiling::kThreads;
  constexpr bool kToWeights = kMode == Product::kToWeights;
  // Which operand runs along which axis in memory.
  constexpr bool kAContiguousInK = !kToWeights;  // else in m
  constexpr bool kBContiguousInK = kMode == Product::kProject;  // else in n
  __shared__ T a_tile[kStep][kTileM + 1];
  __shared__ T b_tile[kStep][kTileN + 1];
  const int64_t rows = kToWeights ? s2 : pixels;
  const int64_t cols = kMode == Product::kProject ? s2 : c;
  const int64_t a_stride = kMode == Product::kProject ? c : s2;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kTileM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kTileN;
  const int64_t z = blockIdx.z;
  const int64_t k_begin = kToWeights ? z * chunk_pixels : 0;
  int64_t k_end = kToWeights ? k_begin + chunk_pixels
                             : (kMode == Product::kProject ? c : s2);
  if (kToWeights && k_end > pixels) k_end = pixels;
  const bool sums_bias = kToWeights && blockIdx.y == 0;
  // Thread (ty, tx) owns rows ty + kRowsOfThreads i and columns
  // tx + kColsOfThreads j: a warp reads a few broadcast A values and
  // consecutive B values per step.
  const int tx = threadIdx.x % kColsOfThreads;
  const int ty = threadIdx.x / kColsOfThreads;
  T acc[kMicroM][kMicroN];
#pragma unroll
  for (int i = 0; i < kMicroM; ++i) {
#pragma unroll
    for (int j = 0; j < kMicroN; ++j) acc[i][j] = T(0);
  }
  T bias_acc = T(0);  // dbias_z[m0 + threadIdx.x]
  for (int64_t k0 = k_begin; k0 < k_end; k0 += kStep) {
    const bool nonzero = LoadTile<T, kTileM, kAContiguousInK, kProductThreads>(
        a_tile, m0, rows, k0, k_end, [&](int64_t m, int64_t k) {
          return kToWeights ? a[k * s2 + m] : a[m * a_stride + k];
        });
    LoadTile<T, kTileN, kBContiguousInK, kProductThreads>(
        b_tile, n0, cols, k0, k_end, [&](int64_t n, int64_t k) {
          return kBContiguousInK ? b[n * c + k] : b[k * c + n];
        });
    if (!__syncthreads_or(nonzero)) continue;  // (the barrier of the loads)
    if (sums_bias && threadIdx.x < kTileM) {
      for (int kk = 0; kk < kStep; ++kk) bias_acc += a_tile[kk][threadIdx.x];
    }
#pragma unroll
    for (int kk = 0; kk < kStep; ++kk) {
      T av[kMicroM], bv[kMicroN];
#pragma unroll
      for (int i = 0; i < kMicroM; ++i) {
        av[i] = a_tile[kk][ty + kRowsOfThreads * i];
      }
#pragma unroll
      for (int j = 0; j < kMicroN; ++j) {
        bv[j] = b_tile[kk][tx + kColsOfThreads * j];
      }
#pragma unroll
      for (int i = 0; i < kMicroM; ++i) {
#pragma unroll
        for (int j = 0; j < kMicroN; ++j) acc[i][j] += av[i] * bv[j];
      }
    }
    __syncthreads();
  }
  T* target = out + (kToWeights ? z * rows * cols : 0);
#pragma unroll
  for (int i = 0; i < kMicroM; ++i) {
    const int64_t m = m0 + ty + kRowsOfThreads * i;
    if (m >= rows) continue;
#pragma unroll
    for (int j = 0; j < kMicroN; ++j) {
      const int64_t n = n0 + tx + kColsOfThreads * j;
      if (n >= cols) continue;
      T value = acc[i][j];
      if (kMode == Product::kProject) value += bias[n];
      // (Each output element has one owner thread: in place is safe.)
      if (kMode == Product::kToFeatures && accumulate) {
        value += target[m * cols + n];
      }
      target[m * cols + n] = value;
    }
  }
  if (sums_bias && threadIdx.x < kTileM && m0 + threadIdx.x < rows) {
    out_bias[z * rows + m0 + threadIdx.x] = bias_acc;
  }
}

template <typename T, Product kMode>
cudaError_t LaunchProduct(const T* a, const T* b, const T* bias,
                          int64_t pixels, int64_t s2, int64_t c,
                          int64_t chunks, T* out, T* out_bias,
                          cudaStream_t stream, bool accumulate = false) {
  const int64_t rows = kMode == Product::kToWeights ? s2 : pixels;
  const int64_t cols = kMode == Product::kProject ? s2 : c;
  // (The weights' product also sums dbias, even with no channels.)
  const int64_t grid_cols =
      kMode == Product::kToWeights && cols == 0 ? 1 : cols;
  if (rows == 0 || grid_cols == 0) return cudaSuccess;
  using Tiling = ProductTiling<kMode>;
  const dim3 grid(static_cast<unsigned>(CeilDiv(rows, Tiling::kTileM)),
                  static_cast<unsigned>(CeilDiv(grid_cols, Tiling::kTileN)),
                  static_cast<unsigned>(chunks));
  if (grid.y > kMaxGridY || grid.z > kMaxGridY) {
    return cudaErrorInvalidConfiguration;
  }
  ProductKernel<T, kMode><<<grid, Tiling::kThreads, 0, stream>>>(
      a, b, bias, pixels, s2, c, CeilDiv(pixels, chunks), accumulate, out,
      out_bias);
  return cudaGetLastError();
}

// dw and dbias from the chunks' partial sums, in ascending chunk.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    SumChunksKernel(const T* __restrict__ partial_w,
                    const T* __restrict__ partial_b, int64_t chunks,
                    int64_t s2, int64_t c, T* __restrict__ dw,
                    T* __restrict__ dbias) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x +
                    threadIdx.x;
  if (e < s2 * c) {
    T sum = T(0);
    for (int64_t z = 0; z < chunks; ++z) sum += partial_w[z * s2 * c + e];
    dw[e] = sum;
  }
  if (e < s2) {
    T sum = T(0);
    for (int64_t z = 0; z < chunks; ++z) sum += partial_b[z * s2 + e];
    dbias[e] = sum;
  }
}

// Forward directly (each window reads its taps) or through the dense
// projection in scratch: per output the direct kernel costs about 30x what
// the projection's tiled product costs per projected value (the crossover
// measured on an H100, float32, C = 128, S = 11 and 15, lam = 1..32; see
// docs/benchmarks.md), so the windows go direct while
// 30 K T^2 <= pixels S^2, and while its stage fits the shared memory every
// device grants without opting in.
constexpr int64_t kDirectCostRatio = 30;
constexpr size_t kMaxStageBytes = 48 * 1024;

template <typename T>
bool ForwardIsDirect(const ProjectionGeometry& pg, int64_t num_indices,
                     ProjectForwardPath path) {
  if (path != ProjectForwardPath::kAuto) {
    return path == ProjectForwardPath::kDirect;
  }
  const Geometry& g = pg.g;
  const int64_t t = g.out_window, s = g.window;
  return kDirectCostRatio * num_indices * t * t <=
             g.batch * g.height * g.width * s * s &&
         KernelStageBytes(pg, sizeof(T)) <= kMaxStageBytes && t <= kMaxGridY;
}

// Scratch, each part 256-byte aligned: the projection or its gradient
// [pixels, S*S], swap_align2nat_gather's backward CSR, and the per-chunk
// partial sums of dw and dbias.
struct Scratch {
  size_t projection, gather, partial_w, partial_b;
  size_t total() const { return projection + gather + partial_w + partial_b; }
};

template <typename T>
Scratch ForwardScratch(const ProjectionGeometry& pg, int64_t num_indices,
                       ProjectForwardPath path) {
  const Geometry& g = pg.g;
  Scratch scratch = {0, 0, 0, 0};
  if (!ForwardIsDirect<T>(pg, num_indices, path)) {
    scratch.projection = AlignUp(g.batch * g.height * g.width * g.window *
                                 g.window * sizeof(T));
  }
  return scratch;
}

template <typename T>
Scratch BackwardScratch(const ProjectionGeometry& pg, int64_t num_indices) {
  const Geometry& g = pg.g;
  const int64_t pixels = g.batch * g.height * g.width;
  const int64_t s2 = static_cast<int64_t>(g.window) * g.window;
  const int64_t chunks = NumChunks(pixels);
  Scratch scratch;
  scratch.projection = AlignUp(pixels * s2 * sizeof(T));
  scratch.gather =
      AlignUp(SwapAlign2NatGatherBackwardWorkspaceBytes(g, num_indices));
  scratch.partial_w = AlignUp(chunks * s2 * pg.channels * sizeof(T));
  scratch.partial_b = AlignUp(chunks * s2 * sizeof(T));
  return scratch;
}

template <typename T>
cudaError_t LaunchForward(const ProjectionGeometry& pg, T pad, const T* f,
                          const T* w, const T* bias, const int32_t* indices,
                          int64_t num_indices, void* workspace, T* out,
                          cudaStream_t stream, ProjectForwardPath path) {
  const Geometry& g = pg.g;
  const int t_size = g.out_window;
  if (num_indices == 0 || t_size == 0) return cudaSuccess;
  if (!ForwardIsDirect<T>(pg, num_indices, path)) {
    T* projected = static_cast<T*>(workspace);
    const int64_t s2 = static_cast<int64_t>(g.window) * g.window;
    const cudaError_t err = LaunchProduct<T, Product::kProject>(
        f, w, bias, g.batch * g.height * g.width, s2, pg.channels, 1,
        projected, nullptr, stream);
    if (err != cudaSuccess) return err;
    return LaunchSwapAlign2NatGatherForward<T>(g, pad, projected, indices,
                                               num_indices, out, stream);
  }
  // (Only a forced direct path gets here with either.)
  if (t_size > kMaxGridY) return cudaErrorInvalidConfiguration;
  const size_t stage = KernelStageBytes(pg, sizeof(T));
  if (stage > kMaxStageBytes) return cudaErrorInvalidValue;
  const int windows = WindowsPerBlock(t_size);
  const dim3 grid(static_cast<unsigned>(CeilDiv(num_indices, windows)),
                  static_cast<unsigned>(t_size));
  ForwardKernel<T><<<grid, kThreads, stage, stream>>>(
      pg, pad, f, w, bias, indices, num_indices, windows, out);
  return cudaGetLastError();
}

template <typename T>
cudaError_t LaunchBackward(const ProjectionGeometry& pg, const T* dy,
                           const T* f, const T* w, const int32_t* indices,
                           int64_t num_indices, void* workspace, T* df,
                           T* dw, T* dbias, cudaStream_t stream,
                           bool accumulate) {
  const Geometry& g = pg.g;
  const int64_t c = pg.channels;
  const int64_t pixels = g.batch * g.height * g.width;
  const int64_t s2 = static_cast<int64_t>(g.window) * g.window;
  const int64_t chunks = NumChunks(pixels);
  const Scratch scratch = BackwardScratch<T>(pg, num_indices);
  char* base = static_cast<char*>(workspace);
  T* projection_grad = reinterpret_cast<T*>(base);
  void* gather_scratch = base + scratch.projection;
  T* partial_w = reinterpret_cast<T*>(base + scratch.projection +
                                      scratch.gather);
  T* partial_b = reinterpret_cast<T*>(base + scratch.projection +
                                      scratch.gather + scratch.partial_w);
  cudaError_t err = cudaSuccess;
  if (pixels > 0) {
    err = LaunchSwapAlign2NatGatherBackward<T>(
        g, dy, indices, num_indices, gather_scratch, projection_grad, stream);
    if (err != cudaSuccess) return err;
    err = LaunchProduct<T, Product::kToFeatures>(
        projection_grad, w, nullptr, pixels, s2, c, 1, df, nullptr, stream,
        accumulate);
    if (err != cudaSuccess) return err;
  }
  // With no pixels, one empty chunk: zero dw and dbias.
  err = LaunchProduct<T, Product::kToWeights>(projection_grad, f, nullptr,
                                              pixels, s2, c, chunks,
                                              partial_w, partial_b, stream);
  if (err != cudaSuccess) return err;
  SumChunksKernel<T>
      <<<static_cast<unsigned>(CeilDiv(s2 * (c > 0 ? c : 1), kThreads)),
         kThreads, 0, stream>>>(partial_w, partial_b, chunks, s2, c, dw,
                                dbias);
  return cudaGetLastError();
}

}  // namespace projection
}  // namespace

template <typename T>
size_t ProjectSwapAlign2NatGatherForwardWorkspaceBytes(
    const ProjectionGeometry& pg, int64_t num_indices,
    ProjectForwardPath path) {
  return projection::ForwardScratch<T>(pg, num_indices, path).total();
}

template <typename T>
cudaError_t LaunchProjectSwapAlign2NatGatherForward(
    const ProjectionGeometry& pg, T pad, const T* f, const T* w,
    const T* bias, const int32_t* indices, int64_t num_indices,
    void* workspace, T* out, cudaStream_t stream, ProjectForwardPath path) {
  return projection::LaunchForward<T>(pg, pad, f, w, bias, indices,
                                      num_indices, workspace, out, stream,
                                      path);
}

template <typename T>
size_t ProjectSwapAlign2NatGatherBackwardWorkspaceBytes(
    const ProjectionGeometry& pg, int64_t num_indices) {
  return projection::BackwardScratch<T>(pg, num_indices).total();
}

template <typename T>
cudaError_t LaunchProjectSwapAlign2NatGatherBackward(
    const ProjectionGeometry& pg, const T* dy, const T* f, const T* w,
    const int32_t* indices, int64_t num_indices, void* workspace, T* df,
    T* dw, T* dbias, cudaStream_t stream, bool accumulate) {
  return projection::LaunchBackward<T>(pg, dy, f, w, indices, num_indices,
                                       workspace, df, dw, dbias, stream,
                                       accumulate);
}

#define TENSORMASK_INSTANTIATE(T)                                             \
  template size_t ProjectSwapAlign2NatGatherForwardWorkspaceBytes<T>(         \
      const ProjectionGeometry&, int64_t, ProjectForwardPath);                \
  template cudaError_t LaunchProjectSwapAlign2NatGatherForward<T>(            \
      const ProjectionGeometry&, T, const T*, const T*, const T*,             \
      const int32_t*, int64_t, void*, T*, cudaStream_t, ProjectForwardPath);  \
  template size_t ProjectSwapAlign2NatGatherBackwardWorkspaceBytes<T>(        \
      const ProjectionGeometry&, int64_t);                                    \
  template cudaError_t LaunchProjectSwapAlign2NatGatherBackward<T>(           \
      const ProjectionGeometry&, const T*, const T*, const T*,                \
      const int32_t*, int64_t, void*, T*, T*, T*, cudaStream_t, bool);
TENSORMASK_INSTANTIATE(float)
TENSORMASK_INSTANTIATE(double)
#undef TENSORMASK_INSTANTIATE

}  // namespace tensormask
