//! FIDO2 verification with webauthn-rs: attested security-key registration and assertions whose
//! challenge is bound to a digest of exactly what is being approved. Turns a browser- or
//! CTAP-produced response plus stored ceremony state into a verified fact; knows nothing of
//! gRPC or storage.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use sha2::{Digest as _, Sha256};
use webauthn_rs::prelude::{
    AttestationCaList, AuthenticationResult, COSEKeyType, CreationChallengeResponse, Credential,
    ECDSACurve, PublicKeyCredential, RegisterPublicKeyCredential, RequestChallengeResponse,
    SecurityKey, SecurityKeyAuthentication, SecurityKeyRegistration, Url, Uuid, Webauthn,
    WebauthnBuilder, WebauthnError,
};

use crate::base::error::{Coded, ErrorKind};

/// Yubico's FIDO attestation root, bundled and pinned by the SHA-256 of its DER.
pub const YUBICO_FIDO_ROOT_PEM: &[u8] =
    include_bytes!("../../trust/yubico-u2f-root-ca-457200631.pem");
/// Pinned SHA-256 of [`YUBICO_FIDO_ROOT_PEM`]'s certificate.
pub const YUBICO_FIDO_ROOT_SHA256: &str =
    "0fa1386f80eb8713263ae5c1d84deb455bdf08aea50ab05503cefee82b092d42";

/// Domain separation for assertion challenges.
const CHALLENGE_DOMAIN: &[u8] = b"latchkey.assertion.v1\n";

/// Errors of FIDO2 verification. Each refusal has its own code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Fido2Error {
    /// The response is not the JSON of a WebAuthn credential. Send `PublicKeyCredential.toJSON()`.
    #[error("malformed WebAuthn response: {0}")]
    Malformed(String),
    /// The key's attestation does not chain to a trusted authenticator CA. Use an allowed key
    /// model, or add its vendor CA to `[fido2] attestation_cas`.
    #[error("authenticator attestation is not trusted (AAGUID {aaguid}): {detail}")]
    AttestationUntrusted {
        /// The authenticator model's AAGUID, or "unknown".
        aaguid: String,
        /// Why.
        detail: String,
    },
    /// The response was made for another origin or relying party. Check the client's origin.
    #[error("origin or relying party mismatch: {0}")]
    WrongOrigin(String),
    /// The response answers another challenge than the one issued.
    #[error("the response was made for another challenge")]
    WrongChallenge,
    /// The signature was not made by the enrolled key.
    #[error("signature does not verify with the enrolled key")]
    BadSignature,
    /// The key did not confirm user presence (no touch).
    #[error("the key did not confirm user presence (touch it)")]
    UserNotPresent,
    /// Policy requires user verification (PIN or biometric) and the key did not do it.
    #[error("user verification (PIN or biometric) is required and was not performed")]
    UserVerificationRequired,
    /// The signature counter went backwards: the key may be cloned. It is suspended.
    #[error("signature counter went backwards: possible cloned authenticator")]
    CounterRegressed,
    /// The credential is not one this ceremony allows.
    #[error("unknown credential for this ceremony")]
    UnknownCredential,
    /// The key offered a credential that is already enrolled. One physical key, one operator.
    #[error("this credential is already enrolled; one physical key belongs to one operator")]
    CredentialExcluded,
    /// authenticatorData is shorter than its fixed 37-byte header: cut off in transit or forged.
    #[error("authenticatorData is truncated ({0} bytes, at least 37 expected)")]
    TruncatedAuthenticatorData(usize),
    /// Any other refusal by webauthn-rs.
    #[error("WebAuthn verification failed: {0}")]
    Rejected(String),
    /// Configuration (RP id, origin, CA files) is unusable. Fix the config.
    #[error("FIDO2 configuration: {0}")]
    Config(String),
}

