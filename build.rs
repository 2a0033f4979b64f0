// Two jobs: the run path to libtorch, and the gRPC code.
//
// torch-sys links libtorch but records no run path, so the binary would need LD_LIBRARY_PATH.
// Embed libtorch's directory (exported by torch-sys through `links = "tch"`) and the
// packaged-install location next to the binary.
//
// The gRPC services come from proto/ through a pure-Rust protobuf compiler (no protoc).
fn main() {
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        // Where to look for libtorch_cuda.so when a GPU is requested (see src/device.rs).
        println!("cargo:rustc-env=FERROSERVE_LIBTORCH_LIB={dir}");
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../lib");
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
