//! Join strings and token secrets.
//!
//! A join string is what `argus token create` prints and `argus-agent join` takes. Its
//! format, version 1:
//!
//! ```text
//! argus-join:v1:<token-id>.<secret>@sha256:<ca-pin>@<host:port>[,<host:port>...]
//! ```
//!
//! - `<token-id>`: 16 lowercase hex digits (64 random bits). Public: it names the token
//!   in listings, audit records and revocation.
//! - `<secret>`: 32 lowercase hex digits (128 random bits). Only its hash is stored.
//! - `sha256:<ca-pin>`: 64 lowercase hex digits, the SHA-256 of the CA's DER
//!   SubjectPublicKeyInfo, which the agent pins on first contact (as kubeadm's
//!   `--discovery-token-ca-cert-hash` does) before it sends the secret anywhere.
//! - addresses: 1 to 16 coordinator addresses, `host:port`, where host is an IPv4
//!   address, a bracketed IPv6 address (`[::1]:3006`) or a DNS name.
//!
//! Lowercase hex and these separators survive shells, YAML, URLs and copy-paste without
//! quoting; `@`, `.` and `,` cannot occur inside the parts they separate. Surrounding
//! whitespace (a pasted newline) is ignored. The whole string is at most 4096 bytes.

use super::{CaPin, JoinPart, PkiError, fill_random, hex_decode, hex_encode, sha256};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

const PREFIX: &str = "argus-join:";
const VERSION: &str = "v1";
/// Longest join string accepted: 16 addresses of 253-character names still fit.
pub const MAX_JOIN_STRING_LEN: usize = 4096;
/// Most coordinator addresses in one join string.
pub const MAX_JOIN_ADDRS: usize = 16;
/// Longest DNS name (RFC 1035).
const MAX_HOST_LEN: usize = 253;

/// A token's public id: 8 random bytes, written as 16 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenId(pub [u8; 8]);

impl TokenId {
    /// A fresh random id.
    pub fn generate() -> Result<Self, PkiError> {
        let mut b = [0u8; 8];
        fill_random(&mut b)?;
        Ok(Self(b))
    }

    /// Parses the 16-hex-digit form.
    pub fn parse(s: &str) -> Result<Self, PkiError> {
        hex_decode::<8>(s).map(Self).ok_or_else(|| PkiError::Join {
            part: JoinPart::TokenId,
            reason: format!(
                "expected 16 lowercase hex digits, got {:?}",
                s.chars().take(40).collect::<String>()
            ),
        })
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex_encode(&self.0))
    }
}

impl std::str::FromStr for TokenId {
    type Err = PkiError;
    fn from_str(s: &str) -> Result<Self, PkiError> {
        Self::parse(s)
    }
}

/// A token's secret: 128 random bits. Its `Debug` does not show it, so it cannot leak
/// into logs by accident; [`TokenSecret::expose`] is the only way to print it.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenSecret(pub [u8; 16]);

impl fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenSecret(<redacted>)")
    }
}

impl TokenSecret {
    /// A fresh secret from ring's system random source.
    pub fn generate() -> Result<Self, PkiError> {
        let mut b = [0u8; 16];
        fill_random(&mut b)?;
        Ok(Self(b))
    }

    /// The 32-hex-digit form. The error never repeats the input, which may be a
    /// mistyped secret.
    pub fn parse(s: &str) -> Result<Self, PkiError> {
        hex_decode::<16>(s).map(Self).ok_or_else(|| PkiError::Join {
            part: JoinPart::Secret,
            reason: format!(
                "expected 32 lowercase hex digits (128 bits), got {} characters{}",
                s.chars().count(),
                if s.bytes().all(|b| b.is_ascii_hexdigit()) {
                    ""
                } else {
                    " including non-hex ones"
                }
            ),
        })
    }

    /// The secret in its written form, for the join string only.
    pub fn expose(&self) -> String {
        hex_encode(&self.0)
    }

    /// The hash to store instead of the secret.
    pub fn hash(&self) -> SecretHash {
        SecretHash::of(self)
    }
}

