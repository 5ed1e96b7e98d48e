//! Depthwise k×k convolution (one filter per channel) with a direct CPU kernel.
//!
//! candle runs `conv2d(groups = C)` as C separate convolutions plus a concat, forward and
//! backward (docs/kernels.md); ConvNeXt's 7×7 depthwise conv is then most of a training step.
//! Here each (image, channel) plane is copied once into a zero-padded buffer, so the inner
//! loops are branch-free row updates (vectorised for stride 1); small planes are grouped into
//! larger rayon tasks.

use super::kernel::{dispatch, Kernel, layer_grads, LayerGrads, sum, WindowGeom as Geom};
use super::simd::simd;
use super::transpose::transposed_batch;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

/// Planes per rayon task: enough work per task for the deep stages' tiny maps.
fn planes_per_task(plane: usize) -> usize {
    (4096 / plane.max(1)).max(1)
}

/// Copies an h×w plane into the interior of a zeroed (h+2p)×(w+2p) buffer, so that the
/// inner loops need no bounds logic. A buffer already of that size is one this function
/// filled before: only its interior was written, so its border is still zero.
fn pad_plane<T: WithDType>(x: &[T], g: &Geom, buf: &mut Vec<T>) {
    let (hp, wp) = (g.h + 2 * g.pad, g.w + 2 * g.pad);
    if buf.len() != hp * wp {
        buf.clear();
        buf.resize(hp * wp, T::zero());
    }
    for (y, row) in x.chunks_exact(g.w).enumerate() {
        let start = (y + g.pad) * wp + g.pad;
        buf[start..start + g.w].copy_from_slice(row);
    }
}

/// dst[ox] += w · src[ox·stride] for every output column.
#[inline(always)]
fn axpy<T: WithDType>(dst: &mut [T], w: T, src: &[T], stride: usize) {
    if stride == 1 {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d += w * s;
        }
    } else {
        for (d, s) in dst.iter_mut().zip(src.iter().step_by(stride)) {
            *d += w * *s;
        }
    }
}

/// Σ a·b with 16 independent partial sums, so that the loop vectorises (a single running
/// sum is a chain LLVM may not reorder).
#[inline(always)]
fn dot<T: WithDType>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::zero(); 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let mut tail = T::zero();
    for (&x, &y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += x * y;
    }
    for (x, y) in ca.zip(cb) {
        for j in 0..16 {
            acc[j] += x[j] * y[j];
        }
    }
    acc.iter().fold(tail, |s, &v| s + v)
}

// Stride 1 (ConvNeXt, CAFormer) computes on the padded width wp: one flat array e[i],
// i = oy·wp + ox, of `flat_len` elements, where tap (ky, kx) meets the padded input at
// i + ky·wp + kx. Each tap is then one long vectorised loop instead of ho short rows (16
// columns in the 32-px model's first stage); the wp − wo extra columns of each row are
// dropped (forward) or held at zero (backward).

fn flat_len(g: &Geom) -> usize {
    (g.ho - 1) * (g.w + 2 * g.pad) + g.wo
}

/// Outputs one block of the stride-1 forward keeps in registers: four vectors, i.e. four
/// independent add chains to hide the adds' latency — 32 f32 with AVX2, 64 with AVX-512.
fn lanes() -> usize {
    if super::simd::level() == super::simd::Level::Avx512 {
        64
    } else {
        32
    }
}

/// One output plane, stride 1: the bias, then the k² taps in order, as the strided path.
#[inline(always)]
fn fwd_plane_s1<T: WithDType>(xpad: &[T], wk: &[T], bias: T, e: &mut Vec<T>, o: &mut [T], g: Geom) {
    match lanes() {
        64 => fwd_plane_s1_blocks::<T, 64>(xpad, wk, bias, e, o, g),
        _ => fwd_plane_s1_blocks::<T, 32>(xpad, wk, bias, e, o, g),
    }
}

