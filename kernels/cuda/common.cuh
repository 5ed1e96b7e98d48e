// What the kernels of this directory share: f32 and bf16 storage with f32 arithmetic (bf16
// as raw 16-bit words, so no CUDA headers are needed; rounding to nearest even), grid-stride
// loops, and block reductions through shared memory (blockDim.x a power of two, at most
// 256; every thread of the block must call them, as __syncthreads requires).
#pragma once

__device__ __forceinline__ float ld(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float ld(const unsigned short* p, long long i) {
    return __uint_as_float(((unsigned int)p[i]) << 16);
}
__device__ __forceinline__ void st(float* p, long long i, float v) { p[i] = v; }
__device__ __forceinline__ void st(unsigned short* p, long long i, float v) {
    unsigned int u = __float_as_uint(v);
    if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu)) { p[i] = 0x7fc0; return; }  // NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    p[i] = (unsigned short)(u >> 16);
}

#define GRID_LOOP(i, total) \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (total); i += (long long)gridDim.x * blockDim.x)

// Blocks take rows in turn: row = blockIdx.x, blockIdx.x + gridDim.x, ...
#define BLOCK_LOOP(row, rows) for (long long row = blockIdx.x; row < (rows); row += gridDim.x)

// The sum (or maximum) over the block of each thread's v, returned to every thread. `buf`
// is a __shared__ array of blockDim.x floats; it may be reused as soon as this returns.
__device__ __forceinline__ float block_sum(float v, float* buf) {
    buf[threadIdx.x] = v;
    __syncthreads();
    for (unsigned half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) buf[threadIdx.x] += buf[threadIdx.x + half];
        __syncthreads();
    }
    float r = buf[0];
    __syncthreads();
    return r;
}

__device__ __forceinline__ float block_max(float v, float* buf) {
    buf[threadIdx.x] = v;
    __syncthreads();
    for (unsigned half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) buf[threadIdx.x] = fmaxf(buf[threadIdx.x], buf[threadIdx.x + half]);
        __syncthreads();
    }
    float r = buf[0];
    __syncthreads();
    return r;
}

