//! `argus cluster init` and join tokens against the real binary: the files init writes
//! and their modes, the admin API's bearer check, `argus token create|list|revoke`, and
//! tokens surviving both an orderly restart (checkpoint) and a kill (log replay).

mod common;

use argus_common::pki::{CaPin, JoinString, cert_from_pem};
use argus_testkit::http;
use common::{Argus, argus_cli as argus, ok};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

fn list(url: &str, token: &str) -> Vec<serde_json::Value> {
    let out = argus(
        &["token", "list", "--json"],
        &[("ARGUS_URL", url), ("ARGUS_TOKEN", token)],
    );
    serde_json::from_str(&ok(&out)).expect("token list --json is JSON")
}

fn find<'a>(tokens: &'a [serde_json::Value], id: &str) -> &'a serde_json::Value {
    tokens
        .iter()
        .find(|t| t["id"] == id)
        .unwrap_or_else(|| panic!("token {id} not listed: {tokens:?}"))
}

fn create(data: &Path, url: &str, extra: &[&str]) -> JoinString {
    let data = data.to_str().unwrap();
    let mut args = vec!["token", "create", "--data-dir", data, "--url", url];
    args.extend_from_slice(extra);
    let out = ok(&argus(&args, &[]));
    JoinString::parse(out.trim()).expect("token create prints a join string")
}

