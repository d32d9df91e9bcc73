// TensorFlow ops UpAlign2Nat, UpAlign2NatGrad, UpAlign2NatGather and
// UpAlign2NatGatherGrad: definitions, shape functions and the CPU (and, when
// built with GOOGLE_CUDA, GPU) kernels. The arithmetic lives in
// up_align2nat_math.h, the loops in up_align2nat_cpu.h and
// up_align2nat_cuda.cu.cc; gradients are registered in Python
// (tensormask_tf/ops/custom_op_library.py). lam = lam_num / lam_den in lowest
// terms (the Python wrapper reduces it), so a fractional lam is exact.
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor.h"

#include "op_util.h"
#include "up_align2nat_cpu.h"
#include "up_align2nat_math.h"

#if GOOGLE_CUDA
#include "up_align2nat_cuda.h"
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
#if GOOGLE_CUDA
using op_util::CudaStatus;
using op_util::GpuStream;
#endif

// T = lam * S from the channel count and the attrs, or an error naming both.
Status OutputWindow(int64_t channels, int lam_num, int lam_den,
                    const char* op, int* window, int* out_window) {
  const int64_t s = WindowSide(channels);
  if (s < 0) {
    return InvalidArgument(op, ": the channel count of x must be S*S for a "
                           "window side S >= 1, got ", channels,
                           " channels, which is not a non-zero square.");
  }
  const int t = UpOutputWindow(static_cast<int>(s), lam_num, lam_den);
  if (t < 0) {
    return InvalidArgument(op, ": lam * S must be a whole number, got lam = ",
                           lam_num, "/", lam_den, " and S = ", s, ".");
  }
  *window = static_cast<int>(s);
  *out_window = t;
  return Status();
}

Status ReadLam(InferenceContext* c, int* lam_num, int* lam_den) {
  TF_RETURN_IF_ERROR(c->GetAttr("lam_num", lam_num));
  return c->GetAttr("lam_den", lam_den);
}

// The side T of the output windows (unknown with an unknown channel count).
Status OutputSide(InferenceContext* c, DimensionHandle channels,
                  const char* op, DimensionHandle* side) {
  *side = c->UnknownDim();
  if (!c->ValueKnown(channels)) return Status();
  int lam_num, lam_den, window, out_window;
  TF_RETURN_IF_ERROR(ReadLam(c, &lam_num, &lam_den));
  TF_RETURN_IF_ERROR(OutputWindow(c->Value(channels), lam_num, lam_den, op,
                                  &window, &out_window));
  *side = c->MakeDim(out_window);
  return Status();
}

Status DenseShape(InferenceContext* c) {
  ShapeHandle x;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &x));
  DimensionHandle side, channels;
  TF_RETURN_IF_ERROR(OutputSide(c, c->Dim(x, 3), "up_align2nat", &side));
  TF_RETURN_IF_ERROR(c->Multiply(side, side, &channels));
  c->set_output(0, c->MakeShape({c->Dim(x, 0), c->Dim(x, 1), c->Dim(x, 2),
                                 channels}));
  return Status();
}

Status GatherShape(InferenceContext* c) {
  ShapeHandle x, indices;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &x));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &indices));
  DimensionHandle unused, side;
  TF_RETURN_IF_ERROR(c->WithValue(c->Dim(indices, 1), 3, &unused));
  TF_RETURN_IF_ERROR(
      OutputSide(c, c->Dim(x, 3), "up_align2nat_gather", &side));
  c->set_output(0, c->MakeShape({c->Dim(indices, 0), side, side}));
  return Status();
}

#define UP_ATTRS                                                       \
  Attr("lam_num: int >= 1")                                            \
      .Attr("lam_den: int >= 1")                                       \
      .Attr("interpolation: {'bilinear', 'nearest'} = 'bilinear'")     \
      .Attr("T: {float, double}")

REGISTER_OP("UpAlign2Nat")
    .Input("x: T")
    .Output("y: T")
    .Attr("pad: float = -6.0")
    .UP_ATTRS
    .SetShapeFn(DenseShape)
    .Doc(R"doc(
Aligned [N,H,W,S*S] -> natural [N,H,W,T*T], T = lam*S, lam = lam_num/lam_den.
)doc");

REGISTER_OP("UpAlign2NatGrad")
    .Input("dy: T")
    .Input("x_shape: int64")
    .Output("dx: T")
    .UP_ATTRS
    .SetShapeFn([](InferenceContext* c) { return GradShape(c, 1); });

REGISTER_OP("UpAlign2NatGather")
    .Input("x: T")
    .Input("indices: int32")
    .Output("y: T")
    .Attr("pad: float = -6.0")
    .UP_ATTRS
    .SetShapeFn(GatherShape);