/// What the coordinator stores in place of a token secret.
///
/// A plain SHA-256 (with a domain-separation prefix) is enough here, unlike for
/// passwords: slow, salted hashes exist to make guessing low-entropy inputs expensive,
/// and a uniformly random 128-bit secret cannot be guessed whatever the hash costs. What
/// matters is that the stored value (in the replicated log and snapshots) does not give
/// the secret back, which SHA-256's preimage resistance ensures.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SecretHash(pub [u8; 32]);

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretHash({})", hex_encode(&self.0))
    }
}

impl SecretHash {
    const DOMAIN: &'static [u8] = b"argus join token secret v1\0";

    /// The hash of `secret`.
    pub fn of(secret: &TokenSecret) -> Self {
        let mut input = Vec::with_capacity(Self::DOMAIN.len() + secret.0.len());
        input.extend_from_slice(Self::DOMAIN);
        input.extend_from_slice(&secret.0);
        Self(sha256(&input))
    }

    /// Whether `secret` hashes to this value, compared in constant time so response
    /// timing tells an attacker nothing about how close a guess came.
    pub fn matches(&self, secret: &TokenSecret) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(Self::of(secret).0.ct_eq(&self.0))
    }
}

/// The host part of a coordinator address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum JoinHost {
    Ip(IpAddr),
    Dns(String),
}

/// One coordinator address of a join string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JoinAddr {
    pub host: JoinHost,
    pub port: u16,
}

impl JoinAddr {
    /// Parses `ipv4:port`, `[ipv6]:port` or `dns-name:port`.
    pub fn parse(s: &str) -> Result<Self, PkiError> {
        let bad = |reason: &str| PkiError::Join {
            part: JoinPart::Address,
            reason: format!(
                "{:?}: {reason}",
                s.chars().take(MAX_HOST_LEN + 8).collect::<String>()
            ),
        };
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (v6, port) = rest
                .split_once("]:")
                .ok_or_else(|| bad("expected [ipv6]:port"))?;
            let ip: Ipv6Addr = v6.parse().map_err(|_| bad("not an IPv6 address"))?;
            (JoinHost::Ip(IpAddr::V6(ip)), port)
        } else {
            let (host, port) = s
                .rsplit_once(':')
                .ok_or_else(|| bad("expected host:port"))?;
            if host.contains(':') {
                return Err(bad("an IPv6 address needs brackets: [addr]:port"));
            }
            if host.is_empty() {
                return Err(bad("host is empty"));
            }
            if host.len() > MAX_HOST_LEN {
                return Err(bad("host is longer than 253 characters"));
            }
            let host = match host.parse::<IpAddr>() {
                Ok(ip) => JoinHost::Ip(ip),
                Err(_) => {
                    if rustls::pki_types::DnsName::try_from(host).is_err() {
                        return Err(bad("host is neither an IP address nor a DNS name"));
                    }
                    JoinHost::Dns(host.to_ascii_lowercase())
                }
            };
            (host, port)
        };
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("port must be a number from 1 to 65535"));
        }
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| bad("port must be a number from 1 to 65535"))?;
        Ok(Self { host, port })
    }

    /// The name the agent checks the coordinator's certificate against.
    pub fn server_name(&self) -> rustls::pki_types::ServerName<'static> {
        use rustls::pki_types::{DnsName, ServerName};
        match &self.host {
            JoinHost::Ip(ip) => ServerName::IpAddress((*ip).into()),
            // parse() validated the name, so this conversion cannot fail for values it
            // built; a hand-built invalid one falls back to an IP that matches nothing.
            JoinHost::Dns(name) => DnsName::try_from(name.clone())
                .map(ServerName::DnsName)
                .unwrap_or(ServerName::IpAddress(
                    IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED).into(),
                )),
        }
    }
}

impl fmt::Display for JoinAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            JoinHost::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            JoinHost::Ip(IpAddr::V4(ip)) => write!(f, "{ip}:{}", self.port),
            JoinHost::Dns(name) => write!(f, "{name}:{}", self.port),
        }
    }
}

/// Everything an agent needs to enroll: which token, its secret, which CA to trust, and
/// where the coordinators are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinString {
    pub token_id: TokenId,
    pub secret: TokenSecret,
    pub ca_pin: CaPin,
    pub addrs: Vec<JoinAddr>,
}

