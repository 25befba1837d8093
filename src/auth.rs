//! auth — terminal credentials: HS256 JWTs naming an endpoint, a role and a seat.
//!
//! A command center is one node of the org tree with several terminals at it — a video wall,
//! operator desks, the station PC — so a credential names a seat at its node: each seat is its
//! own connection, and a newer connection replaces an older one of the same seat only.
//!
//! Time is an input: `verify` takes `now` rather than reading the clock, so expiry is tested
//! without sleeping. The key comes from config (`auth.secret`) or a key file created on first run.

use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::org::{NodeIdx, Org, Tier};

/// What a credential allows its holder to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A console at a center: sees and commands the center's whole subtree.
    Operator,
    /// A center's or village service station's own terminal: receives orders and calls.
    Station,
    /// A grid worker's phone: sees itself and its chain of command.
    Worker,
    /// A video wall at a center: sees the center's whole subtree, takes part in nothing (it is
    /// not rung, places no calls and acts on no order).
    Observer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Station => "station",
            Role::Worker => "worker",
            Role::Observer => "observer",
        }
    }

    /// The role a terminal at this tier gets when none is asked for.
    pub fn default_for(tier: Tier) -> Role {
        if tier == Tier::Worker {
            Role::Worker
        } else {
            Role::Operator
        }
    }

    /// Workers are people in the field; every other tier is a center or station.
    pub fn allowed_at(self, tier: Tier) -> bool {
        (self == Role::Worker) == (tier == Tier::Worker)
    }
}

/// A seat at a node: `main` unless the credential names another. 1 to 15 characters of
/// `a-z 0-9 - _`, kept inline so that routing targets stay `Copy`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Seat {
    len: u8,
    bytes: [u8; Seat::MAX],
}

impl Seat {
    pub const MAX: usize = 15;
    pub const MAIN: Seat = Seat {
        len: 4,
        bytes: *b"main\0\0\0\0\0\0\0\0\0\0\0",
    };

    pub fn parse(s: &str) -> Result<Seat, String> {
        let ok = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_');
        if s.is_empty() || s.len() > Seat::MAX || !s.as_bytes().iter().all(ok) {
            return Err(format!(
                "seat {s:?} must be 1 to {} characters of a-z, 0-9, - and _",
                Seat::MAX
            ));
        }
        let mut bytes = [0; Seat::MAX];
        bytes[..s.len()].copy_from_slice(s.as_bytes());
        Ok(Seat {
            len: s.len() as u8,
            bytes,
        })
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored (see `parse`).
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("main")
    }

    pub fn is_main(&self) -> bool {
        *self == Seat::MAIN
    }
}

impl Default for Seat {
    fn default() -> Seat {
        Seat::MAIN
    }
}

impl std::fmt::Display for Seat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for Seat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Seat({})", self.as_str())
    }
}

impl std::str::FromStr for Seat {
    type Err = String;
    fn from_str(s: &str) -> Result<Seat, String> {
        Seat::parse(s)
    }
}

impl Serialize for Seat {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Seat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Seat, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Seat::parse(&s).map_err(serde::de::Error::custom)
    }
}

const ISSUER: &str = "gridhub";

/// What a token is for: a credential (no `use` claim), or a connection ticket.
const TICKET: &str = "ws_ticket";

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    role: Role,
    #[serde(default, skip_serializing_if = "Seat::is_main")]
    seat: Seat,
    iat: u64,
    exp: u64,
    iss: String,
    /// `ws_ticket` for a connection ticket; absent for a credential.
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    purpose: Option<String>,
    /// A ticket's own id, so it opens one connection only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jti: Option<String>,
    /// A ticket's credential's expiry: the connection it opens lasts until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cexp: Option<u64>,
}

impl Claims {
    fn credential(endpoint: &str, role: Role, iat: u64, exp: u64) -> Claims {
        Claims {
            sub: endpoint.to_owned(),
            role,
            seat: Seat::MAIN,
            iat,
            exp,
            iss: ISSUER.to_owned(),
            purpose: None,
            jti: None,
            cexp: None,
        }
    }
}

