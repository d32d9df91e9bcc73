// CUDA kernels of up_align2nat (dense and gathered, forward and gradient).
// TF-free; the tap arithmetic comes from up_align2nat_math.h. One thread per
// output element (forward) or per input element (dense gradient, gathering
// its hits in a fixed order: bit-reproducible). The gathered gradient
// scatters with atomicAdd (windows may overlap): its float sums may differ
// in the last bits from run to run.
#ifndef TENSORMASK_CUSTOM_OPS_KERNELS_UP_ALIGN2NAT_CUDA_H_
#define TENSORMASK_CUSTOM_OPS_KERNELS_UP_ALIGN2NAT_CUDA_H_

#include <cstdint>

#include <cuda_runtime.h>

#include "up_align2nat_math.h"

namespace tensormask {

// All pointers are device pointers; each launcher enqueues on `stream` and
// returns cudaGetLastError(). T = float or double.
// x: [N, H, W, S*S] -> y: [N, H, W, T*T].
template <typename T>
cudaError_t LaunchUpAlign2NatForward(const UpGeometry& g, T pad, const T* x,
                                     T* y, cudaStream_t stream);

// dy: [N, H, W, T*T] -> dx: [N, H, W, S*S].
template <typename T>
cudaError_t LaunchUpAlign2NatBackward(const UpGeometry& g, const T* dy, T* dx,
                                      cudaStream_t stream);

// indices: [K, 3] int32 rows (n, y, x); y: [K, T, T]. A row outside the
// batch or grid reads nothing and yields `pad`.
template <typename T>
cudaError_t LaunchUpAlign2NatGatherForward(const UpGeometry& g, T pad,
                                           const T* x, const int32_t* indices,
                                           int64_t num_indices, T* y,
                                           cudaStream_t stream);

// dy: [K, T, T] -> dx: [N, H, W, S*S] (zeroed here); invalid rows ignored.
template <typename T>
cudaError_t LaunchUpAlign2NatGatherBackward(const UpGeometry& g, const T* dy,
                                            const int32_t* indices,
                                            int64_t num_indices, T* dx,
                                            cudaStream_t stream);

}  // namespace tensormask

#endif  // TENSORMASK_CUSTOM_OPS_KERNELS_UP_ALIGN2NAT_CUDA_H_
