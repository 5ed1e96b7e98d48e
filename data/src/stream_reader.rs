//! Reads one rank's stream of shard samples (`stream::RankStream`) front to back, one
//! shard after the other, handing out the bytes in the stream's shuffled order. A sample
//! read before its turn waits in memory; the shuffle buffer bounds how many do. Samples
//! emitted before the position reading started from (a resumed epoch) are passed over
//! unread.

use crate::shards::{read_member, ShardSet};
use crate::stream::RankStream;
use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;

/// A sample's image bytes, or why it cannot be used.
pub type Payload = Result<Vec<u8>, String>;

pub struct StreamReader {
    set: Arc<ShardSet>,
    input: Vec<usize>,
    /// Input positions that will be asked for.
    wanted: Vec<bool>,
    /// Next input position to read.
    next: usize,
    held: HashMap<usize, Payload>,
    open: Option<(usize, Result<File, String>)>,
}

impl StreamReader {
    /// A reader of `stream` that will be asked for output positions `range`, in order.
    pub fn new(set: Arc<ShardSet>, stream: &RankStream, range: std::ops::Range<usize>) -> Self {
        let mut wanted = vec![false; stream.input.len()];
        for &i in &stream.output[range.start.min(stream.output.len())..range.end.min(stream.output.len())] {
            wanted[i] = true;
        }
        StreamReader { set, input: stream.input.clone(), wanted, next: 0, held: HashMap::new(), open: None }
    }

    /// Samples read and waiting for their turn.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// The bytes of the samples at input positions `positions`: reads forward to the
    /// furthest, keeping the wanted samples met on the way.
    pub fn take(&mut self, positions: &[usize]) -> Vec<Payload> {
        let furthest = positions.iter().copied().max().map_or(0, |p| p + 1).min(self.input.len());
        while self.next < furthest {
            if self.wanted[self.next] {
                let payload = self.read(self.input[self.next]);
                self.held.insert(self.next, payload);
            }
            self.next += 1;
        }
        positions.iter().map(|p| self.held.remove(p).unwrap_or_else(|| Err(format!("position {p} of the stream was not read (asked twice or out of range)")))).collect()
    }

    fn read(&mut self, id: usize) -> Payload {
        let shard = self.set.shard_of(id);
        if self.open.as_ref().is_none_or(|(s, _)| *s != shard) {
            let path = &self.set.shards[shard].path;
            self.open = Some((shard, File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))));
        }
        match &mut self.open {
            Some((_, Ok(f))) => read_member(f, &self.set.members[id]),
            Some((_, Err(e))) => Err(e.clone()),
            None => Err("no shard open".into()),
        }
    }
}
