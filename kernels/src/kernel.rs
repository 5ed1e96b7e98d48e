//! What every CPU custom op here shares: contiguous f32/f64 views of candle storages and
//! one dtype dispatch, so each op only writes its generic kernel.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Layout, Result, Shape, Tensor, WithDType, CustomOp2};
use std::mem::MaybeUninit;

pub(crate) fn contiguous<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<T>()?[a..b]),
        None => candle_core::bail!("{op}: inputs must be contiguous"),
    }
}

/// An output of `n` elements that `write` fills completely, handed over uninitialised:
/// a `vec![0; n]` costs a single-threaded zero-fill pass before the kernel writes every
/// element again (memset was 4–6 % of a DeiT or ResNet-50 training step).
pub(crate) fn written<T>(n: usize, write: impl FnOnce(&mut [MaybeUninit<T>])) -> Vec<T> {
    let mut v = Vec::with_capacity(n);
    write(&mut v.spare_capacity_mut()[..n]);
    // SAFETY: every caller's `write` initialises all n elements (each is a plain map of its
    // input, or a GEMM that overwrites its whole destination).
    unsafe { v.set_len(n) };
    v
}

/// `buf` refilled with `n` elements that `write` sets, without first zeroing them: the
/// per-thread scratch matrices of the convolutions, which a GEMM or a copy overwrites whole.
pub(crate) fn rewrite<T>(buf: &mut Vec<T>, n: usize, write: impl FnOnce(&mut [MaybeUninit<T>])) {
    buf.clear();
    buf.reserve(n);
    write(&mut buf.spare_capacity_mut()[..n]);
    // SAFETY: as in `written`, every caller's `write` initialises all n elements.
    unsafe { buf.set_len(n) };
}

/// Each `cols`-long row r of `m` set to `vals[r]` (a bias per output channel); the rows
/// are then initialised.
pub(crate) fn fill_rows<'a, T: Copy>(m: &'a mut [MaybeUninit<T>], vals: &[T], cols: usize) -> &'a mut [T] {
    assert!(m.len() == vals.len() * cols, "fill_rows: {} rows of {cols} do not fill {}", vals.len(), m.len());
    for (row, &v) in m.chunks_mut(cols.max(1)).zip(vals) {
        row.iter_mut().for_each(|e| {
            e.write(v);
        });
    }
    // SAFETY: the rows cover `m` (asserted) and every element was just written.
    unsafe { &mut *(m as *mut [MaybeUninit<T>] as *mut [T]) }
}

/// Σ f(i) for i in 0..n over 8 partial sums: a single running sum is a chain of dependent
/// adds, one per add latency, and these 8 vectorise.
#[inline(always)]
pub(crate) fn lane_sum<T: WithDType>(n: usize, f: impl Fn(usize) -> T) -> T {
    let mut lanes = [T::zero(); 8];
    let split = n / 8 * 8;
    for i in (0..split).step_by(8) {
        for j in 0..8 {
            lanes[j] += f(i + j);
        }
    }
    let tail = (split..n).fold(T::zero(), |s, i| s + f(i));
    lanes.iter().fold(tail, |s, &v| s + v)
}

/// Σ of a slice, as [`lane_sum`]: the bias gradients' row sums (a single running sum over
/// each output plane was 3 % of a ResNet-50 step).
#[inline(always)]
pub(crate) fn sum<T: WithDType>(v: &[T]) -> T {
    lane_sum(v.len(), |i| v[i])
}

/// The consecutive pieces of a flat buffer into which one backward kernel wrote several
/// gradients (input, weight, bias), each shaped as `shapes` says.
pub(crate) fn split<const N: usize>(all: &Tensor, shapes: [&Shape; N]) -> Result<[Tensor; N]> {
    let mut start = 0;
    let mut pieces = Vec::with_capacity(N);
    for s in shapes {
        pieces.push(all.narrow(0, start, s.elem_count())?.reshape(s)?);
        start += s.elem_count();
    }
    Ok(pieces.try_into().unwrap_or_else(|_| unreachable!("one piece per shape")))
}

