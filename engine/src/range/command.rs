//! The commands a range's Raft log carries, their results, and the byte
//! encoding of both.
//!
//! Every replica decodes every committed entry and every forwarded proposal
//! crosses the network, so the encoding is hand-written to be:
//!
//! - **compact**: lengths and counts are varints, a small put costs a few
//!   bytes over its key and value;
//! - **canonical**: each value has exactly one encoding (minimal varints,
//!   booleans and option markers only 0 or 1, no trailing bytes), so
//!   re-encoding a decoded proposal reproduces its bytes;
//! - **versioned**: a leading version byte lets a later format coexist with
//!   entries already in logs and snapshots;
//! - **safe on hostile input**: decoding never panics, never allocates more
//!   than the input can justify, and refuses nested batches so recursion depth
//!   is bounded. Decoding checks structure only; the limits a command must
//!   respect are checked by [`Command::validate`], which apply runs too.
//!
//! # Encoding, version 1
//!
//! Notation: `u8` is one byte; `varint` is unsigned LEB128 (7 bits per byte,
//! least significant group first, high bit set on all bytes but the last), at
//! most 10 bytes and minimal; `bytes` is a `varint` length then that many
//! bytes; `opt` is `u8` 0 for `None`, or `u8` 1 then `bytes`; `bool` is `u8`
//! 0 or 1.
//!
//! A [`Proposal`] is `u8` version (1), `varint` request id, then a command.
//!
//! | tag | command       | fields after the tag                                 |
//! |-----|---------------|------------------------------------------------------|
//! | 1   | `Put`         | key `bytes`, value `bytes`                           |
//! | 2   | `Delete`      | key `bytes`                                          |
//! | 3   | `Cas`         | key `bytes`, expected `opt`, new `opt`               |
//! | 4   | `DeleteRange` | start `bytes`, end `bytes` (empty end = +infinity)   |
//! | 5   | `Batch`       | count `varint`, then `count` commands, none tag 5    |
//!
//! A [`CommandResult`], encoded on its own for replies to forwarded
//! proposals, is `u8` version (1) then a result:
//!
//! | tag | result         | fields after the tag                                |
//! |-----|----------------|-----------------------------------------------------|
//! | 1   | `Applied`      |                                                     |
//! | 2   | `CasResult`    | succeeded `bool`, current `opt`                     |
//! | 3   | `Deleted`      | count `varint`                                      |
//! | 4   | `Batch`        | count `varint`, then `count` results with tag 1–3   |
//! | 5   | `BatchAborted` | failed op `varint`, current `opt`                   |
//! | 6   | `Rejected`     | a reject reason                                     |
//!
//! | tag | reject reason      | fields after the tag                          |
//! |-----|--------------------|-----------------------------------------------|
//! | 1   | `KeyOutsideSpan`   | key `bytes`, span start `bytes`, span end `bytes` |
//! | 2   | `RangeOutsideSpan` | start `bytes`, end `bytes`, span start `bytes`, span end `bytes` |
//! | 3   | `Invalid`          | an invalid argument                           |
//!
//! | tag | invalid argument   | fields after the tag |
//! |-----|--------------------|----------------------|
//! | 1   | `EmptyKey`         |                      |
//! | 2   | `KeyTooLong`       | len `varint`         |
//! | 3   | `ValueTooLarge`    | len `varint`         |
//! | 4   | `BatchTooLarge`    | ops `varint`         |
//! | 5   | `BatchTooManyBytes`| bytes `varint`       |
//! | 6   | `NestedBatch`      |                      |
//! | 7   | `EndBeforeStart`   |                      |
//!
//! Example: `Proposal { request_id: 1, command: Put { key: "a", value: "b" } }`
//! encodes as `01 01 01 01 61 01 62`.

use thiserror::Error;

use super::codec::{put_bytes, put_opt_bytes, put_varint, Reader};
pub use super::codec::{DecodeError, DecodeReason};
use super::span::KeySpan;

/// Longest key, in bytes. Keys are copied into every index level and every
/// range boundary, so they stay small.
pub const MAX_KEY_BYTES: usize = 4 * 1024;
/// Largest value, in bytes. One value must fit comfortably in one Raft entry
/// and one snapshot frame.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Most operations in one batch; bounds the work one entry does on apply.
pub const MAX_BATCH_OPS: usize = 1_000;
/// Most key and value bytes in one batch, summed over its operations. Without
/// it a batch of [`MAX_BATCH_OPS`] maximal values would make a 1 GiB Raft
/// entry; this keeps one entry (and one apply) a few MiB at most.
pub const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// The version byte every encoding starts with.
pub const ENCODING_VERSION: u8 = 1;

