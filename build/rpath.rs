//! Binaries and tests that link libtorch find it at run time through an rpath, so nobody has
//! to export LD_LIBRARY_PATH. Cargo hands a `links` package's metadata to its direct
//! dependents only, as `DEP_<LINKS>_<KEY>`: torch-sys (`links = "tch"`) tells `model` where
//! libtorch lives, and `model` (`links = "strata_torch"`) and `storage` (`links =
//! "strata_storage"`) pass it on in turn, so a crate that links libtorch without naming tch
//! learns the folder from the crate it links it through.
const PASSED_ON: [&str; 3] = ["DEP_TCH_LIBTORCH_LIB", "DEP_STRATA_TORCH_LIBTORCH_LIB", "DEP_STRATA_STORAGE_LIBTORCH_LIB"];

fn main() {
    for name in PASSED_ON {
        println!("cargo:rerun-if-env-changed={name}");
    }
    if let Some(dir) = PASSED_ON.iter().find_map(|name| std::env::var(name).ok()) {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        println!("cargo:rustc-env=STRATA_LIBTORCH_LIB={dir}");
        // Metadata for the dependents of a `links` package (`model`, `storage`).
        if std::env::var_os("CARGO_MANIFEST_LINKS").is_some() {
            println!("cargo:libtorch_lib={dir}");
        }
    }
    println!("cargo:rerun-if-env-changed=ORT_DYLIB_PATH");
}
