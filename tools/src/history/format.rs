//! The on-disk shape of a history: one JSON object per line.
//!
//! ```json
//! {"process": 3, "type": "invoke", "f": "write", "key": "k17", "value": "v9", "time": 1200}
//! {"process": 3, "type": "ok",     "f": "write", "key": "k17", "value": "v9", "time": 1850}
//! ```
//!
//! The field names and the meaning of `value` per `f` are fixed by
//! `HISTORY.md` because outside checkers read these files too:
//!
//! | `f`      | `value`                                                        |
//! |----------|----------------------------------------------------------------|
//! | `read`   | `null` at invoke; at `ok` the string read, or `null` if absent |
//! | `write`  | the string written                                             |
//! | `delete` | `null`                                                         |
//! | `cas`    | `[expected, new]`; `expected` is `null` when the key must be absent |
//!
//! In memory the pair (`f`, `value`) is one [`Op`], so an event whose value
//! does not fit its `f` cannot be built; the parser turns such a line into a
//! [`HistoryError`] that names the line instead.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

/// Where an event sits in an operation's life (`type` in the file).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    /// The client started the call.
    Invoke,
    /// The call took effect, with the recorded result.
    Ok,
    /// The call certainly did not take effect.
    Fail,
    /// Unknown: the call may or may not have taken effect (a timeout).
    Info,
}

/// Which operation (`f` in the file).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    /// Read the key's value.
    Read,
    /// Set the key's value.
    Write,
    /// Make the key absent.
    Delete,
    /// Compare-and-set.
    Cas,
}

impl OpKind {
    /// The name used in the file, for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Read => "read",
            OpKind::Write => "write",
            OpKind::Delete => "delete",
            OpKind::Cas => "cas",
        }
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl EventType {
    /// The name used in the file, for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Invoke => "invoke",
            EventType::Ok => "ok",
            EventType::Fail => "fail",
            EventType::Info => "info",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An operation with its argument or result: `f` and `value` together, so
/// that a value of the wrong shape for its operation cannot be represented.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `None` at invoke; at `ok`, the value read (`None` when absent).
    Read(Option<String>),
    /// The value written.
    Write(String),
    /// Remove the key.
    Delete,
    /// Set `new` if the current value equals `expected` (`None`: absent).
    Cas {
        /// The value the key must hold (`None`: the key must be absent).
        expected: Option<String>,
        /// The value stored when the comparison holds.
        new: String,
    },
}

impl Op {
    /// The `f` of this operation.
    pub fn kind(&self) -> OpKind {
        match self {
            Op::Read(_) => OpKind::Read,
            Op::Write(_) => OpKind::Write,
            Op::Delete => OpKind::Delete,
            Op::Cas { .. } => OpKind::Cas,
        }
    }
}

/// One line of a history.
///
/// Serialises to exactly the fields of `HISTORY.md`, in that order:
/// `process`, `type`, `f`, `key`, `value`, `time`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawEvent")]
pub struct Event {
    /// The client; it has at most one operation in flight.
    pub process: u64,
    /// Invoke or one of the three completions.
    pub kind: EventType,
    /// The register the operation addresses.
    pub key: String,
    /// `f` and `value`.
    pub op: Op,
    /// Nanoseconds on a monotonic (or simulated) clock.
    pub time: u64,
}

impl Event {
    /// The `f` of this event.
    pub fn f(&self) -> OpKind {
        self.op.kind()
    }
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Event", 6)?;
        s.serialize_field("process", &self.process)?;
        s.serialize_field("type", &self.kind)?;
        s.serialize_field("f", &self.op.kind())?;
        s.serialize_field("key", &self.key)?;
        match &self.op {
            Op::Read(value) => s.serialize_field("value", value)?,
            Op::Write(value) => s.serialize_field("value", value)?,
            Op::Delete => s.serialize_field("value", &())?,
            Op::Cas { expected, new } => s.serialize_field("value", &(expected, new))?,
        }
        s.serialize_field("time", &self.time)?;
        s.end()
    }
}

