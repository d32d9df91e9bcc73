// CUDA kernels of swap_align2nat; see swap_align2nat_cuda.h for the contract
// and swap_align2nat_math.h for the arithmetic. Compile as CUDA (nvcc -x cu,
// or TensorFlow's GPU build, which treats *.cu.cc as CUDA).
//
// Design, all memory bound:
// * Forward (dense and gathered): a block owns a tile of one output window
//   (rows v0.., columns u0..). The per-axis taps of the tile's rows and
//   columns are computed once into shared memory (rows + cols tap sets
//   instead of rows * cols), then every thread writes contiguous elements of
//   the tile, so stores are coalesced and each element costs <= 16 loads
//   that mostly hit L1 (neighbouring outputs read neighbouring inputs).
// * Backward (dense and gathered): a gather, not a scatter, so that no
//   atomics touch dx and the sum order is fixed: a block owns a run of input
//   pixels (n, a, b0..b1) x all (c, d), with the per-axis hits (AxisHits) of
//   its rows and columns in shared memory, and each thread sums the outputs
//   that read its element in the order row hit, column hit (, window k).
// * Gathered backward builds a CSR of the windows of every output cell in the
//   workspace: counts, exclusive scan, placement, then a per-window rank so
//   that each cell lists its windows in ascending k whatever order the
//   placement atomics ran in.
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "swap_align2nat_cuda.h"

