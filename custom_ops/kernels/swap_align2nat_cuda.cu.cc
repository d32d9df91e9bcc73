// CUDA kernels of swap_align2nat; see swap_align2nat_cuda.h for the contract
// and swap_align2nat_math.h for the arithmetic. Compile as CUDA (nvcc -x cu,
// or TensorFlow's GPU build, which treats *.cu.cc as CUDA).
//
// Design, all memory bound. The op is separable (row taps (a, c) of (py, v)
// times column taps (b, d) of (px, u)), and its layouts put S*S channels
// between neighbouring pixels, so a thread per output element reading its 16
// taps makes every load a separate memory sector. Instead each block works in
// two phases through shared memory:
// * Forward, staged (the dense op up to lam = 16): a block owns one window
//   row v of a run of windows. Phase 1 combines the row taps over the pixels
//   and window columns the run reads (S-long runs of consecutive channels);
//   phase 2 applies the column taps and writes T-long runs of outputs.
//   Where that stage would be mostly unused (the gathered op: one window per
//   block; lam = 32), a tiled kernel with per-axis tap tables reads the taps
//   directly.
// * Backward (dense and gathered): the transpose, as a gather so that no
//   atomics touch dx and the sum order is fixed. A block owns one input row
//   (n, a, window row c) of a run of pixels; phase 1 combines the row hits
//   (p, v) of (a, c) over the output columns and offsets (q, u) that reach
//   the run, phase 2 applies the column hits of each (b, d).
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
// Direct forward tile: about this many outputs per block, at most this many
// columns (bounds shared memory whatever T is).
constexpr int kForwardTileElements = 4096;
constexpr int kForwardMaxTileCols = 512;
constexpr int64_t kMaxGridX = 0x7fffffff;
constexpr int kScanThreads = 1024;

__host__ __device__ inline int64_t Min64(int64_t a, int64_t b) {
  return a < b ? a : b;
}

__device__ __forceinline__ bool ValidCell(const Geometry& g, int64_t n,
                                          int64_t y, int64_t x) {
  return n >= 0 && n < g.batch && y >= 0 && y < g.out_height && x >= 0 &&
         x < g.out_width;
}

// ---------------------------------------------------------------------------
// Shared by both directions.
// ---------------------------------------------------------------------------
// Staging buffer per block, in bytes: with the few static words below, a
// block stays under the 48 KB every CUDA device grants without opting in.
constexpr size_t kStageBytes = 40 * 1024;

template <typename T>
constexpr int64_t StageElements() {
  return static_cast<int64_t>(kStageBytes / sizeof(T));
}

__host__ __device__ inline int64_t CeilDivSigned(int64_t a, int64_t b) {
  return -FloorDiv(-a, b);  // b > 0
}

// What both staged kernels derive from the geometry.
template <typename T>
struct StagedConstants {
  int s, t_size, lam;  // S, T = lam * S, lam
  int shift, ns;       // SpatialShift(T), NumSpatialTaps(T)
  T spatial_weight;    // of each spatial tap: 1, or 0.5 when ns = 2
  T inv_den;           // 1 / (2 lam): a window tap weighs rem * inv_den
  int64_t channels;         // S * S
  int64_t window_elements;  // T * T
};

template <typename T>
__device__ __forceinline__ StagedConstants<T> MakeStagedConstants(
    const Geometry& g) {
  const int ns = NumSpatialTaps(g.out_window);
  return {g.window,
          g.out_window,
          g.lam,
          SpatialShift(g.out_window),
          ns,
          ns == 2 ? T(0.5) : T(1),
          T(1) / static_cast<T>(2 * g.lam),
          static_cast<int64_t>(g.window) * g.window,
          static_cast<int64_t>(g.out_window) * g.out_window};
}

