// TensorFlow ops SwapAlign2Nat, SwapAlign2NatGrad, SwapAlign2NatGather and
// SwapAlign2NatGatherGrad: definitions, shape functions and the CPU (and,
// when built with GOOGLE_CUDA, GPU) kernels. The arithmetic lives in
// swap_align2nat_math.h; the loops in swap_align2nat_cpu.h and
// swap_align2nat_cuda.cu.cc. ProjectSwapAlign2NatGather(Grad), the fused
// conv1x1 + swap_align2nat_gather, the same way: project_swap_align2nat_cpu.h
// and project_swap_align2nat_cuda.cu.cc. Gradients are registered in Python
// (tensormask_tf/ops/custom_op_library.py).
//
// Only float and double are registered: the Python wrapper computes half and
// bfloat16 in float32, like the pure-TF backend.
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/util/work_sharder.h"

#include "op_util.h"
#include "project_swap_align2nat_cpu.h"
#include "swap_align2nat_cpu.h"
#include "swap_align2nat_math.h"

#if GOOGLE_CUDA
#include "project_swap_align2nat_cuda.h"
#include "swap_align2nat_cuda.h"
#include "xla/stream_executor/stream.h"
#endif

namespace tensormask {
namespace {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Status;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::errors::InvalidArgument;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;
using op_util::AccType;
using op_util::CpuParallelFor;
using op_util::GradShape;
using op_util::Poison;
#if GOOGLE_CUDA
using op_util::CudaStatus;
using op_util::GpuStream;
#endif

// ---------------------------------------------------------------------------
// Op definitions.
// ---------------------------------------------------------------------------
constexpr char kPoisonDoc[] =
    "poison_output: test hook: fill the output with NaN before the kernel "
    "writes it, so a test can prove that every element is written.";

Status SwapAlign2NatShape(InferenceContext* c) {
  ShapeHandle x;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &x));
  int lam;
  TF_RETURN_IF_ERROR(c->GetAttr("lam", &lam));
  auto coarse = [&](DimensionHandle d) -> DimensionHandle {
    if (!c->ValueKnown(d)) return c->UnknownDim();
    return c->MakeDim((c->Value(d) + lam - 1) / lam);
  };
  DimensionHandle channels = c->Dim(x, 3);
  DimensionHandle out_channels = c->UnknownDim();
  if (c->ValueKnown(channels)) {
    const int64_t s = WindowSide(c->Value(channels));
    if (s < 0) {
      return InvalidArgument("swap_align2nat: the channel count of x must be "
                             "S*S for a window side S >= 1, got ",
                             c->Value(channels), " channels.");
    }
    out_channels = c->MakeDim(lam * s * lam * s);
  }
  c->set_output(0, c->MakeShape({c->Dim(x, 0), coarse(c->Dim(x, 1)),
                                 coarse(c->Dim(x, 2)), out_channels}));
  return Status();
}

Status GatherShape(InferenceContext* c) {
  ShapeHandle x, indices;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &x));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &indices));
  DimensionHandle unused;
  TF_RETURN_IF_ERROR(c->WithValue(c->Dim(indices, 1), 3, &unused));
  int lam;
  TF_RETURN_IF_ERROR(c->GetAttr("lam", &lam));
  DimensionHandle side = c->UnknownDim();
  DimensionHandle channels = c->Dim(x, 3);
  if (c->ValueKnown(channels)) {
    const int64_t s = WindowSide(c->Value(channels));
    if (s < 0) {
      return InvalidArgument("swap_align2nat_gather: the channel count of x "
                             "must be S*S for a window side S >= 1, got ",
                             c->Value(channels), " channels.");
    }
    side = c->MakeDim(lam * s);
  }
  c->set_output(0, c->MakeShape({c->Dim(indices, 0), side, side}));
  return Status();
}

REGISTER_OP("SwapAlign2Nat")
    .Input("x: T")
    .Output("y: T")
    .Attr("lam: int >= 1")
    .Attr("pad: float = -6.0")
    .Attr("poison_output: bool = false")
    .Attr("T: {float, double}")
    .SetShapeFn(SwapAlign2NatShape)
    .Doc(R"doc(
Aligned [N,H,W,S*S] -> natural [N,ceil(H/lam),ceil(W/lam),(lam*S)^2] (docs/ops.md).
)doc");

REGISTER_OP("SwapAlign2NatGrad")
    .Input("dy: T")
    .Input("x_shape: int64")
    .Output("dx: T")
    .Attr("lam: int >= 1")
    .Attr("poison_output: bool = false")
    .Attr("T: {float, double}")
    .SetShapeFn([](InferenceContext* c) { return GradShape(c, 1); });

