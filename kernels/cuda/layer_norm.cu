// LayerNorm with affine over the C axis of a contiguous (outer, C, inner) tensor, forward and
// backward, f32 or bf16 storage with f32 arithmetic: inner = 1 is the transformers' last-axis
// norm (rows of C: one block per row, block reductions), inner = H·W ConvNeXt's
// channels-first LayerNorm2d (one thread per (image, position) column, C strided by inner:
// neighbouring threads read neighbouring positions). Statistics are two-pass (mean, then the
// mean square deviation), as the CPU kernel's (kernels/src/layer_norm.rs).
//
// The backward writes dx and each column's (mean, 1/σ) into `stats`; the weight and bias
// gradients are then per-channel sums over all columns: partial sums over P slices of the
// columns (grid C·P, or channel groups × P for rows), added in slice order by a last kernel,
// so that they do not depend on scheduling.

#include "common.cuh"

// ---- inner = 1: one block per row ------------------------------------------------------

// Row r's mean and 1/σ, computed by the whole block (two passes, as the CPU kernel).
template <typename T>
__device__ void row_stats(const T* xr, int c, float eps, float* buf, float& mean, float& rstd) {
    float s = 0.f;
    for (int i = threadIdx.x; i < c; i += blockDim.x) s += ld(xr, i);
    mean = block_sum(s, buf) / c;
    float q = 0.f;
    for (int i = threadIdx.x; i < c; i += blockDim.x) { float d = ld(xr, i) - mean; q += d * d; }
    rstd = 1.f / sqrtf(block_sum(q, buf) / c + eps);
}

template <typename T>
__device__ void rows_fwd(const T* x, const T* w, const T* b, T* y, long long rows, int c, float eps) {
    __shared__ float buf[256];
    BLOCK_LOOP(r, rows) {
        const T* xr = x + r * c;
        float mean, rstd;
        row_stats(xr, c, eps, buf, mean, rstd);
        for (int i = threadIdx.x; i < c; i += blockDim.x) st(y, r * c + i, (ld(xr, i) - mean) * rstd * ld(w, i) + ld(b, i));
    }
}

// dx = rstd · (g·w − mean(g·w) − x̂ · mean(g·w·x̂)); stats[2r], stats[2r+1] = mean, rstd.
template <typename T>
__device__ void rows_bwd(const T* x, const T* w, const T* dy, T* dx, float* stats, long long rows, int c, float eps) {
    __shared__ float buf[256];
    BLOCK_LOOP(r, rows) {
        const T* xr = x + r * c;
        const T* gr = dy + r * c;
        float mean, rstd;
        row_stats(xr, c, eps, buf, mean, rstd);
        float a = 0.f, bs = 0.f;
        for (int i = threadIdx.x; i < c; i += blockDim.x) {
            float gw = ld(gr, i) * ld(w, i);
            a += gw;
            bs += gw * (ld(xr, i) - mean) * rstd;
        }
        a = block_sum(a, buf) / c;
        bs = block_sum(bs, buf) / c;
        for (int i = threadIdx.x; i < c; i += blockDim.x) {
            float xh = (ld(xr, i) - mean) * rstd;
            st(dx, r * c + i, rstd * (ld(gr, i) * ld(w, i) - a - xh * bs));
        }
        if (threadIdx.x == 0) { stats[2 * r] = mean; stats[2 * r + 1] = rstd; }
    }
}

// Partial weight and bias gradients for rows: block b takes channel group b % groups (32
// channels, one per lane of a warp: coalesced loads) and slice p = b / groups of the rows
// (blockDim / 32 row lanes). partial[p·2C + ch] = Σ g·x̂, partial[p·2C + C + ch] = Σ g.
template <typename T>
__device__ void rows_pgrad(const T* x, const T* dy, const float* stats, float* partial, long long rows, int c, int slices) {
    __shared__ float bw[256];
    __shared__ float bb[256];
    int groups = (c + 31) / 32;
    int g = blockIdx.x % groups, p = blockIdx.x / groups;
    int lane = threadIdx.x % 32, lanes = blockDim.x / 32;
    int ch = g * 32 + lane;
    float sw = 0.f, sb = 0.f;
    if (ch < c) {
        for (long long r = (long long)p * lanes + threadIdx.x / 32; r < rows; r += (long long)slices * lanes) {
            float gv = ld(dy, r * c + ch);
            sw += gv * (ld(x, r * c + ch) - stats[2 * r]) * stats[2 * r + 1];
            sb += gv;
        }
    }
    bw[threadIdx.x] = sw;
    bb[threadIdx.x] = sb;
    __syncthreads();
    if (threadIdx.x < 32 && ch < c) {
        float tw = 0.f, tb = 0.f;
        for (int l = 0; l < lanes; ++l) { tw += bw[l * 32 + threadIdx.x]; tb += bb[l * 32 + threadIdx.x]; }
        partial[(long long)p * 2 * c + ch] = tw;
        partial[(long long)p * 2 * c + c + ch] = tb;
    }
}

// ---- inner > 1: one thread per (outer, position) column ------------------------------------

// The mean and 1/σ of the column at `base` (stride `inner`), by one thread.
template <typename T>
__device__ void col_stats(const T* x, long long base, int c, long long inner, float eps, float& mean, float& rstd) {
    float s = 0.f;
    for (int ch = 0; ch < c; ++ch) s += ld(x, base + ch * inner);
    mean = s / c;
    float q = 0.f;
    for (int ch = 0; ch < c; ++ch) { float d = ld(x, base + ch * inner) - mean; q += d * d; }
    rstd = 1.f / sqrtf(q / c + eps);
}

