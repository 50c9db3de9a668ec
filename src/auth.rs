//! Bearer tokens: verifying them into a [`Principal`] and minting development tokens.

use std::time::Duration;

use anyhow::Context;
use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode, errors::ErrorKind,
};
use serde::{Deserialize, Serialize};

use crate::{
    config::Config,
    error::{AppError, AppResult},
};

/// Ids the server gives its own synthetic senders (transcript voices, the guest host);
/// no token may carry one.
pub const RESERVED_PREFIX: &str = "colloquy:";

/// Longest accepted `sub`.
pub const MAX_PRINCIPAL_ID: usize = 128;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrincipalKind {
    #[default]
    User,
    Agent,
    Service,
}

impl PrincipalKind {
    /// The participant/sender type a principal of this kind gets.
    pub fn sender_type(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Agent => "agent",
            Self::Service => "system",
        }
    }
}

/// Who is calling, as established by a verified token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub id: String,
    pub name: Option<String>,
    pub kind: PrincipalKind,
    pub admin: bool,
    /// An agent token's signed `owner` claim: the principal that owns this agent.
    pub owner: Option<String>,
    /// Profile claims (`preferred_username`, `picture`), kept as the principal's handle and
    /// avatar where the seeds show profiles.
    pub handle: Option<String>,
    pub picture: Option<String>,
}

impl Principal {
    /// Services are trusted bridges: they may act for any sender.
    pub fn is_service(&self) -> bool {
        self.kind == PrincipalKind::Service
    }
    /// Sees and manages every conversation.
    pub fn is_privileged(&self) -> bool {
        self.admin || self.is_service()
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<PrincipalKind>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Agent tokens: the principal that owns the agent (contract §2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub picture: Option<String>,
}

/// Verifies tokens with the configured key; built once at start-up.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl Verifier {
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let (key, algorithms) = if let Some(path) = &config.jwt_public_key_file {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading JWT_PUBLIC_KEY_FILE {}", path.display()))?;
            public_key(&pem)
                .context("JWT_PUBLIC_KEY_FILE is not an RSA, EC or Ed25519 PEM public key")?
        } else if let Some(secret) = &config.jwt_secret {
            anyhow::ensure!(!secret.expose().is_empty(), "JWT_SECRET is empty");
            (
                DecodingKey::from_secret(secret.expose().as_bytes()),
                vec![Algorithm::HS256],
            )
        } else {
            anyhow::bail!("set JWT_SECRET (HS256) or JWT_PUBLIC_KEY_FILE (RS256/ES256/EdDSA)");
        };
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        validation.leeway = 30;
        // `nbf` gets the same leeway as `exp` (contract §2).
        validation.validate_nbf = true;
        validation.validate_aud = config.jwt_audience.is_some();
        if let Some(iss) = &config.jwt_issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        if let Some(aud) = &config.jwt_audience {
            validation.set_audience(&[aud]);
            validation.required_spec_claims.insert("aud".into());
        }
        Ok(Self { key, validation })
    }

