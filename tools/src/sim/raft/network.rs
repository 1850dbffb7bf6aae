//! The simulated network: messages in flight with a delivery tick. It drops,
//! duplicates and delays at send time; partitions and dead receivers are
//! decided by the world at delivery time, and the world shuffles each batch
//! of due messages, so nothing arrives in send order by default.

use flotilla_raftgroup::{Message, NodeId};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::params::NetParams;

/// A message on the wire.
#[derive(Debug)]
pub struct Envelope {
    pub msg: Message,
    pub deliver_at: u64,
    /// The sender's incarnation, so that a snapshot report reaches the
    /// process that sent the snapshot and not its restarted successor.
    pub sender_incarnation: u64,
}

/// What became of a message handed to the network.
#[derive(Debug)]
pub enum SendFate {
    Dropped(Message),
    Queued { delay_ticks: u64, duplicated: bool },
}

#[derive(Debug)]
pub struct Network {
    in_flight: Vec<Envelope>,
    /// Drops and duplicates happen only while faults are on.
    pub lossy: bool,
    /// Once faults stop, no message takes longer than this: Raft's liveness
    /// needs the broadcast time well below the election timeout.
    pub calm_delay_ticks_max: Option<u64>,
}

/// A partition: nodes on different sides cannot talk. Nodes not listed are
/// on side 0.
#[derive(Clone, Debug)]
pub struct Partition {
    pub sides: Vec<(NodeId, u8)>,
    pub heal_at: u64,
}

impl Partition {
    fn side(&self, node: NodeId) -> u8 {
        self.sides
            .iter()
            .find(|(id, _)| *id == node)
            .map_or(0, |(_, side)| *side)
    }

    pub fn connected(&self, a: NodeId, b: NodeId) -> bool {
        self.side(a) == self.side(b)
    }

    /// The nodes of each side, for the trace.
    pub fn groups(&self) -> Vec<Vec<NodeId>> {
        let sides_max = self.sides.iter().map(|(_, side)| *side).max().unwrap_or(0);
        (0..=sides_max)
            .map(|side| {
                self.sides
                    .iter()
                    .filter(|(_, s)| *s == side)
                    .map(|(id, _)| *id)
                    .collect()
            })
            .collect()
    }
}

impl Default for Network {
    fn default() -> Self {
        Network::new()
    }
}

impl Network {
    /// An empty network with faults on.
    pub fn new() -> Self {
        Network {
            in_flight: Vec::new(),
            lossy: true,
            calm_delay_ticks_max: None,
        }
    }

    fn delay(&self, rng: &mut ChaCha8Rng, params: &NetParams) -> u64 {
        if params.delay_per_mille > 0 && rng.gen_ratio(params.delay_per_mille, 1000) {
            let ticks_max = self
                .calm_delay_ticks_max
                .map_or(params.delay_ticks_max, |max| {
                    max.min(params.delay_ticks_max)
                });
            rng.gen_range(1..=ticks_max)
        } else {
            0
        }
    }

    pub fn send(
        &mut self,
        rng: &mut ChaCha8Rng,
        params: &NetParams,
        now: u64,
        msg: Message,
        sender_incarnation: u64,
    ) -> SendFate {
        if self.lossy && params.drop_per_mille > 0 && rng.gen_ratio(params.drop_per_mille, 1000) {
            return SendFate::Dropped(msg);
        }
        let delay_ticks = self.delay(rng, params);
        let duplicated = self.lossy
            && params.duplicate_per_mille > 0
            && rng.gen_ratio(params.duplicate_per_mille, 1000);
        if duplicated {
            let copy_delay = self.delay(rng, params);
            self.in_flight.push(Envelope {
                msg: msg.clone(),
                deliver_at: now + copy_delay,
                sender_incarnation,
            });
        }
        self.in_flight.push(Envelope {
            msg,
            deliver_at: now + delay_ticks,
            sender_incarnation,
        });
        SendFate::Queued {
            delay_ticks,
            duplicated,
        }
    }

    /// Removes and returns the messages due at `now`.
    pub fn take_due(&mut self, now: u64) -> Vec<Envelope> {
        let (due, later): (Vec<Envelope>, Vec<Envelope>) = std::mem::take(&mut self.in_flight)
            .into_iter()
            .partition(|envelope| envelope.deliver_at <= now);
        self.in_flight = later;
        due
    }

    /// Puts back a message whose receiver cannot take it yet.
    pub fn requeue(&mut self, envelope: Envelope) {
        self.in_flight.push(envelope);
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}