/// [`fwd_plane_s1`] with blocks of `L` outputs that take all taps while held in registers
/// (one load, multiply and add per tap and output, instead of also loading and storing the
/// output per tap). Each output sums the same terms in the same order for every `L`.
#[inline(always)]
fn fwd_plane_s1_blocks<T: WithDType, const L: usize>(xpad: &[T], wk: &[T], bias: T, e: &mut Vec<T>, o: &mut [T], g: Geom) {
    let (k, wp, len) = (g.k, g.w + 2 * g.pad, flat_len(&g));
    let full = len / L * L;
    // The blocks overwrite e[..full]; the tail accumulates onto the bias.
    e.resize(len, T::zero());
    e[full..].fill(bias);
    for (i0, block) in e[..full].chunks_exact_mut(L).enumerate() {
        let mut acc = [bias; L];
        for ky in 0..k {
            for kx in 0..k {
                let (wv, start) = (wk[ky * k + kx], i0 * L + ky * wp + kx);
                let src = &xpad[start..start + L];
                for j in 0..L {
                    acc[j] += wv * src[j];
                }
            }
        }
        block.copy_from_slice(&acc);
    }
    for ky in 0..k {
        for kx in 0..k {
            axpy(&mut e[full..], wk[ky * k + kx], &xpad[full + ky * wp + kx..ky * wp + kx + len], 1);
        }
    }
    for (oy, orow) in o.chunks_exact_mut(g.wo).enumerate() {
        orow.copy_from_slice(&e[oy * wp..oy * wp + g.wo]);
    }
}

/// An output-gradient plane laid out on the padded width, zeros in the extra columns (which
/// stay zero in a buffer of this size that this function filled before).
fn spread_rows<T: WithDType>(go: &[T], e: &mut Vec<T>, g: &Geom) {
    let wp = g.w + 2 * g.pad;
    if e.len() != flat_len(g) {
        e.clear();
        e.resize(flat_len(g), T::zero());
    }
    for (oy, row) in go.chunks_exact(g.wo).enumerate() {
        e[oy * wp..oy * wp + g.wo].copy_from_slice(row);
    }
}

/// Adds one plane's weight gradient to `gwk` (k² taps), stride 1. The common kernel sizes
/// take a whole kernel row per pass (one load of the gradient for k taps).
#[inline(always)]
fn grad_weight_plane_s1<T: WithDType>(e: &[T], xpad: &[T], gwk: &mut [T], g: Geom) {
    let (k, wp, len) = (g.k, g.w + 2 * g.pad, flat_len(&g));
    match k {
        7 => grad_weight_rows::<T, 7>(e, xpad, gwk, wp, len),
        3 => grad_weight_rows::<T, 3>(e, xpad, gwk, wp, len),
        _ => {
            for ky in 0..k {
                for kx in 0..k {
                    gwk[ky * k + kx] += dot(e, &xpad[ky * wp + kx..ky * wp + kx + len]);
                }
            }
        }
    }
}

/// [`grad_weight_plane_s1`] for a k known at compile time: the k dots of a kernel row run
/// together, k × 8 partial sums held in registers.
#[inline(always)]
fn grad_weight_rows<T: WithDType, const K: usize>(e: &[T], xpad: &[T], gwk: &mut [T], wp: usize, len: usize) {
    let split = len / 8 * 8;
    for ky in 0..K {
        let row = &xpad[ky * wp..];
        let mut acc = [[T::zero(); 8]; K];
        for i in (0..split).step_by(8) {
            let ev = &e[i..i + 8];
            for kx in 0..K {
                let xv = &row[kx + i..kx + i + 8];
                for j in 0..8 {
                    acc[kx][j] += ev[j] * xv[j];
                }
            }
        }
        for (kx, lanes) in acc.iter().enumerate() {
            let tail = (split..len).fold(T::zero(), |s, i| s + e[i] * row[kx + i]);
            gwk[ky * K + kx] += lanes.iter().fold(tail, |s, &v| s + v);
        }
    }
}