namespace tensormask {
namespace {

constexpr int kThreads = 256;
// Forward tile: about this many outputs per block, at most this many columns
// (bounds shared memory whatever T is).
constexpr int kForwardTileElements = 4096;
constexpr int kForwardMaxTileCols = 512;
// Backward tile: about this many inputs per block, at most this many column
// hit sets.
constexpr int kBackwardTileElements = 2048;
constexpr int kBackwardMaxColEntries = 256;
constexpr int64_t kMaxGridX = 0x7fffffff;
constexpr int64_t kMaxGridY = 65535;
constexpr int kScanThreads = 1024;
constexpr size_t kWorkspaceAlign = 256;

inline int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
__host__ __device__ inline int64_t Min64(int64_t a, int64_t b) {
  return a < b ? a : b;
}
inline size_t AlignUp(size_t bytes) {
  return (bytes + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign;
}

__device__ __forceinline__ bool ValidCell(const Geometry& g, int64_t n,
                                          int64_t y, int64_t x) {
  return n >= 0 && n < g.batch && y >= 0 && y < g.out_height && x >= 0 &&
         x < g.out_width;
}

// ---------------------------------------------------------------------------
// Forward.
// ---------------------------------------------------------------------------
struct ForwardTile {
  int rows, cols;              // tile extent (v, u)
  int row_chunks, col_chunks;  // tiles per window
};

ForwardTile MakeForwardTile(int out_window) {
  ForwardTile tile;
  tile.cols = out_window < kForwardMaxTileCols ? out_window
                                               : kForwardMaxTileCols;
  const int rows = static_cast<int>(CeilDiv(kForwardTileElements, tile.cols));
  tile.rows = rows < out_window ? rows : out_window;
  tile.row_chunks = static_cast<int>(CeilDiv(out_window, tile.rows));
  tile.col_chunks = static_cast<int>(CeilDiv(out_window, tile.cols));
  return tile;
}

template <typename T>
size_t ForwardSharedBytes(const ForwardTile& tile) {
  const size_t entries = tile.rows + tile.cols;
  return entries * (kMaxAxisTaps * (sizeof(int64_t) + sizeof(T)) + sizeof(T) +
                    sizeof(int));
}

// One block per (window, tile); windows are the dense cells (n, y, x) or the
// gathered index rows. Shared memory, structure of arrays over `entries`
// slots (the tile's rows first, then its columns) so that neighbouring
// threads read neighbouring words:
//   int64 offset[kMaxAxisTaps][entries]  element offset of the tap in x[n]
//   T     weight[kMaxAxisTaps][entries]
//   T     outside[entries]               summed weight of the pad taps
//   int   count[entries]
template <typename T, bool kGather>
__global__ void __launch_bounds__(kThreads)
    ForwardKernel(Geometry g, T pad, const T* __restrict__ x,
                  const int32_t* __restrict__ indices, int64_t num_windows,
                  ForwardTile tile, T* __restrict__ y) {
  extern __shared__ __align__(16) unsigned char shared[];
  const int entries = tile.rows + tile.cols;
  int64_t* offset = reinterpret_cast<int64_t*>(shared);
  T* weight = reinterpret_cast<T*>(offset + kMaxAxisTaps * entries);
  T* outside = weight + kMaxAxisTaps * entries;
  int* count = reinterpret_cast<int*>(outside + entries);

  const int s = g.window;
  const int t_size = g.out_window;
  const int64_t window_elements = static_cast<int64_t>(t_size) * t_size;
  const int64_t channels = static_cast<int64_t>(s) * s;
  const int64_t row_stride = g.width * channels;
  const int num_tiles = tile.row_chunks * tile.col_chunks;

  for (int64_t w = blockIdx.x; w < num_windows; w += gridDim.x) {
    int64_t n, py, px;
    bool valid = true;
    if (kGather) {
      n = indices[3 * w];
      py = indices[3 * w + 1];
      px = indices[3 * w + 2];
      valid = ValidCell(g, n, py, px);
    } else {
      px = w % g.out_width;
      const int64_t rest = w / g.out_width;
      py = rest % g.out_height;
      n = rest / g.out_height;
    }
    T* out = y + w * window_elements;
    const T* xn = valid ? x + n * g.height * row_stride : x;

    for (int tile_id = blockIdx.y; tile_id < num_tiles; tile_id += gridDim.y) {
      const int v0 = (tile_id / tile.col_chunks) * tile.rows;
      const int u0 = (tile_id % tile.col_chunks) * tile.cols;
      const int rows = min(tile.rows, t_size - v0);
      const int cols = min(tile.cols, t_size - u0);
      const int tile_elements = rows * cols;
      if (!valid) {  // Block-uniform, so skipping the barriers is safe.
        for (int e = threadIdx.x; e < tile_elements; e += blockDim.x) {
          const int r = e / cols;
          out[static_cast<int64_t>(v0 + r) * t_size + u0 + (e - r * cols)] =
              pad;
        }
        continue;
      }
      __syncthreads();  // The previous tile's readers are done with shared.
      for (int e = threadIdx.x; e < rows + cols; e += blockDim.x) {
        AxisTap taps[kMaxAxisTaps];
        double out_weight;
        int num;
        int slot;
        if (e < rows) {
          slot = e;
          num = AxisTaps(py, v0 + e, g.lam, s, g.height, taps, &out_weight);
          for (int i = 0; i < num; ++i) {
            offset[i * entries + slot] =
                taps[i].spatial * row_stride + taps[i].window * s;
          }
        } else {
          slot = tile.rows + (e - rows);
          num = AxisTaps(px, u0 + (e - rows), g.lam, s, g.width, taps,
                         &out_weight);
          for (int i = 0; i < num; ++i) {
            offset[i * entries + slot] =
                taps[i].spatial * channels + taps[i].window;
          }
        }
        for (int i = 0; i < num; ++i) {
          weight[i * entries + slot] = static_cast<T>(taps[i].weight);
        }
        outside[slot] = static_cast<T>(out_weight);
        count[slot] = num;
      }
      __syncthreads();
      for (int e = threadIdx.x; e < tile_elements; e += blockDim.x) {
        const int r = e / cols;
        const int c = e - r * cols;
        const int col_slot = tile.rows + c;
        const int row_count = count[r];
        const int col_count = count[col_slot];
        T acc = T(0);
#pragma unroll
        for (int i = 0; i < kMaxAxisTaps; ++i) {
          if (i < row_count) {
            const T* xr = xn + offset[i * entries + r];
            T inner = T(0);
#pragma unroll
            for (int j = 0; j < kMaxAxisTaps; ++j) {
              if (j < col_count) {
                inner += weight[j * entries + col_slot] *
                         xr[offset[j * entries + col_slot]];
              }
            }
            acc += weight[i * entries + r] * inner;
          }
        }
        acc += pad * static_cast<T>(OutsideWeight(
                         static_cast<double>(outside[r]),
                         static_cast<double>(outside[col_slot])));
        out[static_cast<int64_t>(v0 + r) * t_size + u0 + c] = acc;
      }
    }
  }
}

template <typename T, bool kGather>
cudaError_t LaunchForward(const Geometry& g, T pad, const T* x,
                          const int32_t* indices, int64_t num_windows, T* y,
                          cudaStream_t stream) {
  if (num_windows <= 0 || g.out_window <= 0) return cudaGetLastError();
  const ForwardTile tile = MakeForwardTile(g.out_window);
  const size_t shared_bytes = ForwardSharedBytes<T>(tile);
  const dim3 grid(
      static_cast<unsigned>(Min64(num_windows, kMaxGridX)),
      static_cast<unsigned>(
          Min64(static_cast<int64_t>(tile.row_chunks) * tile.col_chunks,
                kMaxGridY)));
  ForwardKernel<T, kGather><<<grid, kThreads, shared_bytes, stream>>>(
      g, pad, x, indices, num_windows, tile, y);
  return cudaGetLastError();
}

// ---------------------------------------------------------------------------
// Backward.
// ---------------------------------------------------------------------------
struct BackwardTile {
  int pixels;  // input pixels b per block
  int chunks;  // blocks per input row
};

BackwardTile MakeBackwardTile(const Geometry& g) {
  const int64_t channels = static_cast<int64_t>(g.window) * g.window;
  int64_t pixels = CeilDiv(kBackwardTileElements, channels);
  const int64_t by_shared = kBackwardMaxColEntries / g.window;
  if (pixels > by_shared) pixels = by_shared;
  if (pixels > g.width) pixels = g.width;
  if (pixels < 1) pixels = 1;
  BackwardTile tile;
  tile.pixels = static_cast<int>(pixels);
  tile.chunks = static_cast<int>(CeilDiv(g.width, pixels));
  return tile;
}

template <typename T>
size_t BackwardSharedBytes(const Geometry& g, const BackwardTile& tile) {
  const size_t entries =
      static_cast<size_t>(g.window) * (1 + static_cast<size_t>(tile.pixels));
  return entries *
         (kMaxAxisHits * (sizeof(T) + 2 * sizeof(int)) + sizeof(int));
}

// Sum of dy over the windows at output cell `cell`, at window element
// `element`: dense reads the cell's own window; gathered sums the windows
// listed for the cell in ascending k (none: zero).
template <typename T, bool kGather>
__device__ __forceinline__ T ReadGradient(const T* __restrict__ dy,
                                          const int32_t* __restrict__ offsets,
                                          const int32_t* __restrict__ order,
                                          int64_t cell, int64_t element,
                                          int64_t window_elements) {
  if (!kGather) return dy[cell * window_elements + element];
  T sum = T(0);
  const int32_t end = offsets[cell + 1];
  for (int32_t i = offsets[cell]; i < end; ++i) {
    sum += dy[static_cast<int64_t>(order[i]) * window_elements + element];
  }
  return sum;
}

// One block per (n, a, run of pixels b). Shared memory, structure of arrays
// over `entries` slots (S row hit sets for c = 0..S-1, then pixels*S column
// hit sets for (b, d)):
//   T   weight[kMaxAxisHits][entries]
//   int position[kMaxAxisHits][entries]   output y (rows) or x (columns)
//   int offset[kMaxAxisHits][entries]     window offset v or u
//   int count[entries]
template <typename T, bool kGather>
__global__ void __launch_bounds__(kThreads)
    BackwardKernel(Geometry g, const T* __restrict__ dy,
                   const int32_t* __restrict__ offsets,
                   const int32_t* __restrict__ order, BackwardTile tile,
                   T* __restrict__ dx) {
  extern __shared__ __align__(16) unsigned char shared[];
  const int s = g.window;
  const int entries = s * (1 + tile.pixels);
  T* weight = reinterpret_cast<T*>(shared);
  int* position = reinterpret_cast<int*>(weight + kMaxAxisHits * entries);
  int* offset = position + kMaxAxisHits * entries;
  int* count = offset + kMaxAxisHits * entries;

  const int t_size = g.out_window;
  const int64_t window_elements = static_cast<int64_t>(t_size) * t_size;
  const int channels = s * s;
  const int64_t input_rows = g.batch * g.height;

  for (int64_t row = blockIdx.x; row < input_rows; row += gridDim.x) {
    const int64_t n = row / g.height;
    const int64_t a = row - n * g.height;
    for (int chunk = blockIdx.y; chunk < tile.chunks; chunk += gridDim.y) {
      const int64_t b0 = static_cast<int64_t>(chunk) * tile.pixels;
      const int pixels =
          static_cast<int>(Min64(tile.pixels, g.width - b0));
      __syncthreads();  // The previous chunk's readers are done with shared.
      for (int e = threadIdx.x; e < s * (1 + pixels); e += blockDim.x) {
        AxisHit hits[kMaxAxisHits];
        int num;
        if (e < s) {
          num = AxisHits(a, e, g.lam, s, g.out_height, hits);
        } else {
          const int p = (e - s) / s;
          num = AxisHits(b0 + p, e - s - p * s, g.lam, s, g.out_width, hits);
        }
        for (int i = 0; i < num; ++i) {
          weight[i * entries + e] = static_cast<T>(hits[i].weight);
          position[i * entries + e] = static_cast<int>(hits[i].position);
          offset[i * entries + e] = hits[i].offset;
        }
        count[e] = num;
      }
      __syncthreads();
      T* out = dx + (row * g.width + b0) * channels;
      const int tile_elements = pixels * channels;
      for (int e = threadIdx.x; e < tile_elements; e += blockDim.x) {
        const int p = e / channels;
        const int cd = e - p * channels;
        const int c = cd / s;
        const int col_slot = s + p * s + (cd - c * s);
        const int row_count = count[c];
        const int col_count = count[col_slot];
        T acc = T(0);
#pragma unroll
        for (int i = 0; i < kMaxAxisHits; ++i) {
          if (i < row_count) {
            const int64_t cell_row =
                (n * g.out_height + position[i * entries + c]) * g.out_width;
            const int64_t element_row =
                static_cast<int64_t>(offset[i * entries + c]) * t_size;
            T inner = T(0);
#pragma unroll
            for (int j = 0; j < kMaxAxisHits; ++j) {
              if (j < col_count) {
                inner += weight[j * entries + col_slot] *
                         ReadGradient<T, kGather>(
                             dy, offsets, order,
                             cell_row + position[j * entries + col_slot],
                             element_row + offset[j * entries + col_slot],
                             window_elements);
              }
            }
            acc += weight[i * entries + c] * inner;
          }
        }
        out[e] = acc;
      }
    }
  }
}

template <typename T, bool kGather>
cudaError_t LaunchBackward(const Geometry& g, const T* dy,
                           const int32_t* offsets, const int32_t* order,
                           T* dx, cudaStream_t stream) {
  if (g.batch * g.height * g.width <= 0 || g.window <= 0) {
    return cudaGetLastError();
  }
  const BackwardTile tile = MakeBackwardTile(g);
  const size_t shared_bytes = BackwardSharedBytes<T>(g, tile);
  if (shared_bytes > 48 * 1024) {
    // Only very large windows (S > ~300) get here: opt in to more shared
    // memory (fails cleanly where the device has too little).
    const cudaError_t status = cudaFuncSetAttribute(
        BackwardKernel<T, kGather>,
        cudaFuncAttributeMaxDynamicSharedMemorySize,
        static_cast<int>(shared_bytes));
    if (status != cudaSuccess) return status;
  }
  const dim3 grid(
      static_cast<unsigned>(Min64(g.batch * g.height, kMaxGridX)),
      static_cast<unsigned>(Min64(tile.chunks, kMaxGridY)));
  BackwardKernel<T, kGather><<<grid, kThreads, shared_bytes, stream>>>(
      g, dy, offsets, order, tile, dx);
  return cudaGetLastError();
}

// ---------------------------------------------------------------------------
// CSR of the gathered windows per output cell.
// ---------------------------------------------------------------------------
__device__ __forceinline__ int64_t CellOf(const Geometry& g,
                                          const int32_t* indices, int64_t k) {
  const int64_t n = indices[3 * k];
  const int64_t y = indices[3 * k + 1];
  const int64_t x = indices[3 * k + 2];
  if (!ValidCell(g, n, y, x)) return -1;
  return (n * g.out_height + y) * g.out_width + x;
}

__global__ void CountKernel(Geometry g, const int32_t* __restrict__ indices,
                            int64_t num_indices, int32_t* counts) {
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) +
                   threadIdx.x;
       k < num_indices; k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t cell = CellOf(g, indices, k);
    if (cell >= 0) atomicAdd(counts + cell, 1);
  }
}

// offsets[i] = sum(counts[:i]) for i in [0, size]. One block: each thread
// scans a contiguous chunk, the chunk totals are scanned in shared memory.
// The cell count is modest (N * Ho * Wo), and one launch keeps it simple.
__global__ void __launch_bounds__(kScanThreads)
    ExclusiveScanKernel(const int32_t* __restrict__ counts, int64_t size,
                        int32_t* __restrict__ offsets) {
  __shared__ int32_t partial[kScanThreads];
  const int64_t chunk = (size + blockDim.x - 1) / blockDim.x;
  const int64_t begin = Min64(threadIdx.x * chunk, size);
  const int64_t end = Min64(begin + chunk, size);
  int32_t total = 0;
  for (int64_t i = begin; i < end; ++i) total += counts[i];
  partial[threadIdx.x] = total;
  __syncthreads();
  for (unsigned stride = 1; stride < blockDim.x; stride *= 2) {
    const int32_t add =
        threadIdx.x >= stride ? partial[threadIdx.x - stride] : 0;
    __syncthreads();
    partial[threadIdx.x] += add;
    __syncthreads();
  }
  int32_t running = partial[threadIdx.x] - total;
  for (int64_t i = begin; i < end; ++i) {
    offsets[i] = running;
    running += counts[i];
  }
  if (threadIdx.x == blockDim.x - 1) offsets[size] = partial[threadIdx.x];
}

// Puts each valid k somewhere in its cell's segment (order set by atomics).
__global__ void PlaceKernel(Geometry g, const int32_t* __restrict__ indices,
                            int64_t num_indices,
                            const int32_t* __restrict__ offsets,
                            int32_t* cursor, int32_t* __restrict__ placed) {
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) +
                   threadIdx.x;
       k < num_indices; k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t cell = CellOf(g, indices, k);
    if (cell >= 0) {
      placed[offsets[cell] + atomicAdd(cursor + cell, 1)] =
          static_cast<int32_t>(k);
    }
  }
}

