// GELU, erf form (PyTorch's default, timm's), forward and backward in one pass each, f32 or
// bf16 storage with f32 arithmetic: y = x·Φ(x), dx = g·(Φ(x) + x·φ(x)), as the CPU kernel
// (kernels/src/gelu.rs), with CUDA's erff in place of its polynomial.

#include "common.cuh"

#define ET_FRAC_1_SQRT_2 0.70710678118654752f
#define ET_INV_SQRT_2PI 0.39894228040143268f

template <typename T>
__device__ void fwd(const T* x, T* y, long long n) {
    GRID_LOOP(i, n) {
        float v = ld(x, i);
        st(y, i, 0.5f * v * (1.f + erff(v * ET_FRAC_1_SQRT_2)));
    }
}

template <typename T>
__device__ void bwd(const T* x, const T* dy, T* dx, long long n) {
    GRID_LOOP(i, n) {
        float v = ld(x, i);
        float d = 0.5f * (1.f + erff(v * ET_FRAC_1_SQRT_2)) + v * ET_INV_SQRT_2PI * expf(-0.5f * v * v);
        st(dx, i, ld(dy, i) * d);
    }
}

#define INSTANCE(suffix, T)                                                                              \
    extern "C" __global__ void et_gelu_fwd_##suffix(const T* x, T* y, long long n) { fwd(x, y, n); } \
    extern "C" __global__ void et_gelu_bwd_##suffix(const T* x, const T* dy, T* dx, long long n) { bwd(x, dy, dx, n); }
INSTANCE(f32, float)
INSTANCE(bf16, unsigned short)
#undef INSTANCE
