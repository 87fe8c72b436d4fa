//! Who a request is, and whether its role may do what the route does (issue 5 item 7).
//!
//! A bearer token resolves to a [`Principal`]:
//!
//! - the cluster's admin token (`cluster init`; the node keeps its hash in
//!   `<data>/cluster/admin-token.sha256`): role admin, actor `admin`;
//! - an API token (`argus-api-<id>.<secret>`, minted by `argus api-token create`), judged
//!   against the replicated table: its role, actor `api-token:<id>`;
//! - the legacy `--write-token` of `argus serve`: role ingest, actor `write-token`;
//! - no token at all: the configured anonymous roles (`[api] anonymous_roles`), which by
//!   default are viewer and ingest on a loopback listen address (what Prometheus
//!   remote-write, Grafana and the tests on 127.0.0.1 rely on) and none elsewhere.
//!
//! A presented token that is none of these is refused with 401, even where anonymous
//! access is allowed: a typo must not silently downgrade to anonymous. A known principal
//! whose role does not reach the route's gets 403. Every comparison of a secret is of
//! fixed-length hashes, in constant time. The decision ([`resolve`], [`authorize`]) is
//! a pure function of the inputs and the time, tested without a socket; the axum layer
//! around it lives in `api::http::guard`.

use crate::fleet::admin_token::AdminTokenHash;
use crate::fleet::api_tokens::{ApiRole, ApiTokenError, ApiTokens, parse_token};
use std::fmt;

/// Who made a request, for authorization and the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// `admin`, `api-token:<id>`, `write-token` or `anonymous`.
    pub actor: String,
    /// The API token's name, when it has one.
    pub name: Option<String>,
    /// What it may do: one role, or for anonymous requests the configured set.
    pub roles: Vec<ApiRole>,
}

impl Principal {
    /// Whether any of its roles grants `needed`.
    pub fn may(&self, needed: ApiRole) -> bool {
        self.roles.iter().any(|r| r.grants(needed))
    }

    pub fn is_anonymous(&self) -> bool {
        self.actor == ANONYMOUS
    }

    /// The audit log's `actor`: the id, and the name in parentheses when there is one.
    pub fn audit_actor(&self) -> String {
        match &self.name {
            Some(n) if !n.is_empty() => format!("{} ({n})", self.actor),
            _ => self.actor.clone(),
        }
    }

    fn roles_text(&self) -> String {
        if self.roles.is_empty() {
            return "no role".into();
        }
        let names: Vec<&str> = self.roles.iter().map(|r| r.as_str()).collect();
        format!("role {}", names.join("+"))
    }
}

/// The anonymous principal's actor.
pub const ANONYMOUS: &str = "anonymous";

/// How a node recognizes its callers.
#[derive(Clone, Default)]
pub struct AuthConfig {
    /// `None`: no admin token (a node without cluster files); only API tokens work.
    pub admin_token_hash: Option<AdminTokenHash>,
    /// The legacy shared remote-write token, if configured.
    pub write_token_hash: Option<AdminTokenHash>,
    /// Roles of requests without a bearer token; empty: they get 401.
    pub anonymous: Vec<ApiRole>,
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("admin_token", &self.admin_token_hash.is_some())
            .field("write_token", &self.write_token_hash.is_some())
            .field("anonymous", &self.anonymous)
            .finish()
    }
}

/// Why a request is refused; the message names the problem, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("a bearer token is required (Authorization: Bearer <token>)")]
    Missing,
    #[error("the Authorization header is not \"Bearer <token>\"")]
    Malformed,
    #[error("the bearer token is not known to this cluster")]
    Unknown,
    #[error("{0}")]
    ApiToken(ApiTokenError),
    #[error(
        "a bearer token with role {needed} is required (Authorization: Bearer <token>); requests without one may only do what api.anonymous_roles grants"
    )]
    Anonymous { needed: ApiRole },
    #[error("{actor} has {have}; this needs role {needed}")]
    Forbidden {
        actor: String,
        have: String,
        needed: ApiRole,
    },
}

impl Denied {
    /// 401 for who-are-you problems, 403 for a known caller without the role.
    pub fn status(&self) -> u16 {
        match self {
            Denied::Forbidden { .. } => 403,
            _ => 401,
        }
    }

    /// Label for `argus_http_requests_denied_total{reason}` and the audit outcome.
    pub fn reason(&self) -> &'static str {
        match self {
            Denied::Missing | Denied::Anonymous { .. } => "missing_token",
            Denied::Malformed => "malformed_header",
            Denied::Unknown => "unknown_token",
            Denied::ApiToken(ApiTokenError::Unknown) => "unknown_token",
            Denied::ApiToken(ApiTokenError::WrongSecret) => "wrong_secret",
            Denied::ApiToken(ApiTokenError::Expired) => "expired_token",
            Denied::ApiToken(ApiTokenError::Revoked) => "revoked_token",
            Denied::Forbidden { .. } => "forbidden",
        }
    }
}

