// Depthwise k×k convolution on NCHW planes (one filter per channel), forward and both
// gradients, for f32 and bf16 storage with f32 arithmetic. candle runs conv2d(groups = C) as
// C separate convolutions (docs/kernels.md): for ConvNeXt that is thousands of cuDNN calls a step.
// bf16 storage and the helpers: common.cuh.
// Plain direct kernels: one thread per output (forward) or input (input gradient) element,
// one block per (channel, tap) reduction for the weight and bias gradients.

#include "common.cuh"

// y[plane, oy, ox] = b[c] + Σ_ij x[plane, oy·s − p + i, ox·s − p + j] · w[c, i, j]
template <typename T>
__device__ void fwd(const T* x, const T* w, const T* b, T* y, int n, int c, int h, int wd, int k, int s, int p, int ho, int wo) {
    long long total = (long long)n * c * ho * wo;
    GRID_LOOP(idx, total) {
        int ox = idx % wo;
        long long t = idx / wo;
        int oy = t % ho;
        long long plane = t / ho;
        int ch = plane % c;
        const T* xp = x + plane * h * wd;
        long long wbase = (long long)ch * k * k;
        float acc = ld(b, ch);
        int iy0 = oy * s - p, ix0 = ox * s - p;
        for (int i = 0; i < k; ++i) {
            int iy = iy0 + i;
            if (iy < 0 || iy >= h) continue;
            for (int j = 0; j < k; ++j) {
                int ix = ix0 + j;
                if (ix < 0 || ix >= wd) continue;
                acc += ld(xp, (long long)iy * wd + ix) * ld(w, wbase + i * k + j);
            }
        }
        st(y, idx, acc);
    }
}

// dx[plane, iy, ix] = Σ over taps (i, j) whose output (oy, ox) reads (iy, ix): dy · w[c, i, j]
template <typename T>
__device__ void grad_input(const T* dy, const T* w, T* dx, int n, int c, int h, int wd, int k, int s, int p, int ho, int wo) {
    long long total = (long long)n * c * h * wd;
    GRID_LOOP(idx, total) {
        int ix = idx % wd;
        long long t = idx / wd;
        int iy = t % h;
        long long plane = t / h;
        int ch = plane % c;
        const T* dp = dy + plane * ho * wo;
        long long wbase = (long long)ch * k * k;
        float acc = 0.f;
        for (int i = 0; i < k; ++i) {
            int ny = iy + p - i;
            if (ny < 0 || ny % s) continue;
            int oy = ny / s;
            if (oy >= ho) continue;
            for (int j = 0; j < k; ++j) {
                int nx = ix + p - j;
                if (nx < 0 || nx % s) continue;
                int ox = nx / s;
                if (ox >= wo) continue;
                acc += ld(dp, (long long)oy * wo + ox) * ld(w, wbase + i * k + j);
            }
        }
        st(dx, idx, acc);
    }
}

// out[c·k² + i·k + j] = Σ_{n, oy, ox} dy · x[n, c, oy·s − p + i, ox·s − p + j] and
// out[c·k² + ... C·k² + c] = Σ dy (the bias): block b handles (c, tap) = (b / (k²+1), b % (k²+1)).
template <typename T>
__device__ void grad_weight(const T* dy, const T* x, T* out, int n, int c, int h, int wd, int k, int s, int p, int ho, int wo) {
    __shared__ float part[256];
    int kk = k * k;
    int ch = blockIdx.x / (kk + 1), tap = blockIdx.x % (kk + 1);
    int i = tap / k, j = tap % k;
    long long per_plane = (long long)ho * wo, total = (long long)n * per_plane;
    float acc = 0.f;
    for (long long e = threadIdx.x; e < total; e += blockDim.x) {
        long long img = e / per_plane;
        int r = e % per_plane, oy = r / wo, ox = r % wo;
        long long plane = img * c + ch;
        float g = ld(dy, plane * per_plane + r);
        if (tap == kk) { acc += g; continue; }
        int iy = oy * s - p + i, ix = ox * s - p + j;
        if (iy < 0 || iy >= h || ix < 0 || ix >= wd) continue;
        acc += g * ld(x, plane * h * wd + (long long)iy * wd + ix);
    }
    part[threadIdx.x] = acc;
    __syncthreads();
    for (unsigned half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) part[threadIdx.x] += part[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) st(out, tap == kk ? (long long)c * kk + ch : (long long)ch * kk + tap, part[0]);
}

#define ARGS int n, int c, int h, int wd, int k, int s, int p, int ho, int wo
#define PASS n, c, h, wd, k, s, p, ho, wo
#define INSTANCE(suffix, T)                                                                                        \
    extern "C" __global__ void et_dw_fwd_##suffix(const T* x, const T* w, const T* b, T* y, ARGS) { fwd(x, w, b, y, PASS); } \
    extern "C" __global__ void et_dw_gin_##suffix(const T* dy, const T* w, T* dx, ARGS) { grad_input(dy, w, dx, PASS); }   \
    extern "C" __global__ void et_dw_gw_##suffix(const T* dy, const T* x, T* out, ARGS) { grad_weight(dy, x, out, PASS); }
INSTANCE(f32, float)
INSTANCE(bf16, unsigned short)
#undef INSTANCE
#undef ARGS
#undef PASS
