//! A run's state as a pure fold of its history, and the scheduling
//! decisions made from it.
//!
//! [`RunState::apply`] is the only thing that changes the recorded state;
//! [`RunState::complete`] (a call's result → events) and
//! [`RunState::schedule`] (ready nodes → events) only *propose* events,
//! which the executor commits and then applies. Replaying a history through
//! `apply` therefore rebuilds exactly the state the recording process had,
//! and a resumed run continues from there (in-flight attempts included).

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::Arc,
};

use serde_json::Value;

use super::{
    approval::{ApprovalError, ApprovalStat, Pending},
    history::{CallRecord, CapsuleRecord, Event, NodeFailure, RunStatus},
    report::{ApprovalRow, RunKind, RunReport, TimelineNode, VerdictRow},
    spec::{self, ApprovalVerdict, NodeSpec, OnFailure, Spec},
    status::{NodeFailureClass, NodeStatus, RunPhase},
    template,
};
use crate::capsule::CapsuleKind;

/// Why a history cannot be replayed (it does not belong to this code, or
/// was written by a different version).
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The history does not start with `created`.
    #[error("the run's history does not start with a `created` event")]
    NoCreated,
    /// An event names a node the state does not have.
    #[error("the run's history names node `{0}`, which the run does not have")]
    UnknownNode(String),
}

/// Where a node is.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    /// Waiting for its dependencies (or for a slot).
    Waiting,
    /// An attempt is in flight.
    Running {
        /// The attempt.
        attempt: u32,
    },
    /// Failed; retried at `until_ms`.
    Backoff {
        /// Unix ms.
        until_ms: u64,
    },
    /// A planner whose plan is running.
    Expanded,
    /// A `for_each` node whose instances are running.
    FannedOut,
    /// Its call (attempt `attempt`) succeeded; it waits for a human verdict.
    AwaitingApproval {
        /// The attempt whose output waits.
        attempt: u32,
        /// When `on_timeout` applies (unix ms).
        deadline_ms: Option<u64>,
    },
    /// Done, with an output.
    Succeeded,
    /// Failed for good.
    Failed(NodeFailure),
    /// Not run: something it depends on failed (policy `continue`).
    Skipped,
}

impl Status {
    /// Short name for tables and JSON.
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// Where the node is, without the data.
    pub fn kind(&self) -> NodeStatus {
        match self {
            Self::Waiting => NodeStatus::Waiting,
            Self::Running { .. } => NodeStatus::Running,
            Self::Backoff { .. } => NodeStatus::Retrying,
            Self::Expanded => NodeStatus::Expanded,
            Self::FannedOut => NodeStatus::FannedOut,
            Self::AwaitingApproval { .. } => NodeStatus::AwaitingApproval,
            Self::Succeeded => NodeStatus::Succeeded,
            Self::Failed(_) => NodeStatus::Failed,
            Self::Skipped => NodeStatus::Skipped,
        }
    }

    fn is_final(&self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed(_) | Self::Skipped)
    }
}

/// What kind of node it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A capsule call (worker, planner or gate).
    Call,
    /// A `for_each` node: fans out into instances.
    ForEach,
    /// One instance of a `for_each` node.
    Instance,
}

/// One node of a run.
#[derive(Debug, Clone)]
pub struct Node {
    /// Full id (`plan.tests`, `plan.check[3]`).
    pub id: String,
    /// Its spec (shared by a `for_each` node's instances).
    pub spec: Arc<NodeSpec>,
    /// What it is.
    pub role: Role,
    /// Where it is.
    pub status: Status,
    /// Its output, once succeeded.
    pub output: Option<Value>,
    /// Gate rounds: 1 for the first.
    pub round: u32,
    /// Attempts started over the whole run.
    pub attempts: u32,
    /// First start (unix ms).
    pub started_ms: Option<u64>,
    /// Last end (unix ms).
    pub ended_ms: Option<u64>,
    /// Fuel consumed by all its attempts.
    pub fuel: u64,
    /// Wall time of all its attempts, µs.
    pub wall_us: u64,
    /// Removed by a rework (kept so attempt numbers stay unique).
    pub retired: bool,
    /// Prefix for sibling references (`""` or `"plan."`).
    scope: String,
    item: Option<Value>,
    index: Option<usize>,
    deps: Vec<usize>,
    dependents: Vec<usize>,
    next_attempt: u32,
    /// Attempts in this round (for the retry limit).
    tries: u32,
    feedback: Option<Value>,
    depth: u32,
    parent: Option<usize>,
    children: Vec<usize>,
    children_done: usize,
    plan_output: Option<usize>,
    gated: Option<usize>,
    /// The input of the attempt in flight (to call it again on resume).
    running_input: Option<String>,
    queued: bool,
    /// The output waiting for a human verdict.
    held: Option<Value>,
}

impl Node {
    /// The nodes (indexes into [`RunState::nodes`]) it waits for.
    pub fn deps(&self) -> &[usize] {
        &self.deps
    }

    /// The planner or `for_each` node that spliced it in, if any.
    pub fn parent(&self) -> Option<usize> {
        self.parent
    }
}

/// A gate's verdict, kept for the run's approval statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct VerdictStat {
    /// The gate node.
    pub gate: String,
    /// The round judged.
    pub round: u32,
    /// Approved?
    pub approved: bool,
    /// The score.
    pub score: f64,
}

/// A call the executor should make now.
#[derive(Debug, Clone)]
pub struct Dispatch {
    /// Node index.
    pub node: usize,
    /// Node id (the ledger's node key).
    pub id: String,
    /// The capsule alias.
    pub capsule: String,
    /// The attempt.
    pub attempt: u32,
    /// The rendered input.
    pub input: String,
}

/// The state of one run.
#[derive(Debug, Clone)]
pub struct RunState {
    /// The run id.
    pub run: String,
    /// The spec.
    pub spec: Arc<Spec>,
    /// The bound input.
    pub input: Value,
    /// Who pays.
    pub tenant: String,
    /// Where the spec came from.
    pub origin: String,
    /// Pinned capsules by alias.
    pub capsules: BTreeMap<String, CapsuleRecord>,
    /// Creation time (unix ms).
    pub created_ms: u64,
    /// Cancellation was asked for.
    pub cancel_requested: bool,
    /// How it ended, once it has.
    pub finished: Option<(RunStatus, Option<Value>, Option<String>, u64)>,
    /// Every gate verdict.
    pub verdicts: Vec<VerdictStat>,
    /// Every human verdict (and applied `on_timeout`), in order.
    pub approvals: Vec<ApprovalStat>,
    /// Events applied.
    pub events: u64,
    /// Most bytes a node's rendered input (or the run's output) may hold
    /// (`dag.max_rendered_input_bytes`); not part of the history: set by
    /// whoever drives the run.
    pub render_limit: usize,
    /// The operator's `[dag]` ceilings, which planned nodes, fan-outs and
    /// the run's total rendered bytes are held to (as a submitted spec is
    /// at submit); not part of the history: set by whoever drives the run.
    pub ceilings: spec::Ceilings,
    /// Bytes of rendered input journaled so far (every `started` event's),
    /// held to `ceilings.max_run_rendered_bytes`.
    pub rendered_bytes: u64,
    nodes: Vec<Node>,
    index: HashMap<String, usize>,
    queue: VecDeque<usize>,
    running: usize,
    backoff: usize,
    awaiting: usize,
    failed: usize,
    halted: bool,
}