REGISTER_OP("SwapAlign2NatGather")
    .Input("x: T")
    .Input("indices: int32")
    .Output("y: T")
    .Attr("lam: int >= 1")
    .Attr("pad: float = -6.0")
    .Attr("poison_output: bool = false")
    .Attr("T: {float, double}")
    .SetShapeFn(GatherShape);

REGISTER_OP("SwapAlign2NatGatherGrad")
    .Input("dy: T")
    .Input("indices: int32")
    .Input("x_shape: int64")
    .Output("dx: T")
    .Attr("lam: int >= 1")
    .Attr("poison_output: bool = false")
    .Attr("T: {float, double}")
    .SetShapeFn([](InferenceContext* c) { return GradShape(c, 2); });


// The fused conv1x1 + swap_align2nat_gather (project_swap_align2nat_cpu.h).
Status ProjectGatherShape(InferenceContext* c) {
  ShapeHandle features, weights, bias, indices;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &features));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &weights));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &bias));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 2, &indices));
  DimensionHandle unused;
  TF_RETURN_IF_ERROR(c->WithValue(c->Dim(indices, 1), 3, &unused));
  int lam;
  TF_RETURN_IF_ERROR(c->GetAttr("lam", &lam));
  DimensionHandle side = c->UnknownDim();
  DimensionHandle channels = c->Dim(weights, 0);
  if (c->ValueKnown(channels)) {
    const int64_t s = WindowSide(c->Value(channels));
    if (s < 0) {
      return InvalidArgument("project_swap_align2nat_gather: weights must "
                             "have S*S rows for a window side S >= 1, got ",
                             c->Value(channels), " rows.");
    }
    side = c->MakeDim(lam * s);
  }
  c->set_output(0, c->MakeShape({c->Dim(indices, 0), side, side}));
  return Status();
}

REGISTER_OP("ProjectSwapAlign2NatGather")
    .Input("features: T")
    .Input("weights: T")
    .Input("bias: T")
    .Input("indices: int32")
    .Output("masks: T")
    .Attr("lam: int >= 1")
    .Attr("pad: float = -6.0")
    .Attr("poison_output: bool = false")
    .Attr("T: {float, double}")
    .SetShapeFn(ProjectGatherShape)
    .Doc(R"doc(
swap_align2nat_gather(conv1x1(features, weights^T) + bias, indices, lam, pad)
without the projection: features [N,H,W,C], weights [S*S,C], bias [S*S],
indices [K,3] -> masks [K, lam*S, lam*S].
)doc");