// Moves each valid k to offset + rank, rank = number of k' < k in its cell,
// so every cell lists its windows in ascending k: the result does not depend
// on the placement order. The work per k is its cell's duplicate count.
__global__ void RankKernel(Geometry g, const int32_t* __restrict__ indices,
                           int64_t num_indices,
                           const int32_t* __restrict__ offsets,
                           const int32_t* __restrict__ placed,
                           int32_t* __restrict__ order) {
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) +
                   threadIdx.x;
       k < num_indices; k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t cell = CellOf(g, indices, k);
    if (cell < 0) continue;
    const int32_t begin = offsets[cell];
    const int32_t end = offsets[cell + 1];
    int32_t rank = 0;
    for (int32_t j = begin; j < end; ++j) rank += placed[j] < k ? 1 : 0;
    order[begin + rank] = static_cast<int32_t>(k);
  }
}

struct GatherWorkspace {
  int32_t* counts;   // [cells], reused as the placement cursor
  int32_t* offsets;  // [cells + 1]
  int32_t* placed;   // [K]
  int32_t* order;    // [K]
  size_t bytes;
};

GatherWorkspace LayoutGatherWorkspace(const Geometry& g, int64_t num_indices,
                                      void* base) {
  const int64_t cells = g.batch * g.out_height * g.out_width;
  const int64_t k = num_indices > 0 ? num_indices : 0;
  const size_t counts_bytes = AlignUp(sizeof(int32_t) * cells);
  const size_t offsets_bytes = AlignUp(sizeof(int32_t) * (cells + 1));
  const size_t list_bytes = AlignUp(sizeof(int32_t) * k);
  unsigned char* p = static_cast<unsigned char*>(base);
  GatherWorkspace ws;
  ws.counts = reinterpret_cast<int32_t*>(p);
  ws.offsets = reinterpret_cast<int32_t*>(p + counts_bytes);
  ws.placed = reinterpret_cast<int32_t*>(p + counts_bytes + offsets_bytes);
  ws.order = reinterpret_cast<int32_t*>(p + counts_bytes + offsets_bytes +
                                        list_bytes);
  ws.bytes = counts_bytes + offsets_bytes + 2 * list_bytes;
  return ws;
}

