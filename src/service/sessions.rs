//! Read sessions for remote operators. A remote caller has no standing credential: each action
//! carries its own hardware assertion, and reading trust state (pending requests, grants,
//! changes, scopes) needs a session — opened by a fresh assertion over a session digest, bound
//! to the TLS connection it was opened on (no token exists to steal or replay), valid for
//! [`SESSION_TTL`], read-only, held in memory (a restart ends every session) and recorded in
//! the audit log.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use crate::base::caller::Caller;
use crate::base::clock::Timestamp;
use crate::domain::operator::Opened;
use crate::service::authority::Authority;
use crate::service::workflow::WorkflowError;

/// How long a read session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(300);
/// Sessions held at once; opening one past it drops the oldest.
const MAX_SESSIONS: usize = 1024;
/// Domain tag of the digest a session's assertion signs.
const SESSION_TAG: &[u8] = b"latchkey.session.v1\n";

/// The digest an operator's key signs to open a read session: bound to the operator's name,
/// so it cannot stand for a vote, a request or a revocation (their digests carry other tags).
pub fn session_digest(operator: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(SESSION_TAG);
    h.update(operator.as_bytes());
    h.finalize().into()
}

#[derive(Debug)]
struct Session {
    operator: String,
    expires_at: Timestamp,
}

/// Open sessions by connection number.
#[derive(Debug, Default)]
pub struct Sessions {
    open: Mutex<HashMap<u64, Session>>,
}

/// A session just opened.
#[derive(Clone, Debug)]
pub struct OpenedSession {
    /// The operator it reads as.
    pub operator: String,
    /// When it ends.
    pub expires_at: Timestamp,
}

impl Authority {
    /// Starts opening a read session: an assertion ceremony over [`session_digest`].
    pub fn begin_session(
        &self,
        caller: &Caller,
        operator: &str,
    ) -> Result<(Opened, [u8; 32]), WorkflowError> {
        let Caller::Remote(_) = caller else {
            return Err(WorkflowError::SessionRemoteOnly);
        };
        let digest = session_digest(operator);
        let opened = self.operators().begin_assertion(
            operator,
            &digest,
            self.fido2_policy.require_user_verification,
        )?;
        Ok((opened, digest))
    }

    /// Verifies the assertion and opens the session (audited as `session.opened`, with its
    /// evidence and the caller's address).
    pub fn open_session(
        &self,
        caller: &Caller,
        ceremony_id: &str,
        credential_json: &str,
    ) -> Result<OpenedSession, WorkflowError> {
        let Caller::Remote(peer) = caller else {
            return Err(WorkflowError::SessionRemoteOnly);
        };
        let expires_at = self.clock.now().plus(SESSION_TTL);
        let operator = self.verify_reader(caller, ceremony_id, credential_json, expires_at)?;
        let mut open = self
            .sessions
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = self.clock.now();
        open.retain(|_, s| s.expires_at > now);
        if open.len() >= MAX_SESSIONS
            && let Some(oldest) = open
                .iter()
                .min_by_key(|(_, s)| s.expires_at)
                .map(|(k, _)| *k)
        {
            open.remove(&oldest);
        }
        open.insert(
            peer.connection,
            Session {
                operator: operator.clone(),
                expires_at,
            },
        );
        Ok(OpenedSession {
            operator,
            expires_at,
        })
    }

    /// Verifies a read assertion from the approval page and keeps nothing: the page shows
    /// what this one touch may read in its answer, and the next read needs another touch (a
    /// browser holds no session to steal). Audited as `session.opened` ending at once.
    /// Returns the operator.
    pub fn prove_reader(
        &self,
        caller: &Caller,
        ceremony_id: &str,
        credential_json: &str,
    ) -> Result<String, WorkflowError> {
        let Caller::Remote(_) = caller else {
            return Err(WorkflowError::SessionRemoteOnly);
        };
        self.verify_reader(caller, ceremony_id, credential_json, self.clock.now())
    }

    /// Checks a session assertion and records it; returns the operator whose key made it.
    fn verify_reader(
        &self,
        caller: &Caller,
        ceremony_id: &str,
        credential_json: &str,
        expires_at: Timestamp,
    ) -> Result<String, WorkflowError> {
        let operators = self.operators();
        let operator = operators.ceremony_operator(ceremony_id)?;
        let mut prepared = operators.prepare_assertion(
            ceremony_id,
            &session_digest(&operator),
            credential_json,
            "session.opened",
            format!("operator/{operator}"),
        )?;
        if let Some(map) = prepared.event.details.as_object_mut() {
            map.insert("via".into(), caller.via().into());
            map.insert("expires_at".into(), expires_at.unix_millis().into());
        }
        self.audit.commit(prepared.txn, prepared.event)?;
        Ok(operator)
    }

    /// The operator whose session is open on remote connection `connection`, if any.
    pub fn session_operator(&self, connection: u64) -> Option<String> {
        let open = self
            .sessions
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        open.get(&connection)
            .filter(|s| s.expires_at > self.clock.now())
            .map(|s| s.operator.clone())
    }
}
