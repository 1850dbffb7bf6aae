//! The event trace of a run. Events are small values, formatted only when
//! someone reads them: the last [`RECENT_EVENTS_MAX`] are kept for a failure
//! report, `--verbose` prints each as it happens, and tests may keep them
//! all to compare two runs of one seed.

use std::collections::VecDeque;
use std::fmt;

use flotilla_raftgroup::{Message, MessageBody};
use flotilla_transport::{GroupId, NodeId};

/// How many events a failure report shows.
pub const RECENT_EVENTS_MAX: usize = 50;

/// A Raft message reduced to what a reader of a trace needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsgInfo {
    pub group: GroupId,
    pub term: u64,
    pub kind: &'static str,
    /// The request of a read-index message, the entry count of a proposal
    /// or append.
    pub arg: Option<u64>,
}

impl MsgInfo {
    pub fn of(group: GroupId, message: &Message) -> Self {
        let arg = match &message.body {
            MessageBody::ReadIndex { request } => Some(*request),
            MessageBody::ReadIndexResponse { request, .. } => Some(*request),
            MessageBody::Propose { entries } => Some(entries.len() as u64),
            MessageBody::Append { entries, .. } => Some(entries.len() as u64),
            _ => None,
        };
        MsgInfo {
            group,
            term: message.term,
            kind: message.body.name(),
            arg,
        }
    }
}

impl fmt::Display for MsgInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "g{}:t{}:{}", self.group, self.term, self.kind)?;
        match (self.kind, self.arg) {
            ("read_index" | "read_index_response", Some(request)) => write!(f, "({request:#x})"),
            (_, Some(count)) => write!(f, "({count})"),
            (_, None) => Ok(()),
        }
    }
}