/// One output plane, any stride: row by row.
#[inline(always)]
fn fwd_plane<T: WithDType>(xpad: &[T], wk: &[T], bias: T, o: &mut [T], g: Geom) {
    let (k, s, wp) = (g.k, g.stride, g.w + 2 * g.pad);
    o.fill(bias);
    for (oy, orow) in o.chunks_exact_mut(g.wo).enumerate() {
        for ky in 0..k {
            let row = &xpad[(oy * s + ky) * wp..(oy * s + ky + 1) * wp];
            for kx in 0..k {
                axpy(orow, wk[ky * k + kx], &row[kx..], s);
            }
        }
    }
}

/// On a map smaller than the kernel (ConvNeXt's deep stages at low resolution: a 7×7 kernel
/// on 3×3 or 1×1 maps), the outer rings of taps meet only padding at every output. The
/// number of rings every side can drop, stride 1 (the same on both axes, so the kernel
/// stays square); with them the convolution becomes a (k − 2t)² one with padding pad − t and
/// the same output. Those taps only ever add w·0, so the results are unchanged.
fn dead_rings(g: &Geom) -> usize {
    if g.stride != 1 {
        return 0;
    }
    // Tap ky is live iff some output row oy < ho reads a row 0 <= oy + ky − pad < h.
    let low = |out: usize| g.pad.saturating_sub(out - 1);
    let high = |len: usize| g.k.saturating_sub(g.pad + len);
    low(g.ho).min(low(g.wo)).min(high(g.h)).min(high(g.w)).min(g.pad)
}

/// The geometry without `t` dead rings, and each channel's kernel cut to its live core.
fn live_core<T: WithDType>(wt: &[T], g: Geom, t: usize) -> (Vec<T>, Geom) {
    let k2 = g.k - 2 * t;
    let core = wt.chunks_exact(g.k * g.k).flat_map(|w| w.chunks_exact(g.k).skip(t).take(k2).flat_map(move |row| row[t..t + k2].iter().copied())).collect();
    (core, Geom { k: k2, pad: g.pad - t, ..g })
}

/// Maps of at most this many outputs run channels-last (`depthwise_nhwc.rs`). On a 4×4 map a
/// 7×7 kernel meets the input with 16 of its 49 taps per output and a 16-output plane fills
/// a quarter of one register block; channels-last skips the taps that meet only padding and
/// vectorises over channels. On maps this small the transposes in and out cost little.
const CHANNELS_LAST_MAX: usize = 16;

fn channels_last(g: &Geom) -> bool {
    g.stride == 1 && g.pad < g.k && g.ho * g.wo <= CHANNELS_LAST_MAX
}

fn forward<T: WithDType>(x: &[T], wt: &[T], b: &[T], g: Geom) -> Vec<T> {
    if channels_last(&g) {
        let xt = transposed_batch(x, g.n, g.c, g.h * g.w);
        let yt = super::depthwise_nhwc::forward_channels_last(&xt, wt, b, (g.n, g.h, g.w, g.c), g.k, g.pad);
        return transposed_batch(&yt, g.n, g.ho * g.wo, g.c);
    }
    let t = dead_rings(&g);
    if t > 0 {
        let (core, g2) = live_core(wt, g, t);
        return forward(x, &core, b, g2);
    }
    let (k, plane_in, plane_out) = (g.k, g.h * g.w, g.ho * g.wo);
    let mut out = vec![T::zero(); g.n * g.c * plane_out];
    out.par_chunks_mut(plane_out).enumerate().with_min_len(planes_per_task(plane_out)).for_each_init(
        || (Vec::new(), Vec::new()),
        |(xpad, e), (p, o)| {
            let ch = p % g.c;
            pad_plane(&x[p * plane_in..(p + 1) * plane_in], &g, xpad);
            let (wk, bias) = (&wt[ch * k * k..(ch + 1) * k * k], b[ch]);
            if g.stride == 1 {
                simd!(<T: WithDType> fwd_plane_s1(xpad: &[T] = xpad, wk: &[T] = wk, bias: T = bias, e: &mut Vec<T> = e, o: &mut [T] = o, g: Geom = g))
            } else {
                simd!(<T: WithDType> fwd_plane(xpad: &[T] = xpad, wk: &[T] = wk, bias: T = bias, o: &mut [T] = o, g: Geom = g))
            }
        },
    );
    out
}