const CMD_PUT: u8 = 1;
const CMD_DELETE: u8 = 2;
const CMD_CAS: u8 = 3;
const CMD_DELETE_RANGE: u8 = 4;
const CMD_BATCH: u8 = 5;

const RES_APPLIED: u8 = 1;
const RES_CAS: u8 = 2;
const RES_DELETED: u8 = 3;
const RES_BATCH: u8 = 4;
const RES_BATCH_ABORTED: u8 = 5;
const RES_REJECTED: u8 = 6;

const REJ_KEY: u8 = 1;
const REJ_RANGE: u8 = 2;
const REJ_INVALID: u8 = 3;

const INV_EMPTY_KEY: u8 = 1;
const INV_KEY_TOO_LONG: u8 = 2;
const INV_VALUE_TOO_LARGE: u8 = 3;
const INV_BATCH_TOO_LARGE: u8 = 4;
const INV_BATCH_TOO_MANY_BYTES: u8 = 5;
const INV_NESTED_BATCH: u8 = 6;
const INV_END_BEFORE_START: u8 = 7;

/// One change to a range's key-value map, as carried in its Raft log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Set `key` to `value`, whether or not it exists.
    Put {
        /// The key; 1 to [`MAX_KEY_BYTES`] bytes.
        key: Vec<u8>,
        /// The value; at most [`MAX_VALUE_BYTES`] bytes, may be empty.
        value: Vec<u8>,
    },
    /// Remove `key` if it exists.
    Delete {
        /// The key; 1 to [`MAX_KEY_BYTES`] bytes.
        key: Vec<u8>,
    },
    /// Compare-and-swap: if `key` currently holds `expected` (`None`: the key
    /// must be absent), set it to `new` (`None`: delete it).
    Cas {
        /// The key; 1 to [`MAX_KEY_BYTES`] bytes.
        key: Vec<u8>,
        /// The value the key must hold, or `None` for "must be absent".
        expected: Option<Vec<u8>>,
        /// The value to store on success, or `None` to delete the key.
        new: Option<Vec<u8>>,
    },
    /// Remove every key in `[start, end)`. An empty `start` is the smallest
    /// key; an empty `end` means +infinity, like a [`KeySpan`]. The interval
    /// must lie inside the range's span: the router splits a multi-range
    /// delete per range, as it does for scans.
    DeleteRange {
        /// Inclusive lower bound.
        start: Vec<u8>,
        /// Exclusive upper bound; empty means +infinity.
        end: Vec<u8>,
    },
    /// Operations applied as one unit at one log index. Each sees the effects
    /// of the ones before it. All or nothing: if any key is outside the range
    /// the batch is rejected untouched, and if a `Cas` in it fails every
    /// earlier operation is undone and the result is
    /// [`CommandResult::BatchAborted`]. Batches do not nest.
    Batch(Vec<Command>),
}

/// A command with the id its proposer uses to match the result to the caller
/// waiting for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    /// Chosen by the proposer; opaque to the state machine.
    pub request_id: u64,
    /// What to do.
    pub command: Command,
}

/// What applying a command did. The same on every replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandResult {
    /// A `Put` was applied.
    Applied,
    /// The outcome of a `Cas`.
    CasResult {
        /// Whether the key held `expected` and so was changed.
        succeeded: bool,
        /// The value the key held when the `Cas` was evaluated (on success,
        /// equal to `expected`), so a failed caller can retry without a read.
        current: Option<Vec<u8>>,
    },
    /// A `Delete` (count 0 or 1) or `DeleteRange` removed `count` keys.
    Deleted {
        /// Keys removed.
        count: u64,
    },
    /// A batch committed; one result per operation, in order.
    Batch(Vec<CommandResult>),
    /// A batch was undone because its `Cas` at position `failed_op` failed.
    /// No operation of the batch took effect.
    BatchAborted {
        /// Zero-based position of the failing `Cas` in the batch.
        failed_op: u32,
        /// The value that key held when the `Cas` was evaluated (after the
        /// batch's earlier operations).
        current: Option<Vec<u8>>,
    },
    /// The command was not applied, and the state did not change.
    Rejected(RejectReason),
}