/// A verified credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credential {
    pub endpoint: NodeIdx,
    pub role: Role,
    pub seat: Seat,
    /// Unix seconds after which the credential is no longer accepted.
    pub expires_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no credential: send `Authorization: Bearer <token>` (a browser opens its WebSocket with a ticket from POST /api/v1/tickets: `/ws?ticket=`)"
    )]
    Missing,
    #[error("credential is not a well-formed token: {0}")]
    Malformed(String),
    #[error("credential signature does not verify (forged, or signed with another key)")]
    BadSignature,
    #[error("credential expired at {expired_at} (now {now})")]
    Expired { expired_at: u64, now: u64 },
    #[error("credential names endpoint {0:?}, which is not in the org tree")]
    UnknownEndpoint(String),
    #[error("role {role} is not allowed at {endpoint}, a {tier} node")]
    RoleNotAllowed {
        role: &'static str,
        endpoint: String,
        tier: Tier,
    },
    #[error(
        "a credential in the URL ends up in logs: send it as `Authorization: Bearer`, or (a browser) open the WebSocket with a ticket from POST /api/v1/tickets (`/ws?ticket=`)"
    )]
    InUrl,
    #[error(
        "this is a connection ticket: it opens one WebSocket (`/ws?ticket=`) and is not a credential"
    )]
    TicketNotCredential,
    #[error("`ticket` must be a connection ticket from POST /api/v1/tickets, not a credential")]
    NotATicket,
    #[error("this connection ticket was already used; get a new one from POST /api/v1/tickets")]
    TicketUsed,
}

impl AuthError {
    /// Stable machine-readable code, documented in docs/protocol.md.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_credential",
            AuthError::Malformed(_) => "malformed_credential",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired { .. } => "expired_credential",
            AuthError::UnknownEndpoint(_) => "unknown_endpoint",
            AuthError::RoleNotAllowed { .. } => "role_not_allowed",
            AuthError::InUrl => "credential_in_url",
            AuthError::TicketNotCredential => "ticket_not_credential",
            AuthError::NotATicket => "not_a_ticket",
            AuthError::TicketUsed => "ticket_used",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error(transparent)]
    Refused(#[from] AuthError),
    #[error("signing failed: {0}")]
    Sign(String),
}

/// The endpoint a credential names, if it exists and the role fits its tier.
fn resolve(org: &Org, endpoint: &str, role: Role) -> Result<NodeIdx, AuthError> {
    let idx = org
        .lookup(endpoint)
        .ok_or_else(|| AuthError::UnknownEndpoint(endpoint.to_owned()))?;
    let tier = org.tier(idx);
    if !role.allowed_at(tier) {
        return Err(AuthError::RoleNotAllowed {
            role: role.as_str(),
            endpoint: endpoint.to_owned(),
            tier,
        });
    }
    Ok(idx)
}

/// Signs and verifies credentials with one shared key.
pub struct Authority {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authority { .. }")
    }
}

/// Shortest key accepted: HS256 wants at least 256 bits.
pub const MIN_SECRET_LEN: usize = 32;