/// Input gradient of one padded plane, strided: row by row.
#[inline(always)]
fn grad_input_plane<T: WithDType>(go: &[T], wk: &[T], gpad: &mut [T], g: Geom) {
    let (k, s, wp) = (g.k, g.stride, g.w + 2 * g.pad);
    for (oy, gorow) in go.chunks_exact(g.wo).enumerate() {
        for ky in 0..k {
            let row = &mut gpad[(oy * s + ky) * wp..(oy * s + ky + 1) * wp];
            for kx in 0..k {
                let wv = wk[ky * k + kx];
                for (ox, &gv) in gorow.iter().enumerate() {
                    row[ox * s + kx] += wv * gv;
                }
            }
        }
    }
}

fn grad_input<T: WithDType>(go: &[T], wt: &[T], g: Geom) -> Vec<T> {
    let (k, plane_in, plane_out) = (g.k, g.h * g.w, g.ho * g.wo);
    if g.stride == 1 && g.pad < k {
        // With stride 1 the input gradient is the forward convolution of the output
        // gradient, padded by k − 1 − pad, with each kernel turned by 180°.
        let rotated: Vec<T> = wt.chunks_exact(k * k).flat_map(|w| w.iter().rev().copied()).collect();
        let turned = Geom { h: g.ho, w: g.wo, pad: k - 1 - g.pad, ho: g.h, wo: g.w, ..g };
        return forward(go, &rotated, &vec![T::zero(); g.c], turned);
    }
    let (hp, wp) = (g.h + 2 * g.pad, g.w + 2 * g.pad);
    let mut gx = vec![T::zero(); g.n * g.c * plane_in];
    gx.par_chunks_mut(plane_in).enumerate().with_min_len(planes_per_task(plane_in)).for_each_init(
        Vec::new,
        |gpad: &mut Vec<T>, (p, gxp)| {
            let ch = p % g.c;
            let gop = &go[p * plane_out..(p + 1) * plane_out];
            let wk = &wt[ch * k * k..(ch + 1) * k * k];
            gpad.clear();
            gpad.resize(hp * wp, T::zero());
            simd!(<T: WithDType> grad_input_plane(go: &[T] = gop, wk: &[T] = wk, gpad: &mut [T] = gpad, g: Geom = g));
            // Gradients that landed on the padding belong to nothing.
            for (y, dst) in gxp.chunks_exact_mut(g.w).enumerate() {
                let start = (y + g.pad) * wp + g.pad;
                dst.copy_from_slice(&gpad[start..start + g.w]);
            }
        },
    );
    gx
}

/// Adds one plane's weight gradient to `gwk` (k² taps), any stride: row by row.
#[inline(always)]
fn grad_weight_plane<T: WithDType>(go: &[T], xpad: &[T], gwk: &mut [T], g: Geom) {
    let (k, s, wp) = (g.k, g.stride, g.w + 2 * g.pad);
    for (oy, gorow) in go.chunks_exact(g.wo).enumerate() {
        for ky in 0..k {
            let row = &xpad[(oy * s + ky) * wp..(oy * s + ky + 1) * wp];
            for kx in 0..k {
                let mut acc = T::zero();
                for (&gv, xv) in gorow.iter().zip(row[kx..].iter().step_by(s)) {
                    acc += gv * *xv;
                }
                gwk[ky * k + kx] += acc;
            }
        }
    }
}