int GridFor(int64_t items) {
  return static_cast<int>(Min64(CeilDiv(items, kThreads), 65535 * 8));
}

}  // namespace

template <typename T>
cudaError_t LaunchSwapAlign2NatForward(const Geometry& g, T pad, const T* x,
                                       T* y, cudaStream_t stream) {
  return LaunchForward<T, false>(g, pad, x, nullptr,
                                 g.batch * g.out_height * g.out_width, y,
                                 stream);
}

template <typename T>
cudaError_t LaunchSwapAlign2NatBackward(const Geometry& g, const T* dy, T* dx,
                                        cudaStream_t stream) {
  return LaunchBackward<T, false>(g, dy, nullptr, nullptr, dx, stream);
}

template <typename T>
cudaError_t LaunchSwapAlign2NatGatherForward(const Geometry& g, T pad,
                                             const T* x,
                                             const int32_t* indices,
                                             int64_t num_indices, T* y,
                                             cudaStream_t stream) {
  return LaunchForward<T, true>(g, pad, x, indices, num_indices, y, stream);
}

size_t SwapAlign2NatGatherBackwardWorkspaceBytes(const Geometry& g,
                                                 int64_t num_indices) {
  return LayoutGatherWorkspace(g, num_indices, nullptr).bytes;
}

