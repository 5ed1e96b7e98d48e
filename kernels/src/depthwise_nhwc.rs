//! Depthwise k×k convolution, stride 1, on channels-last maps: tokens (N, H·W, C) in, tokens
//! out. PVT-v2's Mix-FFN puts a 3×3 depthwise conv between two linears on tokens; through
//! the NCHW kernel that cost four transposes of the widest activation of the block (8·C
//! channels) per step — 18 % of a PVT-v2-b0 training step, more than the convolution
//! itself. PyTorch avoids them too: the token tensor viewed as NCHW is channels-last, which
//! its depthwise kernel takes as it is.
//!
//! Channels are the contiguous axis, so every tap is a vector multiply-add over a block of
//! channels held in registers; borders only shorten the tap ranges.

use super::kernel::{dispatch, Kernel, layer_grads, LayerGrads, ordered_sum, written};
use super::simd::simd;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;
use std::mem::MaybeUninit;

#[derive(Clone, Copy, Debug)]
struct Geom {
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    k: usize,
    pad: usize,
    ho: usize,
    wo: usize,
}

impl Geom {
    /// Stride 1, padding `pad` on every side: the only geometry this kernel runs.
    fn stride1(n: usize, h: usize, w: usize, c: usize, k: usize, pad: usize) -> Geom {
        Geom { n, h, w, c, k, pad, ho: h + 2 * pad + 1 - k, wo: w + 2 * pad + 1 - k }
    }
}

/// Channels per register block: four AVX2 vectors of f32.
const CB: usize = 32;

/// The taps 0..k that meet the input at o + tap − pad ∈ [0, n).
fn taps(o: usize, pad: usize, n: usize, k: usize) -> std::ops::Range<usize> {
    pad.saturating_sub(o)..(n + pad).saturating_sub(o).min(k)
}

/// The weight (C, 1, k, k) as (k·k, C): one contiguous row of channels per tap.
fn tap_major<T: WithDType>(w: &[T], c: usize, kk: usize) -> Vec<T> {
    (0..kk).flat_map(|t| (0..c).map(move |ch| w[ch * kk + t])).collect()
}

/// Output row `oy` of one image (`x`: H·W·C): the bias, then the taps in order.
#[inline(always)]
fn fwd_row<T: WithDType>(x: &[T], wt: &[T], b: &[T], oy: usize, out: &mut [MaybeUninit<T>], g: Geom) {
    let (c, k) = (g.c, g.k);
    let rows = taps(oy, g.pad, g.h, k);
    for (ox, o) in out.chunks_exact_mut(c).enumerate() {
        let cols = taps(ox, g.pad, g.w, k);
        let mut c0 = 0;
        while c0 < c {
            let cw = CB.min(c - c0);
            if cw == CB {
                let mut acc: [T; CB] = b[c0..c0 + CB].try_into().expect("block of CB");
                for ky in rows.clone() {
                    let xrow = &x[(oy + ky - g.pad) * g.w * c..];
                    for kx in cols.clone() {
                        let xs = &xrow[(ox + kx - g.pad) * c + c0..][..CB];
                        let ws = &wt[(ky * k + kx) * c + c0..][..CB];
                        for j in 0..CB {
                            acc[j] += ws[j] * xs[j];
                        }
                    }
                }
                for (o, a) in o[c0..c0 + CB].iter_mut().zip(acc) {
                    o.write(a);
                }
            } else {
                for ch in c0..c {
                    let mut acc = b[ch];
                    for ky in rows.clone() {
                        for kx in cols.clone() {
                            acc += wt[(ky * k + kx) * c + ch] * x[((oy + ky - g.pad) * g.w + ox + kx - g.pad) * c + ch];
                        }
                    }
                    o[ch].write(acc);
                }
            }
            c0 += cw;
        }
    }
}

/// Output rows per rayon task: enough work per task for the deep stages' small maps.
fn rows_per_task(row: usize) -> usize {
    (16384 / row.max(1)).max(1)
}