/// The line as JSON allows it, before `value` is checked against `f`.
///
/// A missing `value` reads as `null`, because some Jepsen-shaped writers
/// leave it out where it carries nothing (a read's invoke, a delete).
#[derive(Deserialize)]
struct RawEvent {
    process: u64,
    #[serde(rename = "type")]
    kind: EventType,
    f: OpKind,
    key: String,
    #[serde(default)]
    value: serde_json::Value,
    time: u64,
}

/// What is wrong with one event whose JSON is well formed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventError {
    /// `value` does not have the shape `HISTORY.md` gives for this `f` and `type`.
    BadValue {
        /// The event's `f`.
        f: OpKind,
        /// The event's `type`.
        kind: EventType,
        /// The shape that was required.
        expected: &'static str,
        /// The value found, as JSON (shortened).
        found: String,
    },
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventError::BadValue {
                f: op,
                kind,
                expected,
                found,
            } => write!(
                f,
                "`value` of a {op} {kind} event must be {expected}, found {found}"
            ),
        }
    }
}

impl std::error::Error for EventError {}

impl TryFrom<RawEvent> for Event {
    type Error = EventError;

    fn try_from(raw: RawEvent) -> Result<Self, EventError> {
        let op = op_from_value(raw.f, raw.kind, raw.value)?;
        Ok(Event {
            process: raw.process,
            kind: raw.kind,
            key: raw.key,
            op,
            time: raw.time,
        })
    }
}

fn op_from_value(f: OpKind, kind: EventType, value: serde_json::Value) -> Result<Op, EventError> {
    use serde_json::Value;
    let bad = |expected: &'static str, value: &Value| EventError::BadValue {
        f,
        kind,
        expected,
        found: shorten(&value.to_string()),
    };
    match (f, kind, value) {
        (OpKind::Read, EventType::Invoke, Value::Null) => Ok(Op::Read(None)),
        (OpKind::Read, EventType::Invoke, other) => Err(bad("null", &other)),
        // A failed or unknown read returned nothing worth keeping; accept
        // whatever the writer put there rather than reject the file.
        (OpKind::Read, EventType::Fail | EventType::Info, _) => Ok(Op::Read(None)),
        (OpKind::Read, EventType::Ok, Value::Null) => Ok(Op::Read(None)),
        (OpKind::Read, EventType::Ok, Value::String(s)) => Ok(Op::Read(Some(s))),
        (OpKind::Read, EventType::Ok, other) => Err(bad("a string or null", &other)),
        (OpKind::Write, _, Value::String(s)) => Ok(Op::Write(s)),
        (OpKind::Write, _, other) => Err(bad("a string", &other)),
        (OpKind::Delete, _, Value::Null) => Ok(Op::Delete),
        (OpKind::Delete, _, other) => Err(bad("null", &other)),
        (OpKind::Cas, _, Value::Array(items)) => match <[Value; 2]>::try_from(items) {
            Ok([Value::Null, Value::String(new)]) => Ok(Op::Cas {
                expected: None,
                new,
            }),
            Ok([Value::String(expected), Value::String(new)]) => Ok(Op::Cas {
                expected: Some(expected),
                new,
            }),
            Ok(pair) => Err(bad(CAS_SHAPE, &Value::Array(pair.into()))),
            Err(items) => Err(bad(CAS_SHAPE, &Value::Array(items))),
        },
        (OpKind::Cas, _, other) => Err(bad(CAS_SHAPE, &other)),
    }
}

const CAS_SHAPE: &str = "[expected (a string or null), new (a string)]";