template <typename T>
cudaError_t LaunchSwapAlign2NatGatherBackward(const Geometry& g, const T* dy,
                                              const int32_t* indices,
                                              int64_t num_indices,
                                              void* workspace, T* dx,
                                              cudaStream_t stream) {
  if (g.batch * g.height * g.width <= 0 || g.window <= 0) {
    return cudaGetLastError();
  }
  if (num_indices < 0 || num_indices > 0x7fffffff) return cudaErrorInvalidValue;
  const int64_t cells = g.batch * g.out_height * g.out_width;
  const GatherWorkspace ws = LayoutGatherWorkspace(g, num_indices, workspace);
  cudaError_t status =
      cudaMemsetAsync(ws.counts, 0, sizeof(int32_t) * cells, stream);
  if (status != cudaSuccess) return status;
  if (num_indices > 0) {
    CountKernel<<<GridFor(num_indices), kThreads, 0, stream>>>(
        g, indices, num_indices, ws.counts);
  }
  ExclusiveScanKernel<<<1, kScanThreads, 0, stream>>>(ws.counts, cells,
                                                      ws.offsets);
  if (num_indices > 0) {
    status = cudaMemsetAsync(ws.counts, 0, sizeof(int32_t) * cells, stream);
    if (status != cudaSuccess) return status;
    PlaceKernel<<<GridFor(num_indices), kThreads, 0, stream>>>(
        g, indices, num_indices, ws.offsets, ws.counts, ws.placed);
    RankKernel<<<GridFor(num_indices), kThreads, 0, stream>>>(
        g, indices, num_indices, ws.offsets, ws.placed, ws.order);
  }
  status = cudaGetLastError();
  if (status != cudaSuccess) return status;
  return LaunchBackward<T, true>(g, dy, ws.offsets, ws.order, dx, stream);
}

#define TENSORMASK_INSTANTIATE(T)                                             \
  template cudaError_t LaunchSwapAlign2NatForward<T>(                         \
      const Geometry&, T, const T*, T*, cudaStream_t);                        \
  template cudaError_t LaunchSwapAlign2NatBackward<T>(const Geometry&,        \
                                                      const T*, T*,           \
                                                      cudaStream_t);          \
  template cudaError_t LaunchSwapAlign2NatGatherForward<T>(                   \
      const Geometry&, T, const T*, const int32_t*, int64_t, T*,              \
      cudaStream_t);                                                          \
  template cudaError_t LaunchSwapAlign2NatGatherBackward<T>(                  \
      const Geometry&, const T*, const int32_t*, int64_t, void*, T*,          \
      cudaStream_t);

TENSORMASK_INSTANTIATE(float)
TENSORMASK_INSTANTIATE(double)
#undef TENSORMASK_INSTANTIATE

}  // namespace tensormask
