//! Run-time choice of AVX2 code for the element-wise kernels, and a vectorisable `exp`.
//!
//! The crate is built for baseline x86-64 (SSE2, 4 lanes) so that its binaries run on any
//! x86-64 machine. The hot loops of the depthwise convolution and GELU are written as plain
//! slice loops that LLVM vectorises; [`avx2!`] compiles such a loop a second time with AVX2
//! (8 lanes) and picks that copy when the CPU has it. Both copies do the same arithmetic in
//! the same order (Rust never contracts `a * b + c` into an FMA), so results do not depend on
//! the machine.

/// Whether this CPU runs the AVX2 copies (checked once; the answer is cached by std).
#[inline]
pub(crate) fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `avx2!(<T: Bound> name(arg: Type = value, ...) -> Ret)` calls `name(value, ...)`, compiled for AVX2
/// when the CPU has it. `name` should be `#[inline(always)]` so that its body, not a call to
/// a baseline copy, lands in the AVX2 function. Closures inside `name` (rayon) are compiled
/// on their own, without AVX2: call this from inside them, on a plane or a chunk.
macro_rules! avx2 {
    ($(<$($g:ident: $b:path),*>)? $name:ident($($arg:ident: $ty:ty = $val:expr),* $(,)?) $(-> $ret:ty)?) => {{
        $(let $arg: $ty = $val;)*
        #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2"))]
        unsafe fn fast$(<$($g: $b),*>)?($($arg: $ty),*) $(-> $ret)? {
            $name$(::<$($g),*>)?($($arg),*)
        }
        if $crate::ops::simd::has_avx2() {
            // SAFETY: the CPU supports AVX2 (checked just above).
            unsafe { fast$(::<$($g),*>)?($($arg),*) }
        } else {
            $name$(::<$($g),*>)?($($arg),*)
        }
    }};
}
pub(crate) use avx2;

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
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 0.166_666_65) * r + 0.5;
    let er = p * (r * r) + r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
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

    #[test]
    fn both_copies_agree_bit_for_bit() {
        let xs: Vec<f32> = (0..1003).map(|i| (i as f32 * 0.37).sin() * 20.0).collect();
        let (mut a, mut b) = (vec![0.0; xs.len()], vec![0.0; xs.len()]);
        let sa = avx2!(sum_sq(xs: &[f32] = &xs, out: &mut [f32] = &mut a) -> f32);
        let sb = sum_sq(&xs, &mut b);
        assert_eq!(sa.to_bits(), sb.to_bits());
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
    }
}