/// Error messages quote the offending value; a multi-megabyte value would
/// bury the message, so only its start is kept.
fn shorten(text: &str) -> String {
    const QUOTE_CHARS_MAX: usize = 60;
    match text.char_indices().nth(QUOTE_CHARS_MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Why a history file could not be read. Line numbers start at 1.
#[derive(Debug)]
#[non_exhaustive]
pub enum HistoryError {
    /// Reading failed (including a line that is not UTF-8).
    Io {
        /// The line being read.
        line: usize,
        /// The underlying error.
        source: io::Error,
    },
    /// The line is not a JSON object with the required fields and types.
    Json {
        /// The offending line.
        line: usize,
        /// serde_json's description (names the field or column).
        message: String,
    },
    /// The JSON is well formed but `value` does not fit `f` and `type`.
    Event {
        /// The offending line.
        line: usize,
        /// What is wrong.
        error: EventError,
    },
}

impl HistoryError {
    /// The 1-based line the error is about.
    pub fn line(&self) -> usize {
        match self {
            HistoryError::Io { line, .. }
            | HistoryError::Json { line, .. }
            | HistoryError::Event { line, .. } => *line,
        }
    }
}

impl fmt::Display for HistoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryError::Io { line, source } => write!(f, "line {line}: read failed: {source}"),
            HistoryError::Json { line, message } => write!(f, "line {line}: {message}"),
            HistoryError::Event { line, error } => write!(f, "line {line}: {error}"),
        }
    }
}

impl std::error::Error for HistoryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HistoryError::Io { source, .. } => Some(source),
            HistoryError::Json { .. } => None,
            HistoryError::Event { error, .. } => Some(error),
        }
    }
}

/// Reads a JSON-lines history. Blank lines are skipped; any other line that
/// is not a valid event stops the read with an error naming that line.
///
/// Pairing invokes with completions is the checker's job
/// ([`super::check`]), so a file whose lines are each valid always reads.
///
/// # Errors
///
/// The first bad line, by number: [`HistoryError::Io`] if it cannot be read
/// (or is not UTF-8), [`HistoryError::Json`] if it is not an event object,
/// [`HistoryError::Event`] if its `value` does not fit its `f` and `type`.
pub fn read_history<R: Read>(reader: R) -> Result<Vec<Event>, HistoryError> {
    let mut events = Vec::new();
    for (index, line) in BufReader::new(reader).lines().enumerate() {
        let line_number = index + 1;
        let text = line.map_err(|source| HistoryError::Io {
            line: line_number,
            source,
        })?;
        if text.trim().is_empty() {
            continue;
        }
        let raw: RawEvent = serde_json::from_str(&text).map_err(|e| HistoryError::Json {
            line: line_number,
            message: e.to_string(),
        })?;
        let event = Event::try_from(raw).map_err(|error| HistoryError::Event {
            line: line_number,
            error,
        })?;
        events.push(event);
    }
    Ok(events)
}

/// Writes events as JSON lines, one object per line, in the order given.
#[derive(Debug)]
pub struct HistoryWriter<W: Write> {
    out: W,
}

impl<W: Write> HistoryWriter<W> {
    /// Writes to `out`; wrap a file in a `BufWriter`, as every event is a
    /// separate small write.
    pub fn new(out: W) -> Self {
        HistoryWriter { out }
    }

    /// Appends one event and its newline.
    ///
    /// # Errors
    ///
    /// Those of the underlying writer.
    pub fn write_event(&mut self, event: &Event) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, event)?;
        self.out.write_all(b"\n")
    }

    /// Appends every event, in order.
    ///
    /// # Errors
    ///
    /// The first error of the underlying writer; events before it are written.
    pub fn write_all<'a>(&mut self, events: impl IntoIterator<Item = &'a Event>) -> io::Result<()> {
        events
            .into_iter()
            .try_for_each(|event| self.write_event(event))
    }

    /// Flushes the underlying writer.
    ///
    /// # Errors
    ///
    /// Those of the underlying writer.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Returns the underlying writer (unflushed).
    pub fn into_inner(self) -> W {
        self.out
    }
}

/// How an operation recorded by a [`Recorder`] ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A write, delete or cas took effect.
    Ok,
    /// A read took effect and returned this value (`None`: absent). Reads
    /// have their own variant because their `ok` carries a result the invoke
    /// did not.
    OkRead(Option<String>),
    /// The operation certainly did not take effect.
    Fail,
    /// Unknown whether the operation took effect.
    Info,
}

