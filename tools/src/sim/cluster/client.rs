//! Simulated clients: processes with at most one operation in flight, and
//! how a node's answer becomes a history outcome.
//!
//! What `NodeCore` guarantees decides the outcome (see
//! [`outcome_of`]): an error it returns from `submit` before proposing
//! (`Unavailable`, `Refused`, `RangeMismatch`, `RangeNotFound`,
//! `InvalidArgument`) certainly had no effect, and so does a CAS whose
//! comparison failed or a command the state machine rejected; a `Timeout`,
//! any error it may add later, and every operation in flight at a node
//! that crashed are unknown (`info`).

use flotilla::node::{NodeError, Request, RequestId, Response};
use flotilla::range::{Command, CommandResult};
use flotilla_transport::NodeId;

use crate::history::{Op, Outcome, Pending};

/// One of the operations a client issues.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientOp {
    Read,
    Write(String),
    Delete,
    Cas {
        expected: Option<String>,
        new: String,
    },
}

impl ClientOp {
    /// The history's view of the operation.
    pub fn history_op(&self) -> Op {
        match self {
            ClientOp::Read => Op::Read(None),
            ClientOp::Write(value) => Op::Write(value.clone()),
            ClientOp::Delete => Op::Delete,
            ClientOp::Cas { expected, new } => Op::Cas {
                expected: expected.clone(),
                new: new.clone(),
            },
        }
    }

    /// The request that performs the operation on `key`.
    pub fn request(&self, key: &[u8]) -> Request {
        let key = key.to_vec();
        match self {
            ClientOp::Read => Request::Get { key },
            ClientOp::Write(value) => Request::Write(Command::Put {
                key,
                value: value.clone().into_bytes(),
            }),
            ClientOp::Delete => Request::Write(Command::Delete { key }),
            ClientOp::Cas { expected, new } => Request::Write(Command::Cas {
                key,
                expected: expected.clone().map(String::into_bytes),
                new: Some(new.clone().into_bytes()),
            }),
        }
    }

    /// For the trace.
    pub fn describe(&self) -> String {
        match self {
            ClientOp::Read => "read".to_string(),
            ClientOp::Write(value) => format!("write {value}"),
            ClientOp::Delete => "delete".to_string(),
            ClientOp::Cas { expected, new } => format!("cas {expected:?}->{new}"),
        }
    }
}

/// An operation waiting for its node.
#[derive(Debug)]
pub struct InFlight {
    pub node: NodeId,
    pub request: RequestId,
    pub key: usize,
    pub op: ClientOp,
    pub pending: Pending,
    pub submitted_tick: u64,
}

#[derive(Debug)]
pub enum ClientState {
    Idle { ready_step: u64 },
    Waiting(InFlight),
}

/// A simulated client process.
#[derive(Debug)]
pub struct Client {
    pub process: u64,
    /// The node it sends to while that node is up.
    pub home: NodeId,
    pub state: ClientState,
    /// A sweep client reads this one key once, at the end.
    pub sweep_key: Option<usize>,
    /// In the calm phase: operations that must still complete with a
    /// definite outcome (ok, or a CAS that failed its comparison).
    pub definite_left: u32,
}

impl Client {
    pub fn is_idle(&self) -> bool {
        matches!(self.state, ClientState::Idle { .. })
    }
}

/// How a completed operation ends in the history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completed {
    pub outcome: Outcome,
    /// Whether the outcome is definite (ok or a failed comparison), which
    /// is what the liveness check counts; errors that say "try again" and
    /// unknown outcomes are not.
    pub definite: bool,
}

fn string_of(bytes: Vec<u8>) -> Result<String, String> {
    String::from_utf8(bytes).map_err(|e| format!("a value no client wrote: {e}"))
}

/// Maps a node's answer to `op` to its outcome. `Err` is an answer the
/// node must never give (the wrong kind of response, a CAS whose result
/// contradicts itself): a protocol violation.
pub fn outcome_of(op: &ClientOp, result: Result<Response, NodeError>) -> Result<Completed, String> {
    let ok = |outcome| Completed {
        outcome,
        definite: true,
    };
    let not_applied = Completed {
        outcome: Outcome::Fail,
        definite: false,
    };
    let response = match result {
        Ok(response) => response,
        Err(
            NodeError::Unavailable(_)
            | NodeError::Refused(_)
            | NodeError::RangeMismatch(_)
            | NodeError::RangeNotFound(_)
            | NodeError::InvalidArgument(_),
        ) => return Ok(not_applied),
        Err(_) => {
            return Ok(Completed {
                outcome: Outcome::Info,
                definite: false,
            })
        }
    };
    match (op, response) {
        (ClientOp::Read, Response::Value(value)) => {
            Ok(ok(Outcome::OkRead(value.map(string_of).transpose()?)))
        }
        (ClientOp::Read, other) => Err(format!("a read answered with {other:?}")),
        (_, Response::Write(CommandResult::Rejected(_))) => Ok(not_applied),
        (ClientOp::Write(_), Response::Write(CommandResult::Applied)) => Ok(ok(Outcome::Ok)),
        (ClientOp::Delete, Response::Write(CommandResult::Deleted { count })) if count <= 1 => {
            Ok(ok(Outcome::Ok))
        }
        (
            ClientOp::Cas { expected, .. },
            Response::Write(CommandResult::CasResult { succeeded, current }),
        ) => {
            let current = current.map(string_of).transpose()?;
            if succeeded != (current == *expected) {
                return Err(format!(
                    "cas expecting {expected:?} reports succeeded={succeeded} with current \
                     {current:?}"
                ));
            }
            if succeeded {
                Ok(ok(Outcome::Ok))
            } else {
                Ok(ok(Outcome::Fail))
            }
        }
        (op, other) => Err(format!("{} answered with {other:?}", op.describe())),
    }
}

/// For the trace.
pub fn describe_outcome(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Ok => "ok".to_string(),
        Outcome::OkRead(value) => format!("ok {value:?}"),
        Outcome::Fail => "fail".to_string(),
        Outcome::Info => "info".to_string(),
    }
}