/// Why a command was not applied. Decided at apply time from the command and
/// the range's span only, so every replica decides the same.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RejectReason {
    /// A key lies outside the range: the proposer's range cache is stale (the
    /// range split or merged). Refresh the range descriptor and retry.
    #[error(
        "key {} is outside the range {span}; refresh the range cache and retry",
        super::span::DisplayKey(key)
    )]
    KeyOutsideSpan {
        /// The first offending key.
        key: Vec<u8>,
        /// The range's span at apply time.
        span: KeySpan,
    },
    /// A `DeleteRange` reaches outside the range. Split it along range
    /// boundaries (refresh the range cache) and retry.
    #[error(
        "delete-range [{}, {}) is not inside the range {span}; split it per range and retry",
        super::span::DisplayKey(start),
        super::span::DisplayBound(end)
    )]
    RangeOutsideSpan {
        /// Lower bound of the offending interval.
        start: Vec<u8>,
        /// Upper bound of the offending interval; empty means +infinity.
        end: Vec<u8>,
        /// The range's span at apply time.
        span: KeySpan,
    },
    /// The command breaks a limit. A proposer that validates first never sees
    /// this; apply re-checks so that a bad entry in the log has a defined,
    /// deterministic outcome.
    #[error("invalid command: {0}")]
    Invalid(InvalidArgument),
}

/// A request that breaks the documented limits or shape. Fix the request;
/// retrying it unchanged fails the same way.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum InvalidArgument {
    /// Keys are at least one byte long; the empty key is reserved as the
    /// "beginning of keyspace" bound.
    #[error("key is empty; keys must be 1 to {MAX_KEY_BYTES} bytes")]
    EmptyKey,
    /// A key or bound is longer than [`MAX_KEY_BYTES`].
    #[error("key is {len} bytes; at most {MAX_KEY_BYTES} are allowed")]
    KeyTooLong {
        /// Its length.
        len: u64,
    },
    /// A value is larger than [`MAX_VALUE_BYTES`]; store large blobs
    /// elsewhere and keep a reference here.
    #[error("value is {len} bytes; at most {MAX_VALUE_BYTES} are allowed")]
    ValueTooLarge {
        /// Its length.
        len: u64,
    },
    /// A batch has more than [`MAX_BATCH_OPS`] operations; split it.
    #[error("batch has {ops} operations; at most {MAX_BATCH_OPS} are allowed, split it")]
    BatchTooLarge {
        /// Operations in the batch.
        ops: u64,
    },
    /// A batch carries more than [`MAX_BATCH_BYTES`] of keys and values; split it.
    #[error("batch carries {bytes} key and value bytes; at most {MAX_BATCH_BYTES} are allowed, split it")]
    BatchTooManyBytes {
        /// Key and value bytes in the batch.
        bytes: u64,
    },
    /// A batch contains a batch; flatten it.
    #[error("a batch cannot contain another batch; flatten it")]
    NestedBatch,
    /// An interval's end is before its start.
    #[error("interval end is before its start")]
    EndBeforeStart,
}

impl Command {
    /// Checks the documented limits. Proposers call this before proposing, so
    /// a bad request fails fast with a clear error instead of taking a log
    /// slot; apply calls it again because the log is input too.
    pub fn validate(&self) -> Result<(), InvalidArgument> {
        match self {
            Command::Batch(ops) => {
                if ops.len() > MAX_BATCH_OPS {
                    return Err(InvalidArgument::BatchTooLarge {
                        ops: ops.len() as u64,
                    });
                }
                let mut bytes: u64 = 0;
                for op in ops {
                    if matches!(op, Command::Batch(_)) {
                        return Err(InvalidArgument::NestedBatch);
                    }
                    op.validate()?;
                    bytes += op.payload_bytes();
                }
                if bytes > MAX_BATCH_BYTES as u64 {
                    return Err(InvalidArgument::BatchTooManyBytes { bytes });
                }
                Ok(())
            }
            Command::Put { key, value } => {
                validate_key(key)?;
                validate_value(value)
            }
            Command::Delete { key } => validate_key(key),
            Command::Cas { key, expected, new } => {
                validate_key(key)?;
                for value in [expected, new].into_iter().flatten() {
                    validate_value(value)?;
                }
                Ok(())
            }
            Command::DeleteRange { start, end } => {
                validate_bound(start)?;
                validate_bound(end)?;
                if !end.is_empty() && end < start {
                    return Err(InvalidArgument::EndBeforeStart);
                }
                Ok(())
            }
        }
    }

