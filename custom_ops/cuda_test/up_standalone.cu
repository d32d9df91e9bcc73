// extern "C" entry points over the up_align2nat CUDA launchers, so that
// run_up_align2nat_kernels.py can drive them with ctypes and CuPy device
// memory without TensorFlow. Built as one translation unit with the kernels:
//   nvcc -std=c++17 -O3 -Xcompiler -fPIC --expt-relaxed-constexpr -shared \
//     -arch=sm_90 custom_ops/cuda_test/up_standalone.cu \
//     -o libup_align2nat_standalone.so
// Every entry returns a cudaError_t as int (0 = success); pointers are device
// pointers, `stream` a cudaStream_t (0 = the legacy default stream).
#include <cstdint>

#include "../kernels/up_align2nat_cuda.cu.cc"

namespace {

// The geometry the op wrapper builds; out_window -1 when lam * S is not
// whole (the entries then return cudaErrorInvalidValue).
tensormask::UpGeometry Geom(int64_t n, int64_t h, int64_t w, int s,
                            int lam_num, int lam_den, int nearest) {
  tensormask::UpGeometry g;
  g.batch = n;
  g.height = h;
  g.width = w;
  g.window = s;
  g.lam_num = lam_num;
  g.lam_den = lam_den;
  g.nearest = nearest != 0;
  g.out_window = tensormask::UpOutputWindow(s, lam_num, lam_den);
  return g;
}

}  // namespace

#define GEOMETRY_ARGS                                                   \
  int64_t n, int64_t h, int64_t w, int s, int lam_num, int lam_den,     \
      int nearest
#define GEOMETRY Geom(n, h, w, s, lam_num, lam_den, nearest)
#define CHECK_GEOMETRY                                                  \
  if (GEOMETRY.out_window < 0) return static_cast<int>(cudaErrorInvalidValue)

#define UP_STANDALONE(T, SUFFIX)                                             \
  extern "C" int up_forward_##SUFFIX(GEOMETRY_ARGS, T pad, const void* x,    \
                                     void* y, void* stream) {                \
    CHECK_GEOMETRY;                                                          \
    return static_cast<int>(tensormask::LaunchUpAlign2NatForward<T>(         \
        GEOMETRY, pad, static_cast<const T*>(x), static_cast<T*>(y),         \
        static_cast<cudaStream_t>(stream)));                                 \
  }                                                                          \
  extern "C" int up_backward_##SUFFIX(GEOMETRY_ARGS, const void* dy,         \
                                      void* dx, void* stream) {              \
    CHECK_GEOMETRY;                                                          \
    return static_cast<int>(tensormask::LaunchUpAlign2NatBackward<T>(        \
        GEOMETRY, static_cast<const T*>(dy), static_cast<T*>(dx),            \
        static_cast<cudaStream_t>(stream)));                                 \
  }                                                                          \
  extern "C" int up_gather_forward_##SUFFIX(                                 \
      GEOMETRY_ARGS, T pad, const void* x, const void* indices, int64_t k,   \
      void* y, void* stream) {                                               \
    CHECK_GEOMETRY;                                                          \
    return static_cast<int>(tensormask::LaunchUpAlign2NatGatherForward<T>(   \
        GEOMETRY, pad, static_cast<const T*>(x),                             \
        static_cast<const int32_t*>(indices), k, static_cast<T*>(y),         \
        static_cast<cudaStream_t>(stream)));                                 \
  }                                                                          \
  extern "C" int up_gather_backward_##SUFFIX(                                \
      GEOMETRY_ARGS, const void* dy, const void* indices, int64_t k,         \
      void* dx, void* stream) {                                              \
    CHECK_GEOMETRY;                                                          \
    return static_cast<int>(tensormask::LaunchUpAlign2NatGatherBackward<T>(  \
        GEOMETRY, static_cast<const T*>(dy),                                 \
        static_cast<const int32_t*>(indices), k, static_cast<T*>(dx),        \
        static_cast<cudaStream_t>(stream)));                                 \
  }

UP_STANDALONE(float, f32)
UP_STANDALONE(double, f64)

extern "C" const char* up_error_string(int status) {
  return cudaGetErrorString(static_cast<cudaError_t>(status));
}