impl JoinString {
    /// Builds a join string, checking the address count (1..=16).
    pub fn new(
        token_id: TokenId,
        secret: TokenSecret,
        ca_pin: CaPin,
        addrs: Vec<JoinAddr>,
    ) -> Result<Self, PkiError> {
        check_addr_count(addrs.len())?;
        let js = Self {
            token_id,
            secret,
            ca_pin,
            addrs,
        };
        let len = js.encode().len();
        if len > MAX_JOIN_STRING_LEN {
            return Err(PkiError::Join {
                part: JoinPart::Layout,
                reason: format!("{len} bytes, more than the {MAX_JOIN_STRING_LEN} allowed"),
            });
        }
        Ok(js)
    }

    /// The written form; see the module documentation.
    pub fn encode(&self) -> String {
        let addrs: Vec<String> = self.addrs.iter().map(ToString::to_string).collect();
        format!(
            "{PREFIX}{VERSION}:{}.{}@{}@{}",
            self.token_id,
            self.secret.expose(),
            self.ca_pin,
            addrs.join(",")
        )
    }

    /// Parses the written form. Errors name the part that is wrong and never repeat the
    /// secret.
    pub fn parse(s: &str) -> Result<Self, PkiError> {
        let layout = |reason: String| PkiError::Join {
            part: JoinPart::Layout,
            reason,
        };
        if s.len() > MAX_JOIN_STRING_LEN {
            return Err(layout(format!(
                "{} bytes, more than the {MAX_JOIN_STRING_LEN} allowed",
                s.len()
            )));
        }
        let s = s.trim();
        if !s.is_ascii() {
            return Err(layout("contains non-ASCII characters".into()));
        }
        let rest = s.strip_prefix(PREFIX).ok_or_else(|| PkiError::Join {
            part: JoinPart::Prefix,
            reason: "must start with argus-join:".into(),
        })?;
        let (version, rest) = rest.split_once(':').ok_or_else(|| PkiError::Join {
            part: JoinPart::Version,
            reason: "missing version (argus-join:v1:...)".into(),
        })?;
        if version != VERSION {
            return Err(PkiError::Join {
                part: JoinPart::Version,
                reason: format!(
                    "version {:?} is not supported; this build reads {VERSION}",
                    version.chars().take(16).collect::<String>()
                ),
            });
        }
        let parts: Vec<&str> = rest.split('@').collect();
        let [creds, pin, addrs] = parts.as_slice() else {
            return Err(layout(format!(
                "expected <token-id>.<secret>@sha256:<ca-pin>@<addresses>, found {} '@'-separated parts",
                parts.len()
            )));
        };
        let (id, secret) = creds.split_once('.').ok_or_else(|| PkiError::Join {
            part: JoinPart::TokenId,
            reason: "expected <token-id>.<secret> before the first '@'".into(),
        })?;
        let token_id = TokenId::parse(id)?;
        let secret = TokenSecret::parse(secret)?;
        let ca_pin = CaPin::parse(pin).map_err(|_| PkiError::Join {
            part: JoinPart::CaPin,
            reason: "expected sha256:<64 lowercase hex digits>".into(),
        })?;
        if addrs.is_empty() {
            return Err(PkiError::Join {
                part: JoinPart::Address,
                reason: "no coordinator address".into(),
            });
        }
        let count = addrs.split(',').count();
        check_addr_count(count)?;
        let addrs = addrs
            .split(',')
            .map(JoinAddr::parse)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            token_id,
            secret,
            ca_pin,
            addrs,
        })
    }
}

fn check_addr_count(n: usize) -> Result<(), PkiError> {
    if n == 0 || n > MAX_JOIN_ADDRS {
        return Err(PkiError::Join {
            part: JoinPart::Address,
            reason: format!("{n} coordinator addresses; 1 to {MAX_JOIN_ADDRS} are allowed"),
        });
    }
    Ok(())
}

impl fmt::Display for JoinString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