impl Coded for Fido2Error {
    fn code(&self) -> &'static str {
        match self {
            Fido2Error::Malformed(_) => "fido2.malformed",
            Fido2Error::AttestationUntrusted { .. } => "fido2.attestation_untrusted",
            Fido2Error::WrongOrigin(_) => "fido2.wrong_origin",
            Fido2Error::WrongChallenge => "fido2.wrong_challenge",
            Fido2Error::BadSignature => "fido2.bad_signature",
            Fido2Error::UserNotPresent => "fido2.user_not_present",
            Fido2Error::UserVerificationRequired => "fido2.user_verification_required",
            Fido2Error::CounterRegressed => "fido2.counter_regressed",
            Fido2Error::UnknownCredential => "fido2.unknown_credential",
            Fido2Error::CredentialExcluded => "fido2.credential_excluded",
            Fido2Error::TruncatedAuthenticatorData(_) => "fido2.truncated_authenticator_data",
            Fido2Error::Rejected(_) => "fido2.rejected",
            Fido2Error::Config(_) => "fido2.config",
        }
    }

    fn kind(&self) -> ErrorKind {
        match self {
            Fido2Error::Config(_) => ErrorKind::Internal,
            Fido2Error::AttestationUntrusted { .. }
            | Fido2Error::BadSignature
            | Fido2Error::CounterRegressed
            | Fido2Error::WrongOrigin(_)
            | Fido2Error::WrongChallenge
            | Fido2Error::UnknownCredential
            | Fido2Error::CredentialExcluded => ErrorKind::PermissionDenied,
            _ => ErrorKind::InvalidInput,
        }
    }
}

fn map_webauthn(e: WebauthnError) -> Fido2Error {
    match e {
        WebauthnError::InvalidRPOrigin
        | WebauthnError::InvalidRPIDHash
        | WebauthnError::CredentialCrossOrigin => Fido2Error::WrongOrigin(e.to_string()),
        WebauthnError::MismatchedChallenge => Fido2Error::WrongChallenge,
        WebauthnError::AuthenticationFailure => Fido2Error::BadSignature,
        WebauthnError::UserNotPresent => Fido2Error::UserNotPresent,
        WebauthnError::UserNotVerified => Fido2Error::UserVerificationRequired,
        WebauthnError::CredentialPossibleCompromise => Fido2Error::CounterRegressed,
        WebauthnError::CredentialNotFound => Fido2Error::UnknownCredential,
        WebauthnError::CredentialExcludedFromRequest | WebauthnError::CredentialAlreadyExists => {
            Fido2Error::CredentialExcluded
        }
        WebauthnError::ParseNOMFailure
        | WebauthnError::ParseInsufficientBytesAvailable
        | WebauthnError::ParseCBORFailure(_)
        | WebauthnError::ParseJSONFailure(_)
        | WebauthnError::InvalidClientDataType => Fido2Error::Malformed(e.to_string()),
        other => Fido2Error::Rejected(other.to_string()),
    }
}

/// The challenge for approving `digest`: SHA-256 over a domain tag, the digest and a server
/// nonce. An auditor recomputes it from the audit record.
pub fn bound_challenge(digest: &[u8; 32], nonce: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(CHALLENGE_DOMAIN);
    h.update(digest);
    h.update(nonce);
    h.finalize().into()
}

/// A newly registered security key, with what the trust store and audit log keep of it.
#[derive(Debug, Clone)]
pub struct RegisteredKey {
    /// webauthn-rs's credential (stored, used for later assertions).
    pub key: SecurityKey,
    /// Credential id, base64url without padding.
    pub credential_id: String,
    /// `es256` or `ed25519`.
    pub algorithm: &'static str,
    /// Public key as SPKI DER (what offline audit verification uses).
    pub public_key_spki: Vec<u8>,
    /// Authenticator model, when attested.
    pub aaguid: Option<Uuid>,
    /// Whether the attestation chained to a trusted CA (false for dev-mode soft tokens).
    pub attested: bool,
}

/// FIDO2 relying party of one daemon.
pub struct Fido2 {
    webauthn: Webauthn,
    attestation: Option<AttestationCaList>,
    allowed_aaguids: Vec<Uuid>,
}

impl std::fmt::Debug for Fido2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fido2")
            .field("attested", &self.attestation.is_some())
            .finish_non_exhaustive()
    }
}

