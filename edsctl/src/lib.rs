//! edsctl: the inspection CLI for eds-server and its clients.
//!
//! Not built yet (issue 7). This crate exists so the workspace has the shape
//! of ARCHITECTURE.md; it exports nothing and claims nothing.