impl std::str::FromStr for JoinString {
    type Err = PkiError;
    fn from_str(s: &str) -> Result<Self, PkiError> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GOOD: &str = "argus-join:v1:0123456789abcdef.00112233445566778899aabbccddeeff@sha256:0000000000000000000000000000000000000000000000000000000000000001@127.0.0.1:3006,[::1]:3006,argus-1.example.org:3006";

    fn part_of(s: &str) -> JoinPart {
        match JoinString::parse(s) {
            Err(PkiError::Join { part, .. }) => part,
            other => panic!("{s}: expected a join error, got {other:?}"),
        }
    }

    #[test]
    fn parses_a_known_string() {
        let js = JoinString::parse(GOOD).unwrap();
        assert_eq!(js.token_id.to_string(), "0123456789abcdef");
        assert_eq!(js.secret.expose(), "00112233445566778899aabbccddeeff");
        let mut pin = [0u8; 32];
        pin[31] = 1;
        assert_eq!(js.ca_pin, CaPin(pin));
        assert_eq!(
            js.addrs,
            vec![
                JoinAddr {
                    host: JoinHost::Ip("127.0.0.1".parse().unwrap()),
                    port: 3006
                },
                JoinAddr {
                    host: JoinHost::Ip("::1".parse().unwrap()),
                    port: 3006
                },
                JoinAddr {
                    host: JoinHost::Dns("argus-1.example.org".into()),
                    port: 3006
                },
            ]
        );
        assert_eq!(js.encode(), GOOD);
        assert_eq!(JoinString::parse(&format!("  {GOOD}\n")).unwrap(), js);
    }

    #[test]
    fn generated_strings_round_trip() {
        let js = JoinString::new(
            TokenId::generate().unwrap(),
            TokenSecret::generate().unwrap(),
            CaPin([7; 32]),
            vec![JoinAddr::parse("10.1.2.3:3006").unwrap()],
        )
        .unwrap();
        assert_eq!(JoinString::parse(&js.to_string()).unwrap(), js);
        assert_ne!(
            TokenSecret::generate().unwrap(),
            TokenSecret::generate().unwrap()
        );
    }

    #[test]
    fn malformed_strings_name_the_wrong_part() {
        let g = GOOD;
        let cases: Vec<(String, JoinPart)> = vec![
            (g.replace("argus-join:", "argus-jion:"), JoinPart::Prefix),
            (String::new(), JoinPart::Prefix),
            (g.replace(":v1:", ":v2:"), JoinPart::Version),
            ("argus-join:".into(), JoinPart::Version),
            (g.replacen('@', "", 1), JoinPart::Layout),
            (format!("{g}@x"), JoinPart::Layout),
            (
                g.replace("0123456789abcdef.", "0123456789abcde."),
                JoinPart::TokenId,
            ),
            (
                g.replace("0123456789abcdef.", "0123456789abcdef"),
                JoinPart::TokenId,
            ),
            (
                g.replace("0123456789abcdef.", "0123456789ABCDEF."),
                JoinPart::TokenId,
            ),
            (
                g.replace("00112233445566778899aabbccddeeff", "0011"),
                JoinPart::Secret,
            ),
            (
                g.replace(
                    "00112233445566778899aabbccddeeff",
                    "00112233445566778899aabbccddeefz",
                ),
                JoinPart::Secret,
            ),
            (g.replace("sha256:", "sha1:"), JoinPart::CaPin),
            (
                g.replace(
                    "0000000000000000000000000000000000000000000000000000000000000001",
                    "01",
                ),
                JoinPart::CaPin,
            ),
            (g.replace("127.0.0.1:3006", "127.0.0.1"), JoinPart::Address),
            (
                g.replace("127.0.0.1:3006", "127.0.0.1:0"),
                JoinPart::Address,
            ),
            (
                g.replace("127.0.0.1:3006", "127.0.0.1:65536"),
                JoinPart::Address,
            ),
            (
                g.replace("127.0.0.1:3006", "127.0.0.1:+80"),
                JoinPart::Address,
            ),
            (g.replace("[::1]:3006", "::1:3006"), JoinPart::Address),
            (g.replace("[::1]:3006", "[::g]:3006"), JoinPart::Address),
            (
                g.replace("argus-1.example.org", "bad_host!"),
                JoinPart::Address,
            ),
            (
                g.replace("127.0.0.1:3006,", ",127.0.0.1:3006,"),
                JoinPart::Address,
            ),
            (
                format!("{}@", &g[..g.rfind('@').unwrap()]),
                JoinPart::Address,
            ),
            (
                format!("{g}{}", ",a:1".repeat(MAX_JOIN_ADDRS)),
                JoinPart::Address,
            ),
            (format!("{g}é"), JoinPart::Layout),
            ("x".repeat(MAX_JOIN_STRING_LEN + 1), JoinPart::Layout),
        ];
        for (s, want) in cases {
            assert_eq!(part_of(&s), want, "{s}");
        }
    }