/// [dW (c·k·k), db (c)] in one buffer.
fn grad_weight<T: WithDType>(go: &[T], x: &[T], g: Geom) -> Vec<T> {
    if channels_last(&g) {
        let (got, xt) = (transposed_batch(go, g.n, g.c, g.ho * g.wo), transposed_batch(x, g.n, g.c, g.h * g.w));
        return super::depthwise_nhwc::grad_weight_channels_last(&got, &xt, (g.n, g.h, g.w, g.c), g.k, g.pad);
    }
    let t = dead_rings(&g);
    if t > 0 {
        // The dead taps' gradients are exact zeros: compute the live core, place it.
        let g2 = Geom { k: g.k - 2 * t, pad: g.pad - t, ..g };
        let core = grad_weight(go, x, g2);
        let (k, k2) = (g.k, g2.k);
        let mut full = vec![T::zero(); g.c * (k * k + 1)];
        for (ch, cw) in core[..g.c * k2 * k2].chunks_exact(k2 * k2).enumerate() {
            for (ky, row) in cw.chunks_exact(k2).enumerate() {
                let at = ch * k * k + (ky + t) * k + t;
                full[at..at + k2].copy_from_slice(row);
            }
        }
        full[g.c * k * k..].copy_from_slice(&core[g.c * k2 * k2..]);
        return full;
    }
    let (k, plane_in, plane_out) = (g.k, g.h * g.w, g.ho * g.wo);
    let mut gw = vec![T::zero(); g.c * (k * k + 1)];
    gw.par_chunks_mut(k * k + 1).enumerate().for_each(|(ch, gwk)| {
        let (mut xpad, mut e) = (Vec::new(), Vec::new());
        for img in 0..g.n {
            let p = img * g.c + ch;
            pad_plane(&x[p * plane_in..(p + 1) * plane_in], &g, &mut xpad);
            let gop = &go[p * plane_out..(p + 1) * plane_out];
            gwk[k * k] += sum(gop);
            let taps = &mut gwk[..k * k];
            if g.stride == 1 {
                spread_rows(gop, &mut e, &g);
                simd!(<T: WithDType> grad_weight_plane_s1(e: &[T] = &e, xpad: &[T] = &xpad, gwk: &mut [T] = taps, g: Geom = g))
            } else {
                simd!(<T: WithDType> grad_weight_plane(go: &[T] = gop, xpad: &[T] = &xpad, gwk: &mut [T] = taps, g: Geom = g))
            }
        }
    });
    // Interleaved per channel while computing; callers want [dW..., db...].
    let (mut dw, mut db) = (Vec::with_capacity(g.c * k * k), Vec::with_capacity(g.c));
    for chunk in gw.chunks_exact(k * k + 1) {
        dw.extend_from_slice(&chunk[..k * k]);
        db.push(chunk[k * k]);
    }
    dw.extend(db);
    dw
}

/// Forward op: (x, weight, bias) -> y.
struct DepthwiseFwd {
    g: Geom,
}

/// Gradient w.r.t. the input: (grad_out, weight) -> grad_x.
struct DepthwiseGradInput {
    g: Geom,
}

/// Gradient w.r.t. the weight: (grad_out, x) -> grad_w.
struct DepthwiseGradWeight {
    g: Geom,
}

fn geom(x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> Result<Geom> {
    let (n, c, h, wd) = x.dims4()?;
    let (wc, one, k, k2) = w.dims4()?;
    if wc != c || one != 1 || k != k2 {
        candle_core::bail!("depthwise conv: weight {:?} does not fit input {:?}", w.dims(), x.dims())
    }
    if h + 2 * pad < k || wd + 2 * pad < k {
        candle_core::bail!("depthwise conv: input {h}x{wd} smaller than kernel {k} with padding {pad}")
    }
    let ho = (h + 2 * pad - k) / stride + 1;
    let wo = (wd + 2 * pad - k) / stride + 1;
    Ok(Geom { n, c, h, w: wd, k, stride, pad, ho, wo })
}

impl Kernel for DepthwiseFwd {
    const NAME: &'static str = "depthwise conv";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        forward(i[0], i[1], i[2], self.g)
    }
}

impl Kernel for DepthwiseGradInput {
    const NAME: &'static str = "depthwise conv grad";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        grad_input(i[0], i[1], self.g)
    }
}

impl Kernel for DepthwiseGradWeight {
    const NAME: &'static str = "depthwise conv grad";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        grad_weight(i[0], i[1], self.g)
    }
}