/// One step of a run.
#[derive(Clone, Debug)]
pub enum Event {
    Start {
        settings: String,
    },
    Send {
        from: NodeId,
        to: NodeId,
        messages: usize,
        beats: usize,
        delay_steps: u64,
        duplicated: bool,
    },
    Lost {
        from: NodeId,
        to: NodeId,
        why: &'static str,
        messages: Vec<MsgInfo>,
    },
    Deliver {
        from: NodeId,
        to: NodeId,
        messages: Vec<MsgInfo>,
    },
    Invoke {
        process: u64,
        node: NodeId,
        group: GroupId,
        key: String,
        op: String,
        request: u64,
    },
    Complete {
        process: u64,
        node: NodeId,
        request: u64,
        outcome: String,
    },
    Abandon {
        process: u64,
        node: NodeId,
        request: u64,
    },
    Crash {
        node: NodeId,
        power_cut: bool,
        unknown_ops: usize,
    },
    PowerCutScheduled {
        node: NodeId,
        in_ops: u64,
    },
    Restart {
        node: NodeId,
        incarnation: u64,
        recovery: String,
    },
    Partition(Vec<Vec<NodeId>>),
    Heal,
    Campaign {
        node: NodeId,
        group: GroupId,
    },
    Suspect {
        node: NodeId,
        peer: NodeId,
    },
    Transfer {
        node: NodeId,
        group: GroupId,
        target: NodeId,
        accepted: bool,
    },
    Membership {
        node: NodeId,
        group: GroupId,
        change: String,
        request: u64,
    },
    MembershipDone {
        node: NodeId,
        request: u64,
        result: String,
    },
    Calm,
    LeadersAgreed,
    Sweep {
        keys: usize,
    },
    Done {
        ticks: u64,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Start { settings } => write!(f, "start {settings}"),
            Event::Send {
                from,
                to,
                messages,
                beats,
                delay_steps,
                duplicated,
            } => {
                write!(
                    f,
                    "send {from}->{to} messages={messages} beats={beats} delay={delay_steps}"
                )?;
                if *duplicated {
                    f.write_str(" +duplicate")?;
                }
                Ok(())
            }
            Event::Lost {
                from,
                to,
                why,
                messages,
            } => {
                write!(f, "lost ({why}) {from}->{to}")?;
                for message in messages {
                    write!(f, " {message}")?;
                }
                Ok(())
            }
            Event::Deliver { from, to, messages } => {
                write!(f, "deliver {from}->{to}")?;
                for message in messages {
                    write!(f, " {message}")?;
                }
                Ok(())
            }
            Event::Invoke {
                process,
                node,
                group,
                key,
                op,
                request,
            } => write!(
                f,
                "process {process} invokes {op} {key} (group {group}) at node {node} as \
                 request {request:#x}"
            ),
            Event::Complete {
                process,
                node,
                request,
                outcome,
            } => write!(
                f,
                "process {process}: request {request:#x} at node {node} -> {outcome}"
            ),
            Event::Abandon {
                process,
                node,
                request,
            } => write!(
                f,
                "process {process} gives up on request {request:#x} at node {node}: info"
            ),
            Event::Crash {
                node,
                power_cut,
                unknown_ops,
            } => {
                let how = if *power_cut {
                    "power cut during a WAL write"
                } else {
                    "between rounds"
                };
                write!(
                    f,
                    "CRASH node {node} ({how}); {unknown_ops} ops in flight become info"
                )
            }
            Event::PowerCutScheduled { node, in_ops } => write!(
                f,
                "node {node} loses power at its {in_ops}th file operation from now"
            ),
            Event::Restart {
                node,
                incarnation,
                recovery,
            } => write!(
                f,
                "RESTART node {node} (incarnation {incarnation}): {recovery}"
            ),
            Event::Partition(sides) => write!(f, "PARTITION {sides:?}"),
            Event::Heal => f.write_str("HEAL"),
            Event::Campaign { node, group } => {
                write!(f, "node {node} campaigns for group {group}")
            }
            Event::Suspect { node, peer } => {
                write!(f, "node {node} wrongly declares node {peer} down")
            }
            Event::Transfer {
                node,
                group,
                target,
                accepted,
            } => write!(
                f,
                "node {node} asks to move group {group}'s leadership to node {target} (accepted: {accepted})"
            ),
            Event::Membership {
                node,
                group,
                change,
                request,
            } => write!(
                f,
                "node {node} (leader) is asked to change group {group}'s replicas: {change} \
                 (request {request:#x})"
            ),
            Event::MembershipDone {
                node,
                request,
                result,
            } => write!(f, "node {node}: membership request {request:#x} -> {result}"),
            Event::Calm => f.write_str(
                "faults stop: heal, restart every node, no losses; liveness is required",
            ),
            Event::LeadersAgreed => f.write_str("every range has a leader every node agrees on"),
            Event::Sweep { keys } => write!(f, "final sweep reads {keys} keys"),
            Event::Done { ticks } => write!(f, "done after {ticks} ticks"),
        }
    }
}

/// The trace of one run.
#[derive(Debug)]
pub struct Trace {
    recent: VecDeque<(u64, u64, Event)>,
    echo: bool,
    all: Option<Vec<String>>,
    count: u64,
}

fn line(tick: u64, step: u64, event: &Event) -> String {
    format!("[{tick:>5}.{step}] {event}")
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

    /// Records `event` at `step` of `tick`.
    pub fn push(&mut self, tick: u64, step: u64, event: Event) {
        self.count += 1;
        if self.echo || self.all.is_some() {
            let text = line(tick, step, &event);
            if self.echo {
                println!("{text}");
            }
            if let Some(all) = &mut self.all {
                all.push(text);
            }
        }
        if self.recent.len() == RECENT_EVENTS_MAX {
            self.recent.pop_front();
        }
        self.recent.push_back((tick, step, event));
    }

    /// How many events were recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The last events, formatted.
    pub fn recent(&self) -> Vec<String> {
        self.recent
            .iter()
            .map(|(tick, step, event)| line(*tick, *step, event))
            .collect()
    }

    /// Every event, when the trace was made with `keep_all`.
    pub fn take_all(&mut self) -> Vec<String> {
        self.all.take().unwrap_or_default()
    }
}