    /// Key and value bytes the command carries, the measure [`MAX_BATCH_BYTES`] bounds.
    fn payload_bytes(&self) -> u64 {
        let len = |b: &Vec<u8>| b.len() as u64;
        match self {
            Command::Put { key, value } => len(key) + len(value),
            Command::Delete { key } => len(key),
            Command::Cas { key, expected, new } => {
                len(key) + expected.as_ref().map_or(0, len) + new.as_ref().map_or(0, len)
            }
            Command::DeleteRange { start, end } => len(start) + len(end),
            Command::Batch(ops) => ops.iter().map(Command::payload_bytes).sum(),
        }
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Command::Put { key, value } => {
                out.push(CMD_PUT);
                put_bytes(out, key);
                put_bytes(out, value);
            }
            Command::Delete { key } => {
                out.push(CMD_DELETE);
                put_bytes(out, key);
            }
            Command::Cas { key, expected, new } => {
                out.push(CMD_CAS);
                put_bytes(out, key);
                put_opt_bytes(out, expected.as_deref());
                put_opt_bytes(out, new.as_deref());
            }
            Command::DeleteRange { start, end } => {
                out.push(CMD_DELETE_RANGE);
                put_bytes(out, start);
                put_bytes(out, end);
            }
            Command::Batch(ops) => {
                out.push(CMD_BATCH);
                put_varint(out, ops.len() as u64);
                for op in ops {
                    op.encode_into(out);
                }
            }
        }
    }

    fn decode_from(r: &mut Reader<'_>, in_batch: bool) -> Result<Command, DecodeError> {
        let at = r.pos();
        let tag = r.u8("command tag")?;
        let command = match tag {
            CMD_PUT => Command::Put {
                key: r.bytes("key")?.to_vec(),
                value: r.bytes("value")?.to_vec(),
            },
            CMD_DELETE => Command::Delete {
                key: r.bytes("key")?.to_vec(),
            },
            CMD_CAS => Command::Cas {
                key: r.bytes("key")?.to_vec(),
                expected: r.opt_bytes("expected value")?.map(<[u8]>::to_vec),
                new: r.opt_bytes("new value")?.map(<[u8]>::to_vec),
            },
            CMD_DELETE_RANGE => Command::DeleteRange {
                start: r.bytes("delete-range start")?.to_vec(),
                end: r.bytes("delete-range end")?.to_vec(),
            },
            CMD_BATCH if in_batch => return Err(r.error_at(at, DecodeReason::NestedBatch)),
            CMD_BATCH => {
                let count = r.varint_usize("batch count")?;
                // Every command takes at least two bytes, so the input bounds
                // how many a hostile count can make us reserve.
                let mut ops = Vec::with_capacity(count.min(r.remaining() / 2));
                for _ in 0..count {
                    ops.push(Command::decode_from(r, true)?);
                }
                Command::Batch(ops)
            }
            tag => {
                return Err(r.error_at(
                    at,
                    DecodeReason::UnknownTag {
                        what: "command",
                        tag,
                    },
                ))
            }
        };
        Ok(command)
    }
}

impl Proposal {
    /// Encodes the proposal as documented in the module docs.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.command.payload_bytes() as usize);
        out.push(ENCODING_VERSION);
        put_varint(&mut out, self.request_id);
        self.command.encode_into(&mut out);
        out
    }

    /// Decodes a whole proposal; trailing bytes are an error. Checks structure
    /// only: call [`Command::validate`] for the limits.
    pub fn decode(bytes: &[u8]) -> Result<Proposal, DecodeError> {
        let mut r = Reader::new(bytes);
        read_version(&mut r)?;
        let request_id = r.varint("request id")?;
        let command = Command::decode_from(&mut r, false)?;
        r.finish()?;
        Ok(Proposal {
            request_id,
            command,
        })
    }
}