/// SHA-256 of a PEM certificate's DER, lowercase hex.
pub fn pem_fingerprint(pem: &[u8]) -> Result<String, String> {
    let der = CertificateDer::from_pem_slice(pem).map_err(|e| e.to_string())?;
    Ok(hex::encode(Sha256::digest(der.as_ref())))
}

/// Refuses an attestation CA that webauthn-rs would never chain to: every certificate in the
/// file needs a keyUsage extension with keyCertSign (without it, every enrollment fails with
/// "not trusted", far from the cause).
fn check_attestation_ca(pem: &[u8]) -> Result<(), Fido2Error> {
    use der::Decode as _;
    use der::oid::AssociatedOid as _;
    use x509_cert::ext::pkix::KeyUsage;
    let certs = crate::verify::piv::parse_bundle("[fido2] attestation_cas", pem)
        .map_err(|e| Fido2Error::Config(format!("attestation CA: {e}")))?;
    if certs.is_empty() {
        return Err(Fido2Error::Config(
            "attestation CA: the file holds no PEM certificate".to_owned(),
        ));
    }
    for cert in &certs {
        let subject = cert.tbs_certificate().subject().to_string();
        let usage = cert
            .tbs_certificate()
            .extensions()
            .into_iter()
            .flatten()
            .find(|e| e.extn_id == KeyUsage::OID)
            .map(|e| KeyUsage::from_der(e.extn_value.as_bytes()));
        match usage {
            Some(Ok(usage)) if usage.key_cert_sign() => {}
            Some(Ok(_)) => {
                return Err(Fido2Error::Config(format!(
                    "attestation CA {subject}: its keyUsage lacks keyCertSign, so no attestation can chain to it; use the vendor's CA certificate"
                )));
            }
            Some(Err(e)) => {
                return Err(Fido2Error::Config(format!(
                    "attestation CA {subject}: unreadable keyUsage: {e}"
                )));
            }
            None => {
                return Err(Fido2Error::Config(format!(
                    "attestation CA {subject}: it has no keyUsage extension, so webauthn-rs will not chain attestations to it; use a CA certificate with keyUsage keyCertSign"
                )));
            }
        }
    }
    Ok(())
}