    pub fn verify(&self, token: &str) -> AppResult<Principal> {
        if token.split('.').nth(2).is_some_and(str::is_empty) {
            return Err(AppError::Unauthorized(
                "token is unsigned (alg none is not accepted)".into(),
            ));
        }
        let data = decode::<Claims>(token, &self.key, &self.validation).map_err(|e| {
            let why = match e.kind() {
                ErrorKind::ExpiredSignature => "token has expired",
                ErrorKind::ImmatureSignature => "token is not valid yet (nbf)",
                ErrorKind::InvalidSignature => "token signature is invalid",
                ErrorKind::InvalidAlgorithm => "token algorithm is not accepted",
                ErrorKind::InvalidIssuer => "token issuer is not accepted",
                ErrorKind::InvalidAudience => "token audience is not accepted",
                ErrorKind::MissingRequiredClaim(_) => "token lacks a required claim",
                _ => "token is malformed",
            };
            AppError::Unauthorized(why.into())
        })?;
        let claims = data.claims;
        if claims.sub.trim().is_empty() || claims.sub.chars().count() > MAX_PRINCIPAL_ID {
            return Err(AppError::Unauthorized(
                "token subject must be 1 to 128 characters".into(),
            ));
        }
        if claims.sub.starts_with(RESERVED_PREFIX) {
            return Err(AppError::Unauthorized(
                "token subjects starting with `colloquy:` are reserved".into(),
            ));
        }
        if claims.sub.chars().any(char::is_control) {
            return Err(AppError::Unauthorized(
                "token subject must not contain control characters".into(),
            ));
        }
        // Profile claims are stored and shown: the same rules as the fields they fill.
        let name = claims
            .name
            .filter(|n| !n.chars().any(char::is_control) && n.chars().count() <= 200);
        let owner = match claims.owner {
            Some(o)
                if o.trim().is_empty()
                    || o.chars().count() > MAX_PRINCIPAL_ID
                    || o.chars().any(char::is_control) =>
            {
                return Err(AppError::Unauthorized(
                    "token owner must be 1 to 128 characters without control characters".into(),
                ));
            }
            other => other,
        };
        let kind = claims.kind.unwrap_or_default();
        // Profile claims are shown to others: dropped (not refused) when unfit to show.
        let handle = claims
            .preferred_username
            .filter(|h| !h.chars().any(char::is_control) && (1..=128).contains(&h.chars().count()));
        let picture = claims
            .picture
            .filter(|p| !p.chars().any(char::is_control) && (1..=2048).contains(&p.len()));
        Ok(Principal {
            handle,
            picture,
            admin: claims.roles.iter().any(|r| r == "admin"),
            kind,
            name,
            // Only an agent's own token speaks for who owns it.
            owner: owner.filter(|_| kind == PrincipalKind::Agent),
            id: claims.sub,
        })
    }

    /// Reads `Bearer <token>` from an `Authorization` header value.
    pub fn verify_bearer(&self, header: Option<&str>) -> AppResult<Principal> {
        let header = header.ok_or_else(|| AppError::Unauthorized("missing bearer token".into()))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| {
                AppError::Unauthorized("expected `Authorization: Bearer <token>`".into())
            })?;
        self.verify(token.trim())
    }
}

fn public_key(pem: &[u8]) -> Option<(DecodingKey, Vec<Algorithm>)> {
    use Algorithm::*;
    if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
        return Some((k, vec![RS256, RS384, RS512, PS256, PS384, PS512]));
    }
    if let Ok(k) = DecodingKey::from_ed_pem(pem) {
        return Some((k, vec![EdDSA]));
    }
    if let Ok(k) = DecodingKey::from_ec_pem(pem) {
        return Some((k, vec![ES256, ES384]));
    }
    None
}

/// What `colloquy token` puts in a development token.
pub struct TokenRequest<'a> {
    pub sub: &'a str,
    pub kind: PrincipalKind,
    pub name: Option<&'a str>,
    pub ttl: Duration,
    pub admin: bool,
    pub issuer: Option<&'a str>,
    pub audience: Option<&'a str>,
    /// Agent tokens: who owns the agent.
    pub owner: Option<&'a str>,
}

/// Mints an HS256 token; used by `colloquy token`, the tests and the benchmark.
pub fn mint(secret: &str, request: &TokenRequest<'_>) -> anyhow::Result<String> {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = Claims {
        sub: request.sub.to_owned(),
        exp: now + request.ttl.as_secs(),
        iat: Some(now),
        name: request.name.map(str::to_owned),
        kind: Some(request.kind),
        roles: if request.admin {
            vec!["admin".into()]
        } else {
            vec![]
        },
        iss: request.issuer.map(str::to_owned),
        aud: request.audience.map(str::to_owned),
        nbf: None,
        owner: request.owner.map(str::to_owned),
        preferred_username: None,
        picture: None,
    };
    Ok(encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )?)
}