impl RunState {
    /// Rebuild a run's state from its history.
    pub fn replay(run: &str, history: &[Event]) -> Result<Self, StateError> {
        let mut events = history.iter();
        let Some(first) = events.next() else {
            return Err(StateError::NoCreated);
        };
        let mut state = Self::new(run, first)?;
        for e in events {
            state.apply(e)?;
        }
        Ok(state)
    }

    /// The state right after `created`.
    pub fn new(run: &str, created: &Event) -> Result<Self, StateError> {
        let Event::Created {
            spec,
            input,
            capsules,
            tenant,
            origin,
            time_ms,
        } = created
        else {
            return Err(StateError::NoCreated);
        };
        let mut state = Self {
            run: run.to_owned(),
            spec: Arc::new((**spec).clone()),
            input: input.clone(),
            tenant: tenant.clone(),
            origin: origin.clone(),
            capsules: capsules.clone(),
            created_ms: *time_ms,
            cancel_requested: false,
            finished: None,
            verdicts: Vec::new(),
            approvals: Vec::new(),
            events: 1,
            render_limit: template::DEFAULT_MAX_RENDERED_BYTES,
            ceilings: spec::Ceilings::default(),
            rendered_bytes: 0,
            nodes: Vec::new(),
            index: HashMap::new(),
            queue: VecDeque::new(),
            running: 0,
            backoff: 0,
            awaiting: 0,
            failed: 0,
            halted: false,
        };
        let top = state.spec.nodes.clone();
        state.add_nodes(&top, "", 0, None, Role::Call, &[]);
        Ok(state)
    }

    /// Every node, in creation order (retired ones included; skip them with
    /// [`Node::retired`]).
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// What node `node` may be granted (its spec's `capabilities:`), held
    /// to the restriction of every node it was spliced in by (a planner,
    /// a `for_each`): a plan cannot give its nodes more than its planner
    /// had. Empty when nothing restricts it. Cheap: one walk up the
    /// parents, cloning only what is restricted.
    pub fn restriction(&self, node: usize) -> soma_host_api::Restriction {
        let mut restriction = soma_host_api::Restriction::default();
        let mut next = self.nodes.get(node).map(|_| node);
        while let Some(i) = next {
            let own = &self.nodes[i].spec.capabilities;
            if !own.is_empty() {
                restriction = restriction.and(own);
            }
            next = self.nodes[i].parent;
        }
        restriction
    }

