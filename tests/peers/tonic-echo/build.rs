//! Generates the echo.proto and server.proto code (messages, tonic clients and servers) from the repo's
//! protos/ folder. protoc: $PROTOC if set, else the one shipped in the protoc-bin-vendored crate (no download
//! outside crates.io).
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let protos = manifest.join("../../../protos").canonicalize()?;
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // SAFETY: build scripts are single-threaded here; prost-build reads PROTOC from the environment
        unsafe { std::env::set_var("PROTOC", protoc) };
    }
    let files = [
        protos.join("grpc_helper_samples/api/echo.proto"),
        protos.join("grpc_helper/api/server.proto"),
        protos.join("grpc_helper/api/common.proto"),
    ];
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&files, std::slice::from_ref(&protos))?;
    println!("cargo:rerun-if-changed={}", protos.display());
    Ok(())
}