REGISTER_OP("ProjectSwapAlign2NatGatherGrad")
    .Input("dy: T")
    .Input("features: T")
    .Input("weights: T")
    .Input("indices: int32")
    .Input("accumulate: num_accumulate * T")
    .Output("dfeatures: T")
    .Output("dweights: T")
    .Output("dbias: T")
    .Attr("lam: int >= 1")
    .Attr("num_accumulate: int >= 0 = 0")
    .Attr("poison_output: bool = false")
    .Attr("T: {float, double}")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle features = c->input(1);
      for (int i = 0; i < c->num_inputs() - 4; ++i) {
        TF_RETURN_IF_ERROR(c->Merge(features, c->input(4 + i), &features));
      }
      c->set_output(0, features);
      c->set_output(1, c->input(2));
      c->set_output(2, c->Vector(c->Dim(c->input(2), 0)));
      return Status();
    })
    .Doc(R"doc(
Gradients of ProjectSwapAlign2NatGather w.r.t. features, weights and bias.
With one `accumulate` tensor (features' shape), dfeatures is accumulate plus
this op's gradient, written into accumulate's buffer when TensorFlow can
forward it: a chain of these ops over one features tensor (several window
sizes) sums its gradient in one buffer.
)doc");

// ---------------------------------------------------------------------------
// Shared checks.
// ---------------------------------------------------------------------------
Status GeometryFromShape(const TensorShape& shape, int lam, const char* op,
                         Geometry* g) {
  if (shape.dims() != 4) {
    return InvalidArgument(op, ": x must have rank 4 [N, H, W, S*S], got shape ",
                           shape.DebugString(), ".");
  }
  const int64_t s = WindowSide(shape.dim_size(3));
  if (s < 0) {
    return InvalidArgument(op, ": the channel count of x must be S*S for a "
                           "window side S >= 1, got ", shape.dim_size(3),
                           " channels, which is not a non-zero square.");
  }
  if (shape.dim_size(1) < 1 || shape.dim_size(2) < 1) {
    return InvalidArgument(op, ": H and W must be >= 1, got shape ",
                           shape.DebugString(), ".");
  }
  *g = MakeGeometry(shape.dim_size(0), shape.dim_size(1), shape.dim_size(2),
                    static_cast<int>(s), lam);
  return Status();
}

Status ShapeFromTensor(const Tensor& t, TensorShape* shape) {
  if (t.dims() != 1 || t.NumElements() != 4) {
    return InvalidArgument("x_shape must be a vector of 4 dimensions, got ",
                           t.shape().DebugString(), ".");
  }
  auto v = t.vec<int64_t>();
  return TensorShape::BuildTensorShape({v(0), v(1), v(2), v(3)}, shape);
}

// Same messages as the pure-TF backend's checks (mask_representation.py).
Status CheckIndicesShape(const Tensor& indices) {
  if (indices.dims() != 2 || indices.dim_size(1) != 3) {
    return InvalidArgument("swap_align2nat_gather: indices must have shape "
                           "[K, 3] with rows (n, y, x), got shape ",
                           indices.shape().DebugString(), ".");
  }
  return Status();
}

Status CheckIndices(const Tensor& indices, const Geometry& g) {
  TF_RETURN_IF_ERROR(CheckIndicesShape(indices));
  auto rows = indices.matrix<int32_t>();
  for (int64_t k = 0; k < indices.dim_size(0); ++k) {
    const int64_t n = rows(k, 0), y = rows(k, 1), x = rows(k, 2);
    if (n < 0 || y < 0 || x < 0) {
      return InvalidArgument("swap_align2nat_gather: negative index in "
                             "indices, row ", k, " = (", n, ", ", y, ", ", x,
                             ").");
    }
    if (n >= g.batch) {
      return InvalidArgument("swap_align2nat_gather: batch index n outside "
                             "the batch, row ", k, " has n = ", n,
                             " for a batch of ", g.batch, ".");
    }
    if (y >= g.out_height) {
      return InvalidArgument("swap_align2nat_gather: row y outside the output "
                             "grid of height ", g.out_height, ", row ", k,
                             " has y = ", y, ".");
    }
    if (x >= g.out_width) {
      return InvalidArgument("swap_align2nat_gather: column x outside the "
                             "output grid of width ", g.out_width, ", row ", k,
                             " has x = ", x, ".");
    }
  }
  return Status();
}

// ---------------------------------------------------------------------------
// Kernels. `Device` dispatch is in the Run* functions below.
// ---------------------------------------------------------------------------
struct CpuDevice {};
struct GpuDevice {};

template <typename Device, typename T>
struct Runner;

template <typename T>
struct Runner<CpuDevice, T> {
  using Acc = typename AccType<T>::type;
  static Status Forward(OpKernelContext* c, const Geometry& g, float pad,
                        const Tensor& x, Tensor* y) {
    cpu::SwapAlign2NatForward<T, Acc>(g, static_cast<T>(pad), x.flat<T>().data(),
                                      y->flat<T>().data(), CpuParallelFor(c));
    return Status();
  }
  static Status Backward(OpKernelContext* c, const Geometry& g,
                         const Tensor& dy, Tensor* dx) {
    // From TF's allocator (reused across steps), not a fresh malloc.
    Tensor workspace;
    TF_RETURN_IF_ERROR(c->allocate_temp(
        tensorflow::DataTypeToEnum<Acc>::value,
        TensorShape({cpu::BackwardWorkspaceSize(g)}), &workspace));
    cpu::SwapAlign2NatBackward<T, Acc>(g, dy.flat<T>().data(),
                                       dx->flat<T>().data(),
                                       workspace.flat<Acc>().data(),
                                       CpuParallelFor(c));
    return Status();
  }
  static Status GatherForward(OpKernelContext* c, const Geometry& g, float pad,
                              const Tensor& x, const Tensor& indices,
                              Tensor* y) {
    TF_RETURN_IF_ERROR(CheckIndices(indices, g));
    cpu::SwapAlign2NatGatherForward<T, Acc>(
        g, static_cast<T>(pad), x.flat<T>().data(),
        indices.flat<int32_t>().data(), indices.dim_size(0),
        y->flat<T>().data(), CpuParallelFor(c));
    return Status();
  }
  static Status GatherBackward(OpKernelContext* c, const Geometry& g,
                               const Tensor& dy, const Tensor& indices,
                               Tensor* dx) {
    TF_RETURN_IF_ERROR(CheckIndices(indices, g));
    cpu::SwapAlign2NatGatherBackward<T, Acc>(
        g, dy.flat<T>().data(), indices.flat<int32_t>().data(),
        indices.dim_size(0), dx->flat<T>().data(), CpuParallelFor(c));
    return Status();
  }
  static Status ProjectForward(OpKernelContext* c, const ProjectionGeometry& pg,
                               float pad, const Tensor& f, const Tensor& w,
                               const Tensor& bias, const Tensor& indices,
                               Tensor* out) {
    TF_RETURN_IF_ERROR(CheckIndices(indices, pg.g));
    cpu::ProjectSwapAlign2NatGatherForward<T>(
        pg, f.flat<T>().data(), w.flat<T>().data(), bias.flat<T>().data(),
        static_cast<T>(pad), indices.flat<int32_t>().data(),
        indices.dim_size(0), out->flat<T>().data(), CpuParallelFor(c));
    return Status();
  }
  // accumulate: df += the gradient, from df's values or, when initial is
  // not null, from initial's (copied in by the kernel); else df = it.
  static Status ProjectBackward(OpKernelContext* c,
                                const ProjectionGeometry& pg,
                                const Tensor& dy, const Tensor& f,
                                const Tensor& w, const Tensor& indices,
                                bool accumulate, const Tensor* initial,
                                Tensor* df, Tensor* dw, Tensor* dbias) {
    TF_RETURN_IF_ERROR(CheckIndices(indices, pg.g));
    Tensor workspace;
    TF_RETURN_IF_ERROR(c->allocate_temp(
        tensorflow::DataTypeToEnum<T>::value,
        TensorShape({cpu::ProjectionGradWorkspaceSize(pg)}), &workspace));
    const cpu::FeaturesGradInit<T> df_init{
        accumulate, initial == nullptr ? nullptr : initial->flat<T>().data()};
    cpu::ProjectSwapAlign2NatGatherBackward<T>(
        pg, dy.flat<T>().data(), f.flat<T>().data(), w.flat<T>().data(),
        indices.flat<int32_t>().data(), indices.dim_size(0), df_init,
        df->flat<T>().data(), dw->flat<T>().data(), dbias->flat<T>().data(),
        workspace.flat<T>().data(), CpuParallelFor(c));
    return Status();
  }
};

#if GOOGLE_CUDA
template <typename T>
struct Runner<GpuDevice, T> {
  static Status Forward(OpKernelContext* c, const Geometry& g, float pad,
                        const Tensor& x, Tensor* y) {
    return CudaStatus(LaunchSwapAlign2NatForward<T>(
                          g, static_cast<T>(pad), x.flat<T>().data(),
                          y->flat<T>().data(), GpuStream(c)),
                      "SwapAlign2Nat CUDA kernel");
  }
  static Status Backward(OpKernelContext* c, const Geometry& g,
                         const Tensor& dy, Tensor* dx) {
    return CudaStatus(LaunchSwapAlign2NatBackward<T>(
                          g, dy.flat<T>().data(), dx->flat<T>().data(),
                          GpuStream(c)),
                      "SwapAlign2NatGrad CUDA kernel");
  }
  // Index rows are validated by the Python wrapper (tf.debugging asserts);
  // the CUDA kernels write pad for (and ignore in the gradient) any row that
  // is still out of range, so no memory outside the tensors is touched.
  static Status GatherForward(OpKernelContext* c, const Geometry& g, float pad,
                              const Tensor& x, const Tensor& indices,
                              Tensor* y) {
    return CudaStatus(LaunchSwapAlign2NatGatherForward<T>(
                          g, static_cast<T>(pad), x.flat<T>().data(),
                          indices.flat<int32_t>().data(), indices.dim_size(0),
                          y->flat<T>().data(), GpuStream(c)),
                      "SwapAlign2NatGather CUDA kernel");
  }
  static Status GatherBackward(OpKernelContext* c, const Geometry& g,
                               const Tensor& dy, const Tensor& indices,
                               Tensor* dx) {
    Tensor workspace;
    TF_RETURN_IF_ERROR(AllocateWorkspace(
        c, SwapAlign2NatGatherBackwardWorkspaceBytes(g, indices.dim_size(0)),
        &workspace));
    return CudaStatus(LaunchSwapAlign2NatGatherBackward<T>(
                          g, dy.flat<T>().data(),
                          indices.flat<int32_t>().data(), indices.dim_size(0),
                          workspace.flat<int8_t>().data(), dx->flat<T>().data(),
                          GpuStream(c)),
                      "SwapAlign2NatGatherGrad CUDA kernel");
  }
  static Status ProjectForward(OpKernelContext* c, const ProjectionGeometry& pg,
                               float pad, const Tensor& f, const Tensor& w,
                               const Tensor& bias, const Tensor& indices,
                               Tensor* out) {
    Tensor workspace;
    TF_RETURN_IF_ERROR(AllocateWorkspace(
        c, ProjectSwapAlign2NatGatherForwardWorkspaceBytes<T>(
               pg, indices.dim_size(0)),
        &workspace));
    return CudaStatus(LaunchProjectSwapAlign2NatGatherForward<T>(
                          pg, static_cast<T>(pad), f.flat<T>().data(),
                          w.flat<T>().data(), bias.flat<T>().data(),
                          indices.flat<int32_t>().data(), indices.dim_size(0),
                          workspace.flat<int8_t>().data(),
                          out->flat<T>().data(), GpuStream(c)),
                      "ProjectSwapAlign2NatGather CUDA kernels");
  }
  static Status ProjectBackward(OpKernelContext* c,
                                const ProjectionGeometry& pg,
                                const Tensor& dy, const Tensor& f,
                                const Tensor& w, const Tensor& indices,
                                bool accumulate, const Tensor* initial,
                                Tensor* df, Tensor* dw, Tensor* dbias) {
    if (initial != nullptr && df->NumElements() > 0) {
      const cudaError_t err = cudaMemcpyAsync(
          df->flat<T>().data(), initial->flat<T>().data(), df->TotalBytes(),
          cudaMemcpyDeviceToDevice, GpuStream(c));
      if (err != cudaSuccess) {
        return CudaStatus(err, "ProjectSwapAlign2NatGatherGrad accumulate");
      }
    }
    Tensor workspace;
    TF_RETURN_IF_ERROR(AllocateWorkspace(
        c, ProjectSwapAlign2NatGatherBackwardWorkspaceBytes<T>(
               pg, indices.dim_size(0)),
        &workspace));
    return CudaStatus(LaunchProjectSwapAlign2NatGatherBackward<T>(
                          pg, dy.flat<T>().data(), f.flat<T>().data(),
                          w.flat<T>().data(), indices.flat<int32_t>().data(),
                          indices.dim_size(0), workspace.flat<int8_t>().data(),
                          df->flat<T>().data(), dw->flat<T>().data(),
                          dbias->flat<T>().data(), GpuStream(c), accumulate),
                      "ProjectSwapAlign2NatGatherGrad CUDA kernels");
  }

 private:
  // Device scratch from TF's allocator, released when the op ends.
  static Status AllocateWorkspace(OpKernelContext* c, size_t bytes,
                                  Tensor* workspace) {
    return c->allocate_temp(
        tensorflow::DT_INT8,
        TensorShape({static_cast<int64_t>(bytes > 0 ? bytes : 1)}),
        workspace);
  }
};

template <typename T>
void GpuPoison(OpKernelContext* c, Tensor* t) {
  // NaN bytes for float and double alike: all bits set is a quiet NaN.
  cudaMemsetAsync(t->flat<T>().data(), 0xFF, t->TotalBytes(), GpuStream(c));
}
#endif  // GOOGLE_CUDA

template <typename Device, typename T>
void MaybePoison(OpKernelContext* c, bool poison, Tensor* t) {
  if (!poison) return;
#if GOOGLE_CUDA
  if (std::is_same<Device, GpuDevice>::value) {
    GpuPoison<T>(c, t);
    return;
  }
#endif
  Poison<T>(t);
}

template <typename Device, typename T>
class SwapAlign2NatBase : public OpKernel {
 public:
  explicit SwapAlign2NatBase(OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, c->GetAttr("lam", &lam_));
    OP_REQUIRES_OK(c, c->GetAttr("poison_output", &poison_));
    if (c->HasAttr("pad")) OP_REQUIRES_OK(c, c->GetAttr("pad", &pad_));
    OP_REQUIRES(c, std::isfinite(pad_),
                InvalidArgument("pad must be finite, got ", pad_, "."));
  }

 protected:
  // Allocates output 0 (NaN-filled under poison_output); *out is null when
  // it is empty and there is nothing to compute.
  Status AllocateOutput(OpKernelContext* c, const TensorShape& shape,
                        Tensor** out) {
    TF_RETURN_IF_ERROR(c->allocate_output(0, shape, out));
    if ((*out)->NumElements() == 0) {
      *out = nullptr;
    } else {
      MaybePoison<Device, T>(c, poison_, *out);
    }
    return Status();
  }

  // The gradients: reads x_shape (input `shape_input`), checks that dy has
  // the shape `forward_shape(g)` the forward op produced, allocates dx.
  template <typename ForwardShape>
  Status PrepareGradient(OpKernelContext* c, int shape_input, const char* op,
                         const char* public_name, ForwardShape forward_shape,
                         Geometry* g, Tensor** dx) {
    TensorShape x_shape;
    TF_RETURN_IF_ERROR(ShapeFromTensor(c->input(shape_input), &x_shape));
    TF_RETURN_IF_ERROR(GeometryFromShape(x_shape, lam_, public_name, g));
    const TensorShape want = forward_shape(*g);
    const Tensor& dy = c->input(0);
    if (dy.shape() != want) {
      return InvalidArgument(op, ": dy has shape ", dy.shape().DebugString(),
                             ", expected ", want.DebugString(), ".");
    }
    return AllocateOutput(c, x_shape, dx);
  }

  int lam_ = 1;
  float pad_ = -6.0f;
  bool poison_ = false;
};