impl Authority {
    pub fn new(secret: &[u8]) -> Result<Authority, String> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(format!(
                "the signing secret has {} bytes; at least {MIN_SECRET_LEN} are required",
                secret.len()
            ));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        // Expiry is checked by `verify` against the `now` it is given.
        validation.validate_exp = false;
        validation.required_spec_claims = ["exp", "sub", "iss"].map(String::from).into();
        validation.set_issuer(&[ISSUER]);
        Ok(Authority {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        })
    }

    /// Reads the key from `path`, creating it with 32 random bytes (hex) if it does not exist.
    pub fn load_or_create_secret(path: &Path) -> std::io::Result<Vec<u8>> {
        match std::fs::read_to_string(path) {
            Ok(s) => Ok(s.trim().as_bytes().to_vec()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut raw = [0u8; 32];
                getrandom::fill(&mut raw).map_err(std::io::Error::other)?;
                let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                write_private(path, hex.as_bytes())?;
                Ok(hex.into_bytes())
            }
            Err(e) => Err(e),
        }
    }

    pub fn mint(
        &self,
        org: &Org,
        endpoint: &str,
        role: Role,
        ttl_secs: u64,
        now: u64,
    ) -> Result<String, MintError> {
        self.mint_seat(org, endpoint, role, Seat::MAIN, ttl_secs, now)
    }

    /// A credential for one seat at `endpoint`.
    pub fn mint_seat(
        &self,
        org: &Org,
        endpoint: &str,
        role: Role,
        seat: Seat,
        ttl_secs: u64,
        now: u64,
    ) -> Result<String, MintError> {
        resolve(org, endpoint, role)?;
        self.sign(&Claims {
            seat,
            ..Claims::credential(endpoint, role, now, now + ttl_secs)
        })
    }

    /// Signs whatever it is given; tests use it to make credentials the hub must refuse.
    pub fn mint_unchecked(
        &self,
        endpoint: &str,
        role: Role,
        iat: u64,
        exp: u64,
    ) -> Result<String, MintError> {
        self.sign(&Claims::credential(endpoint, role, iat, exp))
    }

    fn sign(&self, claims: &Claims) -> Result<String, MintError> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(|e| MintError::Sign(e.to_string()))
    }

    /// A connection ticket for the holder of `cred`: it opens one WebSocket within `ttl_secs`, so
    /// a browser never puts its long-lived credential in a URL. Returns the ticket and when it
    /// expires (Unix seconds).
    pub fn mint_ticket(
        &self,
        org: &Org,
        cred: &Credential,
        ttl_secs: u64,
        now: u64,
    ) -> Result<(String, u64), MintError> {
        let mut id = [0u8; 12];
        getrandom::fill(&mut id).map_err(|e| MintError::Sign(e.to_string()))?;
        let exp = (now + ttl_secs).min(cred.expires_at);
        let claims = Claims {
            sub: org.id(cred.endpoint).to_string(),
            role: cred.role,
            seat: cred.seat,
            iat: now,
            exp,
            iss: ISSUER.to_owned(),
            purpose: Some(TICKET.into()),
            jti: Some(id.iter().map(|b| format!("{b:02x}")).collect()),
            cexp: Some(cred.expires_at),
        };
        Ok((self.sign(&claims)?, exp))
    }

    /// Checks a connection ticket; returns the credential it stands for, the ticket's id (for
    /// the caller's single-use check) and when the ticket itself expires.
    pub fn verify_ticket(
        &self,
        org: &Org,
        ticket: &str,
        now: u64,
    ) -> Result<(Credential, String, u64), AuthError> {
        let c = self.decode(ticket)?;
        let (Some(TICKET), Some(jti), Some(cexp)) = (c.purpose.as_deref(), c.jti.clone(), c.cexp)
        else {
            return Err(AuthError::NotATicket);
        };
        let exp = c.exp;
        let mut cred = self.check(org, c, now)?;
        cred.expires_at = cexp;
        Ok((cred, jti, exp))
    }

    fn decode(&self, token: &str) -> Result<Claims, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                _ => AuthError::Malformed(e.to_string()),
            })
    }

    pub fn verify(&self, org: &Org, token: &str, now: u64) -> Result<Credential, AuthError> {
        let c = self.decode(token)?;
        if c.purpose.is_some() {
            return Err(AuthError::TicketNotCredential);
        }
        self.check(org, c, now)
    }

    fn check(&self, org: &Org, c: Claims, now: u64) -> Result<Credential, AuthError> {
        if now >= c.exp {
            return Err(AuthError::Expired {
                expired_at: c.exp,
                now,
            });
        }
        let endpoint = resolve(org, &c.sub, c.role)?;
        Ok(Credential {
            endpoint,
            role: c.role,
            seat: c.seat,
            expires_at: c.exp,
        })
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // create_new: two processes starting at once must not overwrite each other's key.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org() -> Org {
        crate::org::fixture()
    }

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn mint_then_verify() {
        let (org, auth) = (org(), Authority::new(KEY).unwrap());
        let tok = auth.mint(&org, "w1", Role::Worker, 60, 1000).unwrap();
        let cred = auth.verify(&org, &tok, 1059).unwrap();
        assert_eq!(cred.endpoint, org.lookup("w1").unwrap());
        assert_eq!(cred.role, Role::Worker);
        assert_eq!(cred.expires_at, 1060);
    }

    #[test]
    fn expiry_uses_the_given_clock() {
        let (org, auth) = (org(), Authority::new(KEY).unwrap());
        let tok = auth.mint(&org, "a", Role::Operator, 60, 1000).unwrap();
        assert_eq!(
            auth.verify(&org, &tok, 1060),
            Err(AuthError::Expired {
                expired_at: 1060,
                now: 1060
            })
        );
    }

    #[test]
    fn forged_malformed_unknown_and_wrong_role_are_refused() {
        let (org, auth) = (org(), Authority::new(KEY).unwrap());
        let other = Authority::new(b"another key that is long enough!!").unwrap();
        let forged = other.mint(&org, "a", Role::Operator, 60, 0).unwrap();
        assert_eq!(auth.verify(&org, &forged, 1), Err(AuthError::BadSignature));
        assert!(matches!(
            auth.verify(&org, "not.a.jwt", 1),
            Err(AuthError::Malformed(_))
        ));
        let ghost = auth.mint_unchecked("ghost", Role::Worker, 0, 60).unwrap();
        assert_eq!(
            auth.verify(&org, &ghost, 1),
            Err(AuthError::UnknownEndpoint("ghost".into()))
        );
        let wrong = auth.mint_unchecked("a", Role::Worker, 0, 60).unwrap();
        assert_eq!(
            auth.verify(&org, &wrong, 1).unwrap_err().code(),
            "role_not_allowed"
        );
        assert!(matches!(
            auth.mint(&org, "w1", Role::Operator, 60, 0),
            Err(MintError::Refused(AuthError::RoleNotAllowed { .. }))
        ));
    }

    #[test]
    fn tickets_stand_for_their_credential_and_are_not_credentials() {
        let (org, auth) = (org(), Authority::new(KEY).unwrap());
        let cred = Credential {
            endpoint: org.lookup("a").unwrap(),
            role: Role::Operator,
            seat: Seat::parse("desk-2").unwrap(),
            expires_at: 10_000,
        };
        let (t, exp) = auth.mint_ticket(&org, &cred, 30, 1000).unwrap();
        assert_eq!(exp, 1030);
        let (back, jti, texp) = auth.verify_ticket(&org, &t, 1029).unwrap();
        assert_eq!((back, texp), (cred, 1030));
        let (t2, _) = auth.mint_ticket(&org, &cred, 30, 1000).unwrap();
        assert_ne!(
            auth.verify_ticket(&org, &t2, 1000).unwrap().1,
            jti,
            "each has its own id"
        );
        assert!(matches!(
            auth.verify_ticket(&org, &t, 1030),
            Err(AuthError::Expired { .. })
        ));
        assert_eq!(
            auth.verify(&org, &t, 1000),
            Err(AuthError::TicketNotCredential)
        );
        let plain = auth.mint(&org, "a", Role::Operator, 60, 1000).unwrap();
        assert_eq!(
            auth.verify_ticket(&org, &plain, 1000),
            Err(AuthError::NotATicket)
        );
        // Never outlives the credential it stands for.
        let short = Credential {
            expires_at: 1010,
            ..cred
        };
        assert_eq!(auth.mint_ticket(&org, &short, 30, 1000).unwrap().1, 1010);
    }

    #[test]
    fn seats_are_named_checked_and_default_to_main() {
        let (org, auth) = (org(), Authority::new(KEY).unwrap());
        let plain = auth.mint(&org, "a", Role::Station, 60, 1000).unwrap();
        assert_eq!(auth.verify(&org, &plain, 1000).unwrap().seat, Seat::MAIN);
        let wall = Seat::parse("wall").unwrap();
        let tok = auth
            .mint_seat(&org, "a", Role::Observer, wall, 60, 1000)
            .unwrap();
        let cred = auth.verify(&org, &tok, 1000).unwrap();
        assert_eq!((cred.role, cred.seat.as_str()), (Role::Observer, "wall"));
        assert!(matches!(
            auth.mint_seat(&org, "w1", Role::Observer, wall, 60, 0),
            Err(MintError::Refused(AuthError::RoleNotAllowed { .. }))
        ));
        for bad in ["", "Desk", "desk 2", "a-very-long-seat-name", "桌"] {
            assert!(Seat::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Seat::parse("desk_2-a").unwrap().to_string(), "desk_2-a");
        assert_eq!(
            serde_json::to_string(&wall).unwrap(),
            "\"wall\"",
            "a seat is a plain string on the wire"
        );
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(Authority::new(b"short").is_err());
    }

    #[test]
    fn key_file_is_created_once_and_reused() {
        let dir = std::env::temp_dir().join(format!("gridhub-auth-{}", std::process::id()));
        let path = dir.join("secret.key");
        let _ = std::fs::remove_dir_all(&dir);
        let a = Authority::load_or_create_secret(&path).unwrap();
        let b = Authority::load_or_create_secret(&path).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