/// Gradients of a layer y = f(x, w) + b: the input's from op `input` on (dy, w), the
/// weight's and bias's from op `params` on (dy, x), which writes them into one buffer.
pub(crate) type LayerGrads = (Option<Tensor>, Option<Tensor>, Option<Tensor>);

pub(crate) fn layer_grads(x: &Tensor, w: &Tensor, b: &Tensor, grad: &Tensor, input: &impl CustomOp2, params: &impl CustomOp2) -> Result<LayerGrads> {
    let grad = grad.contiguous()?;
    let gx = grad.apply_op2_no_bwd(w, input)?;
    let [gw, gb] = split(&grad.apply_op2_no_bwd(x, params)?, [w.shape(), b.shape()])?;
    Ok((Some(gx), Some(gw), Some(gb)))
}

/// A kernel generic over the float type, applied to contiguous inputs of one dtype.
pub(crate) trait Kernel {
    const NAME: &'static str;
    fn run<T: WithDType>(&self, inputs: &[&[T]]) -> Vec<T>;
}

/// Runs `k` on the f32 or f64 data of `inputs` (the first input decides the dtype).
pub(crate) fn dispatch<K: Kernel>(k: &K, inputs: &[(&CpuStorage, &Layout)]) -> Result<CpuStorage> {
    fn views<'a, T: WithDType>(inputs: &[(&'a CpuStorage, &Layout)], op: &str) -> Result<Vec<&'a [T]>> {
        inputs.iter().map(|(s, l)| contiguous::<T>(s, l, op)).collect()
    }
    Ok(match inputs[0].0.dtype() {
        DType::F32 => f32::to_cpu_storage_owned(k.run(&views::<f32>(inputs, K::NAME)?)),
        DType::F64 => f64::to_cpu_storage_owned(k.run(&views::<f64>(inputs, K::NAME)?)),
        dt => candle_core::bail!("{}: unsupported dtype {dt:?}", K::NAME),
    })
}

/// f over the elements of one or two equal-length inputs (`b` = `a` for one), in parallel
/// chunks, into a fresh output.
pub(crate) fn map2<T: WithDType>(a: &[T], b: &[T], f: impl Fn(T, T) -> T + Sync) -> Vec<T> {
    use rayon::prelude::*;
    const CHUNK: usize = 16384;
    written(a.len(), |y| {
        y.par_chunks_mut(CHUNK).zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK))).for_each(|(y, (a, b))| {
            for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
                y.write(f(a, b));
            }
        });
    })
}

/// A k×k window sliding over (n, c) planes of h×w with stride and symmetric padding: the
/// geometry of depthwise convolution and pooling.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WindowGeom {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub ho: usize,
    pub wo: usize,
}

/// A matrix view: data with row and column strides (in elements).
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a, T> {
    pub data: &'a [T],
    pub rs: isize,
    pub cs: isize,
}

/// dst (m×n, row-major) = [dst +] lhs (m×k) · rhs (k×n), single-threaded (callers
/// parallelise over images).
pub(crate) fn gemm<T: WithDType>(m: usize, n: usize, k: usize, dst: &mut [T], lhs: Mat<T>, rhs: Mat<T>, accumulate: bool) {
    gemm_scaled(m, n, k, dst, lhs, rhs, accumulate, T::one())
}

/// dst = [dst +] scale · lhs · rhs: the scale applied to each finished dot product.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_scaled<T: WithDType>(m: usize, n: usize, k: usize, dst: &mut [T], lhs: Mat<T>, rhs: Mat<T>, accumulate: bool, scale: T) {
    gemm_strided(m, n, k, dst, n, lhs, rhs, accumulate, scale)
}