impl Fido2 {
    /// A relying party for `rp_id` at `origin`. Registration requires attestation chaining to the
    /// bundled Yubico FIDO root or one of `extra_ca_pems` — unless `dev_mode`, where software
    /// authenticators (self-attested by their own CA) are accepted.
    pub fn new(
        rp_id: &str,
        origins: &[&str],
        extra_ca_pems: &[Vec<u8>],
        allowed_aaguids: &[Uuid],
        dev_mode: bool,
    ) -> Result<Self, Fido2Error> {
        let parsed = origins
            .iter()
            .map(|o| Url::parse(o).map_err(|e| Fido2Error::Config(format!("origin {o:?}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let Some((origin, more)) = parsed.split_first() else {
            return Err(Fido2Error::Config("no WebAuthn origin".to_owned()));
        };
        let webauthn = WebauthnBuilder::new(rp_id, origin)
            .map(|b| more.iter().fold(b, |b, o| b.append_allowed_origin(o)))
            .and_then(|b| b.rp_name("latchkey").build())
            .map_err(|e| Fido2Error::Config(format!("relying party {rp_id:?} at {origin}: {e}")))?;
        let attestation = if dev_mode {
            None
        } else {
            let fingerprint = pem_fingerprint(YUBICO_FIDO_ROOT_PEM).map_err(Fido2Error::Config)?;
            if fingerprint != YUBICO_FIDO_ROOT_SHA256 {
                return Err(Fido2Error::Config(format!(
                    "bundled Yubico FIDO root has fingerprint {fingerprint}, expected {YUBICO_FIDO_ROOT_SHA256}"
                )));
            }
            let mut list = AttestationCaList::try_from(YUBICO_FIDO_ROOT_PEM)
                .map_err(|e| Fido2Error::Config(format!("bundled Yubico FIDO root: {e:?}")))?;
            for pem in extra_ca_pems {
                check_attestation_ca(pem)?;
                let extra = AttestationCaList::try_from(pem.as_slice())
                    .map_err(|e| Fido2Error::Config(format!("attestation CA: {e:?}")))?;
                list.union(&extra);
            }
            Some(list)
        };
        Ok(Self {
            webauthn,
            attestation,
            allowed_aaguids: allowed_aaguids.to_vec(),
        })
    }

    /// Starts registering a security key for `user_name`, excluding keys already enrolled.
    /// With `require_uv` the options ask for PIN or biometric at registration too: browsers
    /// refuse webauthn-rs's `credProtect` (user verification required for every later use)
    /// next to a merely preferred verification as inconsistent.
    pub fn start_registration(
        &self,
        user_id: Uuid,
        user_name: &str,
        exclude: Vec<webauthn_rs::prelude::CredentialID>,
        require_uv: bool,
    ) -> Result<(CreationChallengeResponse, SecurityKeyRegistration), Fido2Error> {
        let exclude = (!exclude.is_empty()).then_some(exclude);
        let (mut options, state) = self
            .webauthn
            .start_securitykey_registration(
                user_id,
                user_name,
                user_name,
                exclude,
                self.attestation.clone(),
                None,
            )
            .map_err(map_webauthn)?;
        if require_uv && let Some(selection) = options.public_key.authenticator_selection.as_mut() {
            selection.user_verification = webauthn_rs_proto::UserVerificationPolicy::Required;
        }
        Ok((options, state))
    }

    /// Finishes a registration from the client's JSON response.
    pub fn finish_registration(
        &self,
        response_json: &str,
        state: &SecurityKeyRegistration,
    ) -> Result<RegisteredKey, Fido2Error> {
        let response: RegisterPublicKeyCredential = serde_json::from_str(response_json)
            .map_err(|e| Fido2Error::Malformed(e.to_string()))?;
        let key = self
            .webauthn
            .finish_securitykey_registration(&response, state)
            .map_err(|e| match e {
                WebauthnError::AttestationNotVerifiable
                | WebauthnError::AttestationUntrustedAaguid
                | WebauthnError::AttestationChainNotTrusted(_)
                | WebauthnError::AttestationTrustFailure
                | WebauthnError::AttestationCertificateTrustStoreEmpty
                | WebauthnError::AttestationFormatMissingAaguid
                | WebauthnError::AttestationNotSupported
                | WebauthnError::AttestationStatementSigInvalid => {
                    Fido2Error::AttestationUntrusted {
                        aaguid: aaguid_of(&response)
                            .map_or_else(|| "unknown".to_owned(), |u| u.to_string()),
                        detail: e.to_string(),
                    }
                }
                other => map_webauthn(other),
            })?;
        let aaguid = aaguid_of(&response);
        if !self.allowed_aaguids.is_empty()
            && !aaguid.is_some_and(|a| self.allowed_aaguids.contains(&a))
        {
            return Err(Fido2Error::AttestationUntrusted {
                aaguid: aaguid.map_or_else(|| "unknown".to_owned(), |u| u.to_string()),
                detail: "this authenticator model is not in [fido2] allowed_aaguids".to_owned(),
            });
        }
        let credential: Credential = key.clone().into();
        let (algorithm, public_key_spki) = spki_of(&credential)?;
        Ok(RegisteredKey {
            credential_id: B64URL.encode::<&[u8]>(credential.cred_id.as_ref()),
            algorithm,
            public_key_spki,
            aaguid,
            key,
            attested: self.attestation.is_some(),
        })
    }

    /// Starts an assertion by one of `keys` whose challenge is `challenge` (see [`bound_challenge`]).
    pub fn start_assertion(
        &self,
        keys: &[SecurityKey],
        challenge: [u8; 32],
        require_uv: bool,
    ) -> Result<(RequestChallengeResponse, SecurityKeyAuthentication), Fido2Error> {
        let (mut options, state) = self
            .webauthn
            .start_securitykey_authentication(keys)
            .map_err(map_webauthn)?;
        if require_uv {
            // Ask the key for PIN or biometric; `finish_assertion` enforces it.
            options.public_key.user_verification =
                webauthn_rs_proto::UserVerificationPolicy::Required;
        }
        // webauthn-rs always draws a random challenge; replace it (in the options and in the
        // serialisable state) with the one bound to the digest being approved.
        options.public_key.challenge = challenge.to_vec();
        let mut raw =
            serde_json::to_value(&state).map_err(|e| Fido2Error::Config(e.to_string()))?;
        let slot = raw
            .get_mut("ast")
            .and_then(|ast| ast.get_mut("challenge"))
            .ok_or_else(|| {
                Fido2Error::Config("unexpected webauthn-rs authentication state".to_owned())
            })?;
        *slot = serde_json::Value::String(B64URL.encode(challenge));
        let state = serde_json::from_value(raw).map_err(|e| Fido2Error::Config(e.to_string()))?;
        Ok((options, state))
    }

    /// Verifies an assertion (client JSON) against the ceremony state.
    pub fn finish_assertion(
        &self,
        response_json: &str,
        state: &SecurityKeyAuthentication,
        require_uv: bool,
    ) -> Result<(PublicKeyCredential, AuthenticationResult), Fido2Error> {
        let response: PublicKeyCredential = serde_json::from_str(response_json)
            .map_err(|e| Fido2Error::Malformed(e.to_string()))?;
        let auth_data: &[u8] = response.response.authenticator_data.as_ref();
        if auth_data.len() < 37 {
            return Err(Fido2Error::TruncatedAuthenticatorData(auth_data.len()));
        }
        let result = self
            .webauthn
            .finish_securitykey_authentication(&response, state)
            .map_err(map_webauthn)?;
        if require_uv && !result.user_verified() {
            return Err(Fido2Error::UserVerificationRequired);
        }
        Ok((response, result))
    }
}

/// The AAGUID in a registration's authenticator data (bytes 37..53 when attested data is present).
fn aaguid_of(response: &RegisterPublicKeyCredential) -> Option<Uuid> {
    let object: serde_cbor_2::Value =
        serde_cbor_2::from_slice(response.response.attestation_object.as_ref()).ok()?;
    let serde_cbor_2::Value::Map(map) = object else {
        return None;
    };
    let auth_data = map.iter().find_map(|(k, v)| match (k, v) {
        (serde_cbor_2::Value::Text(k), serde_cbor_2::Value::Bytes(v)) if k == "authData" => Some(v),
        _ => None,
    })?;
    let bytes: [u8; 16] = auth_data.get(37..53)?.try_into().ok()?;
    Some(Uuid::from_bytes(bytes))
}

/// The credential's public key as SPKI DER, with its algorithm name.
fn spki_of(credential: &Credential) -> Result<(&'static str, Vec<u8>), Fido2Error> {
    match &credential.cred.key {
        COSEKeyType::EC_EC2(ec) if ec.curve == ECDSACurve::SECP256R1 => {
            use p256::pkcs8::EncodePublicKey as _;
            let mut sec1 = vec![0x04];
            sec1.extend_from_slice(&ec.x);
            sec1.extend_from_slice(&ec.y);
            let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1)
                .map_err(|e| Fido2Error::Rejected(format!("credential key: {e}")))?;
            let der = key
                .to_public_key_der()
                .map_err(|e| Fido2Error::Rejected(format!("credential key: {e}")))?;
            Ok(("es256", der.as_bytes().to_vec()))
        }
        COSEKeyType::EC_OKP(okp) => {
            let x: &[u8] = okp.x.as_ref();
            let bytes: [u8; 32] = x
                .try_into()
                .map_err(|_| Fido2Error::Rejected("Ed25519 key of wrong length".to_owned()))?;
            ed25519_dalek::VerifyingKey::from_bytes(&bytes)
                .map_err(|e| Fido2Error::Rejected(format!("credential key: {e}")))?;
            // SubjectPublicKeyInfo for Ed25519 (RFC 8410): fixed header, then the 32-byte key.
            const ED25519_SPKI_PREFIX: [u8; 12] = [
                0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
            ];
            let mut der = ED25519_SPKI_PREFIX.to_vec();
            der.extend_from_slice(&bytes);
            Ok(("ed25519", der))
        }
        _ => Err(Fido2Error::Rejected(
            "only P-256 (ES256) and Ed25519 credentials are supported".to_owned(),
        )),
    }
}

/// Encodes bytes the way credential ids are shown and stored.
pub fn credential_id_text(id: &[u8]) -> String {
    B64URL.encode(id)
}

/// FIDO2 relying party and policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fido2Config {
    /// WebAuthn relying-party id.
    pub rp_id: String,
    /// WebAuthn origin the clients use.
    pub origin: String,
    /// The approval page's origin (`[web] origin`), accepted besides `origin`.
    pub page_origin: Option<String>,
    /// Require PIN/biometric on every assertion.
    pub require_user_verification: bool,
    /// How long challenges stay valid.
    pub challenge_ttl: std::time::Duration,
    /// Extra attestation CA certificates (PEM files) besides the bundled Yubico root.
    pub attestation_cas: Vec<std::path::PathBuf>,
    /// If not empty, only these authenticator models (AAGUIDs) may enroll.
    pub allowed_aaguids: Vec<uuid::Uuid>,
}

impl Default for Fido2Config {
    fn default() -> Self {
        Self {
            rp_id: crate::base::constants::DEFAULT_RP_ID.to_owned(),
            origin: crate::base::constants::DEFAULT_ORIGIN.to_owned(),
            page_origin: None,
            require_user_verification: false,
            challenge_ttl: crate::base::constants::DEFAULT_CHALLENGE_TTL,
            attestation_cas: Vec::new(),
            allowed_aaguids: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem(key_usages: Vec<rcgen::KeyUsagePurpose>) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = key_usages;
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem().into_bytes()
    }

    #[test]
    fn fuzz_webauthn_json_never_panics_registration_or_assertion() {
        use webauthn_authenticator_rs::WebauthnAuthenticator as _;
        let origin = Url::parse("https://localhost").unwrap();
        let fido2 = Fido2::new("localhost", &["https://localhost"], &[], &[], true).unwrap();
        let mut token = webauthn_authenticator_rs::softtoken::SoftToken::new(true)
            .unwrap()
            .0;
        let (options, registration) = fido2
            .start_registration(Uuid::new_v4(), "alice", Vec::new(), false)
            .unwrap();
        let registered = token.do_registration(origin.clone(), options).unwrap();
        let registration_json = serde_json::to_string(&registered).unwrap();
        let key = fido2
            .finish_registration(&registration_json, &registration)
            .unwrap();
        let (options, assertion) = fido2
            .start_assertion(std::slice::from_ref(&key.key), [7u8; 32], false)
            .unwrap();
        let asserted = token.do_authentication(origin, options).unwrap();
        let assertion_json = serde_json::to_string(&asserted).unwrap();
        crate::base::fuzzing::run(
            "webauthn-json",
            &[registration_json.into_bytes(), assertion_json.into_bytes()],
            |input| {
                if let Ok(text) = std::str::from_utf8(input) {
                    let _ = fido2.finish_registration(text, &registration);
                    let _ = fido2.finish_assertion(text, &assertion, false);
                }
            },
        );
    }

    #[test]
    fn an_attestation_ca_without_key_cert_sign_is_refused_at_start() {
        let without = ca_pem(vec![]);
        let Err(err) = Fido2::new("localhost", &["https://localhost"], &[without], &[], false)
        else {
            panic!("a CA without keyUsage was accepted");
        };
        assert!(err.to_string().contains("keyUsage"), "{err}");
        let signing_only = ca_pem(vec![rcgen::KeyUsagePurpose::DigitalSignature]);
        assert!(check_attestation_ca(&signing_only).is_err());
        let good = ca_pem(vec![rcgen::KeyUsagePurpose::KeyCertSign]);
        assert!(check_attestation_ca(&good).is_ok());
        assert!(Fido2::new("localhost", &["https://localhost"], &[good], &[], false).is_ok());
    }
}
