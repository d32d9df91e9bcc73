// extern "C" entry points over the CUDA launchers, so that
// run_cuda_kernels.py can drive them with ctypes and CuPy device memory
// without TensorFlow. Built as one translation unit with the kernels:
//   nvcc -std=c++17 -O3 -Xcompiler -fPIC --expt-relaxed-constexpr -shared \
//     -arch=sm_90 custom_ops/cuda_test/standalone.cu \
//     -o libswap_align2nat_standalone.so
// Every entry returns a cudaError_t as int (0 = success); pointers are device
// pointers, `stream` a cudaStream_t (0 = the legacy default stream).
#include <cstddef>
#include <cstdint>

#include "../kernels/swap_align2nat_cuda.cu.cc"
#include "../kernels/project_swap_align2nat_cuda.cu.cc"

namespace {

tensormask::Geometry Geom(int64_t n, int64_t h, int64_t w, int s, int lam) {
  return tensormask::MakeGeometry(n, h, w, s, lam);
}

tensormask::ProjectionGeometry ProjGeom(int64_t n, int64_t h, int64_t w,
                                        int64_t c, int s, int lam) {
  return {tensormask::MakeGeometry(n, h, w, s, lam), c};
}

}  // namespace

#define TENSORMASK_STANDALONE(T, SUFFIX)                                      \
  extern "C" int sa2n_forward_##SUFFIX(int64_t n, int64_t h, int64_t w,       \
                                       int s, int lam, T pad, const void* x,  \
                                       void* y, void* stream) {               \
    return static_cast<int>(tensormask::LaunchSwapAlign2NatForward<T>(        \
        Geom(n, h, w, s, lam), pad, static_cast<const T*>(x),                 \
        static_cast<T*>(y), static_cast<cudaStream_t>(stream)));              \
  }                                                                           \
  extern "C" int sa2n_backward_##SUFFIX(int64_t n, int64_t h, int64_t w,      \
                                        int s, int lam, const void* dy,       \
                                        void* dx, void* stream) {             \
    return static_cast<int>(tensormask::LaunchSwapAlign2NatBackward<T>(       \
        Geom(n, h, w, s, lam), static_cast<const T*>(dy),                     \
        static_cast<T*>(dx), static_cast<cudaStream_t>(stream)));             \
  }                                                                           \
  extern "C" int sa2n_gather_forward_##SUFFIX(                                \
      int64_t n, int64_t h, int64_t w, int s, int lam, T pad, const void* x,  \
      const void* indices, int64_t k, void* y, void* stream) {                \
    return static_cast<int>(tensormask::LaunchSwapAlign2NatGatherForward<T>(  \
        Geom(n, h, w, s, lam), pad, static_cast<const T*>(x),                 \
        static_cast<const int32_t*>(indices), k, static_cast<T*>(y),          \
        static_cast<cudaStream_t>(stream)));                                  \
  }                                                                           \
  extern "C" int sa2n_gather_backward_##SUFFIX(                               \
      int64_t n, int64_t h, int64_t w, int s, int lam, const void* dy,        \
      const void* indices, int64_t k, void* workspace, void* dx,              \
      void* stream) {                                                         \
    return static_cast<int>(tensormask::LaunchSwapAlign2NatGatherBackward<T>( \
        Geom(n, h, w, s, lam), static_cast<const T*>(dy),                     \
        static_cast<const int32_t*>(indices), k, workspace,                   \
        static_cast<T*>(dx), static_cast<cudaStream_t>(stream)));             \
  }

// project_swap_align2nat_gather: features [n, h, w, c], weights [s*s, c];
// path: 0 = auto, 1 = direct, 2 = through the projection.
#define TENSORMASK_STANDALONE_PROJECTION(T, SUFFIX)                           \
  extern "C" size_t psa2n_forward_workspace_bytes_##SUFFIX(                   \
      int64_t n, int64_t h, int64_t w, int64_t c, int s, int lam,             \
      int64_t k, int path) {                                                  \
    return tensormask::ProjectSwapAlign2NatGatherForwardWorkspaceBytes<T>(    \
        ProjGeom(n, h, w, c, s, lam), k,                                      \
        static_cast<tensormask::ProjectForwardPath>(path));                   \
  }                                                                           \
  extern "C" int psa2n_forward_##SUFFIX(                                      \
      int64_t n, int64_t h, int64_t w, int64_t c, int s, int lam, T pad,      \
      const void* f, const void* weights, const void* bias,                   \
      const void* indices, int64_t k, void* workspace, void* out,             \
      void* stream, int path) {                                               \
    return static_cast<int>(                                                  \
        tensormask::LaunchProjectSwapAlign2NatGatherForward<T>(               \
            ProjGeom(n, h, w, c, s, lam), pad, static_cast<const T*>(f),      \
            static_cast<const T*>(weights), static_cast<const T*>(bias),      \
            static_cast<const int32_t*>(indices), k, workspace,               \
            static_cast<T*>(out), static_cast<cudaStream_t>(stream),          \
            static_cast<tensormask::ProjectForwardPath>(path)));              \
  }                                                                           \
  extern "C" size_t psa2n_backward_workspace_bytes_##SUFFIX(                  \
      int64_t n, int64_t h, int64_t w, int64_t c, int s, int lam,             \
      int64_t k) {                                                            \
    return tensormask::ProjectSwapAlign2NatGatherBackwardWorkspaceBytes<T>(   \
        ProjGeom(n, h, w, c, s, lam), k);                                     \
  }                                                                           \
  extern "C" int psa2n_backward_##SUFFIX(                                     \
      int64_t n, int64_t h, int64_t w, int64_t c, int s, int lam,             \
      const void* dy, const void* f, const void* weights,                     \
      const void* indices, int64_t k, void* workspace, void* df, void* dw,    \
      void* dbias, void* stream, int accumulate) {                            \
    return static_cast<int>(                                                  \
        tensormask::LaunchProjectSwapAlign2NatGatherBackward<T>(              \
            ProjGeom(n, h, w, c, s, lam), static_cast<const T*>(dy),          \
            static_cast<const T*>(f), static_cast<const T*>(weights),         \
            static_cast<const int32_t*>(indices), k, workspace,               \
            static_cast<T*>(df), static_cast<T*>(dw), static_cast<T*>(dbias), \
            static_cast<cudaStream_t>(stream), accumulate != 0));             \
  }

TENSORMASK_STANDALONE(float, f32)
TENSORMASK_STANDALONE(double, f64)
#undef TENSORMASK_STANDALONE
TENSORMASK_STANDALONE_PROJECTION(float, f32)
TENSORMASK_STANDALONE_PROJECTION(double, f64)
#undef TENSORMASK_STANDALONE_PROJECTION

extern "C" size_t sa2n_gather_backward_workspace_bytes(int64_t n, int64_t h,
                                                       int64_t w, int s,
                                                       int lam, int64_t k) {
  return tensormask::SwapAlign2NatGatherBackwardWorkspaceBytes(
      Geom(n, h, w, s, lam), k);
}

extern "C" const char* sa2n_error_string(int status) {
  return cudaGetErrorString(static_cast<cudaError_t>(status));
}
