//! Audit events about one open connection: they carry its id, tenant, user and labels, read from
//! the connection itself so that no call site can pair them wrongly.

use crate::kinds::{AuditKind, LimitKind};

use super::{Hub, Principal};

impl Hub {
    /// Audits `kind` about the open connection in slot `idx`.
    pub(crate) fn audit_conn(&mut self, kind: AuditKind, idx: u32) {
        let id = self.conns.id_of(idx);
        let conn = self.conns.get(idx);
        let user = self.users.get(conn.user());
        self.out.audit_labelled(
            kind,
            Some(id),
            Some(&user.tenant),
            Some(&user.user),
            conn.labels(),
        );
    }

    /// A limit refused something of the open connection in slot `idx`: counted, pushed as a
    /// metric, audited as `audit` with the connection's labels.
    pub(crate) fn limit_conn(&mut self, limit: LimitKind, audit: AuditKind, idx: u32) {
        let id = self.conns.id_of(idx);
        let conn = self.conns.get(idx);
        let user = self.users.get(conn.user());
        self.out.limit(limit, audit, Some(id), &user.tenant, &user.user, conn.labels());
    }

    /// A connection limit refused `principal` at connect: counted, pushed as a metric, audited
    /// with the principal's labels (no connection exists).
    pub(crate) fn refuse_connect(&mut self, limit: LimitKind, principal: &Principal) {
        let (t, u, labels) = (&principal.tenant, &principal.user, &principal.labels);
        self.out.limit(limit, AuditKind::LimitHit(limit), None, t, u, labels);
    }
}
