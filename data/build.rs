//! Builds the bridge to the system libjpeg(-turbo) when its header is installed (Debian:
//! libjpeg-dev), and otherwise leaves the pure-Rust decoder alone: the crate must build
//! on machines without it. `ET_NO_LIBJPEG=1` forces the fallback (to test it).

fn main() {
    println!("cargo:rerun-if-changed=csrc/etjpeg.c");
    println!("cargo:rerun-if-changed=csrc/ethuff.c");
    println!("cargo:rerun-if-env-changed=ET_NO_LIBJPEG");
    println!("cargo:rustc-check-cfg=cfg(et_libjpeg)");
    if std::env::var_os("ET_NO_LIBJPEG").is_some_and(|v| v != "0") {
        return;
    }
    let built = cc::Build::new().file("csrc/etjpeg.c").file("csrc/ethuff.c").opt_level(3).warnings(false).cargo_warnings(false).try_compile("etjpeg");
    if built.is_ok() {
        println!("cargo:rustc-link-lib=jpeg");
        println!("cargo:rustc-cfg=et_libjpeg");
    } else {
        println!("cargo:warning=libjpeg headers not found: JPEGs decode with the pure-Rust decoder, without reduced-DCT scaling");
    }
}
