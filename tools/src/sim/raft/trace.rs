//! The event trace of a run. Events are small values, formatted only when
//! someone reads them: the last [`RECENT_EVENTS_MAX`] are kept for a failure
//! report, `--verbose` prints each as it happens, and tests may keep them all
//! to compare two runs of one seed.

use std::collections::VecDeque;
use std::fmt;

use flotilla_raftgroup::{
    ConfChangeKind, Error, HardState, Message, MessageBody, NodeId, Proposed, Role,
};

use super::world::ReportKind;

/// How many events a failure report shows.
pub const RECENT_EVENTS_MAX: usize = 50;

/// A message reduced to what a reader of a trace needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsgInfo {
    pub from: NodeId,
    pub to: NodeId,
    pub term: u64,
    pub kind: &'static str,
    /// Kind-specific numbers; see the `Display` impl.
    pub args: [u64; 4],
}

impl MsgInfo {
    pub fn of(message: &Message) -> Self {
        let args = match &message.body {
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            } => [*prev_index, *prev_term, entries.len() as u64, *commit],
            MessageBody::AppendResponse {
                index,
                reject,
                hint_index,
                hint_term,
            } => [*index, u64::from(*reject), *hint_index, *hint_term],
            MessageBody::RequestVote {
                last_index,
                last_term,
                transfer,
                ..
            } => [*last_index, *last_term, u64::from(*transfer), 0],
            MessageBody::VoteResponse {
                reject,
                commit,
                commit_term,
                ..
            } => [u64::from(*reject), *commit, *commit_term, 0],
            MessageBody::Heartbeat {
                commit,
                round,
                quiesce,
            } => [*commit, *round, u64::from(*quiesce), 0],
            MessageBody::HeartbeatResponse { round } => [*round, 0, 0, 0],
            MessageBody::InstallSnapshot { snapshot } => {
                [snapshot.meta.index, snapshot.meta.term, 0, 0]
            }
            MessageBody::TimeoutNow => [0; 4],
            MessageBody::Propose { entries } => [entries.len() as u64, 0, 0, 0],
            MessageBody::ReadIndex { request } => [*request, 0, 0, 0],
            MessageBody::ReadIndexResponse { request, index } => [*request, *index, 0, 0],
            MessageBody::TransferLeader { target } => [*target, 0, 0, 0],
        };
        MsgInfo {
            from: message.from,
            to: message.to,
            term: message.term,
            kind: message.body.name(),
            args,
        }
    }
}

impl fmt::Display for MsgInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}->{} t{} {}", self.from, self.to, self.term, self.kind)?;
        let [a, b, c, d] = self.args;
        match self.kind {
            "append" => write!(f, " prev=({a},t{b}) entries={c} commit={d}"),
            "append_response" if b == 1 => write!(f, " REJECT {a} hint=({c},t{d})"),
            "append_response" => write!(f, " ok {a}"),
            "pre_vote" | "vote" => write!(f, " last=({a},t{b}) transfer={}", c == 1),
            "pre_vote_response" | "vote_response" => {
                f.write_str(if a == 1 { " REJECT" } else { " granted" })
            }
            "heartbeat" => write!(f, " commit={a} round={b} quiesce={}", c == 1),
            "heartbeat_response" => write!(f, " round={a}"),
            "snapshot" => write!(f, " at ({a},t{b})"),
            "propose" => write!(f, " entries={a}"),
            "read_index" => write!(f, " request={a}"),
            "read_index_response" => write!(f, " request={a} index={b}"),
            "transfer_leader" => write!(f, " target={a}"),
            _ => Ok(()),
        }
    }
}

