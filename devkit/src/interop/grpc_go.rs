//! The grpc-go interop client: `devkit/interop/grpc-go`, a small Go program
//! built with `go build` against the modules its `go.sum` pins (fetched
//! through the Go module proxy), and cached by the hash of its source.
//!
//! ```text
//!  devkit/interop/grpc-go/{go.mod,go.sum,main.go}
//!     ──go build -mod=readonly──>  <cache>/interop/grpc-go-<hash>/client
//! ```
//!
//! Only the build's description lives here (the build itself is
//! [`crate::gobuild`]); running it is the shared client contract's business
//! ([`super::ClientKind`]).

use std::path::{Path, PathBuf};

use crate::gobuild::GoProgram;

/// The files the grpc-go client is built from; their contents name the build.
const GRPC_GO_FILES: [&str; 3] = ["go.mod", "go.sum", "main.go"];

/// The grpc-go client's source: `devkit/interop/grpc-go`.
pub fn grpc_go_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/grpc-go")
}

fn program(source: &Path) -> GoProgram<'_> {
    GoProgram {
        what: "the grpc-go interop client",
        source,
        files: &GRPC_GO_FILES,
        group: "interop",
        name: "grpc-go",
        binary: "client",
    }
}

/// Where the client for the current source is (or will be) cached:
/// `<cache>/interop/grpc-go-<hash>/client`.
pub fn grpc_go_client_path() -> anyhow::Result<PathBuf> {
    program(&grpc_go_source()).path()
}

/// Returns the cached grpc-go client, building it first if this version of
/// the source has not been built. `progress` prints what happens to stderr.
pub fn ensure_grpc_go_client(progress: bool) -> anyhow::Result<PathBuf> {
    program(&grpc_go_source()).ensure(progress)
}