/// dst = lhs · rhs into an uninitialised `dst` (m×n, row-major), which the GEMM overwrites
/// without reading it (`read_dst` false).
pub(crate) fn gemm_uninit<T: WithDType>(m: usize, n: usize, k: usize, dst: &mut [MaybeUninit<T>], lhs: Mat<T>, rhs: Mat<T>) {
    // MaybeUninit<T> has T's layout; with `read_dst` false the GEMM only writes.
    gemm_raw(m, n, k, (dst.as_mut_ptr() as *mut T, dst.len()), n, lhs, rhs, false, T::one(), false)
}

/// [`gemm`] spread over the rayon pool by the GEMM itself: for products whose weight
/// operand is large next to the rows, which per-row-block GEMMs would each pack again.
/// Threads split the output, never the depth, so each element's sum is in the same order
/// whatever the thread count.
pub(crate) fn gemm_parallel<T: WithDType>(m: usize, n: usize, k: usize, dst: &mut [T], lhs: Mat<T>, rhs: Mat<T>, accumulate: bool) {
    gemm_raw(m, n, k, (dst.as_mut_ptr(), dst.len()), n, lhs, rhs, accumulate, T::one(), true)
}

/// [`gemm_uninit`] spread over the rayon pool, as [`gemm_parallel`].
pub(crate) fn gemm_uninit_parallel<T: WithDType>(m: usize, n: usize, k: usize, dst: &mut [MaybeUninit<T>], lhs: Mat<T>, rhs: Mat<T>) {
    gemm_raw(m, n, k, (dst.as_mut_ptr() as *mut T, dst.len()), n, lhs, rhs, false, T::one(), true)
}

/// [`gemm_scaled`] into rows of `dst` that are `dst_rs` ≥ n apart.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_strided<T: WithDType>(m: usize, n: usize, k: usize, dst: &mut [T], dst_rs: usize, lhs: Mat<T>, rhs: Mat<T>, accumulate: bool, scale: T) {
    gemm_raw(m, n, k, (dst.as_mut_ptr(), dst.len()), dst_rs, lhs, rhs, accumulate, scale, false)
}

/// The GEMM on a destination given as (start, length): read only when `accumulate`.
#[allow(clippy::too_many_arguments)]
fn gemm_raw<T: WithDType>(m: usize, n: usize, k: usize, (dst, dst_len): (*mut T, usize), dst_rs: usize, lhs: Mat<T>, rhs: Mat<T>, accumulate: bool, scale: T, parallel: bool) {
    let span = |rows: usize, cols: usize, rs: isize, cs: isize| {
        if rows == 0 || cols == 0 {
            0
        } else {
            ((rows - 1) as isize * rs + (cols - 1) as isize * cs) as usize + 1
        }
    };
    assert!(dst_rs >= n && dst_len >= span(m, n, dst_rs as isize, 1));
    assert!(lhs.data.len() >= span(m, k, lhs.rs, lhs.cs));
    assert!(rhs.data.len() >= span(k, n, rhs.rs, rhs.cs));
    // SAFETY: the asserts above bound every index gemm reads or writes; strides are positive.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs,
            lhs.rs,
            rhs.data.as_ptr(),
            rhs.cs,
            rhs.rs,
            T::one(),
            scale,
            false,
            false,
            false,
            if parallel { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None },
        )
    }
}

/// Σ over items `0..n` of per-item contributions to a buffer of `size`, in an order fixed by
/// the thread count alone: the items are cut into one contiguous piece per thread, each
/// piece adds its items in order into its own buffer (`add(buffer, scratch, item range)`),
/// and the buffers are summed in piece order. rayon's `fold`/`reduce` instead split where
/// work happens to be stolen, so their float sums — weight gradients here — changed from
/// run to run, which `--deterministic` training cannot have.
pub(crate) fn ordered_sum<T: WithDType, S>(n: usize, size: usize, scratch: impl Fn() -> S + Sync, add: impl Fn(&mut [T], &mut S, std::ops::Range<usize>) + Sync) -> Vec<T> {
    use rayon::prelude::*;
    let piece = n.div_ceil(rayon::current_num_threads()).max(1);
    let partial: Vec<Vec<T>> = (0..n.div_ceil(piece))
        .into_par_iter()
        .map(|p| {
            let mut acc = vec![T::zero(); size];
            add(&mut acc, &mut scratch(), p * piece..((p + 1) * piece).min(n));
            acc
        })
        .collect();
    add_in_order(partial, size)
}