// ---------------------------------------------------------------------------
// Forward.
// ---------------------------------------------------------------------------
// Two kernels, chosen per geometry by MakeForwardPlan from the H100 timings in
// docs/benchmarks.md:
// * Staged (the dense op when the stage below is mostly used): a block owns
//   one window row v of a run of P windows along x and U window columns u.
//   Phase 1 combines the <= 4 row taps into a stage
//     stage[b, d] = sum_i w_i * x[n, a_i, b, c_i * S + d]
//   over the block's pixels b and window columns d (reads of S-long runs of
//   consecutive channels); phase 2 applies the column taps from shared memory
//   and writes T-long runs of consecutive outputs. Global traffic is then
//   close to one read of x per window row and one write of y, instead of a
//   scattered 4-byte read per tap (the channel stride S*S separates
//   neighbouring u).
// * Direct (the gathered op, and large lam): a block owns a tile of one
//   window, the tile's row and column taps in shared memory, and each output
//   reads its <= 16 taps from x. With one window per block only a diagonal
//   band of a stage's (b, d) rectangle would be read.
struct ForwardPlan {
  int u_tile, u_tiles;    // U window columns per block; blocks per window row
  int px_tile, px_tiles;  // P windows per block along x; blocks per grid row
  int d_span;             // stage row length (window columns d)
  bool staged;
};

// Staged when the stage holds at most this many entries per output: on an
// H100, 1.2 to 1.9 (lam <= 16) ran 1.5 to 2x faster than the direct kernel,
// 4.0 (lam = 32) 1.3x slower.
constexpr double kMaxStagePerOutput = 2.5;

// Window columns d a run of U offsets u reads: the low taps advance by one
// every lam offsets, plus the high tap of the last one.
inline int ForwardDSpan(int u_tile, int lam) {
  return (u_tile + lam - 2) / lam + 2;
}

// Pixels b a staged block reads: `windows` windows lam pixels apart, U
// offsets each, and the second spatial tap when T is even (the kernel's
// b_count for its tile).
inline int64_t ForwardStagePixels(const Geometry& g, int64_t windows,
                                  int u_tile) {
  return g.lam * (windows - 1) + u_tile + NumSpatialTaps(g.out_window) - 1;
}

template <typename T>
ForwardPlan MakeForwardPlan(const Geometry& g, bool gather) {
  const int64_t capacity = StageElements<T>();
  ForwardPlan plan;
  plan.u_tile = g.out_window;
  while (plan.u_tile > 1 && ForwardStagePixels(g, 1, plan.u_tile) *
                                    ForwardDSpan(plan.u_tile, g.lam) >
                                capacity) {
    plan.u_tile = (plan.u_tile + 1) / 2;
  }
  plan.d_span = ForwardDSpan(plan.u_tile, g.lam);
  plan.u_tiles = static_cast<int>(CeilDiv(g.out_window, plan.u_tile));
  // The most windows whose stage fits.
  int64_t px = 1 + (capacity / plan.d_span -
                    ForwardStagePixels(g, 1, plan.u_tile)) / g.lam;
  px = px < 1 ? 1 : (px > g.out_width ? g.out_width : px);
  plan.px_tile = static_cast<int>(px);
  plan.px_tiles = static_cast<int>(CeilDiv(g.out_width, px));
  // Stage entries per output over a whole grid row (the last x tile too).
  const int64_t full = g.out_width / px;
  const int64_t last = g.out_width - full * px;
  const int64_t entries =
      plan.d_span *
      (full * ForwardStagePixels(g, px, plan.u_tile) +
       (last > 0 ? ForwardStagePixels(g, last, plan.u_tile) : 0));
  plan.staged = !gather && entries <= kMaxStagePerOutput *
                                          static_cast<double>(g.out_width) *
                                          plan.u_tile;
  return plan;
}

