//! With the `mpi` feature: compiles csrc/et_mpi.c with the MPI's own compiler wrapper
//! (`mpicc`, or `$MPICC`) and links what it links. Open MPI and MPICH both answer `-show`.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rerun-if-env-changed=MPICC");
    if std::env::var_os("CARGO_FEATURE_MPI").is_none() {
        return;
    }
    let mpicc = std::env::var("MPICC").unwrap_or_else(|_| "mpicc".into());
    let show = Command::new(&mpicc).arg("-show").output().unwrap_or_else(|e| {
        panic!(
            "the `distributed` feature needs an MPI library and its compiler wrapper, but `{mpicc} -show` failed ({e}). \
             Debian/Ubuntu: `apt-get install libopenmpi-dev openmpi-bin`; on a cluster, load its MPI module; or set MPICC to its mpicc"
        )
    });
    assert!(show.status.success(), "`{mpicc} -show` failed: {}", String::from_utf8_lossy(&show.stderr));
    cc::Build::new().compiler(&mpicc).file("csrc/et_mpi.c").opt_level(2).compile("et_mpi");
    let line = String::from_utf8_lossy(&show.stdout).to_string();
    let mut words = line.split_whitespace().skip(1).peekable();
    while let Some(w) = words.next() {
        if let Some(dir) = w.strip_prefix("-L") {
            println!("cargo:rustc-link-search=native={dir}");
        } else if let Some(lib) = w.strip_prefix("-l") {
            println!("cargo:rustc-link-lib={lib}");
        } else if w.starts_with("-Wl,") || w == "-pthread" {
            println!("cargo:rustc-link-arg={w}");
        } else if w == "-Xlinker" {
            if let Some(arg) = words.next() {
                println!("cargo:rustc-link-arg=-Xlinker");
                println!("cargo:rustc-link-arg={arg}");
            }
        }
    }
}
