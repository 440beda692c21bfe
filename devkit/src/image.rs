//! Container images without a registry or Docker: an OCI image layout
//! written directly as a tarball, which `ctr images import` loads into a
//! node's containerd.
//!
//! ```text
//!  image.tar
//!    oci-layout                       {"imageLayoutVersion":"1.0.0"}
//!    index.json                       one manifest, annotated with the image's name
//!    blobs/sha256/<manifest>          config + one layer
//!    blobs/sha256/<config>            user, entrypoint, ports, env, working dir, diff_id
//!    blobs/sha256/<layer>             tar.gz of the files, parents first
//! ```
//!
//! Output is deterministic: entries sorted by path, every mtime the epoch,
//! owners numeric, no host user or group names, gzip header without a time
//! or name, JSON with fixed key order. The same inputs give the same
//! digests, so loading an unchanged image again is a no-op.
//!
//! The project's images ([`eds_server_image`], [`echo_backend_image`],
//! [`pause_image`]) mirror the runtime stage of `deploy/Dockerfile`
//! (`gcr.io/distroless/cc-debian12:nonroot`): distroless cc is glibc,
//! libgcc, CA certificates, `/etc/passwd` and `/etc/group` with root and
//! `nonroot` (65532), and `/tmp`. This host is Debian 12 too, so the image
//! takes the binary's shared libraries (as `ldd` lists them) from the host
//! at the same paths. A test holds the image config and the Dockerfile's
//! `USER`, `ENTRYPOINT`, `EXPOSE` and `COPY` destination to each other.
//!
//! What this is not: a builder of arbitrary images (one layer, no
//! whiteouts, no base image), nor a registry client.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};
use serde_json::json;
use sha2::{Digest, Sha256};

/// The cargo package and binary selection that builds what the images
/// hold (`cargo build <these>`): one list, so every caller shares one
/// feature resolution and one build.
pub const IMAGE_BINARIES: [&str; 8] = [
    "-p",
    "eds-server",
    "--bin",
    "eds-server",
    "-p",
    "eds-tests",
    "--bin",
    "echo-backend",
];

/// Where the server binary sits in its image (and in `deploy/Dockerfile`).
pub const EDS_SERVER_PATH: &str = "/usr/local/bin/eds-server";
/// Where the echo backend sits in its image.
pub const ECHO_BACKEND_PATH: &str = "/usr/local/bin/echo-backend";
/// Where the pause program sits in its image.
pub const PAUSE_PATH: &str = "/pause";
/// distroless's `nonroot` user and group, which `deploy/Dockerfile` runs as.
pub const NONROOT_USER: &str = "65532:65532";
/// eds-server's xDS and admin ports, as `deploy/Dockerfile` exposes them.
pub const EDS_SERVER_PORTS: [u16; 2] = [18000, 18001];
/// The pause (sandbox) image's name, which containerd's CRI config pins.
pub const PAUSE_IMAGE: &str = "registry.local/eds-rs/pause:3.10";

/// What a file in the image holds.
#[derive(Debug, Clone)]
pub enum Content {
    /// These bytes.
    Bytes(Vec<u8>),
    /// The file at this host path (symbolic links followed), read when the
    /// image is written.
    Host(PathBuf),
}

/// One entry of the image's file system.
#[derive(Debug, Clone)]
pub enum Entry {
    /// A regular file.
    File {
        /// Absolute path in the image.
        path: String,
        /// Permission bits (`0o755`).
        mode: u32,
        /// Owner uid and gid.
        owner: (u64, u64),
        /// Its content.
        content: Content,
    },
    /// A directory (parents of files get `0o755`, root-owned, unless listed).
    Dir {
        /// Absolute path in the image.
        path: String,
        /// Permission bits (`0o1777` for `/tmp`).
        mode: u32,
        /// Owner uid and gid.
        owner: (u64, u64),
    },
}

impl Entry {
    /// A root-owned file.
    pub fn file(path: &str, mode: u32, content: Content) -> Self {
        Entry::File {
            path: path.to_owned(),
            mode,
            owner: (0, 0),
            content,
        }
    }

    fn path(&self) -> &str {
        match self {
            Entry::File { path, .. } | Entry::Dir { path, .. } => path,
        }
    }
}