/// One step of a run.
#[derive(Clone, Debug)]
pub enum Event {
    Start {
        voters: Vec<NodeId>,
        learners: Vec<NodeId>,
        settings: String,
    },
    Tick,
    Send {
        msg: MsgInfo,
        delay_ticks: u64,
        duplicated: bool,
    },
    Drop {
        msg: MsgInfo,
        why: &'static str,
    },
    Deliver(MsgInfo),
    Role {
        node: NodeId,
        term: u64,
        role: Role,
        leader: NodeId,
    },
    PersistDeferred {
        node: NodeId,
        done_at: u64,
    },
    Persist {
        node: NodeId,
        snapshot: Option<u64>,
        entries: Option<(u64, u64)>,
        hard_state: Option<HardState>,
    },
    Apply {
        node: NodeId,
        snapshot: Option<u64>,
        entries: Option<(u64, u64)>,
    },
    ConfApplied {
        node: NodeId,
        index: u64,
        voters: Vec<NodeId>,
        outgoing: Vec<NodeId>,
        learners: Vec<NodeId>,
    },
    Propose {
        node: NodeId,
        writes: (u64, u64),
        result: Result<Proposed, Error>,
    },
    ReadRequest {
        node: NodeId,
        request: u64,
        floor: u64,
        result: Result<(), Error>,
    },
    ReadServed {
        node: NodeId,
        request: u64,
        index: u64,
        applied: u64,
    },
    ConfChange {
        leader: NodeId,
        kind: ConfChangeKind,
        target: NodeId,
        result: Result<Proposed, Error>,
    },
    Transfer {
        node: NodeId,
        target: NodeId,
        result: Result<(), Error>,
    },
    Compact {
        node: NodeId,
        index: u64,
    },
    Quiesce {
        node: NodeId,
    },
    Report {
        sender: NodeId,
        to: NodeId,
        kind: ReportKind,
    },
    LeaderUnreachable {
        node: NodeId,
        leader: NodeId,
    },
    Crash {
        node: NodeId,
        lost_ready: bool,
    },
    Restart {
        node: NodeId,
        incarnation: u64,
        term: u64,
        commit: u64,
        first_index: u64,
        last_index: u64,
    },
    Create {
        node: NodeId,
    },
    Destroy {
        node: NodeId,
    },
    Partition(Vec<Vec<NodeId>>),
    Heal,
    Calm {
        writes: (u64, u64),
    },
    Converged {
        commit: u64,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Start {
                voters,
                learners,
                settings,
            } => write!(
                f,
                "start voters={voters:?} learners={learners:?} {settings}"
            ),
            Event::Tick => f.write_str("tick"),
            Event::Send {
                msg,
                delay_ticks,
                duplicated,
            } => {
                write!(f, "send {msg} delay={delay_ticks}")?;
                if *duplicated {
                    f.write_str(" +duplicate")?;
                }
                Ok(())
            }
            Event::Drop { msg, why } => write!(f, "drop ({why}) {msg}"),
            Event::Deliver(msg) => write!(f, "deliver {msg}"),
            Event::Role {
                node,
                term,
                role,
                leader,
            } => write!(
                f,
                "node {node} is {role:?} in term {term} (leader {leader})"
            ),
            Event::PersistDeferred { node, done_at } => {
                write!(f, "node {node} persisting until tick {done_at}")
            }
            Event::Persist {
                node,
                snapshot,
                entries,
                hard_state,
            } => {
                write!(f, "node {node} persisted")?;
                if let Some(index) = snapshot {
                    write!(f, " snapshot@{index}")?;
                }
                if let Some((first, last)) = entries {
                    write!(f, " entries {first}..={last}")?;
                }
                if let Some(hs) = hard_state {
                    write!(f, " term={} vote={} commit={}", hs.term, hs.vote, hs.commit)?;
                }
                Ok(())
            }
            Event::Apply {
                node,
                snapshot,
                entries,
            } => {
                write!(f, "node {node} applied")?;
                if let Some(index) = snapshot {
                    write!(f, " snapshot@{index}")?;
                }
                if let Some((first, last)) = entries {
                    write!(f, " {first}..={last}")?;
                }
                Ok(())
            }
            Event::ConfApplied {
                node,
                index,
                voters,
                outgoing,
                learners,
            } => write!(
                f,
                "node {node} config@{index} voters={voters:?} outgoing={outgoing:?} \
                 learners={learners:?}"
            ),
            Event::Propose {
                node,
                writes,
                result,
            } => write!(
                f,
                "propose writes {}..={} at node {node}: {result:?}",
                writes.0, writes.1
            ),
            Event::ReadRequest {
                node,
                request,
                floor,
                result,
            } => write!(f, "read {request} at node {node} floor={floor}: {result:?}"),
            Event::ReadServed {
                node,
                request,
                index,
                applied,
            } => write!(
                f,
                "read {request} served at node {node} index={index} applied={applied}"
            ),
            Event::ConfChange {
                leader,
                kind,
                target,
                result,
            } => write!(
                f,
                "conf change {kind:?} {target} at node {leader}: {result:?}"
            ),
            Event::Transfer {
                node,
                target,
                result,
            } => write!(
                f,
                "transfer leadership to {target} at node {node}: {result:?}"
            ),
            Event::Compact { node, index } => write!(f, "node {node} snapshot+compact at {index}"),
            Event::Quiesce { node } => write!(f, "node {node} quiesces"),
            Event::Report { sender, to, kind } => {
                write!(f, "tell node {sender} about {to}: {kind:?}")
            }
            Event::LeaderUnreachable { node, leader } => {
                write!(f, "node {node}: leader {leader} unreachable")
            }
            Event::Crash { node, lost_ready } => {
                write!(f, "CRASH node {node}")?;
                if *lost_ready {
                    f.write_str(" (with an unpersisted Ready)")?;
                }
                Ok(())
            }
            Event::Restart {
                node,
                incarnation,
                term,
                commit,
                first_index,
                last_index,
            } => write!(
                f,
                "RESTART node {node} (incarnation {incarnation}) term={term} commit={commit} \
                 log={first_index}..={last_index}"
            ),
            Event::Create { node } => write!(f, "create node {node}"),
            Event::Destroy { node } => write!(f, "destroy removed node {node}"),
            Event::Partition(sides) => write!(f, "PARTITION {sides:?}"),
            Event::Heal => f.write_str("HEAL"),
            Event::Calm { writes } => write!(
                f,
                "faults stop; writes {}..={} must commit everywhere",
                writes.0, writes.1
            ),
            Event::Converged { commit } => write!(f, "converged at commit {commit}"),
        }
    }
}