    /// A node by id.
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.index.get(id).map(|&i| &self.nodes[i])
    }

    /// Whether nothing new may start (a node failed under fail-fast, or
    /// cancellation was asked for).
    pub fn is_stopping(&self) -> bool {
        self.halted || self.cancel_requested
    }

    /// (live nodes, final ones) for progress displays.
    pub fn progress(&self) -> (usize, usize) {
        let live = self.nodes.iter().filter(|n| !n.retired);
        live.fold((0, 0), |(all, done), n| {
            (all + 1, done + usize::from(n.status.is_final()))
        })
    }

    /// Share of gate verdicts that approved the first round (rework-free
    /// approvals), or `None` if no gate has judged.
    pub fn auto_approval_rate(&self) -> Option<f64> {
        let firsts: Vec<_> = self.verdicts.iter().filter(|v| v.round == 1).collect();
        (!firsts.is_empty())
            .then(|| firsts.iter().filter(|v| v.approved).count() as f64 / firsts.len() as f64)
    }

    /// The run as JSON: status (`interrupted` while unfinished), output,
    /// error, gate verdicts and their first-round approval rate, timeline.
    /// What `soma dag status --json`, `--out`/run.json and the daemon show.
    pub fn report(&self) -> RunReport {
        let (status, output, error) = match &self.finished {
            Some((s, o, e, _)) => (RunPhase::from(*s), o.clone(), e.clone()),
            None => (RunPhase::Interrupted, None, None),
        };
        RunReport {
            run: self.run.clone(),
            kind: RunKind::Dag,
            name: self.spec.name.clone(),
            tenant: self.tenant.clone(),
            status,
            output,
            error,
            auto_approval_rate: self.auto_approval_rate(),
            verdicts: self
                .verdicts
                .iter()
                .map(|v| VerdictRow {
                    gate: v.gate.clone(),
                    round: v.round,
                    approved: v.approved,
                    score: v.score,
                })
                .collect(),
            approvals: self
                .approvals
                .iter()
                .map(|a| ApprovalRow {
                    node: a.node.clone(),
                    round: a.round,
                    verdict: a.verdict,
                    reason: a.reason.clone(),
                    by: a.by.clone(),
                    tenant: a.tenant.clone(),
                    at_ms: a.time_ms.saturating_sub(self.created_ms),
                })
                .collect(),
            timeline: self.timeline(),
        }
    }

    /// Per live node: capsule, status, attempts, round, start/end (ms since
    /// the run was created), fuel, wall time and the failure if any.
    pub fn timeline(&self) -> Vec<TimelineNode> {
        let t0 = self.created_ms;
        self.nodes
            .iter()
            .filter(|n| !n.retired)
            .map(|n| TimelineNode {
                node: n.id.clone(),
                capsule: n.spec.capsule.clone(),
                status: n.status.kind(),
                attempts: n.attempts,
                round: n.round,
                start_ms: n.started_ms.map(|s| s.saturating_sub(t0)),
                end_ms: n.ended_ms.map(|s| s.saturating_sub(t0)),
                fuel: n.fuel,
                wall_us: n.wall_us,
                failure: match &n.status {
                    Status::Failed(f) => Some(f.clone()),
                    _ => None,
                },
            })
            .collect()
    }

    /// Attempts in flight with their recorded inputs — what a resumed run
    /// calls again.
    pub fn in_flight(&self) -> Vec<Dispatch> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| match n.status {
                Status::Running { attempt } => Some(Dispatch {
                    node: i,
                    id: n.id.clone(),
                    capsule: n.spec.capsule.clone(),
                    attempt,
                    input: n.running_input.clone().unwrap_or_default(),
                }),
                _ => None,
            })
            .collect()
    }

    /// The earliest retry time or approval deadline, if any node is
    /// backing off or awaits a verdict with a timeout.
    pub fn next_wakeup(&self) -> Option<u64> {
        if self.backoff == 0 && self.awaiting == 0 {
            return None;
        }
        self.nodes
            .iter()
            .filter_map(|n| match n.status {
                Status::Backoff { until_ms } if !n.retired => Some(until_ms),
                Status::AwaitingApproval {
                    deadline_ms: Some(at),
                    ..
                } if !n.retired => Some(at),
                _ => None,
            })
            .min()
    }

    /// Nodes waiting for a human verdict.
    pub fn awaiting_approval(&self) -> usize {
        self.awaiting
    }

    /// Nodes in retry backoff.
    pub fn backing_off(&self) -> usize {
        self.backoff
    }

    /// The nodes awaiting a verdict: (id, the attempt whose output waits).
    pub fn pending_approvals(&self) -> Vec<Pending> {
        if self.awaiting == 0 {
            return Vec::new();
        }
        self.nodes
            .iter()
            .filter(|n| !n.retired)
            .filter_map(|n| match n.status {
                Status::AwaitingApproval {
                    attempt,
                    deadline_ms,
                } => Some(Pending {
                    node: n.id.clone(),
                    attempt,
                    deadline_ms,
                }),
                _ => None,
            })
            .collect()
    }

    /// Whether a verdict on `node` is to be recorded now (`Ok(Some(attempt))`:
    /// it awaits one, for the output of `attempt`), was given already
    /// (`Ok(None)`: the same verdict, so asking again changes nothing), or
    /// is refused. Read-only; cost: a lookup (and a scan of the verdicts
    /// given when the node does not await one).
    ///
    /// # Errors
    ///
    /// [`ApprovalError`]: no such node, it does not await a verdict, or a
    /// different verdict was given.
    pub fn check_approval(
        &self,
        node: &str,
        verdict: ApprovalVerdict,
    ) -> Result<Option<u32>, ApprovalError> {
        let n = self.node(node).ok_or_else(|| ApprovalError::UnknownNode {
            run: self.run.clone(),
            node: node.to_owned(),
        })?;
        if let Status::AwaitingApproval { attempt, .. } = n.status
            && !n.retired
            && self.finished.is_none()
        {
            return Ok(Some(attempt));
        }
        match self.approvals.iter().rev().find(|a| a.node == node) {
            Some(given) if given.verdict == verdict => Ok(None),
            Some(given) => Err(ApprovalError::Conflict {
                node: node.to_owned(),
                given: given.verdict,
                by: given.by.clone(),
            }),
            None => Err(ApprovalError::NotAwaiting {
                node: node.to_owned(),
                status: n.status.kind(),
            }),
        }
    }

    /// The [`Event::Approval`] that records `verdict` on `node` for the
    /// output of `attempt`; `None` when the node does not await a verdict
    /// on that attempt's output (any more). Read-only.
    #[allow(clippy::too_many_arguments)]
    pub fn approval_event(
        &self,
        node: &str,
        attempt: u32,
        verdict: ApprovalVerdict,
        reason: Option<String>,
        by: &str,
        tenant: Option<String>,
        now: u64,
    ) -> Option<Event> {
        let n = self.node(node)?;
        if n.retired || n.status.kind() != NodeStatus::AwaitingApproval {
            return None;
        }
        if !matches!(n.status, Status::AwaitingApproval { attempt: a, .. } if a == attempt) {
            return None;
        }
        Some(Event::Approval {
            node: node.to_owned(),
            verdict,
            reason,
            by: by.to_owned(),
            tenant,
            time_ms: now,
        })
    }

    // ----- applying events (the only mutations of recorded state) -----

    /// Apply one committed event.
    pub fn apply(&mut self, event: &Event) -> Result<(), StateError> {
        self.events += 1;
        match event {
            Event::Created { .. } => {}
            Event::Started {
                node,
                attempt,
                input,
                time_ms,
            } => {
                let i = self.find(node)?;
                self.set_status(i, Status::Running { attempt: *attempt });
                let n = &mut self.nodes[i];
                n.next_attempt = attempt + 1;
                n.tries += 1;
                n.attempts += 1;
                n.started_ms.get_or_insert(*time_ms);
                n.running_input = Some(input.clone());
                self.rendered_bytes = self.rendered_bytes.saturating_add(input.len() as u64);
            }
            Event::Restarted { node, .. } => {
                self.find(node)?;
            }
            Event::Withdrawn { node, attempt, .. } => {
                let i = self.find(node)?;
                if self.nodes[i].status == (Status::Running { attempt: *attempt }) {
                    self.set_status(i, Status::Waiting);
                    let n = &mut self.nodes[i];
                    n.tries = n.tries.saturating_sub(1);
                    n.attempts = n.attempts.saturating_sub(1);
                    self.enqueue(i);
                }
            }
            Event::Succeeded {
                node,
                call,
                output,
                time_ms,
            } => {
                let i = self.find(node)?;
                self.account(i, call, *time_ms);
                self.succeed(i, output.clone(), *time_ms);
            }
            Event::Failed {
                node,
                call,
                failure,
                retry_at_ms,
                time_ms,
            } => {
                let i = self.find(node)?;
                self.account(i, call, *time_ms);
                match retry_at_ms {
                    Some(until_ms) => {
                        self.set_status(
                            i,
                            Status::Backoff {
                                until_ms: *until_ms,
                            },
                        );
                        self.enqueue(i);
                    }
                    None => self.fail(i, failure.clone(), *time_ms),
                }
            }
            Event::Expanded {
                node,
                call,
                plan,
                time_ms,
            } => {
                let i = self.find(node)?;
                self.account(i, call, *time_ms);
                self.set_status(i, Status::Expanded);
                let scope = format!("{}.", self.nodes[i].id);
                let depth = self.nodes[i].depth + 1;
                let added = self.add_nodes(&plan.nodes, &scope, depth, Some(i), Role::Call, &[]);
                self.nodes[i].plan_output = plan
                    .output
                    .as_ref()
                    .and_then(|o| self.index.get(&format!("{scope}{o}")).copied());
                self.nodes[i].children = added;
                self.nodes[i].children_done = 0;
                if self.nodes[i].children.is_empty() {
                    self.succeed(i, Value::Object(serde_json::Map::new()), *time_ms);
                }
            }
            Event::FannedOut {
                node,
                items,
                time_ms,
            } => {
                let i = self.find(node)?;
                self.set_status(i, Status::FannedOut);
                self.nodes[i].started_ms.get_or_insert(*time_ms);
                let spec = self.nodes[i].spec.clone();
                let scope = self.nodes[i].scope.clone();
                let depth = self.nodes[i].depth;
                let specs: Vec<NodeSpec> = (0..items.len())
                    .map(|k| NodeSpec {
                        id: format!("{}[{k}]", spec.id),
                        for_each: None,
                        needs: Vec::new(),
                        ..(*spec).clone()
                    })
                    .collect();
                let added = self.add_nodes(&specs, &scope, depth, Some(i), Role::Instance, items);
                self.nodes[i].children = added;
                self.nodes[i].children_done = 0;
                if items.is_empty() {
                    self.succeed(i, Value::Array(Vec::new()), *time_ms);
                }
            }
            Event::Verdict {
                node,
                call,
                round,
                verdict,
                time_ms,
            } => {
                let i = self.find(node)?;
                self.account(i, call, *time_ms);
                self.verdicts.push(VerdictStat {
                    gate: node.clone(),
                    round: *round,
                    approved: verdict.approved,
                    score: verdict.score,
                });
            }
            Event::Reworked {
                node,
                round,
                reset,
                feedback,
                ..
            } => {
                for id in reset {
                    let i = self.find(id)?;
                    self.reset(i);
                    self.nodes[i].round = *round;
                }
                let g = self.find(node)?;
                self.nodes[g].feedback = Some(feedback.clone());
            }
            Event::AwaitingApproval {
                node,
                call,
                output,
                deadline_ms,
                time_ms,
            } => {
                let i = self.find(node)?;
                self.account(i, call, *time_ms);
                let attempt = match self.nodes[i].status {
                    Status::Running { attempt } => attempt,
                    _ => call.attempt,
                };
                self.set_status(
                    i,
                    Status::AwaitingApproval {
                        attempt,
                        deadline_ms: *deadline_ms,
                    },
                );
                self.nodes[i].held = Some(output.clone());
            }
            Event::Approval {
                node,
                verdict,
                reason,
                by,
                tenant,
                time_ms,
            } => {
                let i = self.find(node)?;
                self.approvals.push(ApprovalStat {
                    node: node.clone(),
                    round: self.nodes[i].round,
                    verdict: *verdict,
                    reason: reason.clone(),
                    by: by.clone(),
                    tenant: tenant.clone(),
                    time_ms: *time_ms,
                });
                if self.nodes[i].status.kind() == NodeStatus::AwaitingApproval {
                    let held = self.nodes[i].held.take().unwrap_or(Value::Null);
                    match verdict {
                        ApprovalVerdict::Approve => self.succeed(i, held, *time_ms),
                        ApprovalVerdict::Reject => {
                            let why = match reason {
                                Some(r) => format!("{node} was rejected by {by}: {r}"),
                                None => format!("{node} was rejected by {by}"),
                            };
                            let f = NodeFailure::scheduler(NodeFailureClass::ApprovalRejected, why);
                            self.fail(i, f, *time_ms);
                        }
                    }
                }
            }
            Event::CancelRequested { .. } => self.cancel_requested = true,
            Event::Finished {
                status,
                output,
                error,
                time_ms,
            } => self.finished = Some((*status, output.clone(), error.clone(), *time_ms)),
        }
        Ok(())
    }

    fn find(&self, id: &str) -> Result<usize, StateError> {
        self.index
            .get(id)
            .copied()
            .ok_or_else(|| StateError::UnknownNode(id.to_owned()))
    }

    fn set_status(&mut self, i: usize, status: Status) {
        let old = std::mem::replace(&mut self.nodes[i].status, status);
        let new = &self.nodes[i].status;
        let running = |s: &Status| usize::from(matches!(s, Status::Running { .. }));
        let backoff = |s: &Status| usize::from(matches!(s, Status::Backoff { .. }));
        let awaiting = |s: &Status| usize::from(matches!(s, Status::AwaitingApproval { .. }));
        self.running = self.running + running(new) - running(&old);
        self.backoff = self.backoff + backoff(new) - backoff(&old);
        self.awaiting = self.awaiting + awaiting(new) - awaiting(&old);
        if matches!(old, Status::Running { .. }) {
            self.nodes[i].running_input = None;
        }
    }

    fn account(&mut self, i: usize, call: &CallRecord, time_ms: u64) {
        let n = &mut self.nodes[i];
        n.fuel = n.fuel.saturating_add(call.fuel.unwrap_or(0));
        n.wall_us = n.wall_us.saturating_add(call.wall_us);
        n.ended_ms = Some(time_ms);
    }

    fn enqueue(&mut self, i: usize) {
        if !self.nodes[i].queued {
            self.nodes[i].queued = true;
            self.queue.push_back(i);
        }
    }

    fn succeed(&mut self, i: usize, output: Value, time_ms: u64) {
        self.set_status(i, Status::Succeeded);
        let n = &mut self.nodes[i];
        n.output = Some(output);
        n.ended_ms = Some(time_ms);
        for d in n.dependents.clone() {
            self.enqueue(d);
        }
        let Some(p) = self.nodes[i].parent else {
            return;
        };
        self.nodes[p].children_done += 1;
        if self.nodes[p].children_done < self.nodes[p].children.len() {
            return;
        }
        let output = match self.nodes[p].role {
            Role::ForEach => Value::Array(
                self.nodes[p]
                    .children
                    .iter()
                    .map(|&c| self.nodes[c].output.clone().unwrap_or(Value::Null))
                    .collect(),
            ),
            _ => match self.nodes[p].plan_output {
                Some(o) => self.nodes[o].output.clone().unwrap_or(Value::Null),
                None => self.sink_outputs(&self.nodes[p].children, self.nodes[i].scope.len()),
            },
        };
        self.succeed(p, output, time_ms);
    }

    /// `{local id: output}` of the nodes among `among` nothing else depends on.
    fn sink_outputs(&self, among: &[usize], prefix: usize) -> Value {
        let mut out = serde_json::Map::new();
        for &c in among {
            let n = &self.nodes[c];
            if n.retired || n.dependents.iter().any(|d| !self.nodes[*d].retired) {
                continue;
            }
            let id = n.id.get(prefix..).unwrap_or(&n.id).to_owned();
            out.insert(id, n.output.clone().unwrap_or(Value::Null));
        }
        Value::Object(out)
    }

    fn fail(&mut self, i: usize, failure: NodeFailure, time_ms: u64) {
        self.set_status(i, Status::Failed(failure.clone()));
        self.nodes[i].ended_ms = Some(time_ms);
        self.failed += 1;
        match self.spec.policy.on_failure {
            OnFailure::FailFast => self.halted = true,
            OnFailure::Continue => self.skip_dependents(i),
        }
        if let Some(p) = self.nodes[i].parent
            && !self.nodes[p].status.is_final()
        {
            let why = NodeFailure {
                message: format!("{} failed: {}", self.nodes[i].id, failure.message),
                retryable: false,
                ..failure
            };
            self.fail(p, why, time_ms);
        }
    }

    fn skip_dependents(&mut self, i: usize) {
        let mut stack = self.nodes[i].dependents.clone();
        while let Some(d) = stack.pop() {
            let n = &self.nodes[d];
            if n.retired || n.status != Status::Waiting {
                continue;
            }
            stack.extend(n.dependents.iter().copied());
            self.set_status(d, Status::Skipped);
        }
    }

    /// Back to waiting for another round; children are retired.
    fn reset(&mut self, i: usize) {
        if matches!(self.nodes[i].status, Status::Failed(_)) {
            self.failed -= 1;
        }
        self.set_status(i, Status::Waiting);
        let n = &mut self.nodes[i];
        n.output = None;
        n.held = None;
        n.tries = 0;
        n.children_done = 0;
        let children = std::mem::take(&mut n.children);
        for c in children {
            self.retire(c);
        }
        self.enqueue(i);
    }

    fn retire(&mut self, i: usize) {
        self.reset(i);
        self.nodes[i].retired = true;
    }

    /// Add (or revive, after a rework) nodes under `scope`; returns their
    /// indices. Dependencies are resolved within the scope; a node that
    /// consumes a gated node's output (and does not lie between it and its
    /// gate) also waits for the gate's approval.
    fn add_nodes(
        &mut self,
        specs: &[NodeSpec],
        scope: &str,
        depth: u32,
        parent: Option<usize>,
        role: Role,
        items: &[Value],
    ) -> Vec<usize> {
        let mut added = Vec::with_capacity(specs.len());
        for (k, s) in specs.iter().enumerate() {
            let id = format!("{scope}{}", s.id);
            let role = match role {
                Role::Call if s.for_each.is_some() => Role::ForEach,
                r => r,
            };
            let fresh = Node {
                id: id.clone(),
                spec: Arc::new(s.clone()),
                role,
                status: Status::Waiting,
                output: None,
                round: 1,
                attempts: 0,
                started_ms: None,
                ended_ms: None,
                fuel: 0,
                wall_us: 0,
                retired: false,
                scope: scope.to_owned(),
                item: items.get(k).cloned(),
                index: (role == Role::Instance).then_some(k),
                deps: Vec::new(),
                dependents: Vec::new(),
                next_attempt: 0,
                tries: 0,
                feedback: None,
                depth,
                parent,
                children: Vec::new(),
                children_done: 0,
                plan_output: None,
                gated: None,
                running_input: None,
                queued: false,
                held: None,
            };
            let i = match self.index.get(&id) {
                Some(&i) => {
                    // Revived: keep its attempt numbering and history totals.
                    let old = &self.nodes[i];
                    let keep = Node {
                        next_attempt: old.next_attempt,
                        attempts: old.attempts,
                        started_ms: old.started_ms,
                        fuel: old.fuel,
                        wall_us: old.wall_us,
                        round: old.round,
                        ..fresh
                    };
                    for d in std::mem::take(&mut self.nodes[i].deps) {
                        self.nodes[d].dependents.retain(|&x| x != i);
                    }
                    self.nodes[i] = keep;
                    i
                }
                None => {
                    self.nodes.push(fresh);
                    self.index.insert(id, self.nodes.len() - 1);
                    self.nodes.len() - 1
                }
            };
            added.push(i);
        }
        // Dependencies, within the scope.
        let local = |state: &Self, dep: &str| state.index.get(&format!("{scope}{dep}")).copied();
        for &i in &added {
            let spec = self.nodes[i].spec.clone();
            let mut deps: Vec<usize> = if role == Role::Instance {
                Vec::new()
            } else {
                spec.dependencies()
                    .iter()
                    .filter_map(|d| local(self, d))
                    .collect()
            };
            if let Some(g) = &spec.gate {
                self.nodes[i].gated = local(self, &g.node);
                deps.extend(self.nodes[i].gated);
            }
            deps.sort_unstable();
            deps.dedup();
            self.nodes[i].deps = deps;
        }
        // Consumers of a gated node wait for its gate.
        for &gate in &added {
            let Some(gated) = self.nodes[gate].gated else {
                continue;
            };
            let between = self.between(&added, gated, gate);
            for &c in &added {
                if c != gate
                    && !between.contains(&c)
                    && self.nodes[c].deps.contains(&gated)
                    && !self.nodes[c].deps.contains(&gate)
                {
                    self.nodes[c].deps.push(gate);
                }
            }
        }
        for &i in &added {
            for d in self.nodes[i].deps.clone() {
                self.nodes[d].dependents.push(i);
            }
            self.enqueue(i);
        }
        added
    }

    /// Nodes of `among` on some path from `from` to `to` (both excluded),
    /// following declared dependencies.
    fn between(&self, among: &[usize], from: usize, to: usize) -> Vec<usize> {
        let reaches = |start: usize, forward: bool| {
            let mut seen = vec![start];
            let mut stack = vec![start];
            while let Some(n) = stack.pop() {
                let next: Vec<usize> = if forward {
                    among
                        .iter()
                        .copied()
                        .filter(|&c| self.nodes[c].deps.contains(&n))
                        .collect()
                } else {
                    self.nodes[n].deps.clone()
                };
                for m in next {
                    if !seen.contains(&m) {
                        seen.push(m);
                        stack.push(m);
                    }
                }
            }
            seen
        };
        let down = reaches(from, true);
        let up = reaches(to, false);
        down.into_iter()
            .filter(|n| *n != from && *n != to && up.contains(n))
            .collect()
    }

    /// Live nodes on a path from the gated node to the gate, both included,
    /// following the current graph (plan children are reset with their planner).
    fn rework_set(&self, gated: usize, gate: usize) -> Vec<usize> {
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| !self.nodes[i].retired && self.nodes[i].scope == self.nodes[gate].scope)
            .collect();
        let mut set = vec![gated];
        set.extend(self.between(&live, gated, gate));
        set.push(gate);
        set
    }

    // ----- proposing events (read-only on recorded state) -----

    /// The events one finished call leads to. `now` is unix ms; `rng`
    /// draws the retry jitter (recorded in the event, so a replay does not
    /// draw again).
    pub fn complete(
        &self,
        node: usize,
        attempt: u32,
        result: Result<String, crate::Failure>,
        call: CallRecord,
        now: u64,
        rng: &mut fastrand::Rng,
    ) -> Vec<Event> {
        let result = result.map_err(|f| NodeFailure::of_call(&f));
        self.complete_with(node, attempt, result, call, now, rng)
    }

    /// [`RunState::complete`] with the call's failure already classified
    /// (what crosses a process boundary: a Temporal activity's result).
    pub fn complete_with(
        &self,
        node: usize,
        attempt: u32,
        result: Result<String, NodeFailure>,
        call: CallRecord,
        now: u64,
        rng: &mut fastrand::Rng,
    ) -> Vec<Event> {
        let n = &self.nodes[node];
        if n.status != (Status::Running { attempt }) {
            return Vec::new();
        }
        let id = n.id.clone();
        let fail = |failure: NodeFailure, retry_at_ms: Option<u64>, call: CallRecord| {
            if retry_at_ms.is_none() && n.spec.catch {
                return Event::Succeeded {
                    node: id.clone(),
                    call,
                    output: failure.caught(),
                    time_ms: now,
                };
            }
            Event::Failed {
                node: id.clone(),
                call,
                failure,
                retry_at_ms,
                time_ms: now,
            }
        };
        let text = match result {
            Ok(text) => text,
            Err(failure) => {
                let retries = self.retries(n);
                let retry = (failure.retryable && n.tries <= retries.max)
                    .then(|| now + backoff_ms(&retries, n.tries, rng));
                return vec![fail(failure, retry, call)];
            }
        };
        let output = serde_json::from_str(&text).unwrap_or(Value::String(text));
        let kind = self
            .capsules
            .get(&n.spec.capsule)
            .map_or(CapsuleKind::Worker, |c| c.kind);
        if let (Some(gate), Some(gated)) = (&n.spec.gate, n.gated) {
            let verdict = match spec::parse_verdict(&output) {
                Ok(v) => v,
                Err(e) => {
                    let f = NodeFailure::scheduler(
                        NodeFailureClass::InvalidVerdict,
                        format!("gate {id} returned an invalid verdict: {e}"),
                    );
                    return vec![fail(f, None, call)];
                }
            };
            let judged = Event::Verdict {
                node: id.clone(),
                call: call.clone(),
                round: n.round,
                verdict: verdict.clone(),
                time_ms: now,
            };
            let call = CallRecord {
                attempt: call.attempt,
                ..CallRecord::default()
            };
            let next = if verdict.approved {
                self.succeeded(n, call, output, now)
            } else if n.round < gate.max_rounds {
                Event::Reworked {
                    gate: id.clone(),
                    node: self.nodes[gated].id.clone(),
                    round: n.round + 1,
                    reset: self
                        .rework_set(gated, node)
                        .into_iter()
                        .map(|i| self.nodes[i].id.clone())
                        .collect(),
                    feedback: verdict.feedback,
                    time_ms: now,
                }
            } else {
                let f = NodeFailure::scheduler(
                    NodeFailureClass::GateRejected,
                    format!(
                        "gate {id} rejected {} in all {} rounds (last score {})",
                        self.nodes[gated].id, gate.max_rounds, verdict.score
                    ),
                );
                fail(f, None, call)
            };
            return vec![judged, next];
        }
        if kind == CapsuleKind::Planner && n.role == Role::Call {
            return vec![self.expand(node, output, call, now)];
        }
        vec![self.succeeded(n, call, output, now)]
    }

    /// A call's success: the node succeeds, or, when its spec asks for
    /// `approval`, its output waits for a human verdict.
    fn succeeded(&self, n: &Node, call: CallRecord, output: Value, now: u64) -> Event {
        match n.spec.approval.as_ref().filter(|a| a.required) {
            Some(approval) => Event::AwaitingApproval {
                node: n.id.clone(),
                call,
                output,
                deadline_ms: approval.timeout_ms().map(|ms| now.saturating_add(ms)),
                time_ms: now,
            },
            None => Event::Succeeded {
                node: n.id.clone(),
                call,
                output,
                time_ms: now,
            },
        }
    }

    /// The `on_timeout` verdicts due at `now`.
    fn timed_out(&self, now: u64) -> Vec<Event> {
        if self.awaiting == 0 {
            return Vec::new();
        }
        self.nodes
            .iter()
            .filter(|n| !n.retired)
            .filter_map(|n| match n.status {
                Status::AwaitingApproval {
                    deadline_ms: Some(at),
                    ..
                } if at <= now => {
                    let approval = n.spec.approval.as_ref()?;
                    Some(Event::Approval {
                        node: n.id.clone(),
                        verdict: approval.on_timeout,
                        reason: Some(format!(
                            "no verdict within {}",
                            approval.timeout.as_deref().unwrap_or("the timeout")
                        )),
                        by: "timeout".to_owned(),
                        tenant: None,
                        time_ms: now,
                    })
                }
                _ => None,
            })
            .collect()
    }

    fn expand(&self, node: usize, output: Value, call: CallRecord, now: u64) -> Event {
        let n = &self.nodes[node];
        let policy = &self.spec.policy;
        let fail = |class: NodeFailureClass, message: String, call: CallRecord| Event::Failed {
            node: n.id.clone(),
            call,
            failure: NodeFailure::scheduler(class, message),
            retry_at_ms: None,
            time_ms: now,
        };
        let c = &self.ceilings;
        let (depth, depth_key) = tighter(
            policy.max_expansion_depth,
            "policy.max_expansion_depth",
            c.max_expansion_depth,
            "dag.max_expansion_depth",
        );
        if n.depth + 1 > depth {
            return fail(
                NodeFailureClass::ExpansionLimit,
                format!(
                    "planner {} would nest plans {} deep; {depth_key} is {depth}",
                    n.id,
                    n.depth + 1,
                ),
                call,
            );
        }
        let origin = format!("plan from node {}", n.id);
        let (max_nodes, nodes_key) = self.max_nodes();
        let room = max_nodes.saturating_sub(self.live_nodes());
        let (max_plan, plan_key) = tighter(
            policy.max_expansion_nodes,
            "policy.max_expansion_nodes",
            c.max_expansion_nodes,
            "dag.max_expansion_nodes",
        );
        if let Some(Value::Array(raw)) = output.get("nodes")
            && raw.len() > max_plan.min(room)
        {
            let message = if raw.len() > max_plan {
                format!(
                    "{origin}: it adds {} nodes; {plan_key} is {max_plan}",
                    raw.len()
                )
            } else {
                format!(
                    "{origin}: it adds {} nodes, and the run may hold only {room} more \
                     ({nodes_key} is {max_nodes})",
                    raw.len()
                )
            };
            return fail(NodeFailureClass::InvalidPlan, message, call);
        }
        let plan = spec::parse_plan(&output, &self.spec, max_plan.min(room), &origin)
            .and_then(|mut plan| plan.within(c, &origin).map(|()| plan))
            .map_err(|e| e.to_string())
            .and_then(|plan| {
                super::kinds::check_kinds(&plan.nodes, |alias| {
                    self.capsules.get(alias).map(|c| c.kind)
                })
                .map(|()| plan)
                .map_err(|e| format!("plan from node {}: {e}", n.id))
            });
        match plan {
            Ok(plan) => Event::Expanded {
                node: n.id.clone(),
                call,
                plan,
                time_ms: now,
            },
            Err(e) => fail(NodeFailureClass::InvalidPlan, e, call),
        }
    }

    fn live_nodes(&self) -> usize {
        self.nodes.iter().filter(|n| !n.retired).count()
    }

    /// The nodes this run may hold in all, and the setting that says so.
    fn max_nodes(&self) -> (usize, &'static str) {
        tighter(
            self.spec.policy.max_nodes,
            "policy.max_nodes",
            self.ceilings.max_nodes,
            "dag.max_nodes",
        )
    }

    fn retries(&self, n: &Node) -> spec::Retries {
        n.spec.retries.unwrap_or(self.spec.defaults.retries)
    }

    /// Propose what to do next: start ready nodes (up to `slots` calls),
    /// fan out ready `for_each` nodes, or finish the run. Call repeatedly,
    /// applying the events each time, until it proposes nothing.
    pub fn schedule(&mut self, now: u64, slots: usize) -> (Vec<Event>, Vec<Dispatch>) {
        let mut events = Vec::new();
        let mut dispatch = Vec::new();
        if self.finished.is_some() {
            return (events, dispatch);
        }
        if self.cancel_requested || self.halted {
            if self.running == 0 {
                events.push(self.finish(now));
            }
            return (events, dispatch);
        }
        let timed_out = self.timed_out(now);
        if !timed_out.is_empty() {
            return (timed_out, dispatch);
        }
        let mut later = Vec::new();
        // Rendered bytes of the attempts started in this pass (their
        // `started` events are applied after this returns).
        let mut batch_bytes = 0u64;
        while dispatch.len() < slots {
            let Some(i) = self.queue.pop_front() else {
                break;
            };
            self.nodes[i].queued = false;
            let n = &self.nodes[i];
            let waiting = match n.status {
                Status::Waiting => true,
                Status::Backoff { until_ms } if until_ms <= now => true,
                Status::Backoff { .. } => {
                    later.push(i);
                    continue;
                }
                _ => false,
            };
            if !waiting
                || n.retired
                || n.deps
                    .iter()
                    .any(|&d| self.nodes[d].status != Status::Succeeded)
            {
                continue;
            }
            match self.start(i, now, batch_bytes) {
                Ok(Some(d)) => {
                    batch_bytes = batch_bytes.saturating_add(d.input.len() as u64);
                    events.push(Event::Started {
                        node: d.id.clone(),
                        attempt: d.attempt,
                        input: d.input.clone(),
                        time_ms: now,
                    });
                    dispatch.push(d);
                }
                Ok(None) => {
                    let items = self.fan_out_items(i);
                    events.push(match items {
                        Ok(items) => Event::FannedOut {
                            node: self.nodes[i].id.clone(),
                            items,
                            time_ms: now,
                        },
                        Err(f) => self.refuse(i, f, now),
                    });
                }
                Err(f) => events.push(self.refuse(i, f, now)),
            }
        }
        for i in later {
            self.enqueue(i);
        }
        if events.is_empty()
            && self.running == 0
            && self.backoff == 0
            && self.awaiting == 0
            && self.queue.is_empty()
        {
            events.push(self.finish(now));
        }
        (events, dispatch)
    }

    fn refuse(&self, i: usize, failure: NodeFailure, now: u64) -> Event {
        let n = &self.nodes[i];
        if n.spec.catch {
            return Event::Succeeded {
                node: n.id.clone(),
                call: CallRecord::default(),
                output: failure.caught(),
                time_ms: now,
            };
        }
        Event::Failed {
            node: n.id.clone(),
            call: CallRecord::default(),
            failure,
            retry_at_ms: None,
            time_ms: now,
        }
    }

    /// A ready call node's dispatch (`None` for a `for_each` node);
    /// `batch_bytes`: rendered input of attempts proposed but not yet
    /// applied, counted against `dag.max_run_rendered_bytes`.
    fn start(
        &self,
        i: usize,
        _now: u64,
        batch_bytes: u64,
    ) -> Result<Option<Dispatch>, NodeFailure> {
        let n = &self.nodes[i];
        if n.role == Role::ForEach {
            return Ok(None);
        }
        let ctx = NodeContext::of(self, n);
        let mut input = match (&n.spec.gate, n.gated) {
            (Some(_), Some(g)) if is_empty_object(&n.spec.input) => serde_json::json!({
                "output": self.nodes[g].output,
                "round": n.round,
            }),
            _ => template::render(&n.spec.input, &ctx).map_err(|e| {
                let class = if e.is_limit() {
                    NodeFailureClass::RenderLimit
                } else {
                    NodeFailureClass::Template
                };
                NodeFailure::scheduler(class, format!("{}: {e}", n.id))
            })?,
        };
        if let Some(feedback) = &n.feedback {
            input = match input {
                Value::Object(mut m) => {
                    m.insert("feedback".into(), feedback.clone());
                    Value::Object(m)
                }
                other => serde_json::json!({ "input": other, "feedback": feedback }),
            };
        }
        let input = match input {
            Value::String(s) => s,
            v => v.to_string(),
        };
        if input.len() > self.render_limit {
            return Err(NodeFailure::scheduler(
                NodeFailureClass::RenderLimit,
                format!(
                    "{}: {}",
                    n.id,
                    template::RenderError::limit(self.render_limit)
                ),
            ));
        }
        let total = self
            .rendered_bytes
            .saturating_add(batch_bytes)
            .saturating_add(input.len() as u64);
        if total > self.ceilings.max_run_rendered_bytes {
            return Err(NodeFailure::scheduler(
                NodeFailureClass::RenderLimit,
                format!(
                    "{}: its {} bytes of input would bring the run's rendered inputs to {total} \
                     bytes; the limit is {} (dag.max_run_rendered_bytes): pass less data between \
                     nodes, or split the run",
                    n.id,
                    input.len(),
                    self.ceilings.max_run_rendered_bytes
                ),
            ));
        }
        Ok(Some(Dispatch {
            node: i,
            id: n.id.clone(),
            capsule: n.spec.capsule.clone(),
            attempt: n.next_attempt,
            input,
        }))
    }

    fn fan_out_items(&self, i: usize) -> Result<Vec<Value>, NodeFailure> {
        let n = &self.nodes[i];
        let expr = n.spec.for_each.as_deref().unwrap_or_default();
        let ctx = NodeContext::of(self, n);
        let items = match template::render_whole(expr, &ctx) {
            Ok(Value::Array(items)) => items,
            Ok(other) => {
                return Err(NodeFailure::scheduler(
                    NodeFailureClass::Template,
                    format!(
                        "{}: for_each {expr} gave {}, not an array",
                        n.id,
                        template::kind_of(&other)
                    ),
                ));
            }
            Err(e) => {
                return Err(NodeFailure::scheduler(
                    NodeFailureClass::Template,
                    format!("{}: {e}", n.id),
                ));
            }
        };
        let (max_fan_out, fan_out_key) = tighter(
            self.spec.policy.max_fan_out,
            "policy.max_fan_out",
            self.ceilings.max_fan_out,
            "dag.max_fan_out",
        );
        let (max_nodes, nodes_key) = self.max_nodes();
        let room = max_nodes.saturating_sub(self.live_nodes());
        if items.len() > max_fan_out || items.len() > room {
            return Err(NodeFailure::scheduler(
                NodeFailureClass::ExpansionLimit,
                format!(
                    "{}: for_each gave {} items; policy allows {} ({fan_out_key} {max_fan_out}, \
                     {nodes_key} {max_nodes})",
                    n.id,
                    items.len(),
                    max_fan_out.min(room),
                ),
            ));
        }
        Ok(items)
    }

    fn finish(&self, now: u64) -> Event {
        let (status, output, error) = if self.cancel_requested {
            (
                RunStatus::Cancelled,
                None,
                Some("cancelled on request".to_owned()),
            )
        } else if self.failed > 0 {
            let failed: Vec<&str> = self
                .nodes
                .iter()
                .filter(|n| !n.retired && matches!(n.status, Status::Failed(_)))
                .map(|n| n.id.as_str())
                .collect();
            (
                RunStatus::Failed,
                None,
                Some(format!("failed nodes: {}", failed.join(", "))),
            )
        } else if let Some(stuck) = self
            .nodes
            .iter()
            .find(|n| !n.retired && !n.status.is_final())
        {
            (
                RunStatus::Failed,
                None,
                Some(format!(
                    "node {} can never run ({})",
                    stuck.id,
                    stuck.status.name()
                )),
            )
        } else {
            match self.output() {
                Ok(v) => (RunStatus::Succeeded, Some(v), None),
                Err(e) => (RunStatus::Failed, None, Some(format!("output: {e}"))),
            }
        };
        Event::Finished {
            status,
            output,
            error,
            time_ms: now,
        }
    }

    /// The run's output from the top-level nodes' outputs.
    fn output(&self) -> Result<Value, String> {
        match &self.spec.output {
            Some(v) => {
                let ctx = NodeContext {
                    state: self,
                    scope: "",
                    item: None,
                    index: None,
                };
                template::render(v, &ctx).map_err(|e| e.to_string())
            }
            None => {
                let top: Vec<usize> = (0..self.nodes.len())
                    .filter(|&i| self.nodes[i].parent.is_none())
                    .collect();
                Ok(self.sink_outputs(&top, 0))
            }
        }
    }
}

