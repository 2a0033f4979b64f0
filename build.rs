// Two jobs: the run path to libtorch, and the gRPC code.
//
// torch-sys links libtorch but records no run path, so the binary would need LD_LIBRARY_PATH
// (DYLD_LIBRARY_PATH on macOS). Embed libtorch's directory (exported by torch-sys through
// `links = "tch"`) and the packaged-install location next to the binary, in the loader's own
// spelling: the wheels' libraries are found through the run path on both (`$ORIGIN` on Linux;
// on macOS their install names are `@rpath/...`).
//
// The gRPC services come from proto/ through a pure-Rust protobuf compiler (no protoc).
fn main() {
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        // Where to look for libtorch_cuda.so when a GPU is requested (see src/device.rs).
        println!("cargo:rustc-env=FERROSERVE_LIBTORCH_LIB={dir}");
    }
    let packaged = match std::env::var("CARGO_CFG_TARGET_OS").as_deref() {
        Ok("macos") => "@executable_path/../lib",
        _ => "$ORIGIN/../lib",
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{packaged}");
    println!("cargo:rerun-if-env-changed=LIBTORCH");

    let protos = [
        "proto/inference.proto",
        "proto/management.proto",
        "proto/open_inference_grpc.proto",
    ];
    for p in protos.iter().chain(&["proto/google/rpc/status.proto"]) {
        println!("cargo:rerun-if-changed={p}");
    }
    let descriptors = protox::compile(protos, ["proto"]).expect("valid proto files");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)
        .expect("gRPC code generation");
}