TensorShape DenseOutputShape(const Geometry& g) {
  return TensorShape({g.batch, g.out_height, g.out_width,
                      int64_t{g.out_window} * g.out_window});
}

template <typename Device, typename T>
class SwapAlign2NatOp : public SwapAlign2NatBase<Device, T> {
 public:
  using SwapAlign2NatBase<Device, T>::SwapAlign2NatBase;
  void Compute(OpKernelContext* c) override {
    const Tensor& x = c->input(0);
    Geometry g;
    OP_REQUIRES_OK(c, GeometryFromShape(x.shape(), this->lam_,
                                        "swap_align2nat", &g));
    Tensor* y = nullptr;
    OP_REQUIRES_OK(c, this->AllocateOutput(c, DenseOutputShape(g), &y));
    if (y == nullptr) return;
    OP_REQUIRES_OK(c, (Runner<Device, T>::Forward(c, g, this->pad_, x, y)));
  }
};

template <typename Device, typename T>
class SwapAlign2NatGradOp : public SwapAlign2NatBase<Device, T> {
 public:
  using SwapAlign2NatBase<Device, T>::SwapAlign2NatBase;
  void Compute(OpKernelContext* c) override {
    Geometry g;
    Tensor* dx = nullptr;
    OP_REQUIRES_OK(c, this->PrepareGradient(c, 1, "SwapAlign2NatGrad",
                                            "swap_align2nat", DenseOutputShape,
                                            &g, &dx));
    if (dx == nullptr) return;
    OP_REQUIRES_OK(c, (Runner<Device, T>::Backward(c, g, c->input(0), dx)));
  }
};