    #[test]
    fn secret_errors_do_not_echo_the_secret() {
        let s = GOOD.replace(
            "00112233445566778899aabbccddeeff",
            "00112233445566778899aabbccddeefX",
        );
        let msg = JoinString::parse(&s).unwrap_err().to_string();
        assert!(!msg.contains("00112233"), "{msg}");
        assert!(msg.contains("secret"), "{msg}");
        let dbg = format!("{:?}", JoinString::parse(GOOD).unwrap());
        assert!(!dbg.contains("00112233445566778899aabbccddeeff"), "{dbg}");
    }

    #[test]
    fn secret_hash_matches_only_its_secret() {
        let secret = TokenSecret::generate().unwrap();
        let hash = secret.hash();
        assert!(hash.matches(&secret));
        let mut other = secret.clone();
        other.0[15] ^= 1;
        assert!(!hash.matches(&other));
        assert_ne!(hash.0[..16], secret.0[..], "the hash is not the secret");
        // Pinned value: the stored hash must not change between releases.
        let fixed = TokenSecret([0u8; 16]);
        let mut input = b"argus join token secret v1\0".to_vec();
        input.extend_from_slice(&[0u8; 16]);
        assert_eq!(fixed.hash().0, sha256(&input));
    }

    #[test]
    fn server_name_follows_the_host() {
        use rustls::pki_types::ServerName;
        let a = JoinAddr::parse("Argus.Example.org:1").unwrap();
        assert_eq!(a.host, JoinHost::Dns("argus.example.org".into()));
        assert!(matches!(a.server_name(), ServerName::DnsName(_)));
        let a = JoinAddr::parse("[fe80::1]:3006").unwrap();
        assert!(matches!(a.server_name(), ServerName::IpAddress(_)));
        assert_eq!(a.to_string(), "[fe80::1]:3006");
    }

    fn arb_addr() -> impl Strategy<Value = JoinAddr> {
        let host = prop_oneof![
            any::<[u8; 4]>().prop_map(|b| JoinHost::Ip(IpAddr::from(b))),
            any::<[u8; 16]>().prop_map(|b| JoinHost::Ip(IpAddr::from(b))),
            "[a-z]([a-z0-9-]{0,20}[a-z0-9])?(\\.[a-z]([a-z0-9-]{0,20}[a-z0-9])?){0,3}"
                .prop_map(JoinHost::Dns),
        ];
        (host, 1u16..).prop_map(|(host, port)| JoinAddr { host, port })
    }

    proptest! {
        #[test]
        fn arbitrary_input_never_panics(s in "\\PC{0,300}") {
            let _ = JoinString::parse(&s);
        }

        #[test]
        fn mutated_good_strings_never_panic(pos in 0usize..GOOD.len(), b in any::<u8>()) {
            let mut bytes = GOOD.as_bytes().to_vec();
            bytes[pos] = b;
            if let Ok(s) = String::from_utf8(bytes) {
                let _ = JoinString::parse(&s);
            }
        }

        #[test]
        fn encode_then_parse_round_trips(
            id in any::<[u8; 8]>(),
            secret in any::<[u8; 16]>(),
            pin in any::<[u8; 32]>(),
            addrs in proptest::collection::vec(arb_addr(), 1..=MAX_JOIN_ADDRS),
        ) {
            let js = JoinString::new(TokenId(id), TokenSecret(secret), CaPin(pin), addrs).unwrap();
            prop_assert_eq!(JoinString::parse(&js.encode()).unwrap(), js);
        }
    }
}
