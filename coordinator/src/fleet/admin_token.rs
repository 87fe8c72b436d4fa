//! The admin API token `cluster init` mints: the bearer token of `argus token ...` and
//! every other administrative request until API tokens with roles arrive (issue 5
//! item 7).
//!
//! The node keeps only a hash of it (like join token secrets, a plain domain-separated
//! SHA-256 is enough for 128 random bits); the token itself is printed once and written
//! to the 0600 CLI config file.

use ring::rand::SecureRandom;
use std::fmt;

const PREFIX: &str = "argus-admin-";
const DOMAIN: &[u8] = b"argus admin api token v1\0";

#[derive(Debug, thiserror::Error)]
pub enum AdminTokenError {
    #[error("random number generator failed")]
    Random,
    #[error("admin token hash: expected 64 lowercase hex digits")]
    BadHash,
}

/// A freshly minted admin token. `Debug` does not show it.
pub struct AdminToken(String);

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl AdminToken {
    /// 128 random bits as `argus-admin-<32 hex digits>`.
    pub fn generate() -> Result<Self, AdminTokenError> {
        let mut b = [0u8; 16];
        ring::rand::SystemRandom::new()
            .fill(&mut b)
            .map_err(|_| AdminTokenError::Random)?;
        Ok(AdminToken(format!("{PREFIX}{}", hex(&b))))
    }

    /// The token, to print once and write to the CLI config.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> AdminTokenHash {
        AdminTokenHash::of(&self.0)
    }
}

/// What the node stores in place of the admin token.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AdminTokenHash([u8; 32]);

impl fmt::Debug for AdminTokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AdminTokenHash({})", hex(&self.0))
    }
}

impl AdminTokenHash {
    pub fn of(token: &str) -> Self {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(DOMAIN);
        ctx.update(token.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        AdminTokenHash(out)
    }

    /// Whether `presented` is the token, in constant time: the hash of any input has the
    /// same length, so neither its length nor its content shows in the timing.
    pub fn matches(&self, presented: &str) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(Self::of(presented).0.ct_eq(&self.0))
    }

    /// 64 lowercase hex digits, as the hash file holds it.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    pub fn from_hex(s: &str) -> Result<Self, AdminTokenError> {
        let s = s.trim().as_bytes();
        if s.len() != 64 {
            return Err(AdminTokenError::BadHash);
        }
        let nibble = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            let (hi, lo) = (nibble(s[2 * i]), nibble(s[2 * i + 1]));
            *o = (hi.ok_or(AdminTokenError::BadHash)? << 4) | lo.ok_or(AdminTokenError::BadHash)?;
        }
        Ok(AdminTokenHash(out))
    }
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_token_matches_its_hash_and_the_hash_round_trips() {
        let t = AdminToken::generate().unwrap();
        assert!(t.expose().starts_with(PREFIX));
        assert_eq!(t.expose().len(), PREFIX.len() + 32);
        let h = t.hash();
        assert!(h.matches(t.expose()));
        assert!(!h.matches(""));
        assert!(!h.matches(&t.expose()[..t.expose().len() - 1]));
        assert!(!h.matches(AdminToken::generate().unwrap().expose()));
        assert_eq!(AdminTokenHash::from_hex(&h.to_hex()).unwrap(), h);
        assert!(AdminTokenHash::from_hex("zz").is_err());
        assert!(AdminTokenHash::from_hex(&"G".repeat(64)).is_err());
        assert!(!format!("{t:?}").contains(&t.expose()[PREFIX.len()..]));
    }
}
