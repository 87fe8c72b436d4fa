//! API auth against the real binary (issue 5 item 7): roles that nest, ingest apart,
//! 401 and 403 in the API's JSON envelope, `argus api-token create|list|revoke`, the
//! audit log of administrative actions and of refusals (aggregated), surviving a
//! restart, and anonymous access: loopback-only by default, refused at start beyond it
//! unless asked for.

mod common;

use argus_coordinator::api::remote_write::{TimeSeries, WriteRequest, encode_body};
use argus_testkit::http;
use common::{Argus, BIN, WRITE_HEADERS, argus_cli as argus, now_ms, ok, wait_for};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

/// The admin token `cluster init` wrote into the CLI config.
fn admin_token(data: &Path) -> String {
    let cli = std::fs::read_to_string(data.join("cluster/cli.toml")).expect("cli.toml");
    let start = cli.find("argus-admin-").expect("admin token in cli.toml");
    cli[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect()
}

struct Call {
    status: u16,
    json: Value,
}

fn call(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> Call {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    let r = http::request(addr, method, path, &headers, body, T)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let json = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    Call {
        status: r.status,
        json,
    }
}

fn write(addr: SocketAddr, token: Option<&str>) -> u16 {
    let body = encode_body(&WriteRequest {
        timeseries: vec![TimeSeries::new(
            "auth_probe_total",
            &[("instance", "h1:9100"), ("job", "node")],
            vec![(now_ms() - 1_000, 1.0)],
        )],
        ..Default::default()
    })
    .unwrap();
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = WRITE_HEADERS.to_vec();
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    http::request(addr, "POST", "/api/v1/write", &headers, &body, T)
        .unwrap()
        .status
}

/// Asserts a refusal's status and JSON envelope, and that its message mentions `says`.
fn refused(c: &Call, status: u16, says: &str) {
    assert_eq!(c.status, status, "{}", c.json);
    assert_eq!(c.json["status"], "error", "{}", c.json);
    let kind = if status == 401 {
        "unauthorized"
    } else {
        "forbidden"
    };
    assert_eq!(c.json["errorType"], kind, "{}", c.json);
    let msg = c.json["error"].as_str().unwrap_or("");
    assert!(msg.contains(says), "{msg:?} should mention {says:?}");
}

fn create_api_token(url: &str, admin: &str, role: &str, name: &str) -> (String, String) {
    let out = argus(
        &["api-token", "create", "--role", role, "--name", name],
        &[("ARGUS_URL", url), ("ARGUS_TOKEN", admin)],
    );
    let token = ok(&out).trim().to_string();
    assert!(token.starts_with("argus-api-"), "{token}");
    let id = token["argus-api-".len()..][..16].to_string();
    (id, token)
}

fn audit(addr: SocketAddr, admin: &str, query: &str) -> Vec<Value> {
    let c = call(
        addr,
        "GET",
        &format!("/api/audit?{query}"),
        Some(admin),
        b"",
    );
    assert_eq!(c.status, 200, "{}", c.json);
    c.json["data"]["records"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn roles_nest_ingest_stands_apart_and_actions_are_audited() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("argus");
    let mut node = Argus::start(&data, &[]);
    let addr = node.addr;
    let url = format!("http://{addr}");
    let admin = admin_token(&data);

    // Anonymous on loopback (the default): reads and remote-write, as before roles.
    assert_eq!(
        call(addr, "GET", "/api/v1/query?query=up", None, b"").status,
        200
    );
    assert_eq!(write(addr, None), 204);
    refused(
        &call(addr, "GET", "/api/api-tokens", None, b""),
        401,
        "role admin",
    );
    refused(
        &call(addr, "GET", "/api/audit", None, b""),
        401,
        "role admin",
    );
    // Open whatever the token.
    for path in ["/health", "/ready", "/metrics"] {
        assert_eq!(
            call(addr, "GET", path, Some("nonsense"), b"").status,
            200,
            "{path}"
        );
    }

    // Tokens of every role, from the CLI (URL and token from the environment).
    let (viewer_id, viewer) = create_api_token(&url, &admin, "viewer", "grafana");
    let (_, operator) = create_api_token(&url, &admin, "operator", "oncall");
    let (_, ingest) = create_api_token(&url, &admin, "ingest", "prometheus");
    let (admin2_id, admin2) = create_api_token(&url, &admin, "admin", "ops");
    let bad = argus(
        &["api-token", "create", "--role", "root"],
        &[("ARGUS_URL", &url), ("ARGUS_TOKEN", &admin)],
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("\"role\""));

    // viewer reads; may not write, act or administer.
    assert_eq!(
        call(addr, "GET", "/api/v1/query?query=up", Some(&viewer), b"").status,
        200
    );
    assert_eq!(
        call(addr, "GET", "/api/services", Some(&viewer), b"").status,
        200
    );
    assert_eq!(write(addr, Some(&viewer)), 403);
    refused(
        &call(
            addr,
            "POST",
            "/api/services/auth/restart",
            Some(&viewer),
            b"",
        ),
        403,
        "needs role operator",
    );
    refused(
        &call(addr, "GET", "/api/api-tokens", Some(&viewer), b""),
        403,
        "needs role admin",
    );
    // operator reads and acts (the route itself comes with a later issue: 404 after
    // authorization), but does not administer.
    assert_eq!(
        call(addr, "GET", "/api/v1/query?query=up", Some(&operator), b"").status,
        200
    );
    assert_eq!(
        call(
            addr,
            "POST",
            "/api/services/auth/restart",
            Some(&operator),
            b""
        )
        .status,
        404
    );
    refused(
        &call(addr, "POST", "/api/tokens", Some(&operator), b"{}"),
        403,
        "needs role admin",
    );
    // ingest writes and nothing else; admin may write too.
    assert_eq!(write(addr, Some(&ingest)), 204);
    refused(
        &call(addr, "GET", "/api/v1/query?query=up", Some(&ingest), b""),
        403,
        "needs role viewer",
    );
    assert_eq!(write(addr, Some(&admin)), 204);
    assert_eq!(write(addr, Some(&admin2)), 204);
    // An admin API token administers like the cluster's admin token.
    let join = call(addr, "POST", "/api/tokens", Some(&admin2), b"{}");
    assert_eq!(join.status, 201, "{}", join.json);
    let join_id = join.json["data"]["id"].as_str().unwrap().to_string();

    // A wrong or unknown token is 401 even where anonymous reads are allowed.
    let wrong = format!("{}0", &viewer[..viewer.len() - 1]);
    let wrong = if wrong == viewer {
        format!("{}1", &viewer[..viewer.len() - 1])
    } else {
        wrong
    };
    refused(
        &call(addr, "GET", "/api/v1/query?query=up", Some(&wrong), b""),
        401,
        "wrong API token secret",
    );
    refused(
        &call(
            addr,
            "GET",
            "/api/v1/query?query=up",
            Some("argus-admin-00"),
            b"",
        ),
        401,
        "not known",
    );

    // Listing shows every token, never a secret or hash; revoking takes effect at once.
    let listed: Vec<Value> = serde_json::from_str(&ok(&argus(
        &["api-token", "list", "--json"],
        &[("ARGUS_URL", &url), ("ARGUS_TOKEN", &admin)],
    )))
    .unwrap();
    assert_eq!(listed.len(), 4, "{listed:?}");
    let text = serde_json::to_string(&listed).unwrap();
    assert!(!text.contains(&viewer["argus-api-".len() + 17..]) && !text.contains("hash"));
    let v = listed
        .iter()
        .find(|t| t["id"] == viewer_id.as_str())
        .unwrap();
    assert_eq!(
        (&v["role"], &v["name"], &v["status"]),
        (
            &Value::from("viewer"),
            &Value::from("grafana"),
            &Value::from("active")
        )
    );
    ok(&argus(
        &["api-token", "revoke", &viewer_id],
        &[("ARGUS_URL", &url), ("ARGUS_TOKEN", &admin)],
    ));
    refused(
        &call(addr, "GET", "/api/v1/query?query=up", Some(&viewer), b""),
        401,
        "revoked",
    );
    let unknown = argus(
        &["api-token", "revoke", "0123456789abcdef"],
        &[("ARGUS_URL", &url), ("ARGUS_TOKEN", &admin)],
    );
    assert!(!unknown.status.success());

    // The audit log: who, what, on what, from where, how it ended.
    let created = audit(addr, &admin, "action=api_token.create");
    assert_eq!(created.len(), 4, "{created:?}");
    assert!(created.iter().all(|r| {
        r["actor"] == "admin"
            && r["outcome"] == "ok"
            && r["source"]
                .as_str()
                .is_some_and(|s| s.starts_with("127.0.0.1:"))
    }));
    let revoked = audit(addr, &admin, "action=api_token.revoke");
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0]["target"], viewer_id.as_str());
    let by_admin2 = audit(addr, &admin, "action=token.create");
    assert_eq!(by_admin2.len(), 1);
    assert_eq!(by_admin2[0]["target"], join_id.as_str());
    assert_eq!(
        by_admin2[0]["actor"],
        format!("api-token:{admin2_id} (ops)").as_str()
    );
    // Data ingest and reads are not audited.
    assert!(audit(addr, &admin, "action=POST%20%2Fapi%2Fv1%2Fwrite").is_empty());

    // Refusals on operator and admin routes are audited, aggregated per actor, source
    // and minute (how many records a burst becomes depends on flushes and minute
    // boundaries; the counts always add up to the attempts).
    for _ in 0..20 {
        assert_eq!(
            call(
                addr,
                "DELETE",
                "/api/api-tokens/0123456789abcdef",
                Some(&operator),
                b""
            )
            .status,
            403
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    wait_for("the refusals in the audit log", deadline, || {
        let r = audit(
            addr,
            &admin,
            "action=DELETE%20%2Fapi%2Fapi-tokens%2F0123456789abcdef&outcome=forbidden",
        );
        let counted: u64 = r.iter().filter_map(|x| x["count"].as_u64()).sum();
        assert!(counted <= 20, "{r:?}");
        assert!(r.iter().all(|x| x["source"] == "127.0.0.1"), "{r:?}");
        Ok(counted == 20)
    });
    // Filters and limits are checked by name.
    let c = call(addr, "GET", "/api/audit?limit=0", Some(&admin), b"");
    assert_eq!(c.status, 400);
    assert!(c.json["error"].as_str().unwrap().contains("\"limit\""));
    let page = audit(addr, &admin, "limit=2");
    assert_eq!(page.len(), 2);
    assert!(
        page[0]["seq"].as_u64() > page[1]["seq"].as_u64(),
        "newest first"
    );

    // Refusals are counted in the node's metrics.
    assert!(
        node.metric(
            "argus_http_requests_denied_total",
            &[("reason", "forbidden")]
        ) >= Some(20.0)
    );

    // Tokens and the audit log are replicated state: they survive a kill (log replay).
    let before = audit(addr, &admin, "limit=1000");
    node.restart().unwrap();
    node.wait_ready().unwrap();
    assert_eq!(audit(addr, &admin, "limit=1000"), before);
    assert_eq!(write(addr, Some(&ingest)), 204);
    refused(
        &call(addr, "GET", "/api/v1/query?query=up", Some(&viewer), b""),
        401,
        "revoked",
    );
}

#[test]
fn anonymous_access_beyond_loopback_is_off_and_refused_unless_asked_for() {
    let dir = tempfile::tempdir().unwrap();

    // Asking for anonymous reads on every address without the explicit opt-in: the
    // node refuses to start and names the key.
    let config = dir.path().join("argus.toml");
    std::fs::write(&config, "[api]\nanonymous_roles = [\"viewer\"]\n").unwrap();
    let port = http::free_port().unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--data-dir"])
        .arg(dir.path().join("refused"))
        .arg("--config")
        .arg(&config)
        .args(["--listen", &format!("0.0.0.0:{port}")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("anonymous_beyond_loopback") && stderr.contains("0.0.0.0"),
        "{stderr}"
    );

    // By default on every address, nothing is anonymous: a token is needed to read.
    let data = dir.path().join("open");
    let mut node = None;
    for _ in 0..5 {
        let port = http::free_port().unwrap();
        let mut a = Argus::spawn(&data, SocketAddr::from(([0, 0, 0, 0], port)), &[]).unwrap();
        match a.wait_ready() {
            Ok(_) => {
                node = Some(a);
                break;
            }
            Err(e) if e.contains("cannot listen") => continue,
            Err(e) => panic!("{e}"),
        }
    }
    let node = node.expect("argus serve on 0.0.0.0 started");
    let admin = admin_token(&data);
    refused(
        &call(node.addr, "GET", "/api/v1/query?query=up", None, b""),
        401,
        "bearer token",
    );
    assert_eq!(write(node.addr, None), 401);
    assert_eq!(
        call(
            node.addr,
            "GET",
            "/api/v1/query?query=up",
            Some(&admin),
            b""
        )
        .status,
        200
    );
    assert_eq!(call(node.addr, "GET", "/health", None, b"").status, 200);
}
