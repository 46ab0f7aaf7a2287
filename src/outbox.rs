//! The outbox: the one way anything leaves the hub. Every action is queued by a method that also
//! records its counter, so a count and the action (or metric) it stands for cannot drift apart.
//! The queue is private: nothing else can push to it.

use std::collections::VecDeque;
use std::time::Duration;

use crate::action::{Action, AuditEvent, Inbound, MetricEvent};
use crate::cluster::{BusOp, OpId, PublishOutcome};
use crate::config::Tier;
use crate::frame::Frame;
use crate::ids::{ConnId, TenantId, UserId};
use crate::kinds::{AuditKind, BreakerState, ClosedBy, LimitKind};
use crate::labels::Labels;
use crate::stats::HubStats;

/// The action queue and the hub's counters. The gauges of [`HubStats`] are not kept here: the
/// hub derives them from its components when they are read.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    actions: VecDeque<Action>,
    /// Counters that no action stands for (frames received, publishes, …) are bumped directly.
    pub(crate) stats: HubStats,
}

impl Outbox {
    /// The oldest queued action.
    #[inline]
    pub(crate) fn pop(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    /// A frame for a connection (its backpressure already checked: see `flow`).
    #[inline]
    pub(crate) fn deliver(&mut self, conn: ConnId, frame: &Frame) {
        self.stats.deliveries += 1;
        self.stats.bytes_delivered += frame.len() as u64;
        self.actions.push_back(Action::Deliver { conn, frame: frame.clone() });
    }

    /// Cluster mode: an operation for the driver to perform on the bus.
    pub(crate) fn bus(&mut self, op: BusOp) {
        self.actions.push_back(Action::Bus(Box::new(op)));
    }

    /// Cluster mode: what became of a publish.
    pub(crate) fn published(&mut self, op: OpId, outcome: PublishOutcome) {
        if matches!(outcome, PublishOutcome::Failed { .. }) {
            self.stats.publishes_failed += 1;
        }
        self.actions.push_back(Action::Published { op, outcome: Box::new(outcome) });
    }

    /// A transport ping.
    pub(crate) fn ping(&mut self, conn: ConnId) {
        self.stats.pings_sent += 1;
        self.actions.push_back(Action::Ping { conn });
    }

    /// A client message for the application.
    pub(crate) fn inbound(&mut self, inbound: Inbound) {
        self.stats.inbound_messages += 1;
        self.actions.push_back(Action::Inbound(Box::new(inbound)));
    }

    /// A security-relevant event that names no connection's labels.
    pub(crate) fn audit(
        &mut self,
        kind: AuditKind,
        conn: Option<ConnId>,
        tenant: Option<&TenantId>,
        user: Option<&UserId>,
    ) {
        self.audit_labelled(kind, conn, tenant, user, &Labels::none());
    }

    /// A security-relevant event, with the labels of the connection (or principal) involved.
    pub(crate) fn audit_labelled(
        &mut self,
        kind: AuditKind,
        conn: Option<ConnId>,
        tenant: Option<&TenantId>,
        user: Option<&UserId>,
        labels: &Labels,
    ) {
        self.stats.security_violations += 1;
        self.actions.push_back(Action::Audit(Box::new(AuditEvent {
            kind,
            conn,
            tenant: tenant.cloned(),
            user: user.cloned(),
            labels: labels.clone(),
        })));
    }

    /// An action with no counter of its own.
    pub(crate) fn push_action(&mut self, action: Action) {
        self.actions.push_back(action);
    }

    /// A metric event on its own (a limit with no user to name, say).
    pub(crate) fn push_metric(&mut self, event: MetricEvent) {
        self.actions.push_back(Action::Metric(Box::new(event)));
    }

    /// A limit refused something: counted, pushed as a metric, audited as `audit` with the labels
    /// of the connection (or principal) involved.
    pub(crate) fn limit(
        &mut self,
        limit: LimitKind,
        audit: AuditKind,
        conn: Option<ConnId>,
        tenant: &TenantId,
        user: &UserId,
        labels: &Labels,
    ) {
        self.stats.limit_rejections.bump(limit);
        self.push_metric(MetricEvent::LimitRejected { limit });
        self.audit_labelled(audit, conn, Some(tenant), Some(user), labels);
    }

    /// A connection opened.
    pub(crate) fn opened(&mut self, conn: ConnId, tenant: &TenantId, user: &UserId, tier: Tier) {
        self.stats.connections_opened += 1;
        self.push_metric(MetricEvent::ConnectionOpened {
            conn,
            tenant: tenant.clone(),
            user: user.clone(),
            tier,
        });
    }

    /// A connection ended: a `Close` if the hub closed it, then its metric.
    pub(crate) fn closed(
        &mut self,
        conn: ConnId,
        tenant: &TenantId,
        user: &UserId,
        lifetime: Duration,
        by: ClosedBy,
    ) {
        if let ClosedBy::Hub(reason) = by {
            self.actions.push_back(Action::Close { conn, reason });
        }
        let stats = &mut self.stats;
        stats.connections_closed += 1;
        stats.closed_by.bump(by);
        stats.total_connection_lifetime += lifetime;
        self.push_metric(MetricEvent::ConnectionClosed {
            conn,
            tenant: tenant.clone(),
            user: user.clone(),
            lifetime,
            reason: by,
        });
    }

    /// A user's state was created.
    pub(crate) fn user_created(&mut self, tenant: &TenantId, user: &UserId) {
        self.stats.users_created += 1;
        self.push_metric(MetricEvent::UserCreated { tenant: tenant.clone(), user: user.clone() });
    }

    /// A user's state was retired (`evicted`: early, over `max_detached_users`).
    pub(crate) fn user_retired(&mut self, tenant: TenantId, user: UserId, evicted: bool) {
        self.stats.users_retired += 1;
        self.stats.users_evicted += u64::from(evicted);
        self.push_metric(MetricEvent::UserRetired { tenant, user });
    }

    /// A user's breaker changed state; `opened` also counts and audits it.
    pub(crate) fn breaker_changed(
        &mut self,
        tenant: TenantId,
        user: UserId,
        state: BreakerState,
        opened: bool,
    ) {
        if opened {
            self.stats.breakers_opened += 1;
            self.audit(AuditKind::BreakerOpened, None, Some(&tenant), Some(&user));
        }
        self.push_metric(MetricEvent::BreakerChanged { tenant, user, state });
    }

    /// A periodic snapshot of the stats (as `Hub::stats` derives them).
    pub(crate) fn snapshot(&mut self, stats: HubStats) {
        self.push_metric(MetricEvent::Snapshot(Box::new(stats)));
    }
}
