//! Compiles the .proto files with protox (pure Rust) so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/demo/v1/movies.proto",
        "proto/discovery/v1/discovery.proto",
        "proto/tap/v1/tap.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
