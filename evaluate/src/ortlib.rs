//! Finding and loading the ONNX Runtime shared library (`ort` with `load-dynamic`): the
//! library comes from the PyPI `onnxruntime` wheel, never from a download at build time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub const HOW_TO_INSTALL: &str = "install it with `pip install onnxruntime==1.31.1` (scripts/test.sh puts one in .ort/), \
then set ORT_DYLIB_PATH=/path/to/onnxruntime/capi/libonnxruntime.so.1.31.1 or pass --ort-lib";

#[derive(Debug, thiserror::Error)]
pub enum OrtLibError {
    #[error("ONNX Runtime library not found: {HOW_TO_INSTALL}")]
    NotFound,
    #[error("ONNX Runtime library {path} does not exist: {HOW_TO_INSTALL}")]
    Missing { path: PathBuf },
    #[error("cannot load ONNX Runtime from {path}: {reason} (need onnxruntime ≥ 1.31; {HOW_TO_INSTALL})")]
    Load { path: PathBuf, reason: String },
}

/// The library file inside an `onnxruntime` Python package directory.
fn lib_in_package(pkg: &Path) -> Option<PathBuf> {
    let capi = pkg.join("capi");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&capi)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so")))
        .collect();
    // Prefer the fully versioned file (the wheel ships no unversioned symlink).
    found.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    found.into_iter().next()
}

/// `.ort/onnxruntime` in `dir` or any of its ancestors (where scripts/test.sh installs it).
fn lib_in_ancestors(dir: &Path) -> Option<PathBuf> {
    dir.ancestors().find_map(|d| lib_in_package(&d.join(".ort").join("onnxruntime")))
}

fn lib_from_python() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args(["-c", "import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    lib_in_package(Path::new(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Where the library is: `explicit` (--ort-lib), then `ORT_DYLIB_PATH`, then a `.ort/` folder
/// above the working directory or the executable, then an `onnxruntime` Python package.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, OrtLibError> {
    let given = explicit.map(Path::to_path_buf).or_else(|| std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from));
    if let Some(p) = given {
        return if p.is_file() { Ok(p) } else { Err(OrtLibError::Missing { path: p }) };
    }
    let cwd = std::env::current_dir().ok();
    let exe = std::env::current_exe().ok();
    cwd.as_deref()
        .and_then(lib_in_ancestors)
        .or_else(|| exe.as_deref().and_then(Path::parent).and_then(lib_in_ancestors))
        .or_else(lib_from_python)
        .ok_or(OrtLibError::NotFound)
}

static ENV: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// The process-wide ONNX Runtime environment (ONNX Runtime allows one per process).
pub fn environment(explicit: Option<&Path>) -> Result<&'static ort::environment::Environment, OrtLibError> {
    let path = locate(explicit)?;
    let env = ENV.get_or_init(|| {
        let builder = ort::init_from(&path).map_err(|e| e.to_string())?;
        builder.with_name("et-eval").build().map_err(|e| e.to_string())
    });
    env.as_ref().map_err(|reason| OrtLibError::Load { path, reason: reason.clone() })
}
