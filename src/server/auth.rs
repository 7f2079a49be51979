//! Credentials and tokens: users with passwords, HS256 JWTs with expiry.
//!
//! ```text
//!   signin(username, password) ──check_password──► Identity ──issue──► JWT
//!   signin(jwt) / Envelope.jwt ───────verify─────► Identity (user must still exist)
//! ```
//!
//! A token is `base64url(header).base64url(claims).base64url(HMAC-SHA256)`
//! with header `{"alg":"HS256","typ":"JWT"}` and claims `sub`, `username`,
//! `iat` and `exp` (seconds since the Unix epoch). Verification checks the
//! algorithm, the signature (in constant time), the expiry and that the user
//! still exists. Passwords are compared through their SHA-256 digests in
//! constant time.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Longest token we look at; anything longer is malformed, not parsed.
pub const MAX_TOKEN_LEN: usize = 4096;

/// Why a credential was refused. Messages never echo a password or token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// Unknown user or wrong password (deliberately not told apart).
    #[error("invalid username or password for {username:?}")]
    BadCredentials {
        /// The username given.
        username: String,
    },
    /// Not three base64url parts with JSON inside, or over [`MAX_TOKEN_LEN`].
    #[error("malformed token: {reason}")]
    MalformedToken {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The header names another algorithm than HS256.
    #[error("token algorithm {alg:?} is not accepted, only HS256")]
    Algorithm {
        /// The algorithm named.
        alg: String,
    },
    /// The signature does not match (another secret, or tampering).
    #[error("token signature is invalid")]
    BadSignature,
    /// The token's `exp` has passed.
    #[error("token expired at {expired_at} (unix seconds), now is {now}")]
    Expired {
        /// The `exp` claim.
        expired_at: u64,
        /// The current time.
        now: u64,
    },
    /// The token is valid but its user no longer exists.
    #[error("token user {username:?} does not exist")]
    UnknownUser {
        /// The `sub` claim.
        username: String,
    },
}

/// Who a connection or a message runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The username.
    pub username: String,
}

/// The users and the token secret.
pub struct Auth {
    secret: Vec<u8>,
    users: HashMap<String, [u8; 32]>,
    token_lifetime: Duration,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .field("token_lifetime", &self.token_lifetime)
            .finish_non_exhaustive()
    }
}