/// An invoked operation awaiting [`Recorder::complete`].
///
/// Not `Clone`, so an operation cannot be completed twice. Dropping it
/// without completing leaves the invoke alone in the history, which the
/// checker reads as `info` — exactly what a client that gave up knows.
#[derive(Debug)]
#[must_use = "complete the operation, or it is recorded as info (unknown outcome)"]
pub struct Pending {
    process: u64,
    key: String,
    op: Op,
}

/// A clock in nanoseconds; simulators pass their simulated clock.
type Clock = Box<dyn Fn() -> u64 + Send + Sync>;

/// Collects a history from many threads or simulated clients.
///
/// Time is read while the lock is held, so the order of events in the
/// history always agrees with their times: the checker relies on the order.
pub struct Recorder {
    events: Mutex<Vec<Event>>,
    clock: Clock,
}

impl fmt::Debug for Recorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let events = self
            .events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        f.debug_struct("Recorder")
            .field("events", &events)
            .finish_non_exhaustive()
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    /// Records with wall-clock monotonic time: nanoseconds since creation.
    pub fn new() -> Self {
        let start = Instant::now();
        Recorder::with_clock(move || u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    /// Records with the given clock, which must never go backwards.
    pub fn with_clock(clock: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        Recorder {
            events: Mutex::new(Vec::new()),
            clock: Box::new(clock),
        }
    }

    /// Records the start of `op` on `key` by `process`. A read's argument is
    /// ignored: its invoke always carries `null`.
    pub fn invoke(&self, process: u64, key: impl Into<String>, op: Op) -> Pending {
        let op = match op {
            Op::Read(_) => Op::Read(None),
            other => other,
        };
        let pending = Pending {
            process,
            key: key.into(),
            op,
        };
        self.push(
            pending.process,
            EventType::Invoke,
            pending.key.clone(),
            pending.op.clone(),
        );
        pending
    }

    /// Records how `pending` ended.
    ///
    /// # Panics
    ///
    /// If the outcome does not fit the operation: [`Outcome::OkRead`] for
    /// anything but a read, or [`Outcome::Ok`] for a read (which must say
    /// what it read). Recording a guess would make the checker's verdict
    /// meaningless, so the mistake is stopped where it is made.
    pub fn complete(&self, pending: Pending, outcome: Outcome) {
        let Pending { process, key, op } = pending;
        let (kind, op) = match (outcome, op) {
            (Outcome::OkRead(value), Op::Read(_)) => (EventType::Ok, Op::Read(value)),
            (Outcome::OkRead(_), op) => {
                panic!("Outcome::OkRead completes only reads, not a {}", op.kind())
            }
            (Outcome::Ok, Op::Read(_)) => {
                panic!("a read completes with Outcome::OkRead(value), not Outcome::Ok")
            }
            (Outcome::Ok, op) => (EventType::Ok, op),
            (Outcome::Fail, op) => (EventType::Fail, op),
            (Outcome::Info, op) => (EventType::Info, op),
        };
        self.push(process, kind, key, op);
    }

    fn push(&self, process: u64, kind: EventType, key: String, op: Op) {
        // A panic elsewhere cannot leave the Vec half-pushed, so a poisoned
        // lock still guards a consistent history.
        let mut events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        let time = (self.clock)();
        events.push(Event {
            process,
            kind,
            key,
            op,
            time,
        });
    }

    /// A copy of the events so far, in order.
    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The events, in order.
    pub fn into_events(self) -> Vec<Event> {
        self.events
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes the events so far as JSON lines, and flushes.
    ///
    /// # Errors
    ///
    /// Those of `out`.
    pub fn write_to<W: Write>(&self, out: W) -> io::Result<()> {
        let events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        let mut writer = HistoryWriter::new(out);
        writer.write_all(events.iter())?;
        writer.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of `HISTORY.md`, verbatim.
    const EXAMPLE: &str = r#"{"process": 3, "type": "invoke", "f": "write", "key": "k17", "value": "v9", "time": 1200}
{"process": 3, "type": "ok",     "f": "write", "key": "k17", "value": "v9", "time": 1850}
{"process": 4, "type": "invoke", "f": "read",  "key": "k17", "value": null, "time": 1900}
{"process": 4, "type": "ok",     "f": "read",  "key": "k17", "value": "v9", "time": 2400}
{"process": 5, "type": "invoke", "f": "cas",   "key": "k17", "value": ["v9", "v10"], "time": 2500}
{"process": 5, "type": "fail",   "f": "cas",   "key": "k17", "value": ["v9", "v10"], "time": 2900}
"#;

    fn write_lines(events: &[Event]) -> String {
        let mut writer = HistoryWriter::new(Vec::new());
        writer
            .write_all(events)
            .expect("writing to a Vec cannot fail");
        String::from_utf8(writer.into_inner()).expect("serde_json writes UTF-8")
    }

    #[test]
    fn example_parses_to_the_documented_events() {
        let events = read_history(EXAMPLE.as_bytes()).expect("the documented example is valid");
        assert_eq!(events.len(), 6);
        assert_eq!(
            events[0],
            Event {
                process: 3,
                kind: EventType::Invoke,
                key: "k17".into(),
                op: Op::Write("v9".into()),
                time: 1200
            }
        );
        assert_eq!(events[2].op, Op::Read(None));
        assert_eq!(events[3].op, Op::Read(Some("v9".into())));
        assert_eq!(events[5].kind, EventType::Fail);
        assert_eq!(
            events[5].op,
            Op::Cas {
                expected: Some("v9".into()),
                new: "v10".into()
            }
        );
    }

    #[test]
    fn example_round_trips_field_for_field() {
        let events = read_history(EXAMPLE.as_bytes()).expect("the documented example is valid");
        let written = write_lines(&events);
        for (original, rewritten) in EXAMPLE.lines().zip(written.lines()) {
            let a: serde_json::Value = serde_json::from_str(original).expect("example is JSON");
            let b: serde_json::Value = serde_json::from_str(rewritten).expect("output is JSON");
            assert_eq!(a, b, "rewritten line differs: {rewritten}");
        }
        assert_eq!(written.lines().count(), 6);
        assert_eq!(
            read_history(written.as_bytes()).expect("own output parses"),
            events
        );
    }

    #[test]
    fn output_uses_the_documented_field_names_in_order() {
        let event = Event {
            process: 5,
            kind: EventType::Ok,
            key: "k".into(),
            op: Op::Cas {
                expected: None,
                new: "n".into(),
            },
            time: 7,
        };
        assert_eq!(
            write_lines(&[event]),
            "{\"process\":5,\"type\":\"ok\",\"f\":\"cas\",\"key\":\"k\",\"value\":[null,\"n\"],\"time\":7}\n"
        );
        let delete = Event {
            op: Op::Delete,
            ..Event::clone(&read_history(EXAMPLE.as_bytes()).unwrap()[0])
        };
        assert!(write_lines(&[delete]).contains("\"f\":\"delete\",\"key\":\"k17\",\"value\":null"));
    }

    #[test]
    fn bad_json_names_its_line() {
        let text = format!(
            "{}\n\n{{\"process\": 1, \"type\": \"invoke\"",
            EXAMPLE.lines().next().unwrap()
        );
        let err = read_history(text.as_bytes()).expect_err("truncated object");
        assert!(matches!(err, HistoryError::Json { line: 3, .. }), "{err:?}");
    }

    #[test]
    fn unknown_type_and_missing_field_are_json_errors() {
        let unknown =
            r#"{"process": 1, "type": "maybe", "f": "read", "key": "k", "value": null, "time": 1}"#;
        let err = read_history(unknown.as_bytes()).expect_err("unknown type");
        assert!(
            matches!(&err, HistoryError::Json { line: 1, message } if message.contains("maybe")),
            "{err}"
        );
        let missing = r#"{"process": 1, "type": "ok", "f": "read", "value": null, "time": 1}"#;
        let err = read_history(missing.as_bytes()).expect_err("missing key");
        assert!(
            matches!(&err, HistoryError::Json { message, .. } if message.contains("key")),
            "{err}"
        );
    }

    #[test]
    fn value_of_the_wrong_shape_is_an_event_error() {
        let cases = [
            (
                r#"{"process":1,"type":"invoke","f":"write","key":"k","value":null,"time":1}"#,
                OpKind::Write,
            ),
            (
                r#"{"process":1,"type":"ok","f":"cas","key":"k","value":["a"],"time":1}"#,
                OpKind::Cas,
            ),
            (
                r#"{"process":1,"type":"ok","f":"cas","key":"k","value":["a", null],"time":1}"#,
                OpKind::Cas,
            ),
            (
                r#"{"process":1,"type":"ok","f":"read","key":"k","value":3,"time":1}"#,
                OpKind::Read,
            ),
            (
                r#"{"process":1,"type":"invoke","f":"read","key":"k","value":"x","time":1}"#,
                OpKind::Read,
            ),
            (
                r#"{"process":1,"type":"ok","f":"delete","key":"k","value":"x","time":1}"#,
                OpKind::Delete,
            ),
        ];
        for (line, f) in cases {
            let text = format!("{}\n{line}\n", EXAMPLE.lines().next().unwrap());
            match read_history(text.as_bytes()) {
                Err(HistoryError::Event {
                    line: 2,
                    error: EventError::BadValue { f: got, .. },
                }) => {
                    assert_eq!(got, f, "{line}")
                }
                other => panic!("{line}: expected a BadValue error on line 2, got {other:?}"),
            }
        }
    }

    #[test]
    fn invalid_utf8_is_an_io_error_with_its_line() {
        let mut bytes = EXAMPLE.lines().next().unwrap().as_bytes().to_vec();
        bytes.extend_from_slice(b"\n\xff\xfe\n");
        let err = read_history(&bytes[..]).expect_err("not UTF-8");
        assert!(matches!(err, HistoryError::Io { line: 2, .. }), "{err:?}");
    }

    #[test]
    fn recorder_records_in_time_order_and_marks_outcomes() {
        let ticks = std::sync::atomic::AtomicU64::new(0);
        let recorder =
            Recorder::with_clock(move || ticks.fetch_add(10, std::sync::atomic::Ordering::Relaxed));
        let write = recorder.invoke(1, "k", Op::Write("a".into()));
        let read = recorder.invoke(2, "k", Op::Read(Some("ignored".into())));
        recorder.complete(write, Outcome::Ok);
        recorder.complete(read, Outcome::OkRead(Some("a".into())));
        let lost = recorder.invoke(3, "k", Op::Delete);
        recorder.complete(lost, Outcome::Info);
        let events = recorder.into_events();
        let kinds: Vec<_> = events.iter().map(|e| (e.process, e.kind, e.time)).collect();
        assert_eq!(
            kinds,
            vec![
                (1, EventType::Invoke, 0),
                (2, EventType::Invoke, 10),
                (1, EventType::Ok, 20),
                (2, EventType::Ok, 30),
                (3, EventType::Invoke, 40),
                (3, EventType::Info, 50),
            ]
        );
        assert_eq!(events[1].op, Op::Read(None));
        assert_eq!(events[3].op, Op::Read(Some("a".into())));
    }

    #[test]
    #[should_panic(expected = "OkRead")]
    fn recorder_refuses_a_read_completed_without_its_value() {
        let recorder = Recorder::new();
        let read = recorder.invoke(1, "k", Op::Read(None));
        recorder.complete(read, Outcome::Ok);
    }

    #[test]
    fn recorder_output_reads_back() {
        let recorder = Recorder::new();
        let cas = recorder.invoke(
            9,
            "key",
            Op::Cas {
                expected: None,
                new: "x".into(),
            },
        );
        recorder.complete(cas, Outcome::Fail);
        let mut out = Vec::new();
        recorder
            .write_to(&mut out)
            .expect("writing to a Vec cannot fail");
        assert_eq!(
            read_history(&out[..]).expect("own output parses"),
            recorder.events()
        );
    }
}