/// `wt` tap-major (k·k, C).
fn forward<T: WithDType>(x: &[T], wt: &[T], b: &[T], g: Geom) -> Vec<T> {
    let row = g.wo * g.c;
    written(g.n * g.ho * row, |out| {
        out.par_chunks_mut(row).enumerate().with_min_len(rows_per_task(row)).for_each(|(r, o)| {
            let (img, oy) = (r / g.ho, r % g.ho);
            let xi = &x[img * g.h * g.w * g.c..(img + 1) * g.h * g.w * g.c];
            simd!(<T: WithDType> fwd_row(x: &[T] = xi, wt: &[T] = wt, b: &[T] = b, oy: usize = oy, out: &mut [MaybeUninit<T>] = o, g: Geom = g))
        })
    })
}

/// With stride 1 the input gradient is the forward convolution of the output gradient,
/// padded by k − 1 − pad, with each kernel turned by 180°.
fn grad_input<T: WithDType>(go: &[T], w: &[T], g: Geom) -> Vec<T> {
    let kk = g.k * g.k;
    let mut wt = tap_major(w, g.c, kk);
    wt.reverse();
    // Reversing the whole (k·k, C) array also reversed each tap's channels: put them back.
    wt.chunks_exact_mut(g.c).for_each(|t| t.reverse());
    let turned = Geom { h: g.ho, w: g.wo, pad: g.k - 1 - g.pad, ho: g.h, wo: g.w, ..g };
    forward(go, &wt, &vec![T::zero(); g.c], turned)
}

/// Adds output row `oy`'s contribution to the tap-major weight gradient (k·k, C) and, in
/// `gb`, to the bias gradient: per channel block and tap, a sum over the row in registers.
#[inline(always)]
fn grad_weight_row<T: WithDType>(go: &[T], x: &[T], oy: usize, gw: &mut [T], gb: &mut [T], g: Geom) {
    let (c, k) = (g.c, g.k);
    for gv in go.chunks_exact(c) {
        for (s, &v) in gb.iter_mut().zip(gv) {
            *s += v;
        }
    }
    let mut c0 = 0;
    while c0 < c {
        let cw = CB.min(c - c0);
        for ky in taps(oy, g.pad, g.h, k) {
            let xrow = &x[(oy + ky - g.pad) * g.w * c..(oy + ky - g.pad + 1) * g.w * c];
            for kx in 0..k {
                // Output columns whose tap kx meets the input: ox + kx − pad ∈ [0, w).
                let ox0 = g.pad.saturating_sub(kx);
                let ox1 = (g.w + g.pad).saturating_sub(kx).min(g.wo);
                let dst = &mut gw[(ky * k + kx) * c + c0..][..cw];
                if cw == CB {
                    let mut acc = [T::zero(); CB];
                    for ox in ox0..ox1 {
                        let gs = &go[ox * c + c0..][..CB];
                        let xs = &xrow[(ox + kx - g.pad) * c + c0..][..CB];
                        for j in 0..CB {
                            acc[j] += gs[j] * xs[j];
                        }
                    }
                    for (d, a) in dst.iter_mut().zip(acc) {
                        *d += a;
                    }
                } else {
                    for (j, d) in dst.iter_mut().enumerate() {
                        let ch = c0 + j;
                        *d += (ox0..ox1).fold(T::zero(), |s, ox| s + go[ox * c + ch] * xrow[(ox + kx - g.pad) * c + ch]);
                    }
                }
            }
        }
        c0 += cw;
    }
}