impl CommandResult {
    /// Encodes the result as documented in the module docs.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![ENCODING_VERSION];
        self.encode_into(&mut out);
        out
    }

    /// Decodes a whole result; trailing bytes are an error.
    pub fn decode(bytes: &[u8]) -> Result<CommandResult, DecodeError> {
        let mut r = Reader::new(bytes);
        read_version(&mut r)?;
        let result = CommandResult::decode_from(&mut r, false)?;
        r.finish()?;
        Ok(result)
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            CommandResult::Applied => out.push(RES_APPLIED),
            CommandResult::CasResult { succeeded, current } => {
                out.push(RES_CAS);
                out.push(u8::from(*succeeded));
                put_opt_bytes(out, current.as_deref());
            }
            CommandResult::Deleted { count } => {
                out.push(RES_DELETED);
                put_varint(out, *count);
            }
            CommandResult::Batch(results) => {
                out.push(RES_BATCH);
                put_varint(out, results.len() as u64);
                for result in results {
                    result.encode_into(out);
                }
            }
            CommandResult::BatchAborted { failed_op, current } => {
                out.push(RES_BATCH_ABORTED);
                put_varint(out, u64::from(*failed_op));
                put_opt_bytes(out, current.as_deref());
            }
            CommandResult::Rejected(reason) => {
                out.push(RES_REJECTED);
                reason.encode_into(out);
            }
        }
    }

    fn decode_from(r: &mut Reader<'_>, in_batch: bool) -> Result<CommandResult, DecodeError> {
        let at = r.pos();
        let tag = r.u8("result tag")?;
        let result = match tag {
            RES_APPLIED => CommandResult::Applied,
            RES_CAS => {
                let flag_at = r.pos();
                let succeeded = match r.u8("cas succeeded")? {
                    0 => false,
                    1 => true,
                    tag => {
                        return Err(
                            r.error_at(flag_at, DecodeReason::UnknownTag { what: "bool", tag })
                        )
                    }
                };
                let current = r.opt_bytes("current value")?.map(<[u8]>::to_vec);
                CommandResult::CasResult { succeeded, current }
            }
            RES_DELETED => CommandResult::Deleted {
                count: r.varint("deleted count")?,
            },
            RES_BATCH | RES_BATCH_ABORTED | RES_REJECTED if in_batch => {
                return Err(r.error_at(
                    at,
                    DecodeReason::UnknownTag {
                        what: "batch item result",
                        tag,
                    },
                ))
            }
            RES_BATCH => {
                let count = r.varint_usize("batch result count")?;
                let mut results = Vec::with_capacity(count.min(r.remaining()));
                for _ in 0..count {
                    results.push(CommandResult::decode_from(r, true)?);
                }
                CommandResult::Batch(results)
            }
            RES_BATCH_ABORTED => {
                let op_at = r.pos();
                let op = r.varint("failed op")?;
                let failed_op = u32::try_from(op).map_err(|_| {
                    r.error_at(
                        op_at,
                        DecodeReason::OutOfRange {
                            what: "failed op",
                            value: op,
                        },
                    )
                })?;
                let current = r.opt_bytes("current value")?.map(<[u8]>::to_vec);
                CommandResult::BatchAborted { failed_op, current }
            }
            RES_REJECTED => CommandResult::Rejected(RejectReason::decode_from(r)?),
            tag => {
                return Err(r.error_at(
                    at,
                    DecodeReason::UnknownTag {
                        what: "result",
                        tag,
                    },
                ))
            }
        };
        Ok(result)
    }
}

impl RejectReason {
    fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            RejectReason::KeyOutsideSpan { key, span } => {
                out.push(REJ_KEY);
                put_bytes(out, key);
                put_span(out, span);
            }
            RejectReason::RangeOutsideSpan { start, end, span } => {
                out.push(REJ_RANGE);
                put_bytes(out, start);
                put_bytes(out, end);
                put_span(out, span);
            }
            RejectReason::Invalid(invalid) => {
                out.push(REJ_INVALID);
                invalid.encode_into(out);
            }
        }
    }

    fn decode_from(r: &mut Reader<'_>) -> Result<RejectReason, DecodeError> {
        let at = r.pos();
        let reason = match r.u8("reject reason tag")? {
            REJ_KEY => RejectReason::KeyOutsideSpan {
                key: r.bytes("key")?.to_vec(),
                span: read_span(r)?,
            },
            REJ_RANGE => RejectReason::RangeOutsideSpan {
                start: r.bytes("delete-range start")?.to_vec(),
                end: r.bytes("delete-range end")?.to_vec(),
                span: read_span(r)?,
            },
            REJ_INVALID => RejectReason::Invalid(InvalidArgument::decode_from(r)?),
            tag => {
                return Err(r.error_at(
                    at,
                    DecodeReason::UnknownTag {
                        what: "reject reason",
                        tag,
                    },
                ))
            }
        };
        Ok(reason)
    }
}