template <typename Device, typename T>
class SwapAlign2NatGatherOp : public SwapAlign2NatBase<Device, T> {
 public:
  using SwapAlign2NatBase<Device, T>::SwapAlign2NatBase;
  void Compute(OpKernelContext* c) override {
    const Tensor& x = c->input(0);
    const Tensor& indices = c->input(1);
    Geometry g;
    OP_REQUIRES_OK(c, GeometryFromShape(x.shape(), this->lam_,
                                        "swap_align2nat_gather", &g));
    OP_REQUIRES_OK(c, CheckIndicesShape(indices));
    Tensor* y = nullptr;
    OP_REQUIRES_OK(c, this->AllocateOutput(
                          c,
                          TensorShape({indices.dim_size(0), g.out_window,
                                       g.out_window}),
                          &y));
    if (y == nullptr) return;
    OP_REQUIRES_OK(c, (Runner<Device, T>::GatherForward(c, g, this->pad_, x,
                                                        indices, y)));
  }
};

template <typename Device, typename T>
class SwapAlign2NatGatherGradOp : public SwapAlign2NatBase<Device, T> {
 public:
  using SwapAlign2NatBase<Device, T>::SwapAlign2NatBase;
  void Compute(OpKernelContext* c) override {
    const Tensor& indices = c->input(1);
    OP_REQUIRES_OK(c, CheckIndicesShape(indices));
    const int64_t num_windows = indices.dim_size(0);
    Geometry g;
    Tensor* dx = nullptr;
    OP_REQUIRES_OK(
        c, this->PrepareGradient(
               c, 2, "SwapAlign2NatGatherGrad", "swap_align2nat_gather",
               [num_windows](const Geometry& g) {
                 return TensorShape({num_windows, g.out_window, g.out_window});
               },
               &g, &dx));
    if (dx == nullptr) return;
    OP_REQUIRES_OK(c, (Runner<Device, T>::GatherBackward(c, g, c->input(0),
                                                         indices, dx)));
  }
};