fn is_empty_object(v: &Value) -> bool {
    v.as_object().is_some_and(serde_json::Map::is_empty)
}

/// Exponential backoff before retry number `tries` (1-based), capped, with
/// jitter uniform in [delay/2, delay].
fn backoff_ms(r: &spec::Retries, tries: u32, rng: &mut fastrand::Rng) -> u64 {
    let exp = tries.saturating_sub(1).min(32);
    let delay = r.backoff_ms.saturating_mul(1 << exp).min(r.max_backoff_ms);
    if r.jitter && delay > 1 {
        rng.u64(delay / 2..=delay)
    } else {
        delay
    }
}

/// Template scope of one node: the run input, sibling outputs, its item.
struct NodeContext<'a> {
    state: &'a RunState,
    scope: &'a str,
    item: Option<&'a Value>,
    index: Option<usize>,
}

impl<'a> NodeContext<'a> {
    fn of(state: &'a RunState, node: &'a Node) -> Self {
        Self {
            state,
            scope: &node.scope,
            item: node.item.as_ref(),
            index: node.index,
        }
    }
}

impl template::Context for NodeContext<'_> {
    fn input(&self) -> &Value {
        &self.state.input
    }

    fn node_output(&self, id: &str) -> Option<&Value> {
        let full = format!("{}{id}", self.scope);
        let n = self.state.node(&full)?;
        (n.status == Status::Succeeded && !n.retired)
            .then_some(n.output.as_ref())
            .flatten()
    }

    fn item(&self) -> Option<&Value> {
        self.item
    }

    fn index(&self) -> Option<usize> {
        self.index
    }

    fn max_bytes(&self) -> usize {
        self.state.render_limit
    }
}

