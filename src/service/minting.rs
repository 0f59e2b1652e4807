//! Minting at quorum (bearer token sealed to the requester, SSH certificate), collecting the
//! credential, and introspecting a token.

use crate::base::caller::Caller;
use crate::base::clock::Timestamp;
use crate::credential::mint::{self, SshRequest};
use crate::domain::grant::{Grant, GrantState, Introspection, SshGrant, token_hash};
use crate::domain::request::{Request, RequestState};
use crate::domain::workload::Workload;
use crate::service::authority::Authority;
use crate::service::workflow::*;
use crate::store::{self, Keyspace, StoreError, Txn};

/// A credential as its requester collects it: read from the durable grant. The bearer token
/// is only ever sealed to the request's delivery key ([`crate::credential::delivery`]).
#[derive(Clone, Debug)]
pub struct Delivery {
    /// Grant.
    pub grant_id: String,
    pub scope: String,
    /// The bearer token sealed to the requester's delivery key, if one was minted.
    pub sealed_bearer: Option<crate::credential::delivery::SealedToken>,
    /// The SSH certificate, if minted (not a secret: useless without its private key).
    pub ssh_certificate: Option<String>,
    /// Expiry.
    pub expires_at: Timestamp,
}

/// The delivery key a request names, to seal its bearer token to.
pub(in crate::service) fn delivery_key(request: &Request) -> Result<[u8; 32], WorkflowError> {
    let hex_key = &request.canonical.delivery_public_key;
    if hex_key.is_empty() {
        // A request made before delivery keys existed; its requester must ask again.
        return Err(WorkflowError::DeliveryKeyRequired(
            request.canonical.scope.clone(),
        ));
    }
    let bytes = hex::decode(hex_key).map_err(|_| {
        WorkflowError::Delivery(crate::credential::delivery::DeliveryError::BadPublicKey(
            hex_key.len() / 2,
        ))
    })?;
    Ok(crate::credential::delivery::check_public_key(&bytes)?)
}

impl Authority {
    /// The requester's credential, from the durable grant of its issued request: the SSH
    /// certificate and the bearer token sealed to the request's delivery key. Collected as
    /// often as asked while the grant is active; gone once it is revoked or expired.
    pub fn collect_credential(&self, caller: &Caller, id: &str) -> Result<Delivery, WorkflowError> {
        let (request, _) = self.load_request(id)?;
        self.require_requester(caller, &request)?;
        let RequestState::Issued { grant_id, .. } = &request.state else {
            return Err(WorkflowError::CredentialGone(id.to_owned()));
        };
        let grant = self.grant(grant_id)?;
        if !grant.active_at(self.clock.now()) {
            return Err(WorkflowError::CredentialGone(id.to_owned()));
        }
        // Only what is durable leaves the daemon (group commit applies before it flushes).
        self.settled(Delivery {
            grant_id: grant.id,
            scope: grant.scope,
            sealed_bearer: grant.sealed_bearer,
            ssh_certificate: grant.ssh.map(|s| s.certificate),
            expires_at: grant.expires_at,
        })
    }

    /// A grant.
    pub fn grant(&self, id: &str) -> Result<Grant, WorkflowError> {
        let grant = store::read::<Grant>(self.store.as_ref(), id.as_bytes())?
            .ok_or_else(|| WorkflowError::UnknownGrant(id.to_owned()))?;
        self.settled(grant)
    }

    /// Introspects a bearer token (workloads admitted with `introspect` only).
    pub fn introspect(&self, caller: &Caller, token: &str) -> Result<Introspection, WorkflowError> {
        let allowed = match caller {
            Caller::Local(peer) => self.introspect_uids.contains(&peer.uid),
            Caller::Workload(w) => store::read::<Workload>(self.store.as_ref(), w.name.as_bytes())?
                .is_some_and(|w| w.introspect),
            Caller::Remote(_) => false,
        };
        if !allowed {
            return Err(WorkflowError::IntrospectionNotAllowed);
        }
        let now = self.clock.now();
        // On a shared store another node may have revoked the grant: an index that has not
        // heard from the store lately answers "unavailable", never a possibly stale "active".
        let heard = self.followed_at.load(std::sync::atomic::Ordering::Relaxed);
        let stale_after = crate::base::constants::SHARED_STORE_STALE_AFTER.as_millis() as i64;
        if heard != i64::MIN && now.unix_millis().saturating_sub(heard) > stale_after {
            return Err(StoreError::Backend(format!(
                "this node has not heard from the shared store for over {} s; introspection is refused rather than possibly stale",
                stale_after / 1000
            ))
            .into());
        }
        Ok(self.index.introspect(token, now))
    }

    // ----- votes ---------------------------------------------------------------------------

    /// Mints the grant of an approved request into `txn`. The bearer token is sealed to the
    /// request's delivery key and dropped: only its hash and the sealed box are stored.
    pub(in crate::service) fn mint(
        &self,
        request: &Request,
        now: Timestamp,
        txn: &mut Txn,
    ) -> Result<Grant, WorkflowError> {
        let scope = self.scope(&request.canonical.scope)?;
        let id = new_id()?;
        let expires_at = now.plus(std::time::Duration::from_secs(request.canonical.ttl_secs));
        let bearer_token = if scope.bearer {
            Some(mint::bearer_token()?)
        } else {
            None
        };
        let bearer_sha256 = bearer_token.as_deref().map(|t| hex::encode(token_hash(t)));
        let sealed_bearer = match &bearer_token {
            Some(token) => Some(crate::credential::delivery::seal(
                &delivery_key(request)?,
                &id,
                token,
            )?),
            None => None,
        };
        let ssh = match &scope.ssh {
            Some(spec) => {
                let serial = mint::serial()?;
                let certificate = mint::ssh_certificate(
                    &self.keys.ssh_ca,
                    &SshRequest {
                        public_key: &request.canonical.ssh_public_key,
                        serial,
                        grant_id: &id,
                        principals: &spec.principals,
                        issued_at: now,
                        expires_at,
                        permit_port_forwarding: spec.permit_port_forwarding,
                    },
                )?;
                Some(SshGrant {
                    serial,
                    principals: spec.principals.clone(),
                    certificate,
                })
            }
            None => None,
        };
        let grant = Grant {
            id: id.clone(),
            request_id: request.id().to_owned(),
            scope: scope.name.clone(),
            requester: request.requester.clone(),
            issued_at: now,
            expires_at,
            bearer_sha256: bearer_sha256.clone(),
            ssh: ssh.clone(),
            state: GrantState::Active,
            revocation: None,
            sealed_bearer,
        };
        txn.require_absent(Keyspace::Grants, id.as_bytes())
            .put(id.as_bytes(), &grant)?
            .put_raw(
                Keyspace::GrantExpiry,
                crate::domain::grant::expiry_key(expires_at, &id),
                crate::domain::grant::ExpiryEntry::of(&grant).encode(),
            );
        if let Some(hash) = &bearer_sha256 {
            txn.require_absent(Keyspace::GrantTokens, hash.as_bytes())
                .put_raw(Keyspace::GrantTokens, hash.as_bytes(), id.as_bytes());
        }
        if let Some(ssh) = &ssh {
            let key = ssh.serial.to_be_bytes();
            txn.require_absent(Keyspace::GrantSerials, key).put_raw(
                Keyspace::GrantSerials,
                key,
                id.as_bytes(),
            );
        }
        Ok(grant)
    }

    // ----- changes -------------------------------------------------------------------------
}
