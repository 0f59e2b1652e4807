//! Operators as the service reads and writes them: errors, names, listing, the key index.

use crate::audit::AuditError;
use crate::base::error::{Coded, ErrorKind};
use crate::domain::operator::*;
use crate::service::trust_store::TrustError;
use crate::store::{self, Keyspace, Store, StoreError, Txn};
use crate::verify::fido2::Fido2Error;

/// Errors about operators, enrollment and assertions.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OperatorError {
    /// Name or role is empty, too long or has characters outside `[a-z0-9._-]`.
    #[error("invalid {what} {value:?}: use 1-64 characters from a-z, 0-9, '.', '_' and '-'")]
    InvalidName {
        /// "operator name" or "role".
        what: &'static str,
        /// The value.
        value: String,
    },
    /// No such operator.
    #[error("no operator {0}")]
    UnknownOperator(String),
    /// Only local callers may enroll during genesis.
    #[error("genesis enrollment is only accepted over the local socket")]
    LocalOnly,
    /// Too many challenges are open: a flood of Begin calls, or a limit set too low. Try again
    /// once expired ones are swept (a challenge lifetime or two).
    #[error("too many open challenges (limit {0}); try again in a few minutes")]
    TooManyChallenges(u64),
    /// The ceremony id is not one the daemon issued.
    #[error("unknown challenge {0}; start again")]
    ChallengeUnknown(String),
    /// The challenge was already answered once; every challenge is single-use.
    #[error("challenge {0} was already used; start again")]
    ChallengeReused(String),
    /// The challenge expired before it was answered.
    #[error("challenge {0} expired; start again and touch the key sooner")]
    ChallengeExpired(String),
    /// The response was made for another digest than the one being approved.
    #[error("the assertion was made for another digest than the one being approved")]
    WrongDigest,
    /// The ceremony is of the other kind (enrollment vs assertion).
    #[error("challenge {0} belongs to another kind of ceremony")]
    WrongCeremony(String),
    /// The key is already enrolled, possibly to another operator: one physical key, one operator.
    #[error(
        "this key is already enrolled to operator {0}; one physical key belongs to one operator"
    )]
    CredentialTaken(String),
    /// The key is suspended (e.g. a counter went backwards) and approves nothing until an
    /// approved change reinstates it.
    #[error("authenticator {0} is suspended: {1}")]
    AuthenticatorSuspended(String, String),
    /// The operator has no active key to assert with.
    #[error("operator {0} has no active authenticator")]
    NoActiveAuthenticator(String),
    /// FIDO2 verification refused the response.
    #[error(transparent)]
    Fido2(#[from] Fido2Error),
    /// PIV attestation or policy refused the key.
    #[error(transparent)]
    Piv(#[from] crate::verify::piv::PivError),
    /// A PIV response did not verify (bad signature, unknown or non-PIV key, malformed).
    #[error("PIV response refused: {0}")]
    PivResponse(String),
    /// This YubiKey (by serial) already belongs to another operator: one physical key, one
    /// operator.
    #[error("YubiKey serial {serial} is already enrolled to operator {operator}")]
    DeviceTaken {
        /// Device serial.
        serial: u32,
        /// Its operator.
        operator: String,
    },
    /// The change and its audit record could not be written; nothing changed.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Trust-store metadata is unreadable.
    #[error(transparent)]
    Trust(#[from] TrustError),
}

impl Coded for OperatorError {
    fn code(&self) -> &'static str {
        match self {
            OperatorError::InvalidName { .. } => "operator.invalid_name",
            OperatorError::UnknownOperator(_) => "operator.unknown",
            OperatorError::LocalOnly => "operator.local_only",
            OperatorError::TooManyChallenges(_) => "assertion.too_many_challenges",
            OperatorError::ChallengeUnknown(_) => "assertion.challenge_unknown",
            OperatorError::ChallengeReused(_) => "assertion.challenge_reused",
            OperatorError::ChallengeExpired(_) => "assertion.challenge_expired",
            OperatorError::WrongDigest => "assertion.wrong_digest",
            OperatorError::WrongCeremony(_) => "assertion.wrong_ceremony",
            OperatorError::CredentialTaken(_) => "operator.credential_taken",
            OperatorError::AuthenticatorSuspended(..) => "assertion.authenticator_suspended",
            OperatorError::NoActiveAuthenticator(_) => "assertion.no_active_authenticator",
            OperatorError::Fido2(e) => e.code(),
            OperatorError::Piv(e) => e.code(),
            OperatorError::PivResponse(_) => "piv.bad_response",
            OperatorError::DeviceTaken { .. } => "operator.device_taken",
            OperatorError::Audit(e) => e.code(),
            OperatorError::Store(e) => e.code(),
            OperatorError::Trust(e) => e.code(),
        }
    }

    fn kind(&self) -> ErrorKind {
        match self {
            OperatorError::InvalidName { .. } | OperatorError::WrongCeremony(_) => {
                ErrorKind::InvalidInput
            }
            OperatorError::UnknownOperator(_) | OperatorError::ChallengeUnknown(_) => {
                ErrorKind::NotFound
            }
            OperatorError::ChallengeExpired(_)
            | OperatorError::ChallengeReused(_)
            | OperatorError::NoActiveAuthenticator(_) => ErrorKind::FailedPrecondition,
            OperatorError::LocalOnly
            | OperatorError::WrongDigest
            | OperatorError::AuthenticatorSuspended(..) => ErrorKind::PermissionDenied,
            OperatorError::CredentialTaken(_) => ErrorKind::AlreadyExists,
            OperatorError::TooManyChallenges(_) => ErrorKind::ResourceExhausted,
            OperatorError::Fido2(e) => e.kind(),
            OperatorError::Piv(e) => e.kind(),
            OperatorError::PivResponse(_) => ErrorKind::PermissionDenied,
            OperatorError::DeviceTaken { .. } => ErrorKind::AlreadyExists,
            OperatorError::Audit(e) => e.kind(),
            OperatorError::Store(e) => e.kind(),
            OperatorError::Trust(e) => e.kind(),
        }
    }
}

/// The standing of the stored key `credential_id`, if there is one.
pub fn key_standing(
    store: &dyn Store,
    credential_id: &str,
) -> Result<Option<KeyStanding>, StoreError> {
    store
        .get(Keyspace::Authenticators, credential_id.as_bytes())?
        .map(|raw| {
            serde_json::from_slice(&raw).map_err(|e| StoreError::Corrupt {
                keyspace: Keyspace::Authenticators.name(),
                detail: e.to_string(),
            })
        })
        .transpose()
}

pub(crate) fn random32() -> Result<[u8; 32], OperatorError> {
    crate::base::names::random_bytes::<32>().map_err(|e| StoreError::Backend(e.to_string()).into())
}

/// Checks an operator name or role.
pub fn check_name(what: &'static str, value: &str) -> Result<(), OperatorError> {
    if crate::base::names::is_valid_name(value) {
        Ok(())
    } else {
        Err(OperatorError::InvalidName {
            what,
            value: value.to_owned(),
        })
    }
}

pub(crate) fn new_id() -> Result<String, OperatorError> {
    crate::base::names::random_id::<16>().map_err(|e| StoreError::Backend(e.to_string()).into())
}

/// All authenticators (small: people and their keys).
pub fn authenticators(store: &dyn Store) -> Result<Vec<Authenticator>, OperatorError> {
    store
        .scan_from(Keyspace::Authenticators, b"", usize::MAX)?
        .into_iter()
        .map(|(_, v)| store::decode::<Authenticator>(&v).map_err(OperatorError::from))
        .collect()
}

/// An operator and their authenticators.
pub fn show(
    store: &dyn Store,
    name: &str,
) -> Result<(Operator, Vec<Authenticator>), OperatorError> {
    let operator: Operator = store::read(store, name.as_bytes())?
        .ok_or_else(|| OperatorError::UnknownOperator(name.to_owned()))?;
    Ok((operator, keys_of(store, name)?))
}

/// The authenticators enrolled to `name` (any state), through the index of keys by operator:
/// every vote opens a ceremony here, so it reads the operator's keys only.
pub fn keys_of(store: &dyn Store, name: &str) -> Result<Vec<Authenticator>, OperatorError> {
    let prefix = key_index_entry(name, "");
    let mut keys = Vec::new();
    for (entry, _) in store::scan_prefix(store, Keyspace::OperatorKeys, &prefix)? {
        let credential_id = &entry[prefix.len()..];
        let key: Authenticator =
            store::read(store, credential_id)?.ok_or_else(|| StoreError::Corrupt {
                keyspace: Keyspace::OperatorKeys.name(),
                detail: format!(
                    "{} names a key that is not stored",
                    String::from_utf8_lossy(&entry)
                ),
            })?;
        if key.operator != name {
            return Err(StoreError::Corrupt {
                keyspace: Keyspace::OperatorKeys.name(),
                detail: format!(
                    "{} names a key of operator {}",
                    String::from_utf8_lossy(&entry),
                    key.operator
                ),
            }
            .into());
        }
        keys.push(key);
    }
    Ok(keys)
}

/// Adds to `txn` the writes that enrol `key`: the key itself, absent before, and its index
/// entry.
pub fn enrol_key(txn: &mut Txn, key: &Authenticator) -> Result<(), OperatorError> {
    txn.require_absent(Keyspace::Authenticators, key.credential_id.as_bytes())
        .put(key.credential_id.as_bytes(), key)?
        .put_raw(
            Keyspace::OperatorKeys,
            key_index_entry(&key.operator, &key.credential_id),
            Vec::new(),
        );
    Ok(())
}

/// Schema 1 → 2: indexes every stored key by its operator, in `txn`.
pub fn index_every_key(store: &dyn Store, txn: &mut Txn) -> Result<usize, StoreError> {
    let stored = store.scan_from(Keyspace::Authenticators, b"", usize::MAX)?;
    for (credential_id, raw) in &stored {
        let key: Authenticator = store::decode(raw)?;
        let entry = key_index_entry(&key.operator, &key.credential_id);
        if key.credential_id.as_bytes() != credential_id.as_slice() {
            return Err(StoreError::Corrupt {
                keyspace: Keyspace::Authenticators.name(),
                detail: format!(
                    "key {} is stored as {}",
                    key.credential_id,
                    String::from_utf8_lossy(credential_id)
                ),
            });
        }
        txn.require_equals(Keyspace::Authenticators, credential_id.clone(), raw.clone())
            .require_absent(Keyspace::OperatorKeys, entry.clone())
            .put_raw(Keyspace::OperatorKeys, entry, Vec::new());
    }
    Ok(stored.len())
}
