//! Run-time choice of AVX2 or AVX-512 code for the element-wise kernels, and a vectorisable
//! `exp`.
//!
//! The crate is built for baseline x86-64 (SSE2, 4 lanes) so that its binaries run on any
//! x86-64 machine. The hot loops of the depthwise convolution, the norms and GELU are written
//! as plain slice loops that LLVM vectorises; [`simd!`] compiles such a loop twice more, with
//! AVX2 (8 lanes) and with AVX-512 (16 lanes), and picks the widest copy the CPU runs. All
//! copies do the same arithmetic in the same order (Rust never contracts `a * b + c` into an
//! FMA, and LLVM does not reorder float reductions), so results do not depend on the machine.

use std::sync::atomic::{AtomicU8, Ordering};

/// The instruction sets the copies are compiled for, narrowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    Baseline = 1,
    Avx2 = 2,
    Avx512 = 3,
}

/// 0: not decided yet, else a [`Level`].
static CHOICE: AtomicU8 = AtomicU8::new(0);

fn is_f32<T: 'static>() -> bool {
    std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
}

/// `v` as f32 values when T is f32 (generic kernels with an explicit f32 path).
pub(crate) fn as_f32<T: 'static>(v: &[T]) -> Option<&[f32]> {
    // SAFETY: T is f32 (checked), so the slice is reinterpreted as itself.
    is_f32::<T>().then(|| unsafe { std::slice::from_raw_parts(v.as_ptr() as *const f32, v.len()) })
}

/// [`as_f32`] for a mutable slice.
pub(crate) fn as_f32_mut<T: 'static>(v: &mut [T]) -> Option<&mut [f32]> {
    // SAFETY: as in `as_f32`.
    is_f32::<T>().then(|| unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut f32, v.len()) })
}

/// The widest level this CPU runs, capped by the environment: `ET_NO_AVX2` runs the baseline
/// copies, `ET_NO_AVX512` the AVX2 ones (so any machine can run, and test, the narrower
/// copies).
fn detect() -> Level {
    #[cfg(target_arch = "x86_64")]
    let (avx2, avx512) = (std::arch::is_x86_feature_detected!("avx2"), std::arch::is_x86_feature_detected!("avx512f"));
    #[cfg(not(target_arch = "x86_64"))]
    let (avx2, avx512) = (false, false);
    let off = |v: &str| std::env::var_os(v).is_some();
    if !avx2 || off("ET_NO_AVX2") {
        Level::Baseline
    } else if !avx512 || off("ET_NO_AVX512") {
        Level::Avx2
    } else {
        Level::Avx512
    }
}

/// The level whose copies run.
#[inline]
pub(crate) fn level() -> Level {
    match CHOICE.load(Ordering::Relaxed) {
        3 => Level::Avx512,
        2 => Level::Avx2,
        1 => Level::Baseline,
        _ => {
            let l = detect();
            CHOICE.store(l as u8, Ordering::Relaxed);
            l
        }
    }
}

/// Whether the AVX2 (or wider) copies run.
#[inline]
pub(crate) fn has_avx2() -> bool {
    level() >= Level::Avx2
}

/// Runs the copies of `at` (or the widest this CPU has, if narrower): for tests that compare
/// them. Returns the level now in force.
#[cfg(test)]
pub(crate) fn force(at: Level) -> Level {
    CHOICE.store(0, Ordering::Relaxed);
    let l = level().min(at);
    CHOICE.store(l as u8, Ordering::Relaxed);
    l
}