REGISTER_OP("UpAlign2NatGatherGrad")
    .Input("dy: T")
    .Input("indices: int32")
    .Input("x_shape: int64")
    .Output("dx: T")
    .UP_ATTRS
    .SetShapeFn([](InferenceContext* c) { return GradShape(c, 2); });

#undef UP_ATTRS

// ---------------------------------------------------------------------------
// Kernels.
// ---------------------------------------------------------------------------
struct CpuDevice {};
struct GpuDevice {};

// Rows (n, y, x) inside the batch and the grid [H, W] (host memory).
Status CheckIndices(const Tensor& indices, const UpGeometry& g) {
  auto rows = indices.matrix<int32_t>();
  for (int64_t k = 0; k < indices.dim_size(0); ++k) {
    const int64_t n = rows(k, 0), y = rows(k, 1), x = rows(k, 2);
    if (n < 0 || y < 0 || x < 0 || n >= g.batch || y >= g.height ||
        x >= g.width) {
      return InvalidArgument("up_align2nat_gather: row ", k, " of indices, (",
                             n, ", ", y, ", ", x, "), is outside the batch ",
                             g.batch, " and grid ", g.height, " x ", g.width,
                             ".");
    }
  }
  return Status();
}

template <typename Device, typename T>
struct Runner;

template <typename T>
struct Runner<CpuDevice, T> {
  using Acc = typename AccType<T>::type;
  static Status Forward(OpKernelContext* c, const UpGeometry& g, float pad,
                        const Tensor& x, Tensor* y) {
    cpu::UpAlign2NatForward<T, Acc>(g, static_cast<T>(pad), x.flat<T>().data(),
                                    y->flat<T>().data(), CpuParallelFor(c));
    return Status();
  }
  static Status Backward(OpKernelContext* c, const UpGeometry& g,
                         const Tensor& dy, Tensor* dx) {
    cpu::UpAlign2NatBackward<T, Acc>(g, dy.flat<T>().data(),
                                     dx->flat<T>().data(), CpuParallelFor(c));
    return Status();
  }
  static Status GatherForward(OpKernelContext* c, const UpGeometry& g,
                              float pad, const Tensor& x,
                              const Tensor& indices, Tensor* y) {
    TF_RETURN_IF_ERROR(CheckIndices(indices, g));
    cpu::UpAlign2NatGatherForward<T, Acc>(
        g, static_cast<T>(pad), x.flat<T>().data(),
        indices.flat<int32_t>().data(), indices.dim_size(0),
        y->flat<T>().data(), CpuParallelFor(c));
    return Status();
  }
  static Status GatherBackward(OpKernelContext* c, const UpGeometry& g,
                               const Tensor& dy, const Tensor& indices,
                               Tensor* dx) {
    TF_RETURN_IF_ERROR(CheckIndices(indices, g));
    cpu::UpAlign2NatGatherBackward<T, Acc>(
        g, dy.flat<T>().data(), indices.flat<int32_t>().data(),
        indices.dim_size(0), dx->flat<T>().data(), CpuParallelFor(c));
    return Status();
  }
};

#if GOOGLE_CUDA
// Index rows are validated by the Python wrapper (tf.debugging asserts); the
// CUDA kernels write pad for (and ignore in the gradient) any row still out
// of range.
template <typename T>
struct Runner<GpuDevice, T> {
  static Status Forward(OpKernelContext* c, const UpGeometry& g, float pad,
                        const Tensor& x, Tensor* y) {
    return CudaStatus(LaunchUpAlign2NatForward<T>(
                          g, static_cast<T>(pad), x.flat<T>().data(),
                          y->flat<T>().data(), GpuStream(c)),
                      "UpAlign2Nat CUDA kernel");
  }
  static Status Backward(OpKernelContext* c, const UpGeometry& g,
                         const Tensor& dy, Tensor* dx) {
    return CudaStatus(LaunchUpAlign2NatBackward<T>(g, dy.flat<T>().data(),
                                                   dx->flat<T>().data(),
                                                   GpuStream(c)),
                      "UpAlign2NatGrad CUDA kernel");
  }
  static Status GatherForward(OpKernelContext* c, const UpGeometry& g,
                              float pad, const Tensor& x,
                              const Tensor& indices, Tensor* y) {
    return CudaStatus(LaunchUpAlign2NatGatherForward<T>(
                          g, static_cast<T>(pad), x.flat<T>().data(),
                          indices.flat<int32_t>().data(), indices.dim_size(0),
                          y->flat<T>().data(), GpuStream(c)),
                      "UpAlign2NatGather CUDA kernel");
  }
  static Status GatherBackward(OpKernelContext* c, const UpGeometry& g,
                               const Tensor& dy, const Tensor& indices,
                               Tensor* dx) {
    return CudaStatus(LaunchUpAlign2NatGatherBackward<T>(
                          g, dy.flat<T>().data(),
                          indices.flat<int32_t>().data(), indices.dim_size(0),
                          dx->flat<T>().data(), GpuStream(c)),
                      "UpAlign2NatGatherGrad CUDA kernel");
  }
};
#endif  // GOOGLE_CUDA

