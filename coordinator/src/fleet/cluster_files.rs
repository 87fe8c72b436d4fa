//! `argus cluster init`: the files that make a data directory a cluster's first node
//! (issue 5 item 1, DESIGN §3.6).
//!
//! Everything lives in `<data>/cluster/`, apart from the log and the store:
//!
//! | file | mode | what |
//! |---|---|---|
//! | `ca.pem` | 0644 | the cluster CA certificate (public) |
//! | `ca.key` | 0600 | the CA private key: only here, never in replicated state, snapshots or store backups |
//! | `node.pem` | 0644 | this node's certificate (serverAuth + clientAuth, `argus://coordinator/<id>`) |
//! | `node.key` | 0600 | this node's private key |
//! | `admin-token.sha256` | 0600 | the hash of the admin API token |
//! | `cli.toml` | 0600 | coordinator URL and admin token, read by later `argus` commands |
//!
//! The directory is built under a temporary name and renamed into place, so a crash
//! during init leaves either no cluster or a whole one, and an initialized directory is
//! never initialized again (that would make a second CA and orphan every certificate).

use super::admin_token::{AdminToken, AdminTokenError, AdminTokenHash};
use super::cli_config::{CliConfig, CliConfigError};
use argus_common::pki::{
    CaPin, ClusterCa, CoordinatorCertSpec, JoinAddr, JoinHost, NodeKey, PkiError,
    write_private_file,
};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The cluster directory under the data directory.
pub const CLUSTER_DIR: &str = "cluster";
const TMP_DIR: &str = ".cluster.tmp";

