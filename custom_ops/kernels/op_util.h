// What the TensorFlow op wrappers (swap_align2nat_ops.cc,
// up_align2nat_ops.cc) share: the gradients' shape function, the CPU thread
// pool as a cpu::ParallelFor, the accumulation type, NaN poisoning, and the
// CUDA stream and error status of a kernel context.
#ifndef TENSORMASK_CUSTOM_OPS_KERNELS_OP_UTIL_H_
#define TENSORMASK_CUSTOM_OPS_KERNELS_OP_UTIL_H_

#include <cstdint>
#include <functional>
#include <limits>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/util/work_sharder.h"

#include "parallel_for.h"

#if GOOGLE_CUDA
#include <cuda_runtime.h>

#include "xla/stream_executor/stream.h"
#endif

namespace tensormask {
namespace op_util {

// The gradients take the input's shape as a host int64 vector, input
// `shape_input`; their output has that shape.
inline ::tensorflow::Status GradShape(
    ::tensorflow::shape_inference::InferenceContext* c, int shape_input) {
  ::tensorflow::shape_inference::ShapeHandle shape;
  TF_RETURN_IF_ERROR(c->MakeShapeFromShapeTensor(shape_input, &shape));
  TF_RETURN_IF_ERROR(c->WithRank(shape, 4, &shape));
  c->set_output(0, shape);
  return ::tensorflow::Status();
}

// TensorFlow's intra-op pool as the kernels' ParallelFor.
inline cpu::ParallelFor CpuParallelFor(::tensorflow::OpKernelContext* context) {
  auto* workers = context->device()->tensorflow_cpu_worker_threads();
  return [workers](int64_t units, int64_t cost,
                   std::function<void(int64_t, int64_t)> fn) {
    ::tensorflow::Shard(workers->num_threads, workers->workers, units, cost,
                        fn);
  };
}

// Accumulation type: double for double, float otherwise.
template <typename T> struct AccType { using type = float; };
template <> struct AccType<double> { using type = double; };

template <typename T>
void Poison(::tensorflow::Tensor* t) {
  t->flat<T>().setConstant(std::numeric_limits<T>::quiet_NaN());
}

#if GOOGLE_CUDA
inline cudaStream_t GpuStream(::tensorflow::OpKernelContext* c) {
  return static_cast<cudaStream_t>(
      c->op_device_context()->stream()->platform_specific_handle().stream);
}

inline ::tensorflow::Status CudaStatus(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return ::tensorflow::Status();
  return ::tensorflow::errors::Internal(what, " failed: ",
                                        cudaGetErrorString(err));
}
#endif  // GOOGLE_CUDA

}  // namespace op_util
}  // namespace tensormask

#endif  // TENSORMASK_CUSTOM_OPS_KERNELS_OP_UTIL_H_
