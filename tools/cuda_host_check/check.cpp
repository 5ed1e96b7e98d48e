// Runs kernels/cuda/*.cu on the CPU with one thread per block (grid-stride loops and the
// shared-memory reduction then degenerate to sequential loops) and compares them with naive
// scatter-form references. It checks the kernels' index arithmetic where no GPU is at hand;
// scripts/device-check.sh checks them on a GPU. Run: tools/cuda_host_check/run.sh
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

struct Dim3 { unsigned x = 1, y = 1, z = 1; };
static Dim3 blockIdx, threadIdx, blockDim, gridDim;
#define __device__
#define __global__
#define __forceinline__ inline
#define __shared__ static
static inline void __syncthreads() {}
static inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
static inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
#include "../../kernels/cuda/depthwise.cu"

template <typename F> static void launch(unsigned blocks, F f) {
    gridDim.x = blocks; blockDim.x = 1; threadIdx.x = 0;
    for (unsigned b = 0; b < blocks; ++b) { blockIdx.x = b; f(); }
}

static int check(int n, int c, int h, int w, int k, int s, int p, bool bf16) {
    int ho = (h + 2 * p - k) / s + 1, wo = (w + 2 * p - k) / s + 1;
    std::mt19937 rng(n * 1000 + c * 100 + h + k + s);
    std::uniform_real_distribution<float> u(-1, 1);
    auto rnd = [&](size_t len) { std::vector<float> v(len); for (auto& e : v) e = u(rng); return v; };
    auto x = rnd((size_t)n * c * h * w), wt = rnd((size_t)c * k * k), b = rnd(c), dy = rnd((size_t)n * c * ho * wo);
    // References (scatter form).
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
    std::vector<float> y(y_ref.size()), dx(x.size()), dw(dw_ref.size());
    if (!bf16) {
        launch(7, [&] { et_dw_fwd_f32(x.data(), wt.data(), b.data(), y.data(), n, c, h, w, k, s, p, ho, wo); });
        launch(5, [&] { et_dw_gin_f32(dy.data(), wt.data(), dx.data(), n, c, h, w, k, s, p, ho, wo); });
        launch(c * (k * k + 1), [&] { et_dw_gw_f32(dy.data(), x.data(), dw.data(), n, c, h, w, k, s, p, ho, wo); });
    } else {
        auto to16 = [](const std::vector<float>& v) { std::vector<unsigned short> o(v.size()); for (size_t i = 0; i < v.size(); ++i) st(o.data(), i, v[i]); return o; };
        auto to32 = [](const std::vector<unsigned short>& v, std::vector<float>& o) { for (size_t i = 0; i < v.size(); ++i) o[i] = ld(v.data(), i); };
        auto x16 = to16(x), w16 = to16(wt), b16 = to16(b), dy16 = to16(dy);
        std::vector<unsigned short> y16(y.size()), dx16(dx.size()), dw16(dw.size());
        launch(7, [&] { et_dw_fwd_bf16(x16.data(), w16.data(), b16.data(), y16.data(), n, c, h, w, k, s, p, ho, wo); });
        launch(5, [&] { et_dw_gin_bf16(dy16.data(), w16.data(), dx16.data(), n, c, h, w, k, s, p, ho, wo); });
        launch(c * (k * k + 1), [&] { et_dw_gw_bf16(dy16.data(), x16.data(), dw16.data(), n, c, h, w, k, s, p, ho, wo); });
        to32(y16, y); to32(dx16, dx); to32(dw16, dw);
    }
    auto err = [](const std::vector<float>& a, const std::vector<double>& r) {
        double m = 0, sc = 1; for (double v : r) sc = std::fmax(sc, std::fabs(v));
        for (size_t i = 0; i < a.size(); ++i) m = std::fmax(m, std::fabs(a[i] - r[i]));
        return m / sc;
    };
    double tol = bf16 ? 2e-2 : 1e-5, e1 = err(y, y_ref), e2 = err(dx, dx_ref), e3 = err(dw, dw_ref);
    bool ok = e1 <= tol && e2 <= tol && e3 <= tol;
    std::printf("%s n%d c%d %dx%d k%d s%d p%d %s: fwd %.1e, grad input %.1e, grad weight+bias %.1e\n", ok ? "ok  " : "FAIL", n, c, h, w, k, s, p, bf16 ? "bf16" : "f32", e1, e2, e3);
    return ok ? 0 : 1;
}

int main() {
    int fails = 0;
    for (bool bf16 : {false, true}) {
        fails += check(2, 3, 9, 7, 7, 1, 3, bf16);   // ConvNeXt 7×7
        fails += check(2, 4, 8, 11, 3, 2, 1, bf16);  // strided
        fails += check(1, 2, 5, 5, 5, 2, 2, bf16);
        fails += check(3, 2, 4, 6, 3, 1, 0, bf16);   // no padding
        fails += check(1, 1, 13, 3, 3, 3, 1, bf16);  // stride > 2, odd sizes
    }
    return fails ? 1 : 0;
}