/// The element-wise sum of per-thread partial buffers of `size`, added in their order (the
/// first one taken as it is, so no zero-filled buffer): with pieces fixed by the thread
/// count, a sum that does not depend on how rayon stole the work.
pub(crate) fn add_in_order<T: WithDType>(parts: Vec<Vec<T>>, size: usize) -> Vec<T> {
    let mut parts = parts.into_iter();
    let mut total = parts.next().unwrap_or_else(|| vec![T::zero(); size]);
    for part in parts {
        total.iter_mut().zip(part).for_each(|(a, b)| *a += b);
    }
    total
}

// Convolutions on small maps run one GEMM per group of images instead of per image.

/// Columns a GEMM should have at least: the last stages' maps are 4×4 and 2×2, and a
/// 4-column GEMM per image runs the micro-kernel mostly on padding (the 2×2 stage's 1×1
/// convs took 2.5x the time of the 16×16 stage's at equal FLOPs), and packs the weight
/// again for every few columns.
const MIN_COLS: usize = 256;

/// Images per GEMM for n images of hw pixels: enough for [`MIN_COLS`] columns, at least one
/// group per thread, and of the sizes between, the one that leaves the busiest thread the
/// fewest images. Groups of exactly enough columns left remainders: 64 images of 3×3 went
/// in groups of 29, 29 and 6, and the weight gradient, which gives each thread a run of
/// whole groups, ran 58 images on one thread and 6 on the other.
pub(crate) fn group_size(n: usize, hw: usize) -> usize {
    group_size_for(n, hw, rayon::current_num_threads())
}

fn group_size_for(n: usize, hw: usize, threads: usize) -> usize {
    let t = threads.max(1);
    let fewest = MIN_COLS.div_ceil(hw.max(1)).min(n.div_ceil(t)).max(1);
    // The most images a thread takes when each takes a run of whole groups; the smallest
    // group size among the best, so that more groups are left for work stealing.
    let load = |gs: usize| n.div_ceil(gs).div_ceil(t) * gs;
    (fewest..=n.div_ceil(t).max(fewest)).min_by_key(|&gs| (load(gs), gs)).unwrap_or(fewest)
}

/// Runs `$body` with the const `N` = `$hw` for the deep stages' tiny maps (1×1 to 4×4 at low
/// resolution), else with `N` = 0 (any length). A copy of a few floats through memcpy costs
/// mostly the call; with the length known the compiler emits plain moves.
macro_rules! short_runs {
    ($hw:expr, |$n:ident| $body:expr) => {
        match $hw {
            1 => { const $n: usize = 1; $body }
            2 => { const $n: usize = 2; $body }
            3 => { const $n: usize = 3; $body }
            4 => { const $n: usize = 4; $body }
            6 => { const $n: usize = 6; $body }
            8 => { const $n: usize = 8; $body }
            9 => { const $n: usize = 9; $body }
            12 => { const $n: usize = 12; $body }
            16 => { const $n: usize = 16; $body }
            _ => { const $n: usize = 0; $body }
        }
    };
}

/// The (C, gs·hw) matrix of a group of gs (C, hw) images: the images themselves when
/// gs = 1, else copied into `buf`.
pub(crate) fn gather<'a, T: WithDType>(imgs: &'a [T], c: usize, hw: usize, buf: &'a mut Vec<T>) -> &'a [T] {
    let gs = imgs.len() / (c * hw).max(1);
    if gs == 1 {
        return imgs;
    }
    let cols = gs * hw;
    rewrite(buf, imgs.len(), |m| {
        short_runs!(hw, |N| for ci in 0..c {
            for (i, img) in imgs.chunks_exact(c * hw).enumerate() {
                copy_run::<T, N>(&mut m[ci * cols + i * hw..ci * cols + (i + 1) * hw], &img[ci * hw..(ci + 1) * hw]);
            }
        })
    });
    buf
}

