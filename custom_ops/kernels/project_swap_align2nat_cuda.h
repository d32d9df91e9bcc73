// CUDA kernels of project_swap_align2nat_gather: the natural masks
//
//   swap_align2nat_gather(conv1x1(f, w) + bias, indices, lam, pad)
//
// from the features f, without the projection conv1x1(f, w) as an op input
// or output (see project_swap_align2nat_cpu.h for the algebra and layouts:
// f [N, H, W, C], w [S*S, C], bias [S*S], indices [K, 3], out [K, T, T]).
// TF-free, so they build and are tested standalone (custom_ops/cuda_test) as
// well as inside the TensorFlow op library.
//
// Every launcher writes every element of its outputs and sums in a fixed
// order with no floating-point atomics, so results and gradients are
// bit-reproducible run to run. An index row outside the output grid reads
// nothing and yields `pad` (forward), and is ignored (gradient), as in
// swap_align2nat_cuda.h.
#ifndef TENSORMASK_CUSTOM_OPS_KERNELS_PROJECT_SWAP_ALIGN2NAT_CUDA_H_
#define TENSORMASK_CUSTOM_OPS_KERNELS_PROJECT_SWAP_ALIGN2NAT_CUDA_H_

#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

#include "swap_align2nat_math.h"

namespace tensormask {

// How the forward computes: kAuto picks by cost (see the .cu.cc); the others
// force a path (for tests and benchmarks).
enum class ProjectForwardPath { kAuto, kDirect, kProjection };

// Bytes of device scratch the forward needs: 0 when the windows read less
// than the dense projection costs (each output reads its taps directly,
// O(K T^2 C)), else the projection [N, H, W, S*S]. Scratch is neither an
// input nor an output of the op and is released when the op ends. Pass a
// buffer at least 256-byte aligned.
template <typename T>
size_t ProjectSwapAlign2NatGatherForwardWorkspaceBytes(
    const ProjectionGeometry& pg, int64_t num_indices,
    ProjectForwardPath path = ProjectForwardPath::kAuto);

// All pointers are device pointers.
template <typename T>
cudaError_t LaunchProjectSwapAlign2NatGatherForward(
    const ProjectionGeometry& pg, T pad, const T* f, const T* w,
    const T* bias, const int32_t* indices, int64_t num_indices,
    void* workspace, T* out, cudaStream_t stream,
    ProjectForwardPath path = ProjectForwardPath::kAuto);

// Bytes of device scratch the backward needs: the gradient of the projection
// [N, H, W, S*S], the CSR of swap_align2nat_gather's backward, and
// per-chunk partial sums of dw and dbias. Pass a buffer at least 256-byte
// aligned.
template <typename T>
size_t ProjectSwapAlign2NatGatherBackwardWorkspaceBytes(
    const ProjectionGeometry& pg, int64_t num_indices);

// dy [K, T, T] -> df [N, H, W, C], dw [S*S, C], dbias [S*S]; with
// accumulate, df's values are added to (df += the gradient).
template <typename T>
cudaError_t LaunchProjectSwapAlign2NatGatherBackward(
    const ProjectionGeometry& pg, const T* dy, const T* f, const T* w,
    const int32_t* indices, int64_t num_indices, void* workspace, T* df,
    T* dw, T* dbias, cudaStream_t stream, bool accumulate = false);

}  // namespace tensormask

#endif  // TENSORMASK_CUSTOM_OPS_KERNELS_PROJECT_SWAP_ALIGN2NAT_CUDA_H_