// Grid: x runs over (grid row (n, py), window row v), y over (x tile, u tile).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    StagedForwardKernel(Geometry g, T pad, const T* __restrict__ x,
                        ForwardPlan plan, T* __restrict__ y) {
  extern __shared__ __align__(16) unsigned char shared[];
  T* stage = reinterpret_cast<T*>(shared);
  __shared__ int64_t row_offset[kMaxAxisTaps];  // a * W * S*S + c * S
  __shared__ T row_weight[kMaxAxisTaps];
  __shared__ T row_outside;
  __shared__ int row_count;

  const auto [s, t_size, lam, shift, ns, spatial_weight, inv_den, channels,
              window_elements] = MakeStagedConstants<T>(g);
  const int64_t jobs = g.batch * g.out_height * t_size;
  const int tiles = plan.px_tiles * plan.u_tiles;

  for (int64_t job = blockIdx.x; job < jobs; job += gridDim.x) {
    const int64_t w = job / t_size;  // grid row n * Ho + py
    const int v = static_cast<int>(job - w * t_size);
    const int64_t n = w / g.out_height;
    const int64_t py = w - n * g.out_height;
    const T* xn = x + n * g.height * g.width * channels;
    for (int tile = blockIdx.y; tile < tiles; tile += gridDim.y) {
      const int px_chunk = tile / plan.u_tiles;
      const int u0 = (tile - px_chunk * plan.u_tiles) * plan.u_tile;
      const int u_count = min(plan.u_tile, t_size - u0);
      const int64_t px0 = static_cast<int64_t>(px_chunk) * plan.px_tile;
      const int px_count =
          static_cast<int>(Min64(plan.px_tile, g.out_width - px0));
      // Output (px0 + p, v, u) lives at out + p * T*T + u.
      T* out = y + (w * g.out_width + px0) * window_elements + v * t_size;
      __syncthreads();  // The previous tile's readers are done with shared.
      if (threadIdx.x == 0) {
        AxisTap taps[kMaxAxisTaps];
        double outside;
        const int count = AxisTaps(py, v, lam, s, g.height, taps, &outside);
        for (int i = 0; i < count; ++i) {
          row_offset[i] =
              taps[i].spatial * g.width * channels + taps[i].window * s;
          row_weight[i] = static_cast<T>(taps[i].weight);
        }
        row_count = count;
        row_outside = static_cast<T>(outside);
      }
      __syncthreads();
      // Phase 1: the stage covers pixels b_lo.. and window columns d_lo..
      // (b_count = ForwardStagePixels(g, px_count, u_count)).
      const int64_t b_lo = lam * px0 + u0 - shift;
      const int b_count = lam * (px_count - 1) + u_count + ns - 1;
      const int u_last = u0 + u_count - 1;
      const int d_lo = u0 / lam + WindowLowShift(u0 % lam, lam);
      const int d_count =
          u_last / lam + WindowLowShift(u_last % lam, lam) + 2 - d_lo;
      const int count = row_count;
      for (int e = threadIdx.x; e < b_count * d_count; e += blockDim.x) {
        const int bb = e / d_count;
        const int d = d_lo + (e - bb * d_count);
        const int64_t b = b_lo + bb;
        T value = T(0);
        if (b >= 0 && b < g.width && d >= 0 && d < s) {
          const T* xb = xn + b * channels + d;
          for (int i = 0; i < count; ++i) {
            value += row_weight[i] * xb[row_offset[i]];
          }
        }
        stage[e] = value;
      }
      __syncthreads();
      // Phase 2: column taps from the stage, T-long runs of outputs.
      const T outside_row = row_outside;
      for (int e = threadIdx.x; e < px_count * u_count; e += blockDim.x) {
        const int p = e / u_count;
        const int u = u0 + (e - p * u_count);
        const int k = u / lam;
        const int r = u - k * lam;
        const int d = k + WindowLowShift(r, lam);
        const int rem = WindowRemainder(r, lam);
        const T high = static_cast<T>(rem) * inv_den;
        const int64_t first = lam * (px0 + p) + u - shift;
        T acc = T(0);
        T outside = T(0);
        for (int i = 0; i < ns; ++i) {
          const int64_t b = first + i;
          const bool b_inside = b >= 0 && b < g.width;
          const T* row = stage + (b - b_lo) * d_count - d_lo;
          const T low_weight = spatial_weight * (T(1) - high);
          if (b_inside && d >= 0 && d < s) {
            acc += low_weight * row[d];
          } else {
            outside += low_weight;
          }
          if (rem != 0) {
            const T high_weight = spatial_weight * high;
            if (b_inside && d + 1 < s) {
              acc += high_weight * row[d + 1];
            } else {
              outside += high_weight;
            }
          }
        }
        out[p * window_elements + u] =
            acc + pad * (outside_row + outside - outside_row * outside);
      }
    }
  }
}

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
    DirectForwardKernel(Geometry g, T pad, const T* __restrict__ x,
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
  const ForwardPlan plan = MakeForwardPlan<T>(g, kGather);
  if (plan.staged) {
    const size_t shared_bytes =
        sizeof(T) * static_cast<size_t>(plan.d_span) *
        ForwardStagePixels(g, plan.px_tile, plan.u_tile);
    const dim3 grid(
        static_cast<unsigned>(
            Min64(g.batch * g.out_height * g.out_window, kMaxGridX)),
        static_cast<unsigned>(Min64(
            static_cast<int64_t>(plan.px_tiles) * plan.u_tiles, kMaxGridY)));
    StagedForwardKernel<T><<<grid, kThreads, shared_bytes, stream>>>(
        g, pad, x, plan, y);
    return cudaGetLastError();
  }
  const ForwardTile tile = MakeForwardTile(g.out_window);
  const size_t shared_bytes = ForwardSharedBytes<T>(tile);
  const dim3 grid(
      static_cast<unsigned>(Min64(num_windows, kMaxGridX)),
      static_cast<unsigned>(
          Min64(static_cast<int64_t>(tile.row_chunks) * tile.col_chunks,
                kMaxGridY)));
  DirectForwardKernel<T, kGather><<<grid, kThreads, shared_bytes, stream>>>(
      g, pad, x, indices, num_windows, tile, y);
  return cudaGetLastError();
}

