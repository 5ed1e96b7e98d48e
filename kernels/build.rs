//! With the `cuda` feature: compiles the CUDA kernels of `cuda/` to PTX with nvcc (the
//! same nvcc candle's own kernels need; docs/gpu.md shows how to get one from PyPI wheels).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=cuda");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    // Virtual architecture: the driver JIT-compiles the PTX for the GPU it finds.
    let cap: String = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into()).chars().filter(|c| c.is_ascii_digit()).collect();
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    for name in ["depthwise", "layer_norm", "softmax", "gelu"] {
        let src = format!("cuda/{name}.cu");
        let ptx = out.join(format!("{name}.ptx"));
        let status = Command::new(&nvcc)
            .args(["--ptx", &format!("-arch=compute_{cap}"), "-O3", &src, "-o"])
            .arg(&ptx)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {nvcc} for {src}: {e} (the cuda feature needs nvcc on PATH: see docs/gpu.md)"));
        assert!(status.success(), "{nvcc} failed on {src}");
    }
}