impl InvalidArgument {
    fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            InvalidArgument::EmptyKey => out.push(INV_EMPTY_KEY),
            InvalidArgument::KeyTooLong { len } => {
                out.push(INV_KEY_TOO_LONG);
                put_varint(out, *len);
            }
            InvalidArgument::ValueTooLarge { len } => {
                out.push(INV_VALUE_TOO_LARGE);
                put_varint(out, *len);
            }
            InvalidArgument::BatchTooLarge { ops } => {
                out.push(INV_BATCH_TOO_LARGE);
                put_varint(out, *ops);
            }
            InvalidArgument::BatchTooManyBytes { bytes } => {
                out.push(INV_BATCH_TOO_MANY_BYTES);
                put_varint(out, *bytes);
            }
            InvalidArgument::NestedBatch => out.push(INV_NESTED_BATCH),
            InvalidArgument::EndBeforeStart => out.push(INV_END_BEFORE_START),
        }
    }

    fn decode_from(r: &mut Reader<'_>) -> Result<InvalidArgument, DecodeError> {
        let at = r.pos();
        let invalid = match r.u8("invalid argument tag")? {
            INV_EMPTY_KEY => InvalidArgument::EmptyKey,
            INV_KEY_TOO_LONG => InvalidArgument::KeyTooLong {
                len: r.varint("length")?,
            },
            INV_VALUE_TOO_LARGE => InvalidArgument::ValueTooLarge {
                len: r.varint("length")?,
            },
            INV_BATCH_TOO_LARGE => InvalidArgument::BatchTooLarge {
                ops: r.varint("ops")?,
            },
            INV_BATCH_TOO_MANY_BYTES => InvalidArgument::BatchTooManyBytes {
                bytes: r.varint("bytes")?,
            },
            INV_NESTED_BATCH => InvalidArgument::NestedBatch,
            INV_END_BEFORE_START => InvalidArgument::EndBeforeStart,
            tag => {
                return Err(r.error_at(
                    at,
                    DecodeReason::UnknownTag {
                        what: "invalid argument",
                        tag,
                    },
                ))
            }
        };
        Ok(invalid)
    }
}

fn validate_key(key: &[u8]) -> Result<(), InvalidArgument> {
    if key.is_empty() {
        return Err(InvalidArgument::EmptyKey);
    }
    validate_bound(key)
}

/// Interval bounds may be empty (they then mean "unbounded") but are
/// otherwise keys.
fn validate_bound(bound: &[u8]) -> Result<(), InvalidArgument> {
    if bound.len() > MAX_KEY_BYTES {
        return Err(InvalidArgument::KeyTooLong {
            len: bound.len() as u64,
        });
    }
    Ok(())
}

fn validate_value(value: &[u8]) -> Result<(), InvalidArgument> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(InvalidArgument::ValueTooLarge {
            len: value.len() as u64,
        });
    }
    Ok(())
}

fn read_version(r: &mut Reader<'_>) -> Result<(), DecodeError> {
    let at = r.pos();
    match r.u8("version")? {
        ENCODING_VERSION => Ok(()),
        v => Err(r.error_at(at, DecodeReason::UnsupportedVersion(v))),
    }
}

fn put_span(out: &mut Vec<u8>, span: &KeySpan) {
    put_bytes(out, span.start());
    put_bytes(out, span.end());
}

