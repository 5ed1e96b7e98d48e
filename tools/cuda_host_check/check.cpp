// Runs the CUDA kernels of kernels/cuda/*.cu on the CPU and compares them with naive
// references computed in double from the same (f32, or bf16-rounded) inputs; the references
// mirror the CPU kernels of kernels/src/ (same formulas, same two-pass statistics). It checks
// the kernels' index arithmetic, loops and reductions where no GPU is at hand;
// scripts/device-check.sh checks them on a GPU (models/tests/device_ops.rs).
//
// How a block is emulated: each CUDA thread of a block is an OS thread; threadIdx is
// thread-local, blockIdx/blockDim/gridDim are set before the block's threads start, a
// __shared__ array is a function-local static (one per kernel, shared by the block's threads,
// as on the GPU) and __syncthreads() is a std::barrier over the block's threads. Blocks run one
// after the other. So kernels with blockDim > 1 and shared-memory reductions run with real
// barrier semantics (a missing __syncthreads shows as a data race, a wrong reduction index as
// a wrong sum), and launches use several blocks with fewer threads than elements, so that the
// grid-stride and block-per-row loops take more than one turn.
//
// Run: tools/cuda_host_check/run.sh (exits non-zero on any mismatch).
#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <math.h>
#include <random>
#include <thread>
#include <type_traits>
#include <vector>

struct Dim3 { unsigned x = 1, y = 1, z = 1; };
static Dim3 blockIdx, blockDim, gridDim;
static thread_local Dim3 threadIdx;
static std::barrier<>* block_barrier = nullptr;
#define __device__
#define __global__
#define __forceinline__ inline
#define __shared__ static
static inline void __syncthreads() { block_barrier->arrive_and_wait(); }
static inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
static inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
static inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
#include "../../kernels/cuda/common.cuh"
namespace dw {
#include "../../kernels/cuda/depthwise.cu"
}
namespace ln {
#include "../../kernels/cuda/layer_norm.cu"
}
namespace sm {
#include "../../kernels/cuda/softmax.cu"
}
namespace ge {
#include "../../kernels/cuda/gelu.cu"
}

// Runs `f` as `blocks` blocks of `threads` threads.
template <typename F> static void launch(unsigned blocks, unsigned threads, F f) {
    gridDim.x = blocks;
    blockDim.x = threads;
    for (unsigned b = 0; b < blocks; ++b) {
        blockIdx.x = b;
        std::barrier<> bar(threads);
        block_barrier = &bar;
        std::vector<std::thread> ts;
        for (unsigned t = 0; t < threads; ++t) ts.emplace_back([&f, t] { threadIdx.x = t; f(); });
        for (auto& t : ts) t.join();
    }
}

// ---- storage: f32 as it is, bf16 as 16-bit words -------------------------------------------

template <typename S> static std::vector<S> enc(const std::vector<float>& v) {
    std::vector<S> o(v.size());
    for (size_t i = 0; i < v.size(); ++i) st(o.data(), i, v[i]);
    return o;
}
template <typename S> static std::vector<float> dec(const std::vector<S>& v) {
    std::vector<float> o(v.size());
    for (size_t i = 0; i < v.size(); ++i) o[i] = ld(v.data(), i);
    return o;
}
template <typename S> constexpr bool is_f32 = std::is_same_v<S, float>;
// Calls the f32 or bf16 entry point of kernel `name`.
#define CALL(name, ...) do { if constexpr (is_f32<S>) name##_f32(__VA_ARGS__); else name##_bf16(__VA_ARGS__); } while (0)

static std::mt19937 rng(7);
static std::vector<float> rnd(size_t n, float scale) {
    std::uniform_real_distribution<float> u(-scale, scale);
    std::vector<float> v(n);
    for (auto& e : v) e = u(rng);
    return v;
}