// ---------------------------------------------------------------------------
// Backward.
// ---------------------------------------------------------------------------
// The transpose of the forward, as a gather so that no atomics touch dx and
// every sum has a fixed order. A block owns one input row (n, a, window row c)
// and a run of B pixels b. Phase 1 combines the <= 4 row hits (p_i, v_i) of
// (a, c) into a stage
//   stage[q, u] = sum_i w_i * g(n, p_i, q, v_i * T + u)
// over the output columns q and window offsets u whose column taps reach the
// block's pixels (reads of runs of consecutive u). g is dy for the dense op;
// for the gathered op it sums the windows listed at cell (n, p_i, q) in
// ascending k, so cells without windows cost one lookup per stage entry rather
// than one per tap of every input element. Phase 2 applies the <= 4 column
// hits of each (b, d) from shared memory and writes S-long runs of dx.
struct BackwardPlan {
  int b_tile, b_tiles;  // pixels per block; blocks per input row
  int q_span, u_span;   // stage extent: output columns x window offsets
};

inline int BackwardQSpan(const Geometry& g, int b_tile) {
  const int64_t q = (b_tile + NumSpatialTaps(g.out_window) + g.out_window -
                     3) / g.lam + 1;
  return static_cast<int>(Min64(q, g.out_width));
}

inline int BackwardUSpan(const Geometry& g, int b_tile) {
  return static_cast<int>(
      Min64(g.out_window, b_tile + NumSpatialTaps(g.out_window) - 1));
}