impl CustomOp3 for DepthwiseFwd {
    fn name(&self) -> &'static str {
        "depthwise-conv2d"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.g;
        Ok((dispatch(self, &[(s1, l1), (s2, l2), (s3, l3)])?, Shape::from((g.n, g.c, g.ho, g.wo))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &candle_core::CudaStorage, l1: &Layout, s2: &candle_core::CudaStorage, l2: &Layout, s3: &candle_core::CudaStorage, l3: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        let g = self.g;
        let out = super::depthwise_cuda::launch(super::depthwise_cuda::Kind::Forward, g, &[(s1, l1), (s2, l2), (s3, l3)], g.n * g.c * g.ho * g.wo)?;
        Ok((out, Shape::from((g.n, g.c, g.ho, g.wo))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, b: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<LayerGrads> {
        let g = self.g;
        layer_grads(x, w, b, grad, &DepthwiseGradInput { g }, &DepthwiseGradWeight { g })
    }
}

impl CustomOp2 for DepthwiseGradInput {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-grad-input"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.g;
        Ok((dispatch(self, &[(s1, l1), (s2, l2)])?, Shape::from((g.n, g.c, g.h, g.w))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &candle_core::CudaStorage, l1: &Layout, s2: &candle_core::CudaStorage, l2: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        let g = self.g;
        let out = super::depthwise_cuda::launch(super::depthwise_cuda::Kind::GradInput, g, &[(s1, l1), (s2, l2)], g.n * g.c * g.h * g.w)?;
        Ok((out, Shape::from((g.n, g.c, g.h, g.w))))
    }
}

impl CustomOp2 for DepthwiseGradWeight {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-grad-weight"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.g;
        Ok((dispatch(self, &[(s1, l1), (s2, l2)])?, Shape::from(g.c * (g.k * g.k + 1))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &candle_core::CudaStorage, l1: &Layout, s2: &candle_core::CudaStorage, l2: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        let g = self.g;
        let n = g.c * (g.k * g.k + 1);
        Ok((super::depthwise_cuda::launch(super::depthwise_cuda::Kind::GradWeight, g, &[(s1, l1), (s2, l2)], n)?, Shape::from(n)))
    }
}

/// Depthwise convolution of NCHW `x` with weight (C, 1, k, k) and bias (C).
pub fn depthwise_conv2d(x: &Tensor, w: &Tensor, b: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
    if stride == 0 {
        candle_core::bail!("depthwise conv: stride must be positive")
    }
    let args = [&x.contiguous()?, &w.contiguous()?, &b.contiguous()?];
    let g = geom(args[0], args[1], stride, pad)?;
    super::tape::apply3([x, w, b], args, DepthwiseFwd { g })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{check_grads, seeded};
    use candle_core::{DType, Device, Var};

    fn reference(x: &Tensor, w: &Tensor, b: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
        let c = x.dim(1)?;
        x.conv2d(w, pad, stride, 1, c)?.broadcast_add(&b.reshape((1, c, 1, 1))?)
    }

    #[test]
    fn forward_matches_grouped_conv() -> Result<()> {
        let dev = Device::Cpu;
        // The last five: maps smaller than the kernel; 16 outputs or fewer run channels-last
        // (the last with 40 channels: a full register block of 32 and a partial one).
        for &(n, c, h, w, k, s, p) in &[(2, 3, 9, 7, 7, 1, 3), (1, 4, 8, 8, 3, 2, 1), (2, 2, 5, 6, 3, 1, 0), (1, 3, 7, 5, 3, 2, 0), (2, 3, 3, 3, 7, 1, 3), (1, 2, 1, 1, 7, 1, 3), (2, 2, 2, 3, 7, 1, 3), (1, 2, 2, 2, 5, 1, 4), (2, 40, 4, 4, 7, 1, 3)] {
            let x = seeded(&[n, c, h, w], 1, &dev, DType::F32)?;
            let wt = seeded(&[c, 1, k, k], 2, &dev, DType::F32)?;
            let b = seeded(&[c], 3, &dev, DType::F32)?;
            let ours = depthwise_conv2d(&x, &wt, &b, s, p)?;
            let refr = reference(&x, &wt, &b, s, p)?;
            assert_eq!(ours.dims(), refr.dims());
            let diff = (ours - refr)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            assert!(diff < 1e-5, "diff {diff} for {:?}", (n, c, h, w, k, s, p));
        }
        Ok(())
    }

    #[test]
    fn dead_rings_are_exactly_the_taps_that_meet_only_padding() {
        let g = |h: usize, w: usize, k: usize, pad: usize| Geom { n: 1, c: 1, h, w, k, stride: 1, pad, ho: h + 2 * pad + 1 - k, wo: w + 2 * pad + 1 - k };
        // 7×7, pad 3: 1×1 keeps the centre tap, 3×3 the 5×5 core, 4×4 and up everything.
        assert_eq!([1, 2, 3, 4, 16].map(|h| dead_rings(&g(h, h, 7, 3))), [3, 2, 1, 0, 0]);
        // The smaller axis does not decide alone: a 1×5 map keeps what its width needs.
        assert_eq!(dead_rings(&g(1, 5, 7, 3)), 0);
        // pad 4 on a 2×2 map with k 5: output 6×6, every tap meets the map somewhere.
        assert_eq!(dead_rings(&g(2, 2, 5, 4)), 0);
        // Brute force: a ring is dead iff none of its taps ever reads inside the map.
        for (h, k, pad) in [(1, 7, 3), (2, 7, 3), (3, 7, 3), (2, 5, 4), (1, 3, 2), (3, 5, 2)] {
            let geo = g(h, h, k, pad);
            let live = |ky: usize| (0..geo.ho).any(|oy| (oy + ky).checked_sub(pad).is_some_and(|y| y < h));
            let dead = (0..k / 2).take_while(|&r| !live(r) && !live(k - 1 - r)).count();
            assert_eq!(dead_rings(&geo), dead, "{h} {k} {pad}");
        }
    }

    #[test]
    fn dropping_dead_rings_changes_no_bit() -> Result<()> {
        // The forward of a 3×3 map (channels-last, dead taps skipped) against the full one
        // written out here (every tap, in order): skipping only w·0 terms keeps every bit.
        let (n, c, h, k, p) = (2, 3, 3, 7, 3);
        let dev = Device::Cpu;
        let x = seeded(&[n, c, h, h], 7, &dev, DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let wt = seeded(&[c, 1, k, k], 8, &dev, DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let b = vec![0.25f32; c];
        let g = Geom { n, c, h, w: h, k, stride: 1, pad: p, ho: h, wo: h };
        let mut xpad = Vec::new();
        let mut full = vec![0f32; n * c * h * h];
        for (pl, o) in full.chunks_exact_mut(h * h).enumerate() {
            pad_plane(&x[pl * h * h..(pl + 1) * h * h], &g, &mut xpad);
            fwd_plane(&xpad, &wt[(pl % c) * k * k..(pl % c + 1) * k * k], b[pl % c], o, g);
        }
        assert_eq!(forward(&x, &wt, &b, g), full);
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        // Stride 1 with pad < k takes the rotated-kernel input gradient, pad ≥ k the scatter.
        for &(n, c, h, w, k, s, p) in &[(2, 2, 6, 5, 3, 1, 1), (1, 3, 7, 7, 3, 2, 1), (1, 2, 9, 8, 7, 1, 3), (2, 1, 5, 5, 3, 2, 0), (1, 2, 5, 6, 3, 1, 0), (1, 1, 4, 4, 3, 1, 3), (2, 2, 3, 3, 7, 1, 3), (1, 2, 1, 1, 7, 1, 3), (1, 2, 2, 3, 7, 1, 3), (2, 36, 4, 4, 7, 1, 3)] {
            let x = Var::from_tensor(&seeded(&[n, c, h, w], 4, &dev, DType::F64)?)?;
            let wt = Var::from_tensor(&seeded(&[c, 1, k, k], 5, &dev, DType::F64)?)?;
            let b = Var::from_tensor(&seeded(&[c], 6, &dev, DType::F64)?)?;
            check_grads(&[&x, &wt, &b], |v| depthwise_conv2d(v[0], v[1], v[2], s, p))?;
        }
        Ok(())
    }
}