/// The runtime part of an image's config (the OCI config's `config`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `uid:gid` (or a name) the entrypoint runs as.
    pub user: String,
    /// The command and its first arguments.
    pub entrypoint: Vec<String>,
    /// Default arguments after the entrypoint.
    pub cmd: Vec<String>,
    /// TCP ports, documentation only (as in a Dockerfile).
    pub exposed_ports: Vec<u16>,
    /// `NAME=value`.
    pub env: Vec<String>,
    /// Absolute working directory; empty means `/`.
    pub working_dir: String,
}

/// A whole image: its name, config and files.
#[derive(Debug, Clone)]
pub struct Image {
    /// The full reference containerd stores it under
    /// (`docker.io/eds-rs/eds-server:dev`).
    pub name: String,
    /// Runtime config.
    pub config: ImageConfig,
    /// The files; parents are added as needed.
    pub entries: Vec<Entry>,
}

/// What [`write_oci_archive`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// `sha256:<hex>` of the manifest: the image's identity.
    pub manifest_digest: String,
    /// `sha256:<hex>` of the uncompressed layer (the config's `diff_id`).
    pub diff_id: String,
    /// Size of the archive in bytes.
    pub size: u64,
}

fn sha256(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in digest.iter() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The tag part of a reference (`dev` in `docker.io/eds-rs/eds-server:dev`),
/// `latest` if it has none.
pub fn tag_of(name: &str) -> &str {
    let last = name.rsplit('/').next().unwrap_or(name);
    match last.split_once(':') {
        Some((_, tag)) if !tag.is_empty() => tag,
        _ => "latest",
    }
}

/// Adds every missing parent directory, then sorts by path, so the layer
/// lists parents before children and never depends on input order.
fn complete_tree(entries: &[Entry]) -> anyhow::Result<Vec<Entry>> {
    let mut by_path: BTreeMap<String, Entry> = BTreeMap::new();
    for e in entries {
        let path = e.path();
        ensure!(
            path.starts_with('/') && path.len() > 1 && !path.ends_with('/'),
            "image paths are absolute file or directory paths, not {path:?}"
        );
        ensure!(
            !path.split('/').any(|c| c == ".." || c == "."),
            "image path {path:?} has . or .. in it"
        );
        if by_path.insert(path.to_owned(), e.clone()).is_some() {
            bail!("{path} is listed twice");
        }
    }
    let paths: Vec<String> = by_path.keys().cloned().collect();
    for path in paths {
        let mut parent = Path::new(&path).parent();
        while let Some(p) = parent {
            let p_str = p.to_str().context("image paths are UTF-8")?;
            if p_str == "/" {
                break;
            }
            match by_path.get(p_str) {
                Some(Entry::File { .. }) => bail!("{p_str} is both a file and a parent of {path}"),
                Some(Entry::Dir { .. }) => {}
                None => {
                    by_path.insert(
                        p_str.to_owned(),
                        Entry::Dir {
                            path: p_str.to_owned(),
                            mode: 0o755,
                            owner: (0, 0),
                        },
                    );
                }
            }
            parent = p.parent();
        }
    }
    Ok(by_path.into_values().collect())
}

/// The uncompressed layer tar of `entries` (parents added, sorted).
pub fn layer_tar(entries: &[Entry]) -> anyhow::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in complete_tree(entries)? {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        match &entry {
            Entry::Dir { path, mode, owner } => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(*mode);
                header.set_uid(owner.0);
                header.set_gid(owner.1);
                header.set_size(0);
                builder.append_data(&mut header, format!("{}/", &path[1..]), std::io::empty())?;
            }
            Entry::File {
                path,
                mode,
                owner,
                content,
            } => {
                let bytes = match content {
                    Content::Bytes(b) => b.clone(),
                    Content::Host(p) => std::fs::read(p)
                        .with_context(|| format!("reading {} for {path}", p.display()))?,
                };
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_uid(owner.0);
                header.set_gid(owner.1);
                header.set_size(bytes.len() as u64);
                builder.append_data(&mut header, &path[1..], bytes.as_slice())?;
            }
        }
    }
    Ok(builder.into_inner()?)
}