// Element by element: max over i of |a_i − r_i| / max(1, |r_i|) (relative where |r_i| > 1,
// absolute below). A kernel that writes too few elements, or the wrong ones, fails too.
static double err(const std::vector<float>& a, const std::vector<double>& r) {
    if (a.size() != r.size()) return INFINITY;
    double m = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        double e = std::fabs(a[i] - r[i]) / std::fmax(1.0, std::fabs(r[i]));
        m = std::isnan(e) ? INFINITY : std::fmax(m, e);
    }
    return m;
}

static int fails = 0;
static void report(const char* what, bool bf16, std::initializer_list<std::pair<const char*, double>> errs) {
    double tol = bf16 ? 5e-3 : 1e-6;
    bool ok = true;
    for (auto& e : errs) ok = ok && e.second <= tol;
    std::printf("%s %s %s:", ok ? "ok  " : "FAIL", what, bf16 ? "bf16" : "f32");
    for (auto& e : errs) std::printf(" %s %.1e", e.first, e.second);
    std::printf(" (tolerance %.0e)\n", tol);
    fails += !ok;
}

// ---- depthwise convolution -----------------------------------------------------------------

template <typename S> static void check_depthwise(int n, int c, int h, int w, int k, int s, int p) {
    int ho = (h + 2 * p - k) / s + 1, wo = (w + 2 * p - k) / s + 1;
    auto x = dec(enc<S>(rnd((size_t)n * c * h * w, 1))), wt = dec(enc<S>(rnd((size_t)c * k * k, 1)));
    auto b = dec(enc<S>(rnd(c, 1))), dy = dec(enc<S>(rnd((size_t)n * c * ho * wo, 1)));
    std::vector<double> y_ref((size_t)n * c * ho * wo), dx_ref(x.size()), dw_ref(c * k * k + c);
    for (int im = 0; im < n; ++im) for (int ch = 0; ch < c; ++ch) for (int oy = 0; oy < ho; ++oy) for (int ox = 0; ox < wo; ++ox) {
        size_t o = (((size_t)im * c + ch) * ho + oy) * wo + ox;
        y_ref[o] += b[ch];
        dw_ref[c * k * k + ch] += dy[o];
        for (int i = 0; i < k; ++i) for (int j = 0; j < k; ++j) {
            int iy = oy * s - p + i, ix = ox * s - p + j;
            if (iy < 0 || iy >= h || ix < 0 || ix >= w) continue;
            size_t xi = (((size_t)im * c + ch) * h + iy) * w + ix;
            y_ref[o] += (double)x[xi] * wt[ch * k * k + i * k + j];
            dx_ref[xi] += (double)dy[o] * wt[ch * k * k + i * k + j];
            dw_ref[ch * k * k + i * k + j] += (double)dy[o] * x[xi];
        }
    }
    auto X = enc<S>(x), W = enc<S>(wt), B = enc<S>(b), DY = enc<S>(dy);
    std::vector<S> Y(y_ref.size()), DX(x.size()), DW(dw_ref.size());
    launch(3, 32, [&] { CALL(dw::et_dw_fwd, X.data(), W.data(), B.data(), Y.data(), n, c, h, w, k, s, p, ho, wo); });
    launch(2, 32, [&] { CALL(dw::et_dw_gin, DY.data(), W.data(), DX.data(), n, c, h, w, k, s, p, ho, wo); });
    launch(c * (k * k + 1), 32, [&] { CALL(dw::et_dw_gw, DY.data(), X.data(), DW.data(), n, c, h, w, k, s, p, ho, wo); });
    char what[96];
    std::snprintf(what, sizeof what, "depthwise n%d c%d %dx%d k%d s%d p%d", n, c, h, w, k, s, p);
    report(what, !is_f32<S>, {{"fwd", err(dec(Y), y_ref)}, {"grad input", err(dec(DX), dx_ref)}, {"grad weight+bias", err(dec(DW), dw_ref)}});
}

// ---- layer norm over C of (outer, C, inner) ------------------------------------------------

