//! Signature checks: a certificate by its issuer (RSA or ECDSA, as Yubico's chains use), and
//! a PIV key's signature over a challenge; and which algorithm an attested key is.

use der::Encode as _;
use x509_cert::Certificate;

use super::PivError;

const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_EC: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";

/// The attested key's algorithm: `es256` (P-256) or `es384` (P-384); any other is refused.
pub(super) fn key_algorithm(
    spki: &x509_cert::spki::SubjectPublicKeyInfoOwned,
) -> Result<String, PivError> {
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<der::asn1::ObjectIdentifier>().ok())
        .map(|o| o.to_string());
    match (spki.algorithm.oid.to_string().as_str(), curve.as_deref()) {
        (OID_EC, Some(OID_P256)) => Ok("es256".into()),
        (OID_EC, Some(OID_P384)) => Ok("es384".into()),
        (oid, curve) => Err(PivError::Algorithm(format!(
            "slot key {oid} {}",
            curve.unwrap_or("")
        ))),
    }
}

/// Verifies that `issuer`'s key signed `cert`.
pub(super) fn verify_signed_by(
    cert: &Certificate,
    issuer: &Certificate,
    what: &str,
) -> Result<(), PivError> {
    use p256::ecdsa::signature::Verifier as _;
    let tbs = cert
        .tbs_certificate()
        .to_der()
        .map_err(|e| PivError::Malformed {
            what: "certificate",
            detail: e.to_string(),
        })?;
    let signature = cert.signature().raw_bytes();
    let spki = issuer.tbs_certificate().subject_public_key_info();
    let spki_der = spki.to_der().map_err(|e| PivError::Malformed {
        what: "issuer key",
        detail: e.to_string(),
    })?;
    let bad = || PivError::BadSignature(what.to_owned());
    let alg = cert.signature_algorithm().oid.to_string();
    match (alg.as_str(), spki.algorithm.oid.to_string().as_str()) {
        (
            hash @ ("1.2.840.113549.1.1.11" | "1.2.840.113549.1.1.12" | "1.2.840.113549.1.1.13"),
            OID_RSA,
        ) => {
            use rsa::pkcs8::DecodePublicKey as _;
            let key = rsa::RsaPublicKey::from_public_key_der(&spki_der)
                .map_err(|e| PivError::Algorithm(format!("RSA issuer key: {e}")))?;
            let sig = rsa::pkcs1v15::Signature::try_from(signature).map_err(|_| bad())?;
            let ok = match hash {
                "1.2.840.113549.1.1.11" => {
                    rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(key).verify(&tbs, &sig)
                }
                "1.2.840.113549.1.1.12" => {
                    rsa::pkcs1v15::VerifyingKey::<sha2::Sha384>::new(key).verify(&tbs, &sig)
                }
                _ => rsa::pkcs1v15::VerifyingKey::<sha2::Sha512>::new(key).verify(&tbs, &sig),
            };
            ok.map_err(|_| bad())
        }
        ("1.2.840.10045.4.3.2", OID_EC) => {
            use p256::pkcs8::DecodePublicKey as _;
            let key = p256::ecdsa::VerifyingKey::from_public_key_der(&spki_der)
                .map_err(|e| PivError::Algorithm(format!("P-256 issuer key: {e}")))?;
            let sig = p256::ecdsa::Signature::from_der(signature).map_err(|_| bad())?;
            key.verify(&tbs, &sig).map_err(|_| bad())
        }
        ("1.2.840.10045.4.3.3", OID_EC) => {
            use p384::pkcs8::DecodePublicKey as _;
            let key = p384::ecdsa::VerifyingKey::from_public_key_der(&spki_der)
                .map_err(|e| PivError::Algorithm(format!("P-384 issuer key: {e}")))?;
            let sig = p384::ecdsa::Signature::from_der(signature).map_err(|_| bad())?;
            key.verify(&tbs, &sig).map_err(|_| bad())
        }
        (sig, key) => Err(PivError::Algorithm(format!(
            "signature {sig} with issuer key {key}"
        ))),
    }
}

/// Verifies a PIV signature over `message` by the key `spki` (`es256`: ECDSA P-256 with
/// SHA-256; `es384`: P-384 with SHA-384). Signatures are DER.
pub fn verify_signature(
    algorithm: &str,
    spki: &[u8],
    message: &[u8],
    signature: &[u8],
) -> Result<(), String> {
    use p256::ecdsa::signature::Verifier as _;
    match algorithm {
        "es256" => {
            use p256::pkcs8::DecodePublicKey as _;
            let key = p256::ecdsa::VerifyingKey::from_public_key_der(spki)
                .map_err(|e| format!("key: {e}"))?;
            let sig = p256::ecdsa::Signature::from_der(signature)
                .map_err(|e| format!("signature encoding: {e}"))?;
            key.verify(message, &sig)
                .map_err(|_| "signature was not made by the enrolled key".to_owned())
        }
        "es384" => {
            use p384::pkcs8::DecodePublicKey as _;
            let key = p384::ecdsa::VerifyingKey::from_public_key_der(spki)
                .map_err(|e| format!("key: {e}"))?;
            let sig = p384::ecdsa::Signature::from_der(signature)
                .map_err(|e| format!("signature encoding: {e}"))?;
            key.verify(message, &sig)
                .map_err(|_| "signature was not made by the enrolled key".to_owned())
        }
        other => Err(format!("unsupported algorithm {other}")),
    }
}