/// The lower of a spec's `policy` value and the operator's `dag` ceiling,
/// with the name of the setting that binds (the ceiling on a tie).
fn tighter<T: PartialOrd + Copy>(
    policy: T,
    policy_key: &'static str,
    ceiling: T,
    ceiling_key: &'static str,
) -> (T, &'static str) {
    if ceiling <= policy {
        (ceiling, ceiling_key)
    } else {
        (policy, policy_key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_jitters_within_half() {
        let r = spec::Retries {
            max: 5,
            backoff_ms: 100,
            max_backoff_ms: 1000,
            jitter: false,
        };
        let mut rng = fastrand::Rng::with_seed(7);
        let plain: Vec<u64> = (1..=6).map(|t| backoff_ms(&r, t, &mut rng)).collect();
        assert_eq!(plain, [100, 200, 400, 800, 1000, 1000]);
        let j = spec::Retries { jitter: true, ..r };
        for t in 1..=6 {
            let d = backoff_ms(&j, t, &mut rng);
            assert!((plain[t as usize - 1] / 2..=plain[t as usize - 1]).contains(&d));
        }
    }

    #[test]
    fn plan_nodes_are_held_to_their_planners_restriction_after_replay() {
        let spec = spec::parse(
            "name: r\ncapsules: { p: p.wasm }\nnodes:\n  - id: plan\n    capsule: p\n    \
             capabilities: { kv: false, llm: [small, large] }\n  - { id: free, capsule: p }\n",
            "r.yaml",
        )
        .expect("spec");
        let plan: spec::Plan = serde_json::from_value(serde_json::json!({
            "nodes": [
                { "id": "w", "capsule": "p", "capabilities": { "llm": ["small"] } },
                { "id": "v", "capsule": "p" },
            ]
        }))
        .expect("plan");
        let history = [
            Event::Created {
                spec: Box::new(spec),
                input: Value::Object(serde_json::Map::new()),
                capsules: BTreeMap::new(),
                tenant: "t".into(),
                origin: "r.yaml".into(),
                time_ms: 1,
            },
            Event::Expanded {
                node: "plan".into(),
                call: CallRecord::default(),
                plan,
                time_ms: 2,
            },
        ];
        let state = RunState::replay("r1", &history).expect("replay");
        let restriction = |id: &str| {
            let i = state
                .nodes()
                .iter()
                .position(|n| n.id == id)
                .unwrap_or_else(|| panic!("no node {id}"));
            state.restriction(i).to_string()
        };
        assert_eq!(restriction("plan"), "kv: false, llm: [small, large]");
        assert_eq!(restriction("free"), "");
        assert_eq!(restriction("plan.w"), "kv: false, llm: [small]");
        assert_eq!(restriction("plan.v"), "kv: false, llm: [small, large]");
    }
}