// ---------------------------------------------------------------------------
// ProjectSwapAlign2NatGather(Grad).
// ---------------------------------------------------------------------------
constexpr char kProjectOp[] = "project_swap_align2nat_gather";

// Checks features [N, H, W, C], weights [S*S, C], bias [S*S] (when given)
// and the shape of indices; same messages as the Python wrapper's checks.
Status ProjectionGeometryFromInputs(const Tensor& features,
                                    const Tensor& weights, const Tensor* bias,
                                    const Tensor& indices, int lam,
                                    ProjectionGeometry* pg) {
  if (features.dims() != 4) {
    return InvalidArgument(kProjectOp, ": features must have rank 4 "
                           "[N, H, W, C], got shape ",
                           features.shape().DebugString(), ".");
  }
  if (features.dim_size(1) < 1 || features.dim_size(2) < 1) {
    return InvalidArgument(kProjectOp, ": H and W must be >= 1, got shape ",
                           features.shape().DebugString(), ".");
  }
  if (weights.dims() != 2 || weights.dim_size(1) != features.dim_size(3)) {
    return InvalidArgument(kProjectOp, ": weights must have shape [S*S, C] "
                           "with C = ", features.dim_size(3),
                           " (the features' channels), got shape ",
                           weights.shape().DebugString(), ".");
  }
  const int64_t s = WindowSide(weights.dim_size(0));
  if (s < 0) {
    return InvalidArgument(kProjectOp, ": weights must have S*S rows for a "
                           "window side S >= 1, got ", weights.dim_size(0),
                           " rows, which is not a non-zero square.");
  }
  if (bias != nullptr &&
      (bias->dims() != 1 || bias->dim_size(0) != weights.dim_size(0))) {
    return InvalidArgument(kProjectOp, ": bias must have shape [S*S] = [",
                           weights.dim_size(0), "], got shape ",
                           bias->shape().DebugString(), ".");
  }
  pg->g = MakeGeometry(features.dim_size(0), features.dim_size(1),
                       features.dim_size(2), static_cast<int>(s), lam);
  pg->channels = features.dim_size(3);
  // Index values are checked by the CPU kernels (host memory) and, for the
  // GPU, by the Python wrapper; the CUDA kernels skip rows out of range.
  return CheckIndicesShape(indices);
}

