//! Compiles `jobworker/v1/jobs.proto` with protox (pure Rust, no `protoc`) and tonic-prost-build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "jobworker/v1/jobs.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["."])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // prost's codec with buffers sized for streamed output (see src/codec.rs).
        .codec_path("crate::codec::JobCodec")
        .compile_fds(fds)?;
    Ok(())
}
