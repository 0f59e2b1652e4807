//! Which keyspace each domain record lives in: the store maps the domain, the domain does not
//! know the store.

use super::{Keyspace, Record};
use crate::domain::{change, drill, grant, operator, request, scope, trust, workload};

impl Record for change::Change {
    const KEYSPACE: Keyspace = Keyspace::Changes;
}

impl Record for grant::Grant {
    const KEYSPACE: Keyspace = Keyspace::Grants;
}

impl Record for operator::Operator {
    const KEYSPACE: Keyspace = Keyspace::Operators;
}

impl Record for operator::Authenticator {
    const KEYSPACE: Keyspace = Keyspace::Authenticators;
}

impl Record for operator::Ceremony {
    const KEYSPACE: Keyspace = Keyspace::Ceremonies;
}

impl Record for request::Request {
    const KEYSPACE: Keyspace = Keyspace::Requests;
}

impl Record for scope::Scope {
    const KEYSPACE: Keyspace = Keyspace::Scopes;
}

impl Record for trust::TrustStoreMeta {
    const KEYSPACE: Keyspace = Keyspace::Meta;
}

impl Record for workload::Workload {
    const KEYSPACE: Keyspace = Keyspace::Workloads;
}

impl Record for drill::DrillHistory {
    const KEYSPACE: Keyspace = Keyspace::Drills;
}