template <typename Device, typename T>
class ProjectSwapAlign2NatGatherOp : public SwapAlign2NatBase<Device, T> {
 public:
  using SwapAlign2NatBase<Device, T>::SwapAlign2NatBase;

  void Compute(OpKernelContext* c) override {
    const Tensor& features = c->input(0);
    const Tensor& weights = c->input(1);
    const Tensor& bias = c->input(2);
    const Tensor& indices = c->input(3);
    ProjectionGeometry pg;
    OP_REQUIRES_OK(c, ProjectionGeometryFromInputs(features, weights, &bias,
                                                   indices, this->lam_, &pg));
    const int64_t num_windows = indices.dim_size(0);
    Tensor* masks = nullptr;
    OP_REQUIRES_OK(c, this->AllocateOutput(
                          c,
                          TensorShape({num_windows, pg.g.out_window,
                                       pg.g.out_window}),
                          &masks));
    if (masks == nullptr) return;
    OP_REQUIRES_OK(c, (Runner<Device, T>::ProjectForward(
                          c, pg, this->pad_, features, weights, bias, indices,
                          masks)));
  }
};

template <typename Device, typename T>
class ProjectSwapAlign2NatGatherGradOp : public SwapAlign2NatBase<Device, T> {
 public:
  using SwapAlign2NatBase<Device, T>::SwapAlign2NatBase;

  void Compute(OpKernelContext* c) override {
    const Tensor& dy = c->input(0);
    const Tensor& features = c->input(1);
    const Tensor& weights = c->input(2);
    const Tensor& indices = c->input(3);
    ProjectionGeometry pg;
    OP_REQUIRES_OK(c, ProjectionGeometryFromInputs(features, weights, nullptr,
                                                   indices, this->lam_, &pg));
    const TensorShape want({indices.dim_size(0), pg.g.out_window,
                            pg.g.out_window});
    OP_REQUIRES(c, dy.shape() == want,
                InvalidArgument("ProjectSwapAlign2NatGatherGrad: dy has shape ",
                                dy.shape().DebugString(), ", expected ",
                                want.DebugString(), "."));
    const bool accumulate = c->num_inputs() > 4;
    OP_REQUIRES(c, c->num_inputs() <= 5,
                InvalidArgument("ProjectSwapAlign2NatGatherGrad: at most one "
                                "accumulate tensor, got ", c->num_inputs() - 4,
                                "."));
    if (accumulate) {
      OP_REQUIRES(c, c->input(4).shape() == features.shape(),
                  InvalidArgument("ProjectSwapAlign2NatGatherGrad: accumulate "
                                  "has shape ",
                                  c->input(4).shape().DebugString(),
                                  ", expected the features' ",
                                  features.shape().DebugString(), "."));
    }
    Tensor *dfeatures = nullptr, *dweights = nullptr, *dbias = nullptr;
    int forwarded = -1;
    // In place into `accumulate` when nothing else holds its buffer.
    OP_REQUIRES_OK(c, c->forward_input_or_allocate_output(
                          accumulate ? std::vector<int>{4} : std::vector<int>{},
                          0, features.shape(), &dfeatures, &forwarded));
    OP_REQUIRES_OK(c, c->allocate_output(1, weights.shape(), &dweights));
    OP_REQUIRES_OK(c, c->allocate_output(
                          2, TensorShape({weights.dim_size(0)}), &dbias));
    // (An accumulated dfeatures must keep its values: never poisoned.)
    for (Tensor* t : {dfeatures, dweights, dbias}) {
      if (t != dfeatures || !accumulate) {
        MaybePoison<Device, T>(c, this->poison_, t);
      }
    }
    // dfeatures' initial values: accumulate's (already there if forwarded).
    const Tensor* initial =
        accumulate && forwarded != 4 ? &c->input(4) : nullptr;
    OP_REQUIRES_OK(c, (Runner<Device, T>::ProjectBackward(
                          c, pg, dy, features, weights, indices, accumulate,
                          initial, dfeatures, dweights, dbias)));
  }
};