fn read_span(r: &mut Reader<'_>) -> Result<KeySpan, DecodeError> {
    let at = r.pos();
    let start = r.bytes("span start")?.to_vec();
    let end = r.bytes("span end")?.to_vec();
    KeySpan::new(start, end).map_err(|e| r.error_at(at, DecodeReason::InvalidSpan(e)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    fn key() -> impl Strategy<Value = Vec<u8>> {
        vec(any::<u8>(), 0..8)
    }

    fn opt_value() -> impl Strategy<Value = Option<Vec<u8>>> {
        proptest::option::of(vec(any::<u8>(), 0..8))
    }

    fn single_command() -> impl Strategy<Value = Command> {
        prop_oneof![
            (key(), key()).prop_map(|(key, value)| Command::Put { key, value }),
            key().prop_map(|key| Command::Delete { key }),
            (key(), opt_value(), opt_value()).prop_map(|(key, expected, new)| Command::Cas {
                key,
                expected,
                new
            }),
            (key(), key()).prop_map(|(start, end)| Command::DeleteRange { start, end }),
        ]
    }

    /// Any structurally encodable command, valid or not.
    pub(crate) fn command() -> impl Strategy<Value = Command> {
        prop_oneof![
            4 => single_command(),
            1 => vec(single_command(), 0..6).prop_map(Command::Batch),
        ]
    }

    fn span() -> impl Strategy<Value = KeySpan> {
        (key(), key()).prop_map(|(a, b)| {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            KeySpan::new(lo.clone(), hi).unwrap_or_else(|_| KeySpan::new(lo, Vec::new()).unwrap())
        })
    }

    fn invalid() -> impl Strategy<Value = InvalidArgument> {
        prop_oneof![
            Just(InvalidArgument::EmptyKey),
            any::<u64>().prop_map(|len| InvalidArgument::KeyTooLong { len }),
            any::<u64>().prop_map(|len| InvalidArgument::ValueTooLarge { len }),
            any::<u64>().prop_map(|ops| InvalidArgument::BatchTooLarge { ops }),
            any::<u64>().prop_map(|bytes| InvalidArgument::BatchTooManyBytes { bytes }),
            Just(InvalidArgument::NestedBatch),
            Just(InvalidArgument::EndBeforeStart),
        ]
    }

    fn single_result() -> impl Strategy<Value = CommandResult> {
        prop_oneof![
            Just(CommandResult::Applied),
            (any::<bool>(), opt_value())
                .prop_map(|(succeeded, current)| CommandResult::CasResult { succeeded, current }),
            any::<u64>().prop_map(|count| CommandResult::Deleted { count }),
        ]
    }

    fn result() -> impl Strategy<Value = CommandResult> {
        prop_oneof![
            single_result(),
            vec(single_result(), 0..5).prop_map(CommandResult::Batch),
            (any::<u32>(), opt_value()).prop_map(|(failed_op, current)| {
                CommandResult::BatchAborted { failed_op, current }
            }),
            (key(), span()).prop_map(|(key, span)| CommandResult::Rejected(
                RejectReason::KeyOutsideSpan { key, span }
            )),
            (key(), key(), span()).prop_map(|(start, end, span)| CommandResult::Rejected(
                RejectReason::RangeOutsideSpan { start, end, span }
            )),
            invalid().prop_map(|i| CommandResult::Rejected(RejectReason::Invalid(i))),
        ]
    }

    #[test]
    fn the_documented_example_encodes_as_documented() {
        let p = Proposal {
            request_id: 1,
            command: Command::Put {
                key: b"a".to_vec(),
                value: b"b".to_vec(),
            },
        };
        assert_eq!(p.encode(), [0x01, 0x01, 0x01, 0x01, 0x61, 0x01, 0x62]);
    }

    #[test]
    fn limits_are_inclusive() {
        let at_limit = Command::Batch(
            (0..MAX_BATCH_OPS)
                .map(|i| Command::Put {
                    key: vec![b'k'; MAX_KEY_BYTES],
                    value: vec![i as u8],
                })
                .collect(),
        );
        assert_eq!(at_limit.validate(), Ok(()));
        let big = Command::Put {
            key: b"k".to_vec(),
            value: vec![0; MAX_VALUE_BYTES],
        };
        assert_eq!(big.validate(), Ok(()));
        let empty_range = Command::DeleteRange {
            start: b"b".to_vec(),
            end: b"b".to_vec(),
        };
        assert_eq!(empty_range.validate(), Ok(()));
        let unbounded = Command::DeleteRange {
            start: b"z".to_vec(),
            end: Vec::new(),
        };
        assert_eq!(unbounded.validate(), Ok(()));
        assert_eq!(Command::Batch(Vec::new()).validate(), Ok(()));
    }

    #[test]
    fn each_broken_limit_has_its_own_error() {
        let put = |key: Vec<u8>, value: Vec<u8>| Command::Put { key, value };
        assert_eq!(
            put(Vec::new(), Vec::new()).validate(),
            Err(InvalidArgument::EmptyKey)
        );
        assert_eq!(
            Command::Delete {
                key: vec![1; MAX_KEY_BYTES + 1]
            }
            .validate(),
            Err(InvalidArgument::KeyTooLong {
                len: MAX_KEY_BYTES as u64 + 1
            })
        );
        assert_eq!(
            put(b"k".to_vec(), vec![0; MAX_VALUE_BYTES + 1]).validate(),
            Err(InvalidArgument::ValueTooLarge {
                len: MAX_VALUE_BYTES as u64 + 1
            })
        );
        let cas = Command::Cas {
            key: b"k".to_vec(),
            expected: Some(vec![0; MAX_VALUE_BYTES + 1]),
            new: None,
        };
        assert!(matches!(
            cas.validate(),
            Err(InvalidArgument::ValueTooLarge { .. })
        ));
        let many = Command::Batch(vec![
            Command::Delete { key: b"k".to_vec() };
            MAX_BATCH_OPS + 1
        ]);
        assert_eq!(
            many.validate(),
            Err(InvalidArgument::BatchTooLarge {
                ops: MAX_BATCH_OPS as u64 + 1
            })
        );
        let heavy = Command::Batch(vec![put(b"k".to_vec(), vec![0; MAX_VALUE_BYTES]); 9]);
        assert!(matches!(
            heavy.validate(),
            Err(InvalidArgument::BatchTooManyBytes { .. })
        ));
        let nested = Command::Batch(vec![Command::Batch(Vec::new())]);
        assert_eq!(nested.validate(), Err(InvalidArgument::NestedBatch));
        let inverted = Command::DeleteRange {
            start: b"b".to_vec(),
            end: b"a".to_vec(),
        };
        assert_eq!(inverted.validate(), Err(InvalidArgument::EndBeforeStart));
        let inner_bad = Command::Batch(vec![put(Vec::new(), Vec::new())]);
        assert_eq!(inner_bad.validate(), Err(InvalidArgument::EmptyKey));
    }

    #[test]
    fn nested_batches_are_refused_by_the_decoder() {
        // version, request id 0, batch of 1, whose op is a batch of 1, ...
        let mut bytes = vec![ENCODING_VERSION, 0];
        for _ in 0..10_000 {
            bytes.extend_from_slice(&[CMD_BATCH, 1]);
        }
        let err = Proposal::decode(&bytes).unwrap_err();
        assert_eq!(
            err,
            DecodeError {
                offset: 4,
                reason: DecodeReason::NestedBatch
            }
        );
    }

    #[test]
    fn decoding_names_the_problem_and_where() {
        let good = Proposal {
            request_id: 7,
            command: Command::Delete { key: b"k".to_vec() },
        };
        let bytes = good.encode();
        let mut v2 = bytes.clone();
        v2[0] = 2;
        assert_eq!(
            Proposal::decode(&v2).unwrap_err().reason,
            DecodeReason::UnsupportedVersion(2)
        );
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(
            Proposal::decode(&trailing).unwrap_err(),
            DecodeError {
                offset: bytes.len(),
                reason: DecodeReason::TrailingBytes(1)
            }
        );
        let err = Proposal::decode(&bytes[..bytes.len() - 1]).unwrap_err();
        assert!(
            matches!(err.reason, DecodeReason::Truncated { what: "key", .. }),
            "{err}"
        );
        let mut unknown = bytes.clone();
        unknown[2] = 99;
        assert_eq!(
            Proposal::decode(&unknown).unwrap_err(),
            DecodeError {
                offset: 2,
                reason: DecodeReason::UnknownTag {
                    what: "command",
                    tag: 99
                }
            }
        );
    }

    #[test]
    fn a_hostile_batch_count_does_not_allocate() {
        let mut bytes = vec![ENCODING_VERSION, 0, CMD_BATCH];
        put_varint(&mut bytes, u64::MAX >> 1);
        assert!(Proposal::decode(&bytes).is_err());
        let mut results = vec![ENCODING_VERSION, RES_BATCH];
        put_varint(&mut results, u64::MAX >> 1);
        assert!(CommandResult::decode(&results).is_err());
    }

    proptest! {
        #[test]
        fn proposals_round_trip(request_id: u64, command in command()) {
            let p = Proposal { request_id, command };
            prop_assert_eq!(Proposal::decode(&p.encode()), Ok(p));
        }

        #[test]
        fn results_round_trip(result in result()) {
            prop_assert_eq!(CommandResult::decode(&result.encode()), Ok(result));
        }

        #[test]
        fn random_bytes_never_panic_and_decode_canonically(tail in vec(any::<u8>(), 0..64)) {
            // Half the inputs get past the version byte, so the fuzzing
            // reaches the command and result decoders.
            let mut versioned = vec![ENCODING_VERSION];
            versioned.extend_from_slice(&tail);
            for bytes in [tail, versioned] {
                if let Ok(p) = Proposal::decode(&bytes) {
                    prop_assert_eq!(p.encode(), bytes.clone());
                }
                if let Ok(r) = CommandResult::decode(&bytes) {
                    prop_assert_eq!(r.encode(), bytes);
                }
            }
        }

        #[test]
        fn damaged_encodings_never_panic(
            request_id: u64,
            command in command(),
            result in result(),
            at: usize,
            byte: u8,
            cut: usize,
        ) {
            for mut bytes in [Proposal { request_id, command: command.clone() }.encode(), result.encode()] {
                let i = at % bytes.len();
                bytes[i] = byte;
                let _ = Proposal::decode(&bytes);
                let _ = CommandResult::decode(&bytes);
                let cut = cut % bytes.len();
                let _ = Proposal::decode(&bytes[..cut]);
                let _ = CommandResult::decode(&bytes[..cut]);
            }
        }
    }
}
