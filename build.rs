// torch-sys links libtorch but records no run path, so the binary would need LD_LIBRARY_PATH.
// Embed libtorch's directory (exported by torch-sys through `links = "tch"`) and the
// packaged-install location next to the binary.
fn main() {
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        // Where to look for libtorch_cuda.so when a GPU is requested (see src/device.rs).
        println!("cargo:rustc-env=FERROSERVE_LIBTORCH_LIB={dir}");
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../lib");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
}