/// `simd!(<T: Bound> name(arg: Type = value, ...) -> Ret)` calls `name(value, ...)`, compiled
/// for AVX-512 or AVX2 when the CPU has them. `name` should be `#[inline(always)]` so that its
/// body, not a call to a baseline copy, lands in the wide functions. Closures inside `name`
/// (rayon) are compiled on their own, without AVX: call this from inside them, on a plane or
/// a chunk.
macro_rules! simd {
    ($(<$($g:ident: $b:path),*>)? $name:ident($($arg:ident: $ty:ty = $val:expr),* $(,)?) $(-> $ret:ty)?) => {{
        $(let $arg: $ty = $val;)*
        #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2"))]
        unsafe fn avx2$(<$($g: $b),*>)?($($arg: $ty),*) $(-> $ret)? {
            $name$(::<$($g),*>)?($($arg),*)
        }
        #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,avx512f"))]
        unsafe fn avx512$(<$($g: $b),*>)?($($arg: $ty),*) $(-> $ret)? {
            $name$(::<$($g),*>)?($($arg),*)
        }
        match $crate::simd::level() {
            // SAFETY: the CPU supports AVX-512F (`level` checked it).
            $crate::simd::Level::Avx512 => unsafe { avx512$(::<$($g),*>)?($($arg),*) },
            // SAFETY: the CPU supports AVX2 (`level` checked it).
            $crate::simd::Level::Avx2 => unsafe { avx2$(::<$($g),*>)?($($arg),*) },
            $crate::simd::Level::Baseline => $name$(::<$($g),*>)?($($arg),*),
        }
    }};
}
pub(crate) use simd;

