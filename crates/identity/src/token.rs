//! Who may get which identity: a workload proves its service account with a
//! signed token shaped like Kubernetes' projected service-account token
//! (`sub: system:serviceaccount:NS:SA`, audience `istio-ca`, short-lived).
//! The local runtime issues them ([`TokenIssuer`]); the CA checks them
//! through [`TokenVerifier`], which a Kubernetes TokenReview client can
//! implement later without the CA changing.

use std::time::{Duration, SystemTime};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

/// The audience Istio's CA asks tokens for.
pub const CA_AUDIENCE: &str = "istio-ca";
/// Who issues local tokens.
pub const LOCAL_ISSUER: &str = "halyard";
/// Clock skew allowed on `exp`/`nbf`.
const LEEWAY_S: u64 = 30;

/// A proven Kubernetes service account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
}

/// Why a token proves nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no token")]
    Missing,
    #[error("token refused: {0}")]
    Invalid(String),
    #[error("token subject {0:?} is not system:serviceaccount:NAMESPACE:NAME")]
    Subject(String),
}

/// Checks a bearer token and says which service account it proves.
pub trait TokenVerifier: Send + Sync {
    fn verify(&self, token: &str) -> Result<ServiceAccount, TokenError>;
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: Vec<String>,
    iat: u64,
    nbf: u64,
    exp: u64,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Signs tokens (ES256) with a key of its own.
pub struct TokenIssuer {
    key: EncodingKey,
    public_pem: String,
}

impl TokenIssuer {
    /// A new signing key (ECDSA P-256).
    pub fn generate() -> Result<TokenIssuer, rcgen::Error> {
        Self::from_pem(&Self::generate_pem()?).map_err(|_| rcgen::Error::CouldNotParseKeyPair)
    }

    /// A new signing key as PKCS#8 PEM, to keep in a file.
    pub fn generate_pem() -> Result<String, rcgen::Error> {
        Ok(rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?.serialize_pem())
    }

    /// From a PKCS#8 PEM private key (as [`TokenIssuer::generate_pem`] makes it).
    pub fn from_pem(private_pem: &str) -> Result<TokenIssuer, TokenError> {
        let pair = rcgen::KeyPair::from_pem(private_pem)
            .map_err(|e| TokenError::Invalid(format!("signing key: {e}")))?;
        let key = EncodingKey::from_ec_pem(private_pem.as_bytes())
            .map_err(|e| TokenError::Invalid(format!("signing key: {e}")))?;
        Ok(TokenIssuer {
            key,
            public_pem: pair.public_key_pem(),
        })
    }

    /// The verification key (SPKI PEM) for [`LocalTokens`].
    pub fn public_pem(&self) -> &str {
        &self.public_pem
    }

    /// A token for `namespace`/`name`, valid for `ttl` from `now`.
    pub fn issue(
        &self,
        namespace: &str,
        name: &str,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<String, TokenError> {
        let claims = Claims {
            iss: LOCAL_ISSUER.into(),
            sub: format!("system:serviceaccount:{namespace}:{name}"),
            aud: vec![CA_AUDIENCE.into()],
            iat: unix(now),
            nbf: unix(now),
            exp: unix(now + ttl),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.key)
            .map_err(|e| TokenError::Invalid(e.to_string()))
    }
}

/// Verifies tokens from a [`TokenIssuer`] by its public key: ES256 only
/// (never `none`), issuer, audience `istio-ca`, `exp` and `nbf`.
pub struct LocalTokens {
    key: DecodingKey,
    validation: Validation,
}

impl LocalTokens {
    pub fn new(public_pem: &str) -> Result<LocalTokens, TokenError> {
        let key = DecodingKey::from_ec_pem(public_pem.as_bytes())
            .map_err(|e| TokenError::Invalid(format!("verification key: {e}")))?;
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&[CA_AUDIENCE]);
        validation.set_issuer(&[LOCAL_ISSUER]);
        validation.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_S;
        Ok(LocalTokens { key, validation })
    }
}

impl TokenVerifier for LocalTokens {
    fn verify(&self, token: &str) -> Result<ServiceAccount, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        let sub = data.claims.sub;
        let parts: Vec<&str> = sub.split(':').collect();
        match parts.as_slice() {
            ["system", "serviceaccount", ns, name] if !ns.is_empty() && !name.is_empty() => {
                Ok(ServiceAccount {
                    namespace: ns.to_string(),
                    name: name.to_string(),
                })
            }
            _ => Err(TokenError::Subject(sub)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_token_proves_its_service_account() {
        let issuer = TokenIssuer::generate().expect("key");
        let verifier = LocalTokens::new(issuer.public_pem()).expect("verifier");
        let token = issuer
            .issue("payments", "payments-api", HOUR, SystemTime::now())
            .expect("token");
        assert_eq!(
            verifier.verify(&token),
            Ok(ServiceAccount {
                namespace: "payments".into(),
                name: "payments-api".into()
            })
        );
    }

    #[test]
    fn forged_expired_and_unsigned_tokens_are_refused() {
        let issuer = TokenIssuer::generate().expect("key");
        let verifier = LocalTokens::new(issuer.public_pem()).expect("verifier");
        // Another key.
        let forger = TokenIssuer::generate().expect("key");
        let forged = forger
            .issue("payments", "payments-api", HOUR, SystemTime::now())
            .expect("token");
        assert!(matches!(
            verifier.verify(&forged),
            Err(TokenError::Invalid(_))
        ));
        // Expired an hour ago.
        let old = issuer
            .issue("default", "sleep", HOUR, SystemTime::now() - 2 * HOUR)
            .expect("token");
        assert!(matches!(verifier.verify(&old), Err(TokenError::Invalid(_))));
        // Not valid yet.
        let early = issuer
            .issue("default", "sleep", HOUR, SystemTime::now() + HOUR)
            .expect("token");
        assert!(matches!(
            verifier.verify(&early),
            Err(TokenError::Invalid(_))
        ));
        // alg: none with a good-looking body.
        let good = issuer
            .issue("default", "sleep", HOUR, SystemTime::now())
            .expect("token");
        let body = good.split('.').nth(1).expect("payload");
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{body}.");
        assert!(matches!(
            verifier.verify(&none),
            Err(TokenError::Invalid(_))
        ));
        // A payload swapped under a real signature.
        let other = issuer
            .issue("kube-system", "admin", HOUR, SystemTime::now())
            .expect("token");
        let mut parts: Vec<&str> = good.split('.').collect();
        parts[1] = other.split('.').nth(1).expect("payload");
        assert!(verifier.verify(&parts.join(".")).is_err());
        assert_eq!(verifier.verify(""), Err(TokenError::Missing));
    }
}
