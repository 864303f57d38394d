//! Binaries and tests that link libtorch find it at run time through an rpath, so nobody has
//! to export LD_LIBRARY_PATH. torch-sys (`links = "tch"`) tells us where libtorch lives.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        println!("cargo:rustc-env=STRATA_LIBTORCH_LIB={dir}");
    }
    println!("cargo:rerun-if-env-changed=ORT_DYLIB_PATH");
}
