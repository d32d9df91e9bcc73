// CUDA kernels of swap_align2nat (dense and gathered, forward and gradient).
// TF-free, so they build and are tested standalone (nvcc + CuPy, see
// custom_ops/cuda_test) as well as inside the TensorFlow op library. The tap
// arithmetic comes from swap_align2nat_math.h; see there for the layouts.
//
// Every launcher writes every element of its output (no memset needed) and
// sums in a fixed order with no atomics on the output, so results, gradients
// included, are bit-reproducible run to run.
#ifndef TENSORMASK_CUSTOM_OPS_KERNELS_SWAP_ALIGN2NAT_CUDA_H_
#define TENSORMASK_CUSTOM_OPS_KERNELS_SWAP_ALIGN2NAT_CUDA_H_

#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

#include "swap_align2nat_math.h"

namespace tensormask {

// Host helpers of the CUDA launchers (this file's and
// project_swap_align2nat_cuda.h's).
// Every part of a launcher's workspace starts at this alignment.
constexpr size_t kWorkspaceAlign = 256;
// The grid's y and z dimensions are limited to this.
constexpr int64_t kMaxGridY = 65535;
inline int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline size_t AlignUp(size_t bytes) {
  return (bytes + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign;
}

// All pointers are device pointers; each launcher enqueues on `stream` and
// returns cudaGetLastError(). Instantiated for T = float and double; float
// sums in float, double in double (weights come from the header in double
// and are cast to T).
//
// x: [N, H, W, S*S] NHWC, channel c*S + d.
// y: [N, Ho, Wo, T*T], channel v*T + u, T = lam*S. g from MakeGeometry.
template <typename T>
cudaError_t LaunchSwapAlign2NatForward(const Geometry& g, T pad, const T* x,
                                       T* y, cudaStream_t stream);

// dy: [N, Ho, Wo, T*T] -> dx: [N, H, W, S*S].
template <typename T>
cudaError_t LaunchSwapAlign2NatBackward(const Geometry& g, const T* dy, T* dx,
                                        cudaStream_t stream);

// indices: [K, 3] int32 rows (n, y, x) on the output grid; y: [K, T, T].
// A row outside [0, N) x [0, Ho) x [0, Wo) reads nothing and yields `pad`.
template <typename T>
cudaError_t LaunchSwapAlign2NatGatherForward(const Geometry& g, T pad,
                                             const T* x,
                                             const int32_t* indices,
                                             int64_t num_indices, T* y,
                                             cudaStream_t stream);

// Bytes of device scratch LaunchSwapAlign2NatGatherBackward needs (a CSR of
// the windows of every output cell). Pass a buffer at least 256-byte aligned.
size_t SwapAlign2NatGatherBackwardWorkspaceBytes(const Geometry& g,
                                                 int64_t num_indices);

// dy: [K, T, T] -> dx: [N, H, W, S*S]; invalid index rows are ignored, and
// duplicate rows add up (in ascending k order). K must be < 2^31.
template <typename T>
cudaError_t LaunchSwapAlign2NatGatherBackward(const Geometry& g, const T* dy,
                                              const int32_t* indices,
                                              int64_t num_indices,
                                              void* workspace, T* dx,
                                              cudaStream_t stream);

}  // namespace tensormask

#endif  // TENSORMASK_CUSTOM_OPS_KERNELS_SWAP_ALIGN2NAT_CUDA_H_
