// The parallelism the CPU kernels take: a callable
//   parallel_for(int64_t num_units, int64_t cost_per_unit,
//                std::function<void(int64_t begin, int64_t end)>)
// (TensorFlow's Shard in the op wrappers, op_util.h), so the kernels stay
// TF-free.
#ifndef TENSORMASK_CUSTOM_OPS_KERNELS_PARALLEL_FOR_H_
#define TENSORMASK_CUSTOM_OPS_KERNELS_PARALLEL_FOR_H_

#include <cstdint>
#include <functional>

namespace tensormask {
namespace cpu {

using ParallelFor =
    std::function<void(int64_t, int64_t, std::function<void(int64_t, int64_t)>)>;

}  // namespace cpu
}  // namespace tensormask

#endif  // TENSORMASK_CUSTOM_OPS_KERNELS_PARALLEL_FOR_H_