#define REGISTER_CPU(T)                                                    \
  REGISTER_KERNEL_BUILDER(                                                 \
      Name("SwapAlign2Nat").Device(DEVICE_CPU).TypeConstraint<T>("T"),     \
      SwapAlign2NatOp<CpuDevice, T>);                                      \
  REGISTER_KERNEL_BUILDER(                                                 \
      Name("SwapAlign2NatGrad").Device(DEVICE_CPU).TypeConstraint<T>("T"), \
      SwapAlign2NatGradOp<CpuDevice, T>);                                  \
  REGISTER_KERNEL_BUILDER(Name("SwapAlign2NatGather")                      \
                              .Device(DEVICE_CPU)                          \
                              .TypeConstraint<T>("T"),                     \
                          SwapAlign2NatGatherOp<CpuDevice, T>);            \
  REGISTER_KERNEL_BUILDER(Name("SwapAlign2NatGatherGrad")                  \
                              .Device(DEVICE_CPU)                          \
                              .TypeConstraint<T>("T"),                     \
                          SwapAlign2NatGatherGradOp<CpuDevice, T>);      \
  REGISTER_KERNEL_BUILDER(Name("ProjectSwapAlign2NatGather")               \
                              .Device(DEVICE_CPU)                          \
                              .TypeConstraint<T>("T"),                     \
                          ProjectSwapAlign2NatGatherOp<CpuDevice, T>);     \
  REGISTER_KERNEL_BUILDER(Name("ProjectSwapAlign2NatGatherGrad")           \
                              .Device(DEVICE_CPU)                          \
                              .TypeConstraint<T>("T"),                     \
                          ProjectSwapAlign2NatGatherGradOp<CpuDevice, T>);
REGISTER_CPU(float);
REGISTER_CPU(double);
#undef REGISTER_CPU

#if GOOGLE_CUDA
using ::tensorflow::DEVICE_GPU;
#define REGISTER_GPU(T)                                                    \
  REGISTER_KERNEL_BUILDER(                                                 \
      Name("SwapAlign2Nat").Device(DEVICE_GPU).TypeConstraint<T>("T"),     \
      SwapAlign2NatOp<GpuDevice, T>);                                      \
  REGISTER_KERNEL_BUILDER(Name("SwapAlign2NatGrad")                        \
                              .Device(DEVICE_GPU)                          \
                              .TypeConstraint<T>("T")                      \
                              .HostMemory("x_shape"),                      \
                          SwapAlign2NatGradOp<GpuDevice, T>);              \
  REGISTER_KERNEL_BUILDER(Name("SwapAlign2NatGather")                      \
                              .Device(DEVICE_GPU)                          \
                              .TypeConstraint<T>("T"),                     \
                          SwapAlign2NatGatherOp<GpuDevice, T>);            \
  REGISTER_KERNEL_BUILDER(Name("SwapAlign2NatGatherGrad")                  \
                              .Device(DEVICE_GPU)                          \
                              .TypeConstraint<T>("T")                      \
                              .HostMemory("x_shape"),                      \
                          SwapAlign2NatGatherGradOp<GpuDevice, T>);        \
  REGISTER_KERNEL_BUILDER(Name("ProjectSwapAlign2NatGather")               \
                              .Device(DEVICE_GPU)                          \
                              .TypeConstraint<T>("T"),                     \
                          ProjectSwapAlign2NatGatherOp<GpuDevice, T>);     \
  REGISTER_KERNEL_BUILDER(Name("ProjectSwapAlign2NatGatherGrad")           \
                              .Device(DEVICE_GPU)                          \
                              .TypeConstraint<T>("T"),                     \
                          ProjectSwapAlign2NatGatherGradOp<GpuDevice, T>);
REGISTER_GPU(float);
REGISTER_GPU(double);
#undef REGISTER_GPU
#endif  // GOOGLE_CUDA

}  // namespace
}  // namespace tensormask