template <typename S> static void check_layer_norm(int outer, int c, int inner, int slices) {
    const float eps = 1e-6f;
    size_t len = (size_t)outer * c * inner, cols = (size_t)outer * inner;
    auto x = dec(enc<S>(rnd(len, 3))), dy = dec(enc<S>(rnd(len, 1)));
    auto w = dec(enc<S>(rnd(c, 1))), b = dec(enc<S>(rnd(c, 1)));
    std::vector<double> y_ref(len), dx_ref(len), pg_ref(2 * c);
    for (size_t col = 0; col < cols; ++col) {
        size_t base = (col / inner) * c * inner + col % inner;
        auto at = [&](int ch) { return base + (size_t)ch * inner; };
        double mean = 0, var = 0, a = 0, bs = 0;
        for (int ch = 0; ch < c; ++ch) mean += x[at(ch)];
        mean /= c;
        for (int ch = 0; ch < c; ++ch) var += (x[at(ch)] - mean) * (x[at(ch)] - mean);
        double rstd = 1 / std::sqrt(var / c + eps);
        for (int ch = 0; ch < c; ++ch) {
            double xh = (x[at(ch)] - mean) * rstd, g = dy[at(ch)];
            y_ref[at(ch)] = xh * w[ch] + b[ch];
            a += g * w[ch];
            bs += g * w[ch] * xh;
            pg_ref[ch] += g * xh;
            pg_ref[c + ch] += g;
        }
        for (int ch = 0; ch < c; ++ch) {
            double xh = (x[at(ch)] - mean) * rstd;
            dx_ref[at(ch)] = rstd * (dy[at(ch)] * w[ch] - a / c - xh * bs / c);
        }
    }
    auto X = enc<S>(x), W = enc<S>(w), B = enc<S>(b), DY = enc<S>(dy);
    std::vector<S> Y(len), DX(len), PG(2 * c);
    std::vector<float> stats(2 * cols), partial((size_t)slices * 2 * c);
    if (inner == 1) {
        launch(3, 64, [&] { CALL(ln::et_ln_rows_fwd, X.data(), W.data(), B.data(), Y.data(), outer, c, eps); });
        launch(2, 64, [&] { CALL(ln::et_ln_rows_bwd, X.data(), W.data(), DY.data(), DX.data(), stats.data(), outer, c, eps); });
        launch((c + 31) / 32 * slices, 64, [&] { CALL(ln::et_ln_rows_pgrad, X.data(), DY.data(), stats.data(), partial.data(), outer, c, slices); });
    } else {
        launch(3, 32, [&] { CALL(ln::et_ln_cols_fwd, X.data(), W.data(), B.data(), Y.data(), outer, c, inner, eps); });
        launch(2, 32, [&] { CALL(ln::et_ln_cols_bwd, X.data(), W.data(), DY.data(), DX.data(), stats.data(), outer, c, inner, eps); });
        launch(c * slices, 64, [&] { CALL(ln::et_ln_cols_pgrad, X.data(), DY.data(), stats.data(), partial.data(), outer, c, inner, slices); });
    }
    launch(2, 32, [&] { CALL(ln::et_ln_pgrad_sum, partial.data(), PG.data(), 2 * c, slices); });
    char what[96];
    std::snprintf(what, sizeof what, "layer norm outer %d C %d inner %d, %d slices", outer, c, inner, slices);
    report(what, !is_f32<S>, {{"fwd", err(dec(Y), y_ref)}, {"grad input", err(dec(DX), dx_ref)}, {"grad weight+bias", err(dec(PG), pg_ref)}});
}

// ---- softmax over the last axis ------------------------------------------------------------

