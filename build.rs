//! Compiles `proto/` in pure Rust (protox), so building needs no `protoc`.

use std::path::PathBuf;

use prost::Message as _;

const PROTOS: &[&str] = &[
    "latchkey/v1/system.proto",
    "latchkey/v1/audit.proto",
    "latchkey/v1/workload.proto",
    "latchkey/v1/operator.proto",
    "latchkey/v1/access.proto",
    "latchkey/v1/trust.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    std::fs::write(
        out_dir.join("latchkey_v1_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        // Undecodable messages answer INVALID_ARGUMENT with a stable code (src/rpc/codec.rs).
        .codec_path("crate::rpc::codec::LatchkeyCodec")
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
