//! Stable error codes. Every module's error enum says, per variant, which stable code it
//! carries and what kind of failure it is; the rpc layer maps kinds to gRPC status in one place,
//! and the same code goes into logs and (later) the audit log.

/// What kind of failure an error is, independent of transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The input is malformed or out of bounds. Fix the input.
    InvalidInput,
    /// The thing asked about does not exist.
    NotFound,
    /// The thing to create exists already.
    AlreadyExists,
    /// The state does not allow this now (e.g. genesis closed). Do something else first.
    FailedPrecondition,
    /// Someone else changed the state first. Re-read and retry.
    Conflict,
    /// The caller could not be identified.
    Unauthenticated,
    /// The caller is known but not allowed to do this.
    PermissionDenied,
    /// A dependency (disk, store) failed. Retry later; alert an operator.
    Unavailable,
    /// The caller holds too much open (connections, streams). Close some, then retry.
    ResourceExhausted,
    /// A bug or corrupt data. Alert an operator.
    Internal,
}

/// An error that carries a stable, documented code.
pub trait Coded: std::error::Error {
    /// Stable code, `module.reason` (e.g. `caller.not_pinned`). Never changes meaning.
    fn code(&self) -> &'static str;
    /// Kind of failure.
    fn kind(&self) -> ErrorKind;
}