template <typename Device, typename T>
class UpAlign2NatBase : public OpKernel {
 public:
  explicit UpAlign2NatBase(OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, c->GetAttr("lam_num", &lam_num_));
    OP_REQUIRES_OK(c, c->GetAttr("lam_den", &lam_den_));
    OP_REQUIRES(c, lam_num_ >= lam_den_,
                InvalidArgument("up_align2nat: lam must be >= 1, got ",
                                lam_num_, "/", lam_den_, "."));
    std::string interpolation;
    OP_REQUIRES_OK(c, c->GetAttr("interpolation", &interpolation));
    nearest_ = interpolation == "nearest";
    if (c->HasAttr("pad")) OP_REQUIRES_OK(c, c->GetAttr("pad", &pad_));
    OP_REQUIRES(c, std::isfinite(pad_),
                InvalidArgument("pad must be finite, got ", pad_, "."));
  }

 protected:
  Status Geometry(const TensorShape& shape, const char* op, UpGeometry* g) {
    if (shape.dims() != 4) {
      return InvalidArgument(op, ": x must have rank 4 [N, H, W, S*S], got "
                             "shape ", shape.DebugString(), ".");
    }
    g->batch = shape.dim_size(0);
    g->height = shape.dim_size(1);
    g->width = shape.dim_size(2);
    g->lam_num = lam_num_;
    g->lam_den = lam_den_;
    g->nearest = nearest_;
    return OutputWindow(shape.dim_size(3), lam_num_, lam_den_, op, &g->window,
                        &g->out_window);
  }

  // The gradients: x's shape from input `shape_input`; dy must have the
  // forward output's shape `want(g)`.
  template <typename WantShape>
  Status PrepareGradient(OpKernelContext* c, int shape_input, const char* op,
                         WantShape want, UpGeometry* g, Tensor** dx) {
    const Tensor& shape_tensor = c->input(shape_input);
    if (shape_tensor.dims() != 1 || shape_tensor.NumElements() != 4) {
      return InvalidArgument(op, ": x_shape must be a vector of 4 "
                             "dimensions, got ",
                             shape_tensor.shape().DebugString(), ".");
    }
    auto v = shape_tensor.vec<int64_t>();
    TensorShape x_shape;
    TF_RETURN_IF_ERROR(
        TensorShape::BuildTensorShape({v(0), v(1), v(2), v(3)}, &x_shape));
    TF_RETURN_IF_ERROR(Geometry(x_shape, op, g));
    if (c->input(0).shape() != want(*g)) {
      return InvalidArgument(op, ": dy has shape ",
                             c->input(0).shape().DebugString(), ", expected ",
                             want(*g).DebugString(), ".");
    }
    return c->allocate_output(0, x_shape, dx);
  }

  int lam_num_ = 1, lam_den_ = 1;
  bool nearest_ = false;
  float pad_ = -6.0f;
};

TensorShape DenseOutputShape(const UpGeometry& g) {
  return TensorShape({g.batch, g.height, g.width,
                      int64_t{g.out_window} * g.out_window});
}

template <typename Device, typename T>
class UpAlign2NatOp : public UpAlign2NatBase<Device, T> {
 public:
  using UpAlign2NatBase<Device, T>::UpAlign2NatBase;
  void Compute(OpKernelContext* c) override {
    const Tensor& x = c->input(0);
    UpGeometry g;
    OP_REQUIRES_OK(c, this->Geometry(x.shape(), "up_align2nat", &g));
    Tensor* y = nullptr;
    OP_REQUIRES_OK(c, c->allocate_output(0, DenseOutputShape(g), &y));
    if (y->NumElements() == 0) return;
    OP_REQUIRES_OK(c, (Runner<Device, T>::Forward(c, g, this->pad_, x, y)));
  }
};

template <typename Device, typename T>
class UpAlign2NatGradOp : public UpAlign2NatBase<Device, T> {
 public:
  using UpAlign2NatBase<Device, T>::UpAlign2NatBase;
  void Compute(OpKernelContext* c) override {
    UpGeometry g;
    Tensor* dx = nullptr;
    OP_REQUIRES_OK(c, this->PrepareGradient(c, 1, "UpAlign2NatGrad",
                                            DenseOutputShape, &g, &dx));
    if (dx->NumElements() == 0) return;
    OP_REQUIRES_OK(c, (Runner<Device, T>::Backward(c, g, c->input(0), dx)));
  }
};