/// Writes a (C, gs·hw) matrix out as gs (C, hw) images, every element of `imgs`.
pub(crate) fn scatter<T: WithDType>(m: &[T], c: usize, hw: usize, imgs: &mut [MaybeUninit<T>]) {
    let cols = m.len() / c.max(1);
    short_runs!(hw, |N| for (i, img) in imgs.chunks_exact_mut(c * hw).enumerate() {
        for (ci, run) in img.chunks_exact_mut(hw).enumerate() {
            copy_run::<T, N>(run, &m[ci * cols + i * hw..ci * cols + (i + 1) * hw]);
        }
    })
}


/// `dst` ← `src`: `N` elements when N > 0 (a fixed-size copy), else `src.len()`.
#[inline(always)]
fn copy_run<T: Copy, const N: usize>(dst: &mut [MaybeUninit<T>], src: &[T]) {
    if N > 0 {
        let (d, s): (&mut [MaybeUninit<T>; N], &[T; N]) = (dst.try_into().expect("run length"), src.try_into().expect("run length"));
        for k in 0..N {
            d[k].write(s[k]);
        }
    } else {
        // SAFETY: `MaybeUninit<T>` has `T`'s layout; the copy initialises all of `dst`.
        let src_uninit: &[MaybeUninit<T>] = unsafe { std::slice::from_raw_parts(src.as_ptr().cast(), src.len()) };
        dst.copy_from_slice(src_uninit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_and_scatter_transpose_groups_of_images_for_every_run_length() {
        let (gs, c) = (3, 5);
        for hw in 1..=20 {
            let imgs: Vec<f32> = (0..gs * c * hw).map(|i| i as f32).collect();
            let mut buf = Vec::new();
            let m = gather(&imgs, c, hw, &mut buf).to_vec();
            let cols = gs * hw;
            for (i, ci, p) in (0..gs).flat_map(|i| (0..c).flat_map(move |ci| (0..hw).map(move |p| (i, ci, p)))) {
                assert_eq!(m[ci * cols + i * hw + p], imgs[i * c * hw + ci * hw + p], "hw {hw}");
            }
            let mut back = vec![MaybeUninit::new(-1f32); imgs.len()];
            scatter(&m, c, hw, &mut back);
            // SAFETY: initialised above.
            assert_eq!(back.iter().map(|v| unsafe { v.assume_init() }).collect::<Vec<_>>(), imgs, "hw {hw}");
        }
    }

    #[test]
    fn image_groups_fill_the_gemm_and_share_evenly_over_the_threads() {
        for t in 1..=4 {
            for n in [1, 2, 7, 8, 16, 63, 64, 128] {
                for hw in [1, 4, 9, 16, 25, 36, 49, 144, 256, 3136] {
                    let gs = group_size_for(n, hw, t);
                    let fewest = MIN_COLS.div_ceil(hw).min(n.div_ceil(t));
                    assert!(gs >= fewest && gs <= n, "n {n} hw {hw} t {t}: {gs}");
                    // Never more images on one thread than with groups of exactly enough
                    // columns (the former rule).
                    let load = |gs: usize| n.div_ceil(gs).div_ceil(t) * gs;
                    assert!(load(gs) <= load(fewest.max(1)), "n {n} hw {hw} t {t}: {gs}");
                }
            }
        }
        // The case that ran 58 images on one thread and 6 on the other; ConvNeXt's 7×7 last
        // stage at batch 16 (12 and 4 before).
        assert_eq!(group_size_for(64, 9, 2), 32);
        assert_eq!(group_size_for(16, 49, 2), 8);
        // Maps large enough for one image per GEMM stay so.
        assert_eq!(group_size_for(8, 256, 3), 1);
    }
}