/// [dW (C, 1, k, k) flattened, db (C)] in one buffer.
fn grad_weight<T: WithDType>(go: &[T], x: &[T], g: Geom) -> Vec<T> {
    let (kk, c) = (g.k * g.k, g.c);
    let row = g.wo * c;
    // Tap-major weight gradient, then the bias gradient, summed in row order per piece.
    let sums = ordered_sum(g.n * g.ho, (kk + 1) * c, || (), |acc, _, rows| {
        let (gw, gb) = acc.split_at_mut(kk * c);
        for r in rows {
            let (img, oy) = (r / g.ho, r % g.ho);
            let xi = &x[img * g.h * g.w * c..(img + 1) * g.h * g.w * c];
            let gr = &go[r * row..(r + 1) * row];
            simd!(<T: WithDType> grad_weight_row(go: &[T] = gr, x: &[T] = xi, oy: usize = oy, gw: &mut [T] = gw, gb: &mut [T] = gb, g: Geom = g));
        }
    });
    let mut out: Vec<T> = (0..c).flat_map(|ch| (0..kk).map(move |t| (t, ch))).map(|(t, ch)| sums[t * c + ch]).collect();
    out.extend_from_slice(&sums[kk * c..]);
    out
}

/// The stride-1 forward of channels-last maps `x` (N, H·W, C) with weight (C, 1, k, k) and
/// padding `pad` < k: for the NCHW kernel's smallest maps (`depthwise.rs`).
pub(crate) fn forward_channels_last<T: WithDType>(x: &[T], w: &[T], b: &[T], (n, h, wd, c): (usize, usize, usize, usize), k: usize, pad: usize) -> Vec<T> {
    forward(x, &tap_major(w, c, k * k), b, Geom::stride1(n, h, wd, c, k, pad))
}

/// Its weight and bias gradient, [dW (C, 1, k, k) flattened, db (C)], from channels-last
/// `go` and `x`.
pub(crate) fn grad_weight_channels_last<T: WithDType>(go: &[T], x: &[T], (n, h, wd, c): (usize, usize, usize, usize), k: usize, pad: usize) -> Vec<T> {
    grad_weight(go, x, Geom::stride1(n, h, wd, c, k, pad))
}

/// Forward op: (x tokens, weight (C, 1, k, k), bias) -> y tokens.
struct Fwd {
    g: Geom,
}

/// Gradient w.r.t. the input: (grad_out, weight) -> grad_x.
struct GradInput {
    g: Geom,
}

/// Gradient w.r.t. weight and bias: (grad_out, x) -> [dW, db].
struct GradWeight {
    g: Geom,
}

impl Kernel for Fwd {
    const NAME: &'static str = "depthwise conv (channels last)";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        forward(i[0], &tap_major(i[1], self.g.c, self.g.k * self.g.k), i[2], self.g)
    }
}

impl Kernel for GradInput {
    const NAME: &'static str = "depthwise conv (channels last) grad";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        grad_input(i[0], i[1], self.g)
    }
}

impl Kernel for GradWeight {
    const NAME: &'static str = "depthwise conv (channels last) grad";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        grad_weight(i[0], i[1], self.g)
    }
}

impl CustomOp3 for Fwd {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-nhwc"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.g;
        Ok((dispatch(self, &[(s1, l1), (s2, l2), (s3, l3)])?, Shape::from((g.n, g.ho * g.wo, g.c))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, b: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<LayerGrads> {
        let g = self.g;
        layer_grads(x, w, b, grad, &GradInput { g }, &GradWeight { g })
    }
}

impl CustomOp2 for GradInput {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-nhwc-grad-input"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.g;
        Ok((dispatch(self, &[(s1, l1), (s2, l2)])?, Shape::from((g.n, g.h * g.w, g.c))))
    }
}

impl CustomOp2 for GradWeight {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-nhwc-grad-weight"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.g;
        Ok((dispatch(self, &[(s1, l1), (s2, l2)])?, Shape::from(g.c * (g.k * g.k + 1))))
    }
}

