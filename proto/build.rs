//! Compiles the project's own protos. protoc comes from `protoc-bin-vendored`
//! so a fresh machine needs no system package.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build finds protoc through PROTOC.
    unsafe_env_set(&protoc);
    tonic_prost_build::configure().compile_protos(&["proto/echo.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}

#[allow(unsafe_code)]
fn unsafe_env_set(protoc: &std::path::Path) {
    // SAFETY: build scripts run single-threaded before any other thread reads the environment.
    unsafe { std::env::set_var("PROTOC", protoc) };
}