#[derive(Debug, thiserror::Error)]
pub enum ClusterFilesError {
    #[error(
        "{0} is initialized already (it holds a cluster CA); refusing to create a second CA. Remove that directory only to start a new cluster"
    )]
    AlreadyInitialized(PathBuf),
    #[error("{0} is not initialized: run `argus cluster init` first")]
    NotInitialized(PathBuf),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    AdminToken(#[from] AdminTokenError),
    #[error(transparent)]
    CliConfig(#[from] CliConfigError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("advertised address {addr:?}: {reason}")]
    Advertise { addr: String, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ClusterFilesError {
    let path = path.to_path_buf();
    move |source| ClusterFilesError::Io { path, source }
}

/// Where each file of a cluster directory is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterPaths {
    pub dir: PathBuf,
}

impl ClusterPaths {
    pub fn of_data_dir(data_dir: &Path) -> Self {
        ClusterPaths {
            dir: data_dir.join(CLUSTER_DIR),
        }
    }

    fn in_dir(dir: &Path) -> Self {
        ClusterPaths {
            dir: dir.to_path_buf(),
        }
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    pub fn node_cert(&self) -> PathBuf {
        self.dir.join("node.pem")
    }
    pub fn node_key(&self) -> PathBuf {
        self.dir.join("node.key")
    }
    pub fn admin_token_hash(&self) -> PathBuf {
        self.dir.join("admin-token.sha256")
    }
    pub fn cli_config(&self) -> PathBuf {
        self.dir.join("cli.toml")
    }
}

/// What `cluster init` needs to know about the node.
#[derive(Debug, Clone)]
pub struct InitSpec {
    /// The node's id (its URI SAN `argus://coordinator/<id>`).
    pub node_id: String,
    /// Addresses agents and peers dial; their hosts become the certificate's SANs.
    pub advertise: Vec<JoinAddr>,
    /// The HTTP URL later `argus` commands use.
    pub url: String,
}

/// A cluster directory just created.
#[derive(Debug)]
pub struct Initialized {
    pub paths: ClusterPaths,
    pub ca_pin: CaPin,
    /// Shown once; the node keeps only its hash.
    pub admin_token: AdminToken,
    pub node_names: Vec<String>,
}

/// What a running node reads from its cluster directory. The CA key is not read: the
/// node signs nothing until enrollment, which loads it when it needs it.
#[derive(Debug, Clone)]
pub struct ClusterFiles {
    pub paths: ClusterPaths,
    pub ca_pin: CaPin,
    pub admin_token_hash: AdminTokenHash,
}

pub fn is_initialized(data_dir: &Path) -> bool {
    ClusterPaths::of_data_dir(data_dir).dir.exists()
}

/// Creates the cluster directory; refuses when there is one.
pub fn init(
    data_dir: &Path,
    spec: &InitSpec,
    now_ms: i64,
) -> Result<Initialized, ClusterFilesError> {
    let final_paths = ClusterPaths::of_data_dir(data_dir);
    if final_paths.dir.exists() {
        return Err(ClusterFilesError::AlreadyInitialized(final_paths.dir));
    }
    std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;
    let tmp = data_dir.join(TMP_DIR);
    if tmp.exists() {
        // What a crash during an earlier init left; nothing in it was ever used.
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir(&tmp).map_err(io(&tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700)).map_err(io(&tmp))?;
    let paths = ClusterPaths::in_dir(&tmp);

    let ca = ClusterCa::generate(now_ms)?;
    ca.write_key(&paths.ca_key())?;
    write_public(&paths.ca_cert(), ca.cert_pem().as_bytes())?;

    let names = cert_names(&spec.advertise);
    let key = NodeKey::generate()?;
    let cert = ca.issue_coordinator(
        &key,
        &CoordinatorCertSpec::new(spec.node_id.clone(), names.clone()),
        now_ms,
    )?;
    write_private_file(&paths.node_key(), key.to_pem().as_bytes())?;
    write_public(&paths.node_cert(), cert.pem.as_bytes())?;

    let admin_token = AdminToken::generate()?;
    write_private_file(
        &paths.admin_token_hash(),
        format!("{}\n", admin_token.hash().to_hex()).as_bytes(),
    )?;
    CliConfig {
        url: spec.url.clone(),
        token: admin_token.expose().to_string(),
    }
    .write(&paths.cli_config())?;

    std::fs::rename(&tmp, &final_paths.dir).map_err(io(&final_paths.dir))?;
    sync_dir(data_dir)?;
    Ok(Initialized {
        paths: final_paths,
        ca_pin: ca.pin(),
        admin_token,
        node_names: names,
    })
}

/// Reads what a running node needs; checks that the CA certificate parses.
pub fn load(data_dir: &Path) -> Result<ClusterFiles, ClusterFilesError> {
    let paths = ClusterPaths::of_data_dir(data_dir);
    if !paths.dir.exists() {
        return Err(ClusterFilesError::NotInitialized(data_dir.to_path_buf()));
    }
    let ca_path = paths.ca_cert();
    let ca_pem = std::fs::read_to_string(&ca_path).map_err(io(&ca_path))?;
    let corrupt = |path: &Path, reason: String| ClusterFilesError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let der =
        argus_common::pki::cert_from_pem(&ca_pem).map_err(|e| corrupt(&ca_path, e.to_string()))?;
    let ca_pin = CaPin::of_cert_der(&der).map_err(|e| corrupt(&ca_path, e.to_string()))?;
    let hash_path = paths.admin_token_hash();
    let text = std::fs::read_to_string(&hash_path).map_err(io(&hash_path))?;
    let admin_token_hash =
        AdminTokenHash::from_hex(&text).map_err(|e| corrupt(&hash_path, e.to_string()))?;
    Ok(ClusterFiles {
        paths,
        ca_pin,
        admin_token_hash,
    })
}

/// The implicit init of `argus serve` and `argus demo`: creates the cluster on a data
/// directory that has none, otherwise loads it. Returns what was created, if anything.
pub fn ensure(
    data_dir: &Path,
    spec: &InitSpec,
    now_ms: i64,
) -> Result<(ClusterFiles, Option<Initialized>), ClusterFilesError> {
    let created = if is_initialized(data_dir) {
        None
    } else {
        Some(init(data_dir, spec, now_ms)?)
    };
    Ok((load(data_dir)?, created))
}

fn write_public(path: &Path, contents: &[u8]) -> Result<(), ClusterFilesError> {
    std::fs::write(path, contents).map_err(io(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).map_err(io(path))?;
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io(path))
}

fn sync_dir(dir: &Path) -> Result<(), ClusterFilesError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io(dir))
}

/// The addresses a node advertises in join strings: the configured ones, else the
/// listen address, else (listening on every address) this host's name at the listen
/// port.
pub fn advertised(
    listen: SocketAddr,
    configured: &[String],
) -> Result<Vec<JoinAddr>, ClusterFilesError> {
    if !configured.is_empty() {
        return configured
            .iter()
            .map(|a| {
                JoinAddr::parse(a).map_err(|e| ClusterFilesError::Advertise {
                    addr: a.clone(),
                    reason: e.to_string(),
                })
            })
            .collect();
    }
    let host = if listen.ip().is_unspecified() {
        host_name()
            .and_then(|h| JoinAddr::parse(&format!("{h}:{}", listen.port())).ok())
            .map(|a| a.host)
            .unwrap_or(JoinHost::Ip(IpAddr::from([127, 0, 0, 1])))
    } else {
        JoinHost::Ip(listen.ip())
    };
    Ok(vec![JoinAddr {
        host,
        port: listen.port(),
    }])
}

/// The URL of the node's HTTP API for local commands: loopback when it listens on
/// every address.
pub fn local_url(listen: SocketAddr) -> String {
    let ip = if listen.ip().is_unspecified() {
        IpAddr::from([127, 0, 0, 1])
    } else {
        listen.ip()
    };
    format!("http://{}", SocketAddr::new(ip, listen.port()))
}

/// The certificate's SANs: every advertised host, plus loopback so local tools connect.
pub fn cert_names(advertise: &[JoinAddr]) -> Vec<String> {
    let mut names: Vec<String> = advertise
        .iter()
        .map(|a| match &a.host {
            JoinHost::Ip(ip) => ip.to_string(),
            JoinHost::Dns(n) => n.clone(),
        })
        .collect();
    for n in ["localhost", "127.0.0.1"] {
        names.push(n.to_string());
    }
    let mut seen = std::collections::BTreeSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use argus_common::pki::{CertInfo, cert_from_pem};

    const T0: i64 = 1_700_000_000_000;

    fn spec() -> InitSpec {
        InitSpec {
            node_id: "1".into(),
            advertise: advertised("127.0.0.1:3006".parse().unwrap(), &[]).unwrap(),
            url: "http://127.0.0.1:3006".into(),
        }
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn init_creates_every_file_with_its_mode_once() {
        let dir = tempfile::tempdir().unwrap();
        let made = init(dir.path(), &spec(), T0).unwrap();
        let p = &made.paths;
        assert_eq!(mode(&p.ca_key()), 0o600);
        assert_eq!(mode(&p.node_key()), 0o600);
        assert_eq!(mode(&p.admin_token_hash()), 0o600);
        assert_eq!(mode(&p.cli_config()), 0o600);
        assert_eq!(mode(&p.ca_cert()), 0o644);
        assert_eq!(mode(&p.dir), 0o700);
        assert!(!dir.path().join(TMP_DIR).exists());
        // The CA key and certificate belong together, and the node certificate is the
        // coordinator's, signed by that CA.
        let ca = ClusterCa::from_pem(
            &std::fs::read_to_string(p.ca_cert()).unwrap(),
            &std::fs::read_to_string(p.ca_key()).unwrap(),
        )
        .unwrap();
        assert_eq!(ca.pin(), made.ca_pin);
        let node = cert_from_pem(&std::fs::read_to_string(p.node_cert()).unwrap()).unwrap();
        let info = CertInfo::from_der(&node).unwrap();
        assert_eq!(info.identity.uri(), "argus://coordinator/1");
        // An agent that pinned the CA accepts the node at its advertised address.
        use rustls::pki_types::{ServerName, UnixTime};
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let now = UnixTime::since_unix_epoch(std::time::Duration::from_millis(T0 as u64));
        let (_, id) = argus_common::pki::verify_chain_to_pin(
            &node,
            &[ca.cert_der().clone()],
            &made.ca_pin,
            &name,
            now,
        )
        .unwrap();
        assert_eq!(id.id, "1");
        let loaded = load(dir.path()).unwrap();
        assert_eq!(loaded.ca_pin, made.ca_pin);
        assert!(loaded.admin_token_hash.matches(made.admin_token.expose()));
        let cli = CliConfig::read(&p.cli_config()).unwrap();
        assert_eq!(cli.token, made.admin_token.expose());
        assert_eq!(cli.url, "http://127.0.0.1:3006");
        // A second init refuses and changes nothing.
        let err = init(dir.path(), &spec(), T0 + 1).unwrap_err();
        assert!(err.to_string().contains("initialized already"), "{err}");
        assert_eq!(load(dir.path()).unwrap().ca_pin, made.ca_pin);
        // The implicit init loads what is there.
        let (again, created) = ensure(dir.path(), &spec(), T0 + 2).unwrap();
        assert!(created.is_none());
        assert_eq!(again.ca_pin, made.ca_pin);
    }

    #[test]
    fn a_crashed_init_is_redone_and_a_missing_one_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            load(dir.path()),
            Err(ClusterFilesError::NotInitialized(_))
        ));
        std::fs::create_dir(dir.path().join(TMP_DIR)).unwrap();
        std::fs::write(dir.path().join(TMP_DIR).join("ca.key"), "half").unwrap();
        let (files, created) = ensure(dir.path(), &spec(), T0).unwrap();
        assert_eq!(files.ca_pin, created.unwrap().ca_pin);
    }

    #[test]
    fn advertised_addresses_come_from_config_or_the_listen_address() {
        let listen: SocketAddr = "10.1.2.3:3006".parse().unwrap();
        let a = advertised(listen, &[]).unwrap();
        assert_eq!(a[0].to_string(), "10.1.2.3:3006");
        let a = advertised(listen, &["coord.example:3006".into(), "[::1]:4000".into()]).unwrap();
        assert_eq!(
            cert_names(&a),
            vec!["coord.example", "::1", "localhost", "127.0.0.1"]
        );
        assert!(advertised(listen, &["no-port".into()]).is_err());
        let any = advertised("0.0.0.0:3006".parse().unwrap(), &[]).unwrap();
        assert_eq!(any[0].port, 3006);
        assert_eq!(
            local_url("0.0.0.0:9".parse().unwrap()),
            "http://127.0.0.1:9"
        );
    }
}