template <typename T>
__device__ void cols_fwd(const T* x, const T* w, const T* b, T* y, long long outer, int c, long long inner, float eps) {
    GRID_LOOP(col, outer * inner) {
        long long o = col / inner, i = col % inner;
        long long base = o * c * inner + i;
        float mean, rstd;
        col_stats(x, base, c, inner, eps, mean, rstd);
        for (int ch = 0; ch < c; ++ch) st(y, base + ch * inner, (ld(x, base + ch * inner) - mean) * rstd * ld(w, ch) + ld(b, ch));
    }
}

template <typename T>
__device__ void cols_bwd(const T* x, const T* w, const T* dy, T* dx, float* stats, long long outer, int c, long long inner, float eps) {
    GRID_LOOP(col, outer * inner) {
        long long o = col / inner, i = col % inner;
        long long base = o * c * inner + i;
        float mean, rstd;
        col_stats(x, base, c, inner, eps, mean, rstd);
        float a = 0.f, bs = 0.f;
        for (int ch = 0; ch < c; ++ch) {
            float gw = ld(dy, base + ch * inner) * ld(w, ch);
            a += gw;
            bs += gw * (ld(x, base + ch * inner) - mean) * rstd;
        }
        a /= c;
        bs /= c;
        for (int ch = 0; ch < c; ++ch) {
            long long e = base + ch * inner;
            float xh = (ld(x, e) - mean) * rstd;
            st(dx, e, rstd * (ld(dy, e) * ld(w, ch) - a - xh * bs));
        }
        stats[2 * col] = mean;
        stats[2 * col + 1] = rstd;
    }
}

// Block b: channel b % C, slice p = b / C of the outer·inner columns (threads along the
// positions: coalesced).
template <typename T>
__device__ void cols_pgrad(const T* x, const T* dy, const float* stats, float* partial, long long outer, int c, long long inner, int slices) {
    __shared__ float buf[256];
    int ch = blockIdx.x % c, p = blockIdx.x / c;
    long long cols = outer * inner;
    float sw = 0.f, sb = 0.f;
    for (long long col = (long long)p * blockDim.x + threadIdx.x; col < cols; col += (long long)slices * blockDim.x) {
        long long e = (col / inner) * c * inner + (long long)ch * inner + col % inner;
        float gv = ld(dy, e);
        sw += gv * (ld(x, e) - stats[2 * col]) * stats[2 * col + 1];
        sb += gv;
    }
    sw = block_sum(sw, buf);
    sb = block_sum(sb, buf);
    if (threadIdx.x == 0) {
        partial[(long long)p * 2 * c + ch] = sw;
        partial[(long long)p * 2 * c + c + ch] = sb;
    }
}

// out[j] = Σ_p partial[p·n + j] for j < n = 2C (dw then db), in slice order.
template <typename T>
__device__ void pgrad_sum(const float* partial, T* out, int n, int slices) {
    GRID_LOOP(j, n) {
        float s = 0.f;
        for (int p = 0; p < slices; ++p) s += partial[(long long)p * n + j];
        st(out, j, s);
    }
}

#define INSTANCE(suffix, T)                                                                                                                   \
    extern "C" __global__ void et_ln_rows_fwd_##suffix(const T* x, const T* w, const T* b, T* y, long long rows, int c, float eps) {          \
        rows_fwd(x, w, b, y, rows, c, eps);                                                                                                   \
    }                                                                                                                                         \
    extern "C" __global__ void et_ln_rows_bwd_##suffix(const T* x, const T* w, const T* dy, T* dx, float* stats, long long rows, int c, float eps) { \
        rows_bwd(x, w, dy, dx, stats, rows, c, eps);                                                                                          \
    }                                                                                                                                         \
    extern "C" __global__ void et_ln_rows_pgrad_##suffix(const T* x, const T* dy, const float* stats, float* partial, long long rows, int c, int slices) { \
        rows_pgrad(x, dy, stats, partial, rows, c, slices);                                                                                   \
    }                                                                                                                                         \
    extern "C" __global__ void et_ln_cols_fwd_##suffix(const T* x, const T* w, const T* b, T* y, long long outer, int c, long long inner, float eps) { \
        cols_fwd(x, w, b, y, outer, c, inner, eps);                                                                                           \
    }                                                                                                                                         \
    extern "C" __global__ void et_ln_cols_bwd_##suffix(const T* x, const T* w, const T* dy, T* dx, float* stats, long long outer, int c, long long inner, float eps) { \
        cols_bwd(x, w, dy, dx, stats, outer, c, inner, eps);                                                                                  \
    }                                                                                                                                         \
    extern "C" __global__ void et_ln_cols_pgrad_##suffix(const T* x, const T* dy, const float* stats, float* partial, long long outer, int c, long long inner, int slices) { \
        cols_pgrad(x, dy, stats, partial, outer, c, inner, slices);                                                                           \
    }                                                                                                                                         \
    extern "C" __global__ void et_ln_pgrad_sum_##suffix(const float* partial, T* out, int n, int slices) { pgrad_sum(partial, out, n, slices); }
INSTANCE(f32, float)
INSTANCE(bf16, unsigned short)
#undef INSTANCE
