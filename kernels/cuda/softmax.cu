// Softmax over the last axis of contiguous rows (the attention scores), forward and backward,
// f32 or bf16 storage with f32 arithmetic: one block per row, block reductions for the
// maximum and the sums. As the CPU kernel (kernels/src/softmax.rs): y = e^(x − max) · (1/Σ),
// and dx = y · (g − Σ g·y).

#include "common.cuh"

template <typename T>
__device__ void fwd(const T* x, T* y, long long rows, int cols) {
    __shared__ float buf[256];
    BLOCK_LOOP(r, rows) {
        const T* xr = x + r * cols;
        float m = -__int_as_float(0x7f800000);
        for (int i = threadIdx.x; i < cols; i += blockDim.x) m = fmaxf(m, ld(xr, i));
        m = block_max(m, buf);
        float s = 0.f;
        for (int i = threadIdx.x; i < cols; i += blockDim.x) s += expf(ld(xr, i) - m);
        float inv = 1.f / block_sum(s, buf);
        for (int i = threadIdx.x; i < cols; i += blockDim.x) st(y, r * cols + i, expf(ld(xr, i) - m) * inv);
    }
}

template <typename T>
__device__ void bwd(const T* y, const T* dy, T* dx, long long rows, int cols) {
    __shared__ float buf[256];
    BLOCK_LOOP(r, rows) {
        const T* yr = y + r * cols;
        const T* gr = dy + r * cols;
        float d = 0.f;
        for (int i = threadIdx.x; i < cols; i += blockDim.x) d += ld(gr, i) * ld(yr, i);
        d = block_sum(d, buf);
        for (int i = threadIdx.x; i < cols; i += blockDim.x) st(dx, r * cols + i, ld(yr, i) * (ld(gr, i) - d));
    }
}

#define INSTANCE(suffix, T)                                                                                               \
    extern "C" __global__ void et_softmax_fwd_##suffix(const T* x, T* y, long long rows, int cols) { fwd(x, y, rows, cols); } \
    extern "C" __global__ void et_softmax_bwd_##suffix(const T* y, const T* dy, T* dx, long long rows, int cols) { bwd(y, dy, dx, rows, cols); }
INSTANCE(f32, float)
INSTANCE(bf16, unsigned short)
#undef INSTANCE