fn gzip(bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    // GzBuilder writes no name and mtime 0 unless told: deterministic.
    let mut enc = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes)?;
    Ok(enc.finish()?)
}

/// The OCI config blob.
fn config_json(config: &ImageConfig, diff_id: &str) -> serde_json::Value {
    let mut runtime = serde_json::Map::new();
    if !config.user.is_empty() {
        runtime.insert("User".into(), json!(config.user));
    }
    if !config.exposed_ports.is_empty() {
        let ports: serde_json::Map<String, serde_json::Value> = config
            .exposed_ports
            .iter()
            .map(|p| (format!("{p}/tcp"), json!({})))
            .collect();
        runtime.insert("ExposedPorts".into(), ports.into());
    }
    if !config.env.is_empty() {
        runtime.insert("Env".into(), json!(config.env));
    }
    if !config.entrypoint.is_empty() {
        runtime.insert("Entrypoint".into(), json!(config.entrypoint));
    }
    if !config.cmd.is_empty() {
        runtime.insert("Cmd".into(), json!(config.cmd));
    }
    if !config.working_dir.is_empty() {
        runtime.insert("WorkingDir".into(), json!(config.working_dir));
    }
    json!({
        "created": "1970-01-01T00:00:00Z",
        "architecture": oci_architecture(),
        "os": "linux",
        "config": runtime,
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{ "created": "1970-01-01T00:00:00Z", "created_by": "eds-tests image writer" }],
    })
}

/// The OCI (Go) name of this machine's architecture: the image holds
/// host binaries, so it is for the host's.
fn oci_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// The OCI layout tarball of `image`, in memory.
pub fn oci_archive(image: &Image) -> anyhow::Result<(Vec<u8>, Written)> {
    ensure!(
        image.name.contains('/') && !image.name.contains(char::is_whitespace),
        "an image name is a full reference (`docker.io/eds-rs/eds-server:dev`), not {:?}",
        image.name
    );
    let layer = layer_tar(&image.entries)?;
    let diff_id = sha256(&layer);
    let layer_gz = gzip(&layer)?;
    let config = serde_json::to_vec(&config_json(&image.config, &diff_id))?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256(&config),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": sha256(&layer_gz),
            "size": layer_gz.len(),
        }],
    }))?;
    let manifest_digest = sha256(&manifest);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": MANIFEST_TYPE,
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": {
                // containerd's importer names the image after this one...
                "io.containerd.image.name": image.name,
                // ...and other OCI tools after the tag.
                "org.opencontainers.image.ref.name": tag_of(&image.name),
            },
        }],
    }))?;

    let mut files: Vec<(String, &[u8])> = vec![
        ("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#),
        ("index.json".into(), &index),
    ];
    for blob in [&manifest, &config, &layer_gz] {
        let hex = &sha256(blob)["sha256:".len()..];
        files.push((format!("blobs/sha256/{hex}"), blob));
    }
    let mut out = tar::Builder::new(Vec::new());
    for dir in ["blobs/", "blobs/sha256/"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_mtime(0);
        h.set_size(0);
        out.append_data(&mut h, dir, std::io::empty())?;
    }
    for (path, bytes) in files {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_size(bytes.len() as u64);
        out.append_data(&mut h, path, bytes)?;
    }
    let archive = out.into_inner()?;
    let written = Written {
        manifest_digest,
        diff_id,
        size: archive.len() as u64,
    };
    Ok((archive, written))
}

/// Writes the OCI layout tarball of `image` to `out` (through a temporary
/// name, so a reader never sees half an archive).
pub fn write_oci_archive(image: &Image, out: &Path) -> anyhow::Result<Written> {
    let (bytes, written) = oci_archive(image)?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let partial = out.with_extension("partial");
    std::fs::write(&partial, &bytes).with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, out).with_context(|| format!("writing {}", out.display()))?;
    Ok(written)
}

/// The shared libraries (and the dynamic loader) in `ldd` output, as the
/// absolute paths the binary will look for them at. Empty for a static
/// binary.
pub fn parse_ldd(output: &str) -> Vec<PathBuf> {
    let mut libs = Vec::new();
    for line in output.lines() {
        let line = line.trim();
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or the
        // loader "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vDSO has no file.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.trim(),
            None => line,
        };
        let path = path.split_whitespace().next().unwrap_or("");
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    libs.sort();
    libs.dedup();
    libs
}