fn digest(password: &str) -> [u8; 32] {
    Sha256::digest(password.as_bytes()).into()
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Auth {
    /// No users yet; tokens signed with `secret` live `token_lifetime`.
    pub fn new(secret: Vec<u8>, token_lifetime: Duration) -> Self {
        Self {
            secret,
            users: HashMap::new(),
            token_lifetime,
        }
    }

    /// Adds (or replaces) a user.
    pub fn add_user(&mut self, username: &str, password: &str) {
        self.users.insert(username.to_owned(), digest(password));
    }

    /// Checks a username and password.
    ///
    /// # Errors
    ///
    /// [`AuthError::BadCredentials`].
    pub fn check_password(&self, username: &str, password: &str) -> Result<Identity, AuthError> {
        let given = digest(password);
        match self.users.get(username) {
            Some(stored) if constant_time_eq(stored, &given) => Ok(Identity {
                username: username.to_owned(),
            }),
            _ => Err(AuthError::BadCredentials {
                username: username.to_owned(),
            }),
        }
    }

    /// A fresh token for `identity`, valid from `now` for the lifetime.
    pub fn issue(&self, identity: &Identity, now: SystemTime) -> String {
        let iat = unix_seconds(now);
        let exp = iat.saturating_add(self.token_lifetime.as_secs());
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let claims = serde_json::json!({
            "sub": identity.username,
            "username": identity.username,
            "iat": iat,
            "exp": exp,
        });
        let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signing_input = format!("{header}.{claims}");
        let signature = URL_SAFE_NO_PAD.encode(self.sign(signing_input.as_bytes()));
        format!("{signing_input}.{signature}")
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes keys of any length; `new_from_slice` cannot fail here.
        match HmacSha256::new_from_slice(&self.secret) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC accepts every key length"),
        }
    }

    fn sign(&self, input: &[u8]) -> Vec<u8> {
        let mut mac = self.mac();
        mac.update(input);
        mac.finalize().into_bytes().to_vec()
    }

    /// Checks a token issued by [`issue`](Self::issue) with the same secret.
    ///
    /// # Errors
    ///
    /// Every [`AuthError`] but `BadCredentials`.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Identity, AuthError> {
        let malformed = |reason| AuthError::MalformedToken { reason };
        if token.len() > MAX_TOKEN_LEN {
            return Err(malformed("longer than the limit"));
        }
        let mut parts = token.split('.');
        let (Some(header), Some(claims), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("not three dot-separated parts"));
        };
        let header: serde_json::Value = URL_SAFE_NO_PAD
            .decode(header)
            .ok()
            .and_then(|h| serde_json::from_slice(&h).ok())
            .ok_or(malformed("header is not base64url JSON"))?;
        let alg = header.get("alg").and_then(|a| a.as_str()).unwrap_or("");
        if alg != "HS256" {
            return Err(AuthError::Algorithm {
                alg: alg.chars().take(32).collect(),
            });
        }
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| malformed("signature is not base64url"))?;
        let signing_input = token.rsplit_once('.').map_or("", |(input, _)| input);
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| AuthError::BadSignature)?;
        let claims: serde_json::Value = URL_SAFE_NO_PAD
            .decode(claims)
            .ok()
            .and_then(|c| serde_json::from_slice(&c).ok())
            .ok_or(malformed("claims are not base64url JSON"))?;
        let exp = claims
            .get("exp")
            .and_then(serde_json::Value::as_u64)
            .ok_or(malformed("no numeric exp claim"))?;
        let now = unix_seconds(now);
        if exp <= now {
            return Err(AuthError::Expired {
                expired_at: exp,
                now,
            });
        }
        let username = claims
            .get("sub")
            .and_then(|s| s.as_str())
            .ok_or(malformed("no sub claim"))?;
        if !self.users.contains_key(username) {
            return Err(AuthError::UnknownUser {
                username: username.chars().take(256).collect(),
            });
        }
        Ok(Identity {
            username: username.to_owned(),
        })
    }
}

/// Why a users file was refused; lines count from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UsersError {
    /// A line is not `username:password`.
    #[error("line {line}: expected username:password")]
    Malformed {
        /// The line number.
        line: usize,
    },
    /// A username is empty or has spaces or control characters.
    #[error("line {line}: invalid username")]
    InvalidUsername {
        /// The line number.
        line: usize,
    },
    /// A username appears twice.
    #[error("line {line}: user {username:?} is already defined")]
    Duplicate {
        /// The line number.
        line: usize,
        /// The username.
        username: String,
    },
    /// The file defines nobody.
    #[error("no users defined")]
    Empty,
}

/// Parses a users file: one `username:password` per line (the password is
/// everything after the first `:`); blank lines and lines starting with `#`
/// are skipped.
///
/// ```
/// use openiap_wire::server::auth::parse_users;
///
/// let users = parse_users("# team\nalice:s3cret:x\n\nbob:pw\n").unwrap();
/// assert_eq!(users[0], ("alice".to_owned(), "s3cret:x".to_owned()));
/// assert_eq!(users.len(), 2);
/// ```
///
/// # Errors
///
/// [`UsersError`] naming the first bad line.
pub fn parse_users(text: &str) -> Result<Vec<(String, String)>, UsersError> {
    let mut users: Vec<(String, String)> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index.saturating_add(1);
        let trimmed = raw.trim_end_matches('\r');
        if trimmed.trim().is_empty() || trimmed.trim_start().starts_with('#') {
            continue;
        }
        let Some((username, password)) = trimmed.split_once(':') else {
            return Err(UsersError::Malformed { line });
        };
        let username = username.trim();
        if username.is_empty()
            || username
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(UsersError::InvalidUsername { line });
        }
        if users.iter().any(|(known, _)| known == username) {
            return Err(UsersError::Duplicate {
                line,
                username: username.to_owned(),
            });
        }
        users.push((username.to_owned(), password.to_owned()));
    }
    if users.is_empty() {
        return Err(UsersError::Empty);
    }
    Ok(users)
}

