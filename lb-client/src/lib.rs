//! lb-client: per-request balancing for tonic services, fed by eds-server over ADS.
//!
//! Not built yet (issue 6). This crate exists so the workspace has the shape
//! of ARCHITECTURE.md; it exports nothing and claims nothing.