Status CheckIndicesShape(const Tensor& indices) {
  if (indices.dims() != 2 || indices.dim_size(1) != 3) {
    return InvalidArgument("up_align2nat_gather: indices must have shape "
                           "[K, 3] with rows (n, y, x), got shape ",
                           indices.shape().DebugString(), ".");
  }
  return Status();
}

template <typename Device, typename T>
class UpAlign2NatGatherOp : public UpAlign2NatBase<Device, T> {
 public:
  using UpAlign2NatBase<Device, T>::UpAlign2NatBase;
  void Compute(OpKernelContext* c) override {
    const Tensor& x = c->input(0);
    const Tensor& indices = c->input(1);
    OP_REQUIRES_OK(c, CheckIndicesShape(indices));
    UpGeometry g;
    OP_REQUIRES_OK(c, this->Geometry(x.shape(), "up_align2nat_gather", &g));
    Tensor* y = nullptr;
    OP_REQUIRES_OK(c, c->allocate_output(
                          0,
                          TensorShape({indices.dim_size(0), g.out_window,
                                       g.out_window}),
                          &y));
    if (y->NumElements() == 0) return;
    OP_REQUIRES_OK(c, (Runner<Device, T>::GatherForward(c, g, this->pad_, x,
                                                        indices, y)));
  }
};

template <typename Device, typename T>
class UpAlign2NatGatherGradOp : public UpAlign2NatBase<Device, T> {
 public:
  using UpAlign2NatBase<Device, T>::UpAlign2NatBase;
  void Compute(OpKernelContext* c) override {
    const Tensor& indices = c->input(1);
    OP_REQUIRES_OK(c, CheckIndicesShape(indices));
    const int64_t num_windows = indices.dim_size(0);
    UpGeometry g;
    Tensor* dx = nullptr;
    OP_REQUIRES_OK(
        c, this->PrepareGradient(
               c, 2, "UpAlign2NatGatherGrad",
               [num_windows](const UpGeometry& g) {
                 return TensorShape({num_windows, g.out_window, g.out_window});
               },
               &g, &dx));
    if (dx->NumElements() == 0) return;
    OP_REQUIRES_OK(c, (Runner<Device, T>::GatherBackward(c, g, c->input(0),
                                                         indices, dx)));
  }
};

#define REGISTER_CPU(T)                                                      \
  REGISTER_KERNEL_BUILDER(                                                   \
      Name("UpAlign2Nat").Device(DEVICE_CPU).TypeConstraint<T>("T"),         \
      UpAlign2NatOp<CpuDevice, T>);                                          \
  REGISTER_KERNEL_BUILDER(                                                   \
      Name("UpAlign2NatGrad").Device(DEVICE_CPU).TypeConstraint<T>("T"),     \
      UpAlign2NatGradOp<CpuDevice, T>);                                      \
  REGISTER_KERNEL_BUILDER(                                                   \
      Name("UpAlign2NatGather").Device(DEVICE_CPU).TypeConstraint<T>("T"),   \
      UpAlign2NatGatherOp<CpuDevice, T>);                                    \
  REGISTER_KERNEL_BUILDER(Name("UpAlign2NatGatherGrad")                      \
                              .Device(DEVICE_CPU)                            \
                              .TypeConstraint<T>("T"),                       \
                          UpAlign2NatGatherGradOp<CpuDevice, T>);
REGISTER_CPU(float);
REGISTER_CPU(double);
#undef REGISTER_CPU

#if GOOGLE_CUDA
using ::tensorflow::DEVICE_GPU;
#define REGISTER_GPU(T)                                                      \
  REGISTER_KERNEL_BUILDER(                                                   \
      Name("UpAlign2Nat").Device(DEVICE_GPU).TypeConstraint<T>("T"),         \
      UpAlign2NatOp<GpuDevice, T>);                                          \
  REGISTER_KERNEL_BUILDER(Name("UpAlign2NatGrad")                            \
                              .Device(DEVICE_GPU)                            \
                              .TypeConstraint<T>("T")                        \
                              .HostMemory("x_shape"),                        \
                          UpAlign2NatGradOp<GpuDevice, T>);                  \
  REGISTER_KERNEL_BUILDER(                                                   \
      Name("UpAlign2NatGather").Device(DEVICE_GPU).TypeConstraint<T>("T"),   \
      UpAlign2NatGatherOp<GpuDevice, T>);                                    \
  REGISTER_KERNEL_BUILDER(Name("UpAlign2NatGatherGrad")                      \
                              .Device(DEVICE_GPU)                            \
                              .TypeConstraint<T>("T")                        \
                              .HostMemory("x_shape"),                        \
                          UpAlign2NatGatherGradOp<GpuDevice, T>);
REGISTER_GPU(float);
REGISTER_GPU(double);
#undef REGISTER_GPU
#endif  // GOOGLE_CUDA

}  // namespace
}  // namespace tensormask