/// Depthwise convolution, stride 1, of tokens `x` (N, H·W, C) of an h×w map with weight
/// (C, 1, k, k), bias (C) and zero padding `pad` < k: tokens (N, Ho·Wo, C).
pub fn depthwise_conv2d_tokens(x: &Tensor, (h, w): (usize, usize), wt: &Tensor, b: &Tensor, pad: usize) -> Result<Tensor> {
    let (n, l, c) = x.dims3()?;
    let (wc, one, k, k2) = wt.dims4()?;
    if wc != c || one != 1 || k != k2 || b.dims1()? != c {
        candle_core::bail!("depthwise conv: weight {:?} / bias {:?} do not fit {c} channels", wt.dims(), b.dims())
    }
    if l != h * w {
        candle_core::bail!("depthwise conv: {l} tokens do not fill a {h}x{w} map")
    }
    if pad >= k || h + 2 * pad < k || w + 2 * pad < k {
        candle_core::bail!("depthwise conv: a {h}x{w} map, kernel {k} and padding {pad} do not fit")
    }
    let g = Geom::stride1(n, h, w, c, k, pad);
    let args = [&x.contiguous()?, &wt.contiguous()?, &b.contiguous()?];
    super::tape::apply3([x, wt, b], args, Fwd { g })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::depthwise::depthwise_conv2d;
    use crate::testing::{check_grads, seeded};
    use candle_core::{DType, Device, Var};

    /// The NCHW kernel on the same map, as tokens.
    fn reference(x: &Tensor, hw: (usize, usize), w: &Tensor, b: &Tensor, pad: usize) -> Result<Tensor> {
        let (n, _, c) = x.dims3()?;
        let map = x.transpose(1, 2)?.reshape((n, c, hw.0, hw.1))?;
        depthwise_conv2d(&map, w, b, 1, pad)?.flatten_from(2)?.transpose(1, 2)
    }

    #[test]
    fn forward_matches_the_nchw_kernel() -> Result<()> {
        let dev = Device::Cpu;
        // Channel counts below, at and across the register block; maps smaller than k.
        for &(n, c, h, w, k, p) in &[(2, 40, 9, 7, 3, 1), (1, 32, 5, 6, 7, 3), (2, 5, 4, 3, 3, 1), (1, 70, 3, 11, 3, 0), (1, 33, 2, 2, 3, 2)] {
            let x = seeded(&[n, h * w, c], 1, &dev, DType::F32)?;
            let wt = seeded(&[c, 1, k, k], 2, &dev, DType::F32)?;
            let b = seeded(&[c], 3, &dev, DType::F32)?;
            let ours = depthwise_conv2d_tokens(&x, (h, w), &wt, &b, p)?;
            let want = reference(&x, (h, w), &wt, &b, p)?;
            assert_eq!(ours.dims(), want.dims());
            let diff = (ours - want)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            assert!(diff < 1e-5, "diff {diff} for {:?}", (n, c, h, w, k, p));
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        for &(n, c, h, w, k, p) in &[(2, 3, 5, 4, 3, 1), (1, 34, 4, 5, 3, 1), (1, 2, 6, 5, 5, 1), (1, 33, 3, 3, 3, 2)] {
            let x = Var::from_tensor(&seeded(&[n, h * w, c], 4, &dev, DType::F64)?)?;
            let wt = Var::from_tensor(&seeded(&[c, 1, k, k], 5, &dev, DType::F64)?)?;
            let b = Var::from_tensor(&seeded(&[c], 6, &dev, DType::F64)?)?;
            check_grads(&[&x, &wt, &b], |v| depthwise_conv2d_tokens(v[0], (h, w), v[1], v[2], p))?;
        }
        Ok(())
    }

    #[test]
    fn bad_geometry_is_an_error() -> Result<()> {
        let dev = Device::Cpu;
        let x = seeded(&[1, 12, 4], 1, &dev, DType::F32)?;
        let (wt, b) = (seeded(&[4, 1, 3, 3], 2, &dev, DType::F32)?, seeded(&[4], 3, &dev, DType::F32)?);
        assert!(depthwise_conv2d_tokens(&x, (3, 5), &wt, &b, 1).is_err());
        assert!(depthwise_conv2d_tokens(&x, (3, 4), &wt, &b, 3).is_err());
        assert!(depthwise_conv2d_tokens(&x, (3, 4), &seeded(&[5, 1, 3, 3], 2, &dev, DType::F32)?, &b, 1).is_err());
        Ok(())
    }
}