/// The bearer token of an `Authorization` header value; `Ok(None)` without a header.
pub fn bearer(header: Option<&[u8]>) -> Result<Option<&str>, Denied> {
    let Some(raw) = header else {
        return Ok(None);
    };
    let value = std::str::from_utf8(raw).map_err(|_| Denied::Malformed)?;
    let (scheme, token) = value.trim().split_once(' ').ok_or(Denied::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(Denied::Malformed);
    }
    Ok(Some(token.trim()))
}

/// Who presents `token` (or nothing) at `now_ms`.
pub fn resolve(
    cfg: &AuthConfig,
    tokens: &ApiTokens,
    token: Option<&str>,
    now_ms: i64,
) -> Result<Principal, Denied> {
    let Some(token) = token else {
        if cfg.anonymous.is_empty() {
            return Err(Denied::Missing);
        }
        return Ok(Principal {
            actor: ANONYMOUS.into(),
            name: None,
            roles: cfg.anonymous.clone(),
        });
    };
    if let Some((id, secret)) = parse_token(token) {
        let t = tokens
            .check(&id, &secret, now_ms)
            .map_err(Denied::ApiToken)?;
        return Ok(Principal {
            actor: format!("api-token:{id}"),
            name: Some(t.name.clone()).filter(|n| !n.is_empty()),
            roles: vec![t.role],
        });
    }
    // Both hashes are computed and compared whatever the first answer, so the timing
    // does not tell which of the two a guess came close to.
    let admin = cfg.admin_token_hash.is_some_and(|h| h.matches(token));
    let write = cfg.write_token_hash.is_some_and(|h| h.matches(token));
    if admin {
        return Ok(Principal {
            actor: "admin".into(),
            name: None,
            roles: vec![ApiRole::Admin],
        });
    }
    if write {
        return Ok(Principal {
            actor: "write-token".into(),
            name: None,
            roles: vec![ApiRole::Ingest],
        });
    }
    Err(Denied::Unknown)
}

/// Whether `p` may do what needs `needed`.
pub fn authorize(p: &Principal, needed: ApiRole) -> Result<(), Denied> {
    if p.may(needed) {
        return Ok(());
    }
    if p.is_anonymous() {
        return Err(Denied::Anonymous { needed });
    }
    Err(Denied::Forbidden {
        actor: p.actor.clone(),
        have: p.roles_text(),
        needed,
    })
}

/// The anonymous roles a node grants when the config says `auto`: viewer and ingest on
/// a loopback address (only this host can connect), nothing elsewhere. With a legacy
/// write token configured, anonymous writes were refused before roles existed, and stay
/// so.
pub fn default_anonymous(loopback: bool, write_token: bool) -> Vec<ApiRole> {
    match (loopback, write_token) {
        (false, _) => Vec::new(),
        (true, false) => vec![ApiRole::Viewer, ApiRole::Ingest],
        (true, true) => vec![ApiRole::Viewer],
    }
}

/// Why the configured anonymous roles cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnonymousError {
    #[error(
        "api.anonymous_roles grants {roles} to requests without a token on {addr}, which is not a loopback address; set api.anonymous_beyond_loopback = true to allow it, or grant none"
    )]
    BeyondLoopback { roles: String, addr: String },
    #[error("api.anonymous_roles may not include admin: admin always needs a token")]
    Admin,
}