template <typename S> static void check_softmax(int rows, int cols) {
    auto x = dec(enc<S>(rnd((size_t)rows * cols, 20))), dy = dec(enc<S>(rnd((size_t)rows * cols, 1)));
    std::vector<double> y_ref(x.size());
    for (int r = 0; r < rows; ++r) {
        double m = -INFINITY, s = 0;
        for (int i = 0; i < cols; ++i) m = std::fmax(m, x[r * cols + i]);
        for (int i = 0; i < cols; ++i) s += std::exp(x[r * cols + i] - m);
        for (int i = 0; i < cols; ++i) y_ref[r * cols + i] = std::exp(x[r * cols + i] - m) / s;
    }
    auto X = enc<S>(x), DY = enc<S>(dy);
    std::vector<S> Y(x.size()), DX(x.size());
    launch(2, 64, [&] { CALL(sm::et_softmax_fwd, X.data(), Y.data(), rows, cols); });
    // The backward takes the forward's output as stored: the reference uses the same values.
    auto y = dec(Y);
    std::vector<double> dx_ref(x.size());
    for (int r = 0; r < rows; ++r) {
        double d = 0;
        for (int i = 0; i < cols; ++i) d += (double)dy[r * cols + i] * y[r * cols + i];
        for (int i = 0; i < cols; ++i) dx_ref[r * cols + i] = y[r * cols + i] * (dy[r * cols + i] - d);
    }
    launch(3, 64, [&] { CALL(sm::et_softmax_bwd, Y.data(), DY.data(), DX.data(), rows, cols); });
    char what[96];
    std::snprintf(what, sizeof what, "softmax %d rows of %d", rows, cols);
    report(what, !is_f32<S>, {{"fwd", err(y, y_ref)}, {"grad", err(dec(DX), dx_ref)}});
}

// ---- GELU ----------------------------------------------------------------------------------

template <typename S> static void check_gelu(int n) {
    auto x = dec(enc<S>(rnd(n, 6))), dy = dec(enc<S>(rnd(n, 1)));
    std::vector<double> y_ref(n), dx_ref(n);
    for (int i = 0; i < n; ++i) {
        double v = x[i], phi = 0.5 * (1 + std::erf(v / std::sqrt(2.0)));
        y_ref[i] = v * phi;
        dx_ref[i] = dy[i] * (phi + v * std::exp(-0.5 * v * v) / std::sqrt(2 * M_PI));
    }
    auto X = enc<S>(x), DY = enc<S>(dy);
    std::vector<S> Y(n), DX(n);
    launch(3, 64, [&] { CALL(ge::et_gelu_fwd, X.data(), Y.data(), n); });
    launch(2, 64, [&] { CALL(ge::et_gelu_bwd, X.data(), DY.data(), DX.data(), n); });
    char what[96];
    std::snprintf(what, sizeof what, "gelu %d values", n);
    report(what, !is_f32<S>, {{"fwd", err(dec(Y), y_ref)}, {"grad", err(dec(DX), dx_ref)}});
}

template <typename S> static void check_all() {
    check_depthwise<S>(2, 3, 9, 7, 7, 1, 3);   // ConvNeXt 7×7
    check_depthwise<S>(2, 4, 8, 11, 3, 2, 1);  // strided
    check_depthwise<S>(1, 2, 5, 5, 5, 2, 2);
    check_depthwise<S>(3, 2, 4, 6, 3, 1, 0);   // no padding
    check_depthwise<S>(1, 1, 13, 3, 3, 3, 1);  // stride > 2, odd sizes
    check_layer_norm<S>(7, 37, 1, 1);          // last-axis norm, rows shared by 3 blocks
    check_layer_norm<S>(5, 300, 1, 3);         // C > blockDim, channel groups × 3 slices
    check_layer_norm<S>(4, 3, 1, 2);
    check_layer_norm<S>(2, 5, 7, 1);           // channels-first (ConvNeXt's LayerNorm2d)
    check_layer_norm<S>(3, 17, 13, 3);
    check_layer_norm<S>(1, 96, 4, 2);
    check_layer_norm<S>(41, 70, 1, 3);         // each row lane and slice takes several rows
    check_layer_norm<S>(4, 6, 50, 3);          // each thread of a slice takes several columns
    check_softmax<S>(6, 49);                   // Swin's 7×7 windows
    check_softmax<S>(3, 197);                  // DeiT's tokens, > blockDim
    check_softmax<S>(5, 5);
    check_gelu<S>(1000);
}

int main() {
    check_all<float>();
    check_all<unsigned short>();
    std::printf(fails ? "%d checks FAILED\n" : "all checks passed\n", fails);
    return fails ? 1 : 0;
}