/// `n` random bytes from the OS.
///
/// # Errors
///
/// The OS random source failed.
pub fn random_bytes(n: usize) -> std::io::Result<Vec<u8>> {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn auth() -> Auth {
        let mut auth = Auth::new(b"test-secret".to_vec(), Duration::from_secs(3600));
        auth.add_user("dev", "pw");
        auth
    }

    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    #[test]
    fn password_check_accepts_right_and_refuses_wrong() {
        let auth = auth();
        assert_eq!(auth.check_password("dev", "pw").unwrap().username, "dev");
        assert!(matches!(
            auth.check_password("dev", "nope"),
            Err(AuthError::BadCredentials { .. })
        ));
        assert!(matches!(
            auth.check_password("eve", "pw"),
            Err(AuthError::BadCredentials { .. })
        ));
    }

    #[test]
    fn issued_token_verifies_until_it_expires() {
        let auth = auth();
        let who = Identity {
            username: "dev".into(),
        };
        let token = auth.issue(&who, t0());
        assert_eq!(auth.verify(&token, t0()), Ok(who));
        let later = t0() + Duration::from_secs(3600);
        assert!(matches!(
            auth.verify(&token, later),
            Err(AuthError::Expired { expired_at, now }) if expired_at == now
        ));
    }

    #[test]
    fn token_from_another_secret_is_refused() {
        let mut other = Auth::new(b"other".to_vec(), Duration::from_secs(60));
        other.add_user("dev", "pw");
        let token = other.issue(
            &Identity {
                username: "dev".into(),
            },
            t0(),
        );
        assert_eq!(auth().verify(&token, t0()), Err(AuthError::BadSignature));
    }

    #[test]
    fn tampered_claims_are_refused() {
        let auth = auth();
        let token = auth.issue(
            &Identity {
                username: "dev".into(),
            },
            t0(),
        );
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(r#"{"sub":"dev","exp":99999999999}"#);
        parts[1] = &forged;
        assert_eq!(
            auth.verify(&parts.join("."), t0()),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn alg_none_is_refused() {
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#);
        let claims = URL_SAFE_NO_PAD.encode(r#"{"sub":"dev","exp":99999999999}"#);
        assert!(matches!(
            auth().verify(&format!("{header}.{claims}."), t0()),
            Err(AuthError::Algorithm { alg }) if alg == "none"
        ));
    }

    #[test]
    fn token_of_a_removed_user_is_refused() {
        let token = auth().issue(
            &Identity {
                username: "gone".into(),
            },
            t0(),
        );
        assert!(matches!(
            auth().verify(&token, t0()),
            Err(AuthError::UnknownUser { .. })
        ));
    }

    #[test]
    fn users_file_errors_name_the_line() {
        assert_eq!(
            parse_users("a:1\nnocolon\n"),
            Err(UsersError::Malformed { line: 2 })
        );
        assert_eq!(
            parse_users(" :x"),
            Err(UsersError::InvalidUsername { line: 1 })
        );
        assert_eq!(
            parse_users("a:1\n#c\na:2"),
            Err(UsersError::Duplicate {
                line: 3,
                username: "a".into()
            })
        );
        assert_eq!(parse_users("# nobody\n"), Err(UsersError::Empty));
    }

    proptest! {
        #[test]
        fn parse_users_never_panics(text in "\\PC{0,200}") {
            let _ = parse_users(&text);
        }

        #[test]
        fn verify_never_panics(token in ".{0,300}") {
            let _ = auth().verify(&token, t0());
        }

        #[test]
        fn any_flipped_byte_breaks_the_token(at in 0usize..200, bit in 0u8..8) {
            let auth = auth();
            let token = auth.issue(&Identity { username: "dev".into() }, t0());
            let mut bytes = token.into_bytes();
            let at = at % bytes.len();
            bytes[at] ^= 1 << bit;
            if let Ok(changed) = String::from_utf8(bytes) {
                prop_assert!(auth.verify(&changed, t0()).is_err());
            }
        }
    }
}
