//! Binaries and tests that link libtorch find it at run time through an rpath, so nobody has
//! to export LD_LIBRARY_PATH. torch-sys (`links = "tch"`) tells its direct dependents where
//! libtorch lives; `model` (`links = "strata_torch"`) passes that on, so a crate that runs the
//! model without naming tch (the `strata` binary) learns it from `model`.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=DEP_STRATA_TORCH_LIBTORCH_LIB");
    let dir = std::env::var("DEP_TCH_LIBTORCH_LIB").or_else(|_| std::env::var("DEP_STRATA_TORCH_LIBTORCH_LIB"));
    if let Ok(dir) = dir {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        println!("cargo:rustc-env=STRATA_LIBTORCH_LIB={dir}");
        // Metadata for the dependents of a `links` package (`model`).
        if std::env::var_os("CARGO_MANIFEST_LINKS").is_some() {
            println!("cargo:libtorch_lib={dir}");
        }
    }
    println!("cargo:rerun-if-env-changed=ORT_DYLIB_PATH");
}