#[test]
fn cluster_init_then_tokens_are_created_listed_revoked_and_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("argus");
    let data_s = data.to_str().unwrap();

    // cluster init: every file, with its mode; the admin token printed once.
    let out = ok(&argus(
        &[
            "cluster",
            "init",
            "--data-dir",
            data_s,
            "--listen",
            "127.0.0.1:3006",
        ],
        &[],
    ));
    let cluster = data.join("cluster");
    for (file, want) in [
        ("ca.key", 0o600),
        ("node.key", 0o600),
        ("admin-token.sha256", 0o600),
        ("cli.toml", 0o600),
        ("ca.pem", 0o644),
        ("node.pem", 0o644),
    ] {
        assert_eq!(mode(&cluster.join(file)), want, "{file}");
    }
    let admin = out
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("argus-admin-"))
        .unwrap_or_else(|| panic!("no admin token printed:\n{out}"))
        .to_string();
    let cli = std::fs::read_to_string(cluster.join("cli.toml")).unwrap();
    assert!(
        cli.contains(&admin) && cli.contains("http://127.0.0.1:3006"),
        "{cli}"
    );
    let hash = std::fs::read_to_string(cluster.join("admin-token.sha256")).unwrap();
    assert!(!hash.contains(&admin[12..]), "only the hash is kept");
    let ca_pem = std::fs::read_to_string(cluster.join("ca.pem")).unwrap();
    let pin = CaPin::of_cert_der(&cert_from_pem(&ca_pem).unwrap()).unwrap();

    // A second init refuses and keeps the CA.
    let again = argus(&["cluster", "init", "--data-dir", data_s], &[]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("initialized already"), "{err}");
    assert_eq!(
        std::fs::read_to_string(cluster.join("ca.pem")).unwrap(),
        ca_pem
    );

    let mut node = Argus::start(&data, &[]);
    let url = format!("http://{}", node.addr);

    // The admin API refuses a missing or wrong bearer token with 401 JSON.
    for headers in [
        vec![],
        vec![("Authorization", "Bearer argus-admin-0123")],
        vec![("Authorization", admin.as_str())],
    ] {
        for (method, path) in [
            ("GET", "/api/tokens"),
            ("POST", "/api/tokens"),
            ("DELETE", "/api/tokens/0123456789abcdef"),
        ] {
            let r = http::request(
                node.addr,
                method,
                path,
                &headers,
                b"{}",
                Duration::from_secs(30),
            )
            .unwrap();
            assert_eq!(r.status, 401, "{method} {path} {headers:?}: {}", r.text());
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(v["status"], "error");
            assert_eq!(v["errorType"], "unauthorized");
            assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()));
        }
    }
    let bearer = format!("Bearer {admin}");
    let r = http::request(
        node.addr,
        "POST",
        "/api/tokens",
        &[("Authorization", bearer.as_str())],
        br#"{"uses": 0}"#,
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("\\\"uses\\\""), "{}", r.text());

    // token create: URL from the flag, token from the data directory's cli.toml. The
    // join string pins the CA and names the node's address.
    let a = create(
        &data,
        &url,
        &["--ttl", "30m", "--uses", "2", "--host", "web-1"],
    );
    assert_eq!(a.ca_pin, pin);
    assert_eq!(a.addrs.len(), 1);
    assert_eq!(a.addrs[0].to_string(), node.addr.to_string());
    let b = create(&data, &url, &[]);
    let (a_id, b_id) = (a.token_id.to_string(), b.token_id.to_string());

    // token list: from the environment; never a secret or hash.
    let tokens = list(&url, &admin);
    let ta = find(&tokens, &a_id);
    assert_eq!(
        (&ta["status"], &ta["uses_left"], &ta["host"], &ta["role"]),
        (
            &serde_json::json!("active"),
            &serde_json::json!(2),
            &serde_json::json!("web-1"),
            &serde_json::json!("agent")
        )
    );
    let text = serde_json::to_string(&tokens).unwrap();
    assert!(!text.contains(&a.secret.expose()) && !text.contains("hash"));

    // token revoke, and an unknown id is an error naming it.
    ok(&argus(
        &[
            "token",
            "revoke",
            &a_id,
            "--data-dir",
            data_s,
            "--url",
            &url,
        ],
        &[],
    ));
    assert_eq!(find(&list(&url, &admin), &a_id)["status"], "revoked");
    let unknown = argus(
        &[
            "token",
            "revoke",
            "00000000000000ff",
            "--data-dir",
            data_s,
            "--url",
            &url,
        ],
        &[],
    );
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("404"));

    // An orderly restart (checkpoint at shutdown) keeps them.
    node.terminate().unwrap();
    let mut node = Argus::start(&data, &[]);
    let url = format!("http://{}", node.addr);
    let tokens = list(&url, &admin);
    assert_eq!(find(&tokens, &a_id)["status"], "revoked");
    assert_eq!(find(&tokens, &b_id)["status"], "active");

    // A kill after more changes: the log replay brings them back.
    let c = create(&data, &url, &["--uses", "3"]);
    ok(&argus(
        &[
            "token",
            "revoke",
            &b_id,
            "--data-dir",
            data_s,
            "--url",
            &url,
        ],
        &[],
    ));
    node.restart().unwrap();
    node.wait_ready().unwrap();
    let tokens = list(&url, &admin);
    assert_eq!(tokens.len(), 3, "{tokens:?}");
    assert_eq!(find(&tokens, &a_id)["status"], "revoked");
    assert_eq!(find(&tokens, &b_id)["status"], "revoked");
    assert_eq!(find(&tokens, &c.token_id.to_string())["uses_left"], 3);
}

#[test]
fn serve_initializes_an_empty_data_directory_itself() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("argus");
    let node = Argus::start(&data, &[]);
    let cluster = data.join("cluster");
    assert_eq!(mode(&cluster.join("ca.key")), 0o600);
    // The CLI config it wrote works for the admin commands (URL of the serve port).
    let j = create(&data, &format!("http://{}", node.addr), &[]);
    let ca_pem = std::fs::read_to_string(cluster.join("ca.pem")).unwrap();
    assert_eq!(
        j.ca_pin,
        CaPin::of_cert_der(&cert_from_pem(&ca_pem).unwrap()).unwrap()
    );
    let cli = std::fs::read_to_string(cluster.join("cli.toml")).unwrap();
    assert!(cli.contains(&format!("http://{}", node.addr)), "{cli}");
    let out = argus(
        &["token", "list", "--data-dir", data.to_str().unwrap()],
        &[],
    );
    assert!(ok(&out).contains(&j.token_id.to_string()));
}
