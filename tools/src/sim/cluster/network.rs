//! The simulated network between nodes: whole frames in flight, each with
//! the step it is due. Losses and duplicates are decided when a frame is
//! sent, partitions and dead receivers when it is due; delays differ per
//! frame and the world shuffles every batch of due frames, so frames
//! overtake each other even between one pair of nodes.

use std::collections::BTreeMap;

use flotilla_transport::{Frame, NodeId};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::params::{NetParams, CALM_DELAY_STEPS_MAX};

/// What became of a frame handed to the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendFate {
    Lost,
    Queued { delay_steps: u64, duplicated: bool },
}

#[derive(Debug)]
pub struct Network {
    params: NetParams,
    /// Frames by due step; within a step, in send order.
    in_flight: BTreeMap<u64, Vec<Frame>>,
    /// Losses and duplicates happen only while faults are on.
    pub lossy: bool,
    /// Once faults stop, delays shrink so that Raft's broadcast time stays
    /// well below its election timeout.
    pub calm: bool,
}

/// A partition: nodes on different sides cannot talk.
#[derive(Clone, Debug)]
pub struct Partition {
    pub sides: BTreeMap<NodeId, u8>,
    pub heal_tick: u64,
}

impl Partition {
    pub fn connected(&self, a: NodeId, b: NodeId) -> bool {
        self.sides.get(&a) == self.sides.get(&b)
    }

    /// The nodes of each side, for the trace.
    pub fn groups(&self) -> Vec<Vec<NodeId>> {
        let mut groups: BTreeMap<u8, Vec<NodeId>> = BTreeMap::new();
        for (&node, &side) in &self.sides {
            groups.entry(side).or_default().push(node);
        }
        groups.into_values().collect()
    }
}

impl Network {
    pub fn new(params: NetParams) -> Self {
        Network {
            params,
            in_flight: BTreeMap::new(),
            lossy: true,
            calm: false,
        }
    }

    fn delay_steps(&self, rng: &mut ChaCha8Rng) -> u64 {
        let params = &self.params;
        if params.delay_per_mille == 0 || !rng.gen_ratio(params.delay_per_mille, 1000) {
            return 0;
        }
        let max = if self.calm {
            params.delay_steps_max.min(CALM_DELAY_STEPS_MAX)
        } else {
            params.delay_steps_max
        };
        rng.gen_range(0..=max)
    }

    /// Hands `frame`, sent at step `now`, to the network. It arrives at the
    /// earliest in the next step.
    pub fn send(&mut self, rng: &mut ChaCha8Rng, now: u64, frame: Frame) -> SendFate {
        let params = self.params;
        if self.lossy && params.drop_per_mille > 0 && rng.gen_ratio(params.drop_per_mille, 1000) {
            return SendFate::Lost;
        }
        let delay_steps = self.delay_steps(rng);
        let duplicated = self.lossy
            && params.duplicate_per_mille > 0
            && rng.gen_ratio(params.duplicate_per_mille, 1000);
        if duplicated {
            let copy_due = now + 1 + self.delay_steps(rng);
            self.in_flight
                .entry(copy_due)
                .or_default()
                .push(frame.clone());
        }
        self.in_flight
            .entry(now + 1 + delay_steps)
            .or_default()
            .push(frame);
        SendFate::Queued {
            delay_steps,
            duplicated,
        }
    }

    /// Removes and returns the frames due at or before step `now`.
    pub fn take_due(&mut self, now: u64) -> Vec<Frame> {
        let later = self.in_flight.split_off(&(now + 1));
        let due = std::mem::replace(&mut self.in_flight, later);
        due.into_values().flatten().collect()
    }
}