template <typename T>
BackwardPlan MakeBackwardPlan(const Geometry& g) {
  const int64_t capacity = StageElements<T>();
  BackwardPlan plan;
  plan.b_tile = static_cast<int>(Min64(g.width, 0x3fffffff));
  while (plan.b_tile > 1 && static_cast<int64_t>(BackwardQSpan(g, plan.b_tile)) *
                                    BackwardUSpan(g, plan.b_tile) > capacity) {
    plan.b_tile = (plan.b_tile + 1) / 2;
  }
  plan.b_tiles = static_cast<int>(CeilDiv(g.width, plan.b_tile));
  plan.q_span = BackwardQSpan(g, plan.b_tile);
  plan.u_span = BackwardUSpan(g, plan.b_tile);
  return plan;
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

// Grid: x runs over input rows (n, a, c), y over pixel tiles.
template <typename T, bool kGather>
__global__ void __launch_bounds__(kThreads)
    BackwardKernel(Geometry g, const T* __restrict__ dy,
                   const int32_t* __restrict__ offsets,
                   const int32_t* __restrict__ order, BackwardPlan plan,
                   T* __restrict__ dx) {
  extern __shared__ __align__(16) unsigned char shared[];
  T* stage = reinterpret_cast<T*>(shared);
  __shared__ int64_t row_cell[kMaxAxisHits];  // (n * Ho + p) * Wo
  __shared__ int row_element[kMaxAxisHits];   // v * T
  __shared__ T row_weight[kMaxAxisHits];
  __shared__ int row_count;

  const auto [s, t_size, lam, shift, ns, spatial_weight, inv_den, channels,
              window_elements] = MakeStagedConstants<T>(g);
  const int64_t rows = g.batch * g.height * s;

  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t na = row / s;
    const int c = static_cast<int>(row - na * s);
    const int64_t n = na / g.height;
    const int64_t a = na - n * g.height;
    for (int tile = blockIdx.y; tile < plan.b_tiles; tile += gridDim.y) {
      const int64_t b0 = static_cast<int64_t>(tile) * plan.b_tile;
      const int b_count = static_cast<int>(Min64(plan.b_tile, g.width - b0));
      __syncthreads();  // The previous tile's readers are done with shared.
      if (threadIdx.x == 0) {
        AxisHit hits[kMaxAxisHits];
        const int count = AxisHits(a, c, lam, s, g.out_height, hits);
        for (int i = 0; i < count; ++i) {
          row_cell[i] = (n * g.out_height + hits[i].position) * g.out_width;
          row_element[i] = hits[i].offset * t_size;
          row_weight[i] = static_cast<T>(hits[i].weight);
        }
        row_count = count;
      }
      __syncthreads();
      // Phase 1: stage[q - q_lo, u - u_start(q)] for the (q, u) whose column
      // taps b = q * lam + u - shift (+1) fall in [b0, b0 + b_count).
      const int64_t u_base0 = b0 + shift - (ns - 1);  // u_base(q) + q * lam
      const int64_t u_end0 = b0 + b_count - 1 + shift;
      const int64_t q_first = CeilDivSigned(u_base0 - (t_size - 1), lam);
      const int64_t q_lo = q_first > 0 ? q_first : 0;
      const int64_t q_hi = Min64(g.out_width - 1, FloorDiv(u_end0, lam));
      const int q_count = static_cast<int>(q_hi - q_lo + 1);
      const int u_span = static_cast<int>(
          Min64(t_size, b_count + ns - 1));
      const int count = row_count;
      for (int e = threadIdx.x; e < q_count * u_span; e += blockDim.x) {
        const int qq = e / u_span;
        const int64_t q = q_lo + qq;
        const int64_t u_start = u_base0 - q * lam > 0 ? u_base0 - q * lam : 0;
        const int64_t u = u_start + (e - qq * u_span);
        T value = T(0);
        if (u <= Min64(t_size - 1, u_end0 - q * lam)) {
          for (int i = 0; i < count; ++i) {
            value += row_weight[i] *
                     ReadGradient<T, kGather>(dy, offsets, order,
                                              row_cell[i] + q,
                                              row_element[i] + u,
                                              window_elements);
          }
        }
        stage[e] = value;
      }
      __syncthreads();
      // Phase 2: column hits (q, u) of (b, d): u = lam * k + r with
      // r = (b + shift - i) mod lam, and k such that d is u's low or high tap.
      T* out = dx + ((n * g.height + a) * g.width + b0) * channels + c * s;
      for (int e = threadIdx.x; e < b_count * s; e += blockDim.x) {
        const int bb = e / s;
        const int d = e - bb * s;
        T acc = T(0);
        for (int i = 0; i < ns; ++i) {
          // 32-bit: a 64-bit division costs several times more, and m < W + T.
          const int m = static_cast<int>(b0) + bb + shift - i;  // >= 0
          const int big = m / lam;
          const int r = m - big * lam;
          const int low_shift = WindowLowShift(r, lam);
          const int rem = WindowRemainder(r, lam);
          const T high = static_cast<T>(rem) * inv_den;
          // Low tap: k + low_shift == d; high tap: k + low_shift + 1 == d.
          for (int j = 0; j < (rem != 0 ? 2 : 1); ++j) {
            const int k = d - low_shift - j;
            const int u = k * lam + r;
            const int q = big - k;
            if (k < 0 || u >= t_size || q < q_lo || q > q_hi) continue;
            const int64_t u_start =
                u_base0 - static_cast<int64_t>(q) * lam > 0
                    ? u_base0 - static_cast<int64_t>(q) * lam : 0;
            const T weight = spatial_weight * (j == 0 ? T(1) - high : high);
            acc += weight * stage[(q - q_lo) * u_span + (u - u_start)];
          }
        }
        out[bb * channels + d] = acc;
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
  // Phase 2 indexes pixels and offsets in 32 bits.
  if (g.width + g.out_window >= 0x7fffffff) return cudaErrorInvalidValue;
  const BackwardPlan plan = MakeBackwardPlan<T>(g);
  const size_t shared_bytes =
      sizeof(T) * static_cast<size_t>(plan.q_span) * plan.u_span;
  const dim3 grid(
      static_cast<unsigned>(Min64(g.batch * g.height * g.window, kMaxGridX)),
      static_cast<unsigned>(Min64(plan.b_tiles, kMaxGridY)));
  BackwardKernel<T, kGather><<<grid, kThreads, shared_bytes, stream>>>(
      g, dy, offsets, order, plan, dx);
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
