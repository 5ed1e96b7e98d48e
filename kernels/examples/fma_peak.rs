//! The ceiling for the GEMMs: this CPU's f32 FMA throughput (12 independent AVX2 FMA chains,
//! the register budget of a GEMM micro-kernel), on one thread and on one thread per core,
//! next to the `gemm` crate's single-threaded rate on a square product and on DeiT-tiny's
//! per-row-block linear shapes. Best of several runs each.
//!
//!     cargo run --release -p et-models --example fma_peak
use std::time::Instant;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_chains(n: usize) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_set1_ps(0.5); 12];
    let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
    for _ in 0..n {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_ps(*v, a, b);
        }
    }
    let mut out = [0f32; 8];
    _mm256_storeu_ps(out.as_mut_ptr(), acc.iter().fold(_mm256_setzero_ps(), |s, &v| _mm256_add_ps(s, v)));
    out.iter().sum()
}

/// GFLOP/s of `threads` threads each running the FMA chains.
#[cfg(target_arch = "x86_64")]
fn fma_peak(threads: usize) -> f64 {
    let n = 100_000_000;
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            // SAFETY: AVX2 and FMA were checked by the caller.
            s.spawn(move || std::hint::black_box(unsafe { fma_chains(n) }));
        }
    });
    (threads * n * 12 * 16) as f64 / t.elapsed().as_secs_f64() * 1e-9
}

fn gemm_rate(m: usize, k: usize, n: usize) -> f64 {
    let a: Vec<f32> = (0..m * k).map(|i| (i % 17) as f32 * 0.01).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 13) as f32 * 0.01).collect();
    let mut c = vec![0f32; m * n];
    let mut best = f64::MAX;
    for _ in 0..20 {
        let t = Instant::now();
        // SAFETY: a is m×k, b k×n and c m×n, all row-major and fully in bounds.
        unsafe {
            gemm::gemm(m, n, k, c.as_mut_ptr(), 1, n as isize, false, a.as_ptr(), 1, k as isize, b.as_ptr(), 1, n as isize, 0.0, 1.0, false, false, false, gemm::Parallelism::None);
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * (m * k * n) as f64 / best * 1e-9
}

fn main() {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        for threads in [1, cores] {
            let best = (0..3).map(|_| fma_peak(threads)).fold(0.0, f64::max);
            println!("FMA peak, {threads} thread(s): {best:.1} GFLOP/s ({:.1} per thread)", best / threads as f64);
        }
    }
    for (m, k, n) in [(1024, 1024, 1024), (394, 192, 576), (394, 192, 768), (394, 768, 192), (197, 64, 197)] {
        println!("gemm crate, 1 thread, {m}x{k} . {k}x{n}: {:.1} GFLOP/s", gemm_rate(m, k, n));
    }
}