/// e^x in f32 from plain arithmetic (no libm call, no branch), so that loops around it
/// vectorise: Cody–Waite reduction x = n·ln2 + r, |r| ≤ ln2/2, and Cephes' degree-6
/// polynomial for e^r (relative error ≤ 2 ulp over the clamped range). Inputs below −87.3
/// give 2^−126·e^r-ish tiny values instead of denormals, above 88.3 are clamped.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5·2^23 rounds to the nearest integer without `round()`,
    // which baseline x86-64 has no instruction for.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.3);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 0.166_666_65) * r + 0.5;
    let er = p * (r * r) + r + 1.0;
    // n as an integer from t's bits (t = 1.5·2^23 + n has a unit ulp, so its mantissa
    // holds n): the same value as `n as i32`, whose saturating semantics LLVM cannot
    // vectorise and turns into eight scalar conversions per vector.
    let ni = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let scale = f32::from_bits(((ni + 127) as u32) << 23);
    er * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_libm_within_2_ulp() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (ours, exact) = (exp_f32(x) as f64, (x as f64).exp());
            worst = worst.max(((ours - exact) / exact).abs());
            x += 0.001_37;
        }
        assert!(worst < 2.5 * f32::EPSILON as f64, "worst relative error {worst:e}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(-1e30) >= 0.0 && exp_f32(-1e30) < 1e-37);
        assert!(exp_f32(1e30).is_finite());
    }

    #[inline(always)]
    fn sum_sq(xs: &[f32], out: &mut [f32]) -> f32 {
        let mut s = 0.0;
        for (o, &x) in out.iter_mut().zip(xs) {
            *o = exp_f32(x) * x;
            s += *o;
        }
        s
    }

    /// Every op with wide copies, forward and backward, run with each copy this CPU has: the
    /// results must be identical to the bit (the narrower copies otherwise never run on a wide
    /// machine). Other tests running meanwhile see any copy, which is the claim here.
    #[test]
    fn ops_agree_bit_for_bit_at_every_simd_level() -> candle_core::Result<()> {
        use crate::testing::seeded;
        use crate::{attention, batch_norm, depthwise, depthwise_nhwc, gelu, layer_norm, scale, softmax, star_relu};
        use candle_core::{DType, Device, Tensor, Var};
        let dev = Device::Cpu;
        let x = Var::from_tensor(&(seeded(&[2, 3, 13, 11], 1, &dev, DType::F32)? * 3.0)?)?;
        let w = Var::from_tensor(&seeded(&[3, 1, 7, 7], 2, &dev, DType::F32)?)?;
        let w3 = Var::from_tensor(&seeded(&[3, 1, 3, 3], 3, &dev, DType::F32)?)?;
        let b = Var::from_tensor(&seeded(&[3], 4, &dev, DType::F32)?)?;
        let lw = Var::from_tensor(&seeded(&[11], 5, &dev, DType::F32)?)?;
        let lb = Var::from_tensor(&seeded(&[11], 6, &dev, DType::F32)?)?;
        let cw = Var::from_tensor(&seeded(&[3], 8, &dev, DType::F32)?)?;
        let cb = Var::from_tensor(&seeded(&[3], 9, &dev, DType::F32)?)?;
        let ab = Var::from_tensor(&seeded(&[2, 3, 13, 13], 10, &dev, DType::F32)?)?;
        let ss = Var::from_tensor(&Tensor::new(&[0.9f32], &dev)?)?;
        let sb = Var::from_tensor(&Tensor::new(&[-0.1f32], &dev)?)?;
        // Channels-last: a full register block of channels and a partial one.
        let xt = Var::from_tensor(&seeded(&[2, 35, 40], 11, &dev, DType::F32)?)?;
        let wt = Var::from_tensor(&seeded(&[40, 1, 3, 3], 12, &dev, DType::F32)?)?;
        let bt = Var::from_tensor(&seeded(&[40], 13, &dev, DType::F32)?)?;
        let vars = [&x, &w, &w3, &b, &lw, &lb, &cw, &cb, &ab, &ss, &sb, &xt, &wt, &bt];
        let run = || -> candle_core::Result<Vec<Vec<u32>>> {
            let y = depthwise::depthwise_conv2d(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1, 3)?;
            let y = (y + depthwise::depthwise_conv2d(x.as_tensor(), w3.as_tensor(), b.as_tensor(), 2, 1)?.repeat((1, 1, 2, 2))?.narrow(2, 0, 13)?.narrow(3, 0, 11)?)?;
            let y = (y + batch_norm::batch_norm_train(x.as_tensor(), cw.as_tensor(), cb.as_tensor(), 1e-5)?.0)?;
            let y = gelu::gelu(&scale::scale_channels(&y, cw.as_tensor())?)?;
            let y = layer_norm::layer_norm(&y, lw.as_tensor(), lb.as_tensor(), 3, 1e-6)?;
            let y = layer_norm::layer_norm(&y, cw.as_tensor(), cb.as_tensor(), 1, 1e-6)?;
            let y = softmax::softmax_last_dim(&star_relu::star_relu(&y, ss.as_tensor(), sb.as_tensor())?)?;
            let y = (y + attention::attention(x.as_tensor(), &x.as_tensor().sqr()?, &x.as_tensor().cos()?)?)?;
            let y = (y + attention::attention_biased(x.as_tensor(), &x.as_tensor().sin()?, &x.as_tensor().cos()?, ab.as_tensor())?)?;
            let yt = depthwise_nhwc::depthwise_conv2d_tokens(xt.as_tensor(), (5, 7), wt.as_tensor(), bt.as_tensor(), 1)?;
            let loss = ((y * seeded(&[2, 3, 13, 11], 7, &dev, DType::F32)?)?.sum_all()? + (yt * seeded(&[2, 35, 40], 14, &dev, DType::F32)?)?.sum_all()?)?;
            let grads = loss.backward()?;
            let mut out = vec![loss.flatten_all()?];
            for v in vars {
                out.push(grads.get(v.as_tensor()).expect("every input has a gradient").flatten_all()?);
            }
            out.iter().map(|t: &Tensor| Ok(t.to_vec1::<f32>()?.iter().map(|v| v.to_bits()).collect())).collect()
        };
        force(Level::Baseline);
        let baseline = run()?;
        let mut levels = vec![Level::Baseline];
        for at in [Level::Avx2, Level::Avx512] {
            let l = force(at);
            if !levels.contains(&l) {
                levels.push(l);
                assert_eq!(baseline, run()?, "{l:?} copies differ from the baseline");
            }
        }
        force(Level::Avx512);
        eprintln!("compared the {levels:?} copies");
        Ok(())
    }

    #[test]
    fn both_copies_agree_bit_for_bit() {
        let xs: Vec<f32> = (0..1003).map(|i| (i as f32 * 0.37).sin() * 20.0).collect();
        let (mut a, mut b) = (vec![0.0; xs.len()], vec![0.0; xs.len()]);
        let sa = simd!(sum_sq(xs: &[f32] = &xs, out: &mut [f32] = &mut a) -> f32);
        let sb = sum_sq(&xs, &mut b);
        assert_eq!(sa.to_bits(), sb.to_bits());
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
    }
}