/// The host's shared libraries `binary` needs, by `ldd`.
pub fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd (Debian's libc-bin)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    // ldd exits 1 for a static binary ("not a dynamic executable").
    if !out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("not a dynamic") {
        bail!(
            "ldd {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(parse_ldd(&stdout))
}

/// distroless's `/etc/passwd`: root and nonroot (home `/home/nonroot`).
const PASSWD: &str = "root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n";
/// distroless's `/etc/group`.
const GROUP: &str = "root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n";
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// What distroless `cc-debian12:nonroot` gives a binary at `dest`: the
/// binary's shared libraries from the host, users, CA certificates, `/tmp`
/// and the non-root user's home.
pub fn distroless_cc_entries(binary: &Path, dest: &str) -> anyhow::Result<Vec<Entry>> {
    ensure!(
        binary.is_file(),
        "{} is not built (or not a file)",
        binary.display()
    );
    let mut entries = vec![
        Entry::file(dest, 0o755, Content::Host(binary.to_owned())),
        Entry::file("/etc/passwd", 0o644, Content::Bytes(PASSWD.into())),
        Entry::file("/etc/group", 0o644, Content::Bytes(GROUP.into())),
        Entry::Dir {
            path: "/tmp".into(),
            mode: 0o1777,
            owner: (0, 0),
        },
        Entry::Dir {
            path: "/home/nonroot".into(),
            mode: 0o700,
            owner: (65532, 65532),
        },
    ];
    if Path::new(CA_BUNDLE).is_file() {
        entries.push(Entry::file(
            CA_BUNDLE,
            0o644,
            Content::Host(CA_BUNDLE.into()),
        ));
    }
    for lib in shared_libraries(binary)? {
        let path = lib.to_str().context("library paths are UTF-8")?.to_owned();
        // Copied at the path the binary asks for, contents followed through
        // the host's symlinks (/lib64/ld-linux... -> /lib/x86_64-linux-gnu/...).
        entries.push(Entry::file(&path, 0o755, Content::Host(lib)));
    }
    Ok(entries)
}

/// eds-server's image, as `deploy/Dockerfile`'s runtime stage lays it out.
pub fn eds_server_image(binary: &Path, name: &str) -> anyhow::Result<Image> {
    Ok(Image {
        name: name.to_owned(),
        config: eds_server_config(),
        entries: distroless_cc_entries(binary, EDS_SERVER_PATH)?,
    })
}

/// eds-server's runtime config: `deploy/Dockerfile`'s `USER`, `EXPOSE`,
/// `ENTRYPOINT` (a test checks they agree).
pub fn eds_server_config() -> ImageConfig {
    ImageConfig {
        user: NONROOT_USER.into(),
        entrypoint: vec![EDS_SERVER_PATH.into()],
        exposed_ports: EDS_SERVER_PORTS.to_vec(),
        env: vec![default_path_env()],
        working_dir: "/".into(),
        ..ImageConfig::default()
    }
}

/// distroless's `PATH`.
fn default_path_env() -> String {
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
}

/// The echo backend's image: the same base and user as eds-server's.
pub fn echo_backend_image(binary: &Path, name: &str) -> anyhow::Result<Image> {
    app_image(binary, ECHO_BACKEND_PATH, name)
}

/// Any program of the project (a test client, an example) as a non-root
/// image on eds-server's base, with `dest` as its entrypoint.
pub fn app_image(binary: &Path, dest: &str, name: &str) -> anyhow::Result<Image> {
    Ok(Image {
        name: name.to_owned(),
        config: ImageConfig {
            user: NONROOT_USER.into(),
            entrypoint: vec![dest.into()],
            env: vec![default_path_env()],
            working_dir: "/".into(),
            ..ImageConfig::default()
        },
        entries: distroless_cc_entries(binary, dest)?,
    })
}

/// The pod sandbox image: only the static pause program (`deploy/pause`).
pub fn pause_image(binary: &Path) -> anyhow::Result<Image> {
    let libs = shared_libraries(binary)?;
    ensure!(
        libs.is_empty(),
        "the pause program must be static; {} needs {libs:?}",
        binary.display()
    );
    Ok(Image {
        name: PAUSE_IMAGE.into(),
        config: ImageConfig {
            user: "65535:65535".into(),
            entrypoint: vec![PAUSE_PATH.into()],
            working_dir: "/".into(),
            ..ImageConfig::default()
        },
        entries: vec![Entry::file(
            PAUSE_PATH,
            0o755,
            Content::Host(binary.to_owned()),
        )],
    })
}

/// The CoreDNS image's name (the version built by `cluster build --nodes`).
pub const COREDNS_IMAGE: &str = "registry.local/eds-rs/coredns:v1.15.0";

/// CoreDNS's image: the static binary built from its Go module, run as
/// distroless's non-root user.
pub fn coredns_image(binary: &Path) -> anyhow::Result<Image> {
    let libs = shared_libraries(binary)?;
    ensure!(
        libs.is_empty(),
        "CoreDNS must be static; {} needs {libs:?}",
        binary.display()
    );
    Ok(Image {
        name: COREDNS_IMAGE.into(),
        config: ImageConfig {
            user: NONROOT_USER.into(),
            entrypoint: vec!["/coredns".into()],
            working_dir: "/".into(),
            ..ImageConfig::default()
        },
        entries: vec![
            Entry::file("/coredns", 0o755, Content::Host(binary.to_owned())),
            Entry::file("/etc/passwd", 0o644, Content::Bytes(PASSWD.into())),
            Entry::file("/etc/group", 0o644, Content::Bytes(GROUP.into())),
        ],
    })
}

/// The runtime stage of a Dockerfile, as far as an image's layout goes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DockerfileStage {
    /// The `FROM` image.
    pub from: String,
    /// `USER`.
    pub user: String,
    /// `ENTRYPOINT` in exec (JSON) form.
    pub entrypoint: Vec<String>,
    /// `EXPOSE`d ports.
    pub exposed: Vec<u16>,
    /// `COPY` destinations.
    pub copy_destinations: Vec<String>,
}

/// Parses the last stage of a Dockerfile: the instructions that shape the
/// final image. Only what this project's Dockerfile uses; continuation
/// lines are joined, comments skipped.
pub fn parse_final_stage(dockerfile: &str) -> anyhow::Result<DockerfileStage> {
    let mut logical: Vec<String> = Vec::new();
    let mut pending = String::new();
    for line in dockerfile.lines() {
        let trimmed = line.trim();
        if pending.is_empty() && (trimmed.starts_with('#') || trimmed.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(trimmed);
        logical.push(std::mem::take(&mut pending));
    }
    let start = logical
        .iter()
        .rposition(|l| l.to_ascii_uppercase().starts_with("FROM "))
        .context("the Dockerfile has no FROM")?;
    let mut stage = DockerfileStage::default();
    for line in &logical[start..] {
        let (instr, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let rest = rest.trim();
        match instr.to_ascii_uppercase().as_str() {
            "FROM" => {
                stage.from = rest.split_whitespace().next().unwrap_or("").to_owned();
            }
            "USER" => stage.user = rest.to_owned(),
            "ENTRYPOINT" => {
                stage.entrypoint = serde_json::from_str(rest)
                    .with_context(|| format!("ENTRYPOINT {rest} is not in exec (JSON) form"))?;
            }
            "EXPOSE" => {
                for p in rest.split_whitespace() {
                    let port = p.trim_end_matches("/tcp");
                    stage
                        .exposed
                        .push(port.parse().with_context(|| format!("EXPOSE {p}"))?);
                }
            }
            "COPY" => {
                let dest = rest
                    .split_whitespace()
                    .rfind(|w| !w.starts_with("--"))
                    .context("COPY without a destination")?;
                stage.copy_destinations.push(dest.to_owned());
            }
            _ => {}
        }
    }
    Ok(stage)
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn sample() -> Image {
        Image {
            name: "docker.io/eds-rs/sample:dev".into(),
            config: ImageConfig {
                user: NONROOT_USER.into(),
                entrypoint: vec!["/usr/local/bin/x".into()],
                exposed_ports: vec![8080],
                working_dir: "/".into(),
                ..ImageConfig::default()
            },
            entries: vec![
                Entry::file(
                    "/usr/local/bin/x",
                    0o755,
                    Content::Bytes(b"#!binary".to_vec()),
                ),
                Entry::Dir {
                    path: "/tmp".into(),
                    mode: 0o1777,
                    owner: (0, 0),
                },
                Entry::file("/etc/passwd", 0o644, Content::Bytes(PASSWD.into())),
            ],
        }
    }

    fn unpack(archive: &[u8]) -> BTreeMap<String, (tar::Header, Vec<u8>)> {
        let mut out = BTreeMap::new();
        let mut ar = tar::Archive::new(archive);
        for entry in ar.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let header = entry.header().clone();
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            out.insert(path, (header, bytes));
        }
        out
    }

    fn json_of(files: &BTreeMap<String, (tar::Header, Vec<u8>)>, path: &str) -> serde_json::Value {
        serde_json::from_slice(&files[path].1).unwrap()
    }

    fn blob<'a>(
        files: &'a BTreeMap<String, (tar::Header, Vec<u8>)>,
        digest: &serde_json::Value,
    ) -> &'a [u8] {
        let hex = digest.as_str().unwrap().strip_prefix("sha256:").unwrap();
        &files[&format!("blobs/sha256/{hex}")].1
    }

    #[test]
    fn layout_is_complete_and_digests_match() {
        let (archive, written) = oci_archive(&sample()).unwrap();
        let files = unpack(&archive);
        assert_eq!(files["oci-layout"].1, br#"{"imageLayoutVersion":"1.0.0"}"#);
        let index = json_of(&files, "index.json");
        let desc = &index["manifests"][0];
        assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
        assert_eq!(
            desc["annotations"]["io.containerd.image.name"],
            "docker.io/eds-rs/sample:dev"
        );
        assert_eq!(
            desc["annotations"]["org.opencontainers.image.ref.name"],
            "dev"
        );
        assert_eq!(desc["digest"], written.manifest_digest.as_str());
        let manifest_bytes = blob(&files, &desc["digest"]);
        assert_eq!(desc["size"], manifest_bytes.len());
        // Every blob is named by the sha256 of its bytes.
        for (path, (_, bytes)) in &files {
            if let Some(hex) = path.strip_prefix("blobs/sha256/").filter(|h| !h.is_empty()) {
                assert_eq!(sha256(bytes), format!("sha256:{hex}"));
            }
        }
        let manifest: serde_json::Value = serde_json::from_slice(manifest_bytes).unwrap();
        let config: serde_json::Value =
            serde_json::from_slice(blob(&files, &manifest["config"]["digest"])).unwrap();
        assert_eq!(config["config"]["User"], NONROOT_USER);
        assert_eq!(config["config"]["Entrypoint"][0], "/usr/local/bin/x");
        assert!(config["config"]["ExposedPorts"]["8080/tcp"].is_object());
        assert_eq!(config["os"], "linux");
        // The layer decompresses to the tar whose digest the config names.
        let layer_gz = blob(&files, &manifest["layers"][0]["digest"]);
        assert_eq!(manifest["layers"][0]["size"], layer_gz.len());
        let mut layer = Vec::new();
        flate2::read::GzDecoder::new(layer_gz)
            .read_to_end(&mut layer)
            .unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][0], sha256(&layer).as_str());
        assert_eq!(written.diff_id, sha256(&layer));
    }

    #[test]
    fn layer_lists_parents_first_with_fixed_metadata() {
        let layer = layer_tar(&sample().entries).unwrap();
        let files = unpack(&layer);
        let names: Vec<&String> = {
            let mut ar = tar::Archive::new(layer.as_slice());
            let order: Vec<String> = ar
                .entries()
                .unwrap()
                .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
                .collect();
            assert_eq!(
                order,
                [
                    "etc/",
                    "etc/passwd",
                    "tmp/",
                    "usr/",
                    "usr/local/",
                    "usr/local/bin/",
                    "usr/local/bin/x"
                ]
            );
            files.keys().collect()
        };
        assert_eq!(names.len(), 7);
        let (x, bytes) = &files["usr/local/bin/x"];
        assert_eq!(bytes, b"#!binary");
        assert_eq!(x.mode().unwrap(), 0o755);
        assert_eq!(x.mtime().unwrap(), 0);
        assert_eq!(x.uid().unwrap(), 0);
        assert_eq!(files["tmp/"].0.mode().unwrap(), 0o1777);
        assert_eq!(files["etc/"].0.mode().unwrap(), 0o755);
    }

    #[test]
    fn same_inputs_same_digest_whatever_the_order() {
        let a = oci_archive(&sample()).unwrap();
        let mut reversed = sample();
        reversed.entries.reverse();
        let b = oci_archive(&reversed).unwrap();
        assert_eq!(a.0, b.0, "byte-identical archives");
        assert_eq!(a.1, b.1);
        let mut changed = sample();
        changed.config.user = "0:0".into();
        assert_ne!(
            oci_archive(&changed).unwrap().1.manifest_digest,
            a.1.manifest_digest
        );
    }

    #[test]
    fn bad_trees_are_refused() {
        let mut dup = sample();
        dup.entries
            .push(Entry::file("/etc/passwd", 0o644, Content::Bytes(vec![])));
        assert!(oci_archive(&dup).is_err());
        let mut under_file = sample();
        under_file
            .entries
            .push(Entry::file("/etc/passwd/x", 0o644, Content::Bytes(vec![])));
        assert!(oci_archive(&under_file).is_err());
        let mut relative = sample();
        relative
            .entries
            .push(Entry::file("etc/x", 0o644, Content::Bytes(vec![])));
        assert!(oci_archive(&relative).is_err());
        let mut unnamed = sample();
        unnamed.name = "sample".into();
        assert!(oci_archive(&unnamed).is_err());
    }

    #[test]
    fn tags() {
        assert_eq!(tag_of("docker.io/eds-rs/eds-server:dev"), "dev");
        assert_eq!(tag_of("registry.local:5000/eds-rs/pause"), "latest");
        assert_eq!(tag_of("registry.local/eds-rs/pause:3.10"), "3.10");
    }

    #[test]
    fn ldd_output() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd1c5f2000)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(out),
            [
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libm.so.6",
                "/lib64/ld-linux-x86-64.so.2",
            ]
            .map(PathBuf::from)
        );
        assert!(parse_ldd("\tstatically linked\n").is_empty());
        assert!(parse_ldd("\tnot a dynamic executable\n").is_empty());
    }

    #[test]
    fn dockerfile_parser() {
        let text = "FROM rust AS build\nUSER 0\nCOPY . .\nRUN a \\\n  && b\n# comment\nFROM base:nonroot\nCOPY --from=build /out/x /usr/bin/x\nUSER 1:1\nEXPOSE 80 443/tcp\nENTRYPOINT [\"/usr/bin/x\", \"--flag\"]\n";
        assert_eq!(
            parse_final_stage(text).unwrap(),
            DockerfileStage {
                from: "base:nonroot".into(),
                user: "1:1".into(),
                entrypoint: vec!["/usr/bin/x".into(), "--flag".into()],
                exposed: vec![80, 443],
                copy_destinations: vec!["/usr/bin/x".into()],
            }
        );
    }

    /// `deploy/Dockerfile` is what operators build with Docker; the image
    /// the tests load into containerd must be laid out the same way.
    #[test]
    fn dockerfile_runtime_stage_matches_the_tested_image() {
        let dockerfile = include_str!("../../deploy/Dockerfile");
        let stage = parse_final_stage(dockerfile).unwrap();
        let config = eds_server_config();
        assert_eq!(
            stage.from, "gcr.io/distroless/cc-debian12:nonroot",
            "the image writer mirrors distroless cc (glibc, libgcc, CA certificates, nonroot user); a new base needs a new mirror"
        );
        assert_eq!(stage.user, config.user);
        assert_eq!(stage.entrypoint, config.entrypoint);
        assert_eq!(stage.exposed, config.exposed_ports);
        assert_eq!(stage.copy_destinations, [EDS_SERVER_PATH]);
        // The user exists in the image's /etc/passwd, as in distroless.
        let (uid, gid) = NONROOT_USER.split_once(':').unwrap();
        assert!(
            PASSWD
                .lines()
                .any(|l| l.split(':').nth(2) == Some(uid) && l.split(':').nth(3) == Some(gid))
        );
    }
}