/// The trace of one run.
#[derive(Debug)]
pub struct Trace {
    recent: VecDeque<(u64, Event)>,
    echo: bool,
    all: Option<Vec<String>>,
    count: u64,
}

impl Trace {
    /// `echo` prints every event to stdout as it happens; `keep_all` keeps
    /// every event formatted, for [`Trace::take_all`].
    pub fn new(echo: bool, keep_all: bool) -> Self {
        Trace {
            recent: VecDeque::with_capacity(RECENT_EVENTS_MAX),
            echo,
            all: keep_all.then(Vec::new),
            count: 0,
        }
    }

    pub fn push(&mut self, tick: u64, event: Event) {
        self.count += 1;
        if self.echo || self.all.is_some() {
            let line = format!("[{tick:>5}] {event}");
            if self.echo {
                println!("{line}");
            }
            if let Some(all) = &mut self.all {
                all.push(line);
            }
        }
        if self.recent.len() == RECENT_EVENTS_MAX {
            self.recent.pop_front();
        }
        self.recent.push_back((tick, event));
    }

    /// How many events were recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The last events, formatted.
    pub fn recent(&self) -> Vec<String> {
        self.recent
            .iter()
            .map(|(tick, event)| format!("[{tick:>5}] {event}"))
            .collect()
    }

    /// Every event, when the trace was made with `keep_all`.
    pub fn take_all(&mut self) -> Vec<String> {
        self.all.take().unwrap_or_default()
    }
}