/// Checks configured anonymous roles against the listen address.
pub fn check_anonymous(
    roles: &[ApiRole],
    addr: std::net::SocketAddr,
    beyond_loopback: bool,
) -> Result<(), AnonymousError> {
    if roles.contains(&ApiRole::Admin) {
        return Err(AnonymousError::Admin);
    }
    if !roles.is_empty() && !addr.ip().is_loopback() && !beyond_loopback {
        let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        return Err(AnonymousError::BeyondLoopback {
            roles: names.join(", "),
            addr: addr.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::api_tokens::{NewApiToken, format_token, secret_hash};
    use argus_common::pki::{TokenId, TokenSecret};

    const T0: i64 = 1_700_000_000_000;

    fn table() -> (ApiTokens, String, String) {
        let mut t = ApiTokens::default();
        let mut mint = |n: u8, role, expires_ms| {
            let (id, secret) = (TokenId([n; 8]), TokenSecret([n; 16]));
            t.create(
                &NewApiToken {
                    id: id.0,
                    secret_hash: secret_hash(&secret),
                    role,
                    name: "grafana".into(),
                    created_by: "admin".into(),
                    expires_ms,
                },
                T0,
            )
            .unwrap();
            format_token(&id, &secret)
        };
        let viewer = mint(1, ApiRole::Viewer, Some(T0 + 1_000));
        let ingest = mint(2, ApiRole::Ingest, None);
        (t, viewer, ingest)
    }

    fn cfg(anonymous: Vec<ApiRole>) -> AuthConfig {
        AuthConfig {
            admin_token_hash: Some(AdminTokenHash::of("argus-admin-secret")),
            write_token_hash: Some(AdminTokenHash::of("w")),
            anonymous,
        }
    }

    #[test]
    fn each_kind_of_token_resolves_to_its_role() {
        let (t, viewer, ingest) = table();
        let c = cfg(vec![]);
        let p = resolve(&c, &t, Some(&viewer), T0).unwrap();
        assert_eq!(
            (p.actor.as_str(), p.roles.as_slice()),
            ("api-token:0101010101010101", &[ApiRole::Viewer][..])
        );
        assert_eq!(p.audit_actor(), "api-token:0101010101010101 (grafana)");
        assert!(authorize(&p, ApiRole::Viewer).is_ok());
        let no = authorize(&p, ApiRole::Operator).unwrap_err();
        assert_eq!(no.status(), 403);
        assert!(no.to_string().contains("needs role operator"), "{no}");
        let p = resolve(&c, &t, Some(&ingest), T0).unwrap();
        assert!(authorize(&p, ApiRole::Ingest).is_ok());
        assert!(
            authorize(&p, ApiRole::Viewer).is_err(),
            "ingest may not read"
        );
        let admin = resolve(&c, &t, Some("argus-admin-secret"), T0).unwrap();
        assert_eq!(admin.actor, "admin");
        for r in ApiRole::ALL {
            assert!(authorize(&admin, r).is_ok(), "admin may {r}");
        }
        let w = resolve(&c, &t, Some("w"), T0).unwrap();
        assert_eq!(w.roles, vec![ApiRole::Ingest]);
    }

    #[test]
    fn unknown_expired_and_missing_tokens_are_401_with_a_reason() {
        let (t, viewer, _) = table();
        let c = cfg(vec![ApiRole::Viewer]);
        let err = |tok: Option<&str>, now: i64, c: &AuthConfig| {
            resolve(c, &t, tok, now).map(|_| ()).unwrap_err()
        };
        assert_eq!(
            err(Some(&viewer), T0 + 1_000, &c),
            Denied::ApiToken(ApiTokenError::Expired)
        );
        let wrong = format!("{}0", &viewer[..viewer.len() - 1]);
        assert_eq!(
            err(Some(&wrong), T0, &c).reason(),
            "wrong_secret",
            "a wrong token is refused even where anonymous reads are allowed"
        );
        assert_eq!(err(Some("nope"), T0, &c), Denied::Unknown);
        assert_eq!(err(None, T0, &cfg(vec![])), Denied::Missing);
        assert_eq!(err(None, T0, &cfg(vec![])).status(), 401);
        let anon = resolve(&c, &t, None, T0).unwrap();
        assert!(anon.is_anonymous() && anon.may(ApiRole::Viewer) && !anon.may(ApiRole::Ingest));
        let more = authorize(&anon, ApiRole::Admin).unwrap_err();
        assert_eq!(more.status(), 401, "no token at all is 401, not 403");
        assert!(more.to_string().contains("role admin"), "{more}");
    }

    #[test]
    fn the_header_must_say_bearer() {
        assert_eq!(bearer(None), Ok(None));
        assert_eq!(bearer(Some(b"Bearer abc")), Ok(Some("abc")));
        assert_eq!(bearer(Some(b"bearer  abc ")), Ok(Some("abc")));
        for bad in [&b"Basic abc"[..], b"Bearer", b"Bearer  ", b"\xff\xfe"] {
            assert_eq!(bearer(Some(bad)), Err(Denied::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn anonymous_access_is_loopback_only_unless_asked_for() {
        let lo: std::net::SocketAddr = "127.0.0.1:3006".parse().unwrap();
        let any: std::net::SocketAddr = "0.0.0.0:3006".parse().unwrap();
        assert_eq!(
            default_anonymous(true, false),
            vec![ApiRole::Viewer, ApiRole::Ingest]
        );
        assert_eq!(default_anonymous(true, true), vec![ApiRole::Viewer]);
        assert!(default_anonymous(false, false).is_empty());
        assert!(check_anonymous(&[ApiRole::Viewer], lo, false).is_ok());
        assert!(check_anonymous(&[], any, false).is_ok());
        let e = check_anonymous(&[ApiRole::Viewer], any, false).unwrap_err();
        assert!(e.to_string().contains("anonymous_beyond_loopback"), "{e}");
        assert!(check_anonymous(&[ApiRole::Viewer], any, true).is_ok());
        assert_eq!(
            check_anonymous(&[ApiRole::Admin], lo, true),
            Err(AnonymousError::Admin)
        );
    }
}
