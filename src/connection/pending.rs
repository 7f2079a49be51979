//! The requests a [`Connection`](super::Connection) awaits replies for, and
//! when each one times out.
//!
//! Every envelope a peer answers is looked up here by its `rid`, and every
//! request we send is added, so this sits on the path of each round trip. It
//! is built for that path:
//!
//! - ids are hashed with foldhash, not SipHash. The keys are our own ids (or
//!   ids our caller chose), so a peer cannot choose what the table holds;
//!   its rids are only looked up;
//! - a request's command is the `&'static str` of the command table, not a
//!   copy;
//! - the deadlines are a queue in send order, not a search tree. The
//!   request timeout is one setting per connection, so a later request never
//!   times out before an earlier one; the queue keeps that true even for a
//!   clock passed in out of order (a deadline is never earlier than the one
//!   queued before it). Replies usually come in send order, so the entry to
//!   remove is the first one; any other is found by binary search and
//!   removed by shifting the shorter side, at most
//!   [`max_pending_requests`](super::ConnectionConfig::max_pending_requests)
//!   entries.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use foldhash::fast::RandomState;

/// A request awaiting its reply.
#[derive(Debug, Clone, Copy)]
struct Entry {
    command: &'static str,
    /// Position in send order among the requests ever added.
    order: u64,
    /// Whether the request has an entry in the deadline queue.
    timed: bool,
}

/// Requests by id, and their deadlines in send order. See the
/// [module docs](self).
#[derive(Debug, Default)]
pub(super) struct PendingRequests {
    by_id: HashMap<String, Entry, RandomState>,
    /// `(deadline, order)` with `order` strictly and `deadline` weakly
    /// increasing from front to back.
    deadlines: VecDeque<(Instant, u64)>,
    next_order: u64,
}

impl PendingRequests {
    /// How many requests await a reply.
    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Adds request `id` for `command`, timing out at `deadline` (or, when
    /// an earlier request times out later than that, with it). Gives `id`
    /// back when a request with that id is already pending.
    pub(super) fn insert(
        &mut self,
        id: String,
        command: &'static str,
        deadline: Option<Instant>,
    ) -> Result<(), String> {
        let order = self.next_order;
        match self.by_id.entry(id) {
            std::collections::hash_map::Entry::Occupied(taken) => Err(taken.key().clone()),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(Entry {
                    command,
                    order,
                    timed: deadline.is_some(),
                });
                self.next_order = order.wrapping_add(1);
                if let Some(at) = deadline {
                    let at = match self.deadlines.back() {
                        Some(&(last, _)) => at.max(last),
                        None => at,
                    };
                    self.deadlines.push_back((at, order));
                }
                Ok(())
            }
        }
    }

    /// Takes request `id` out: its id and command, `None` when no request
    /// with that id is pending.
    pub(super) fn remove(&mut self, id: &str) -> Option<(String, &'static str)> {
        if id.is_empty() {
            return None;
        }
        let (id, entry) = self.by_id.remove_entry(id)?;
        if entry.timed {
            self.forget_deadline(entry.order);
        }
        Some((id, entry.command))
    }

    fn forget_deadline(&mut self, order: u64) {
        match self.deadlines.front() {
            Some(&(_, first)) if first == order => {
                self.deadlines.pop_front();
            }
            _ => {
                if let Ok(at) = self.deadlines.binary_search_by_key(&order, |&(_, o)| o) {
                    self.deadlines.remove(at);
                }
            }
        }
    }

    /// The earliest deadline of a pending request.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.front().map(|&(at, _)| at)
    }

    /// Takes out every request whose deadline is at or before `now`, in
    /// send order: their ids and commands.
    pub(super) fn expire(&mut self, now: Instant) -> Vec<(String, &'static str)> {
        let mut due = Vec::new();
        while let Some(&(at, order)) = self.deadlines.front() {
            if at > now {
                break;
            }
            self.deadlines.pop_front();
            due.push(order);
        }
        if due.is_empty() {
            return Vec::new();
        }
        // `due` is sorted (orders increase along the queue): one pass over
        // the table finds them all.
        in_send_order(
            self.by_id
                .extract_if(|_, entry| due.binary_search(&entry.order).is_ok()),
        )
    }

    /// Takes out every request, in send order.
    pub(super) fn drain(&mut self) -> Vec<(String, &'static str)> {
        self.deadlines.clear();
        in_send_order(self.by_id.drain())
    }
}

/// Ids and commands of `taken`, sorted by when they were sent.
fn in_send_order(taken: impl Iterator<Item = (String, Entry)>) -> Vec<(String, &'static str)> {
    let mut taken: Vec<(String, Entry)> = taken.collect();
    taken.sort_unstable_by_key(|(_, entry)| entry.order);
    taken
        .into_iter()
        .map(|(id, entry)| (id, entry.command))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_reply_takes_its_request_out_with_its_deadline() {
        let now = Instant::now();
        let mut pending = PendingRequests::default();
        pending
            .insert("a".into(), "ping", Some(now + Duration::from_secs(1)))
            .unwrap();
        pending
            .insert("b".into(), "query", Some(now + Duration::from_secs(2)))
            .unwrap();
        assert_eq!(pending.insert("a".into(), "ping", None), Err("a".into()));
        assert_eq!(pending.next_deadline(), Some(now + Duration::from_secs(1)));
        assert_eq!(pending.remove("a"), Some(("a".into(), "ping")));
        assert_eq!(pending.remove("a"), None);
        assert_eq!(pending.next_deadline(), Some(now + Duration::from_secs(2)));
        assert_eq!(pending.remove(""), None);
        assert_eq!(pending.len(), 1);
    }

    #[test]
    fn a_deadline_is_never_earlier_than_the_one_before_it() {
        let now = Instant::now();
        let mut pending = PendingRequests::default();
        pending
            .insert("late".into(), "ping", Some(now + Duration::from_secs(5)))
            .unwrap();
        pending
            .insert("early".into(), "ping", Some(now + Duration::from_secs(1)))
            .unwrap();
        assert!(pending.expire(now + Duration::from_secs(4)).is_empty());
        assert_eq!(
            pending.expire(now + Duration::from_secs(5)),
            vec![("late".into(), "ping"), ("early".into(), "ping")]
        );
        assert_eq!(pending.len(), 0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Add id `n`, its deadline `secs` from the start (none for 0).
        Insert(u8, u8),
        Remove(u8),
        Expire(u8),
        Drain,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..24u8, 0..8u8).prop_map(|(n, s)| Op::Insert(n, s)),
            4 => (0..24u8).prop_map(Op::Remove),
            2 => (0..10u8).prop_map(Op::Expire),
            1 => Just(Op::Drain),
        ]
    }

    /// The obvious model: every request with its order and its deadline,
    /// clamped to the latest deadline pending when it was added.
    #[derive(Default)]
    struct Model {
        by_id: BTreeMap<String, (u64, Option<Instant>)>,
        next: u64,
    }

    impl Model {
        fn in_order(&self, due: impl Fn(Option<Instant>) -> bool) -> Vec<(u64, String)> {
            let mut taken: Vec<(u64, String)> = self
                .by_id
                .iter()
                .filter(|(_, (_, at))| due(*at))
                .map(|(id, (order, _))| (*order, id.clone()))
                .collect();
            taken.sort();
            taken
        }
    }

    proptest! {
        #[test]
        fn matches_a_simple_model(ops in proptest::collection::vec(op(), 0..200)) {
            let start = Instant::now();
            let mut pending = PendingRequests::default();
            let mut model = Model::default();
            for op in ops {
                match op {
                    Op::Insert(n, secs) => {
                        let id = n.to_string();
                        let at = (secs > 0).then(|| start + Duration::from_secs(secs.into()));
                        let result = pending.insert(id.clone(), "ping", at);
                        if model.by_id.contains_key(&id) {
                            prop_assert_eq!(result, Err(id));
                        } else {
                            prop_assert!(result.is_ok());
                            let last = model.by_id.values().filter_map(|(_, at)| *at).max();
                            let at = at.map(|at| last.map_or(at, |last| at.max(last)));
                            model.by_id.insert(id, (model.next, at));
                            model.next += 1;
                        }
                    }
                    Op::Remove(n) => {
                        let id = n.to_string();
                        let expected = model.by_id.remove(&id).map(|_| (id.clone(), "ping"));
                        prop_assert_eq!(pending.remove(&id), expected);
                    }
                    Op::Expire(secs) => {
                        let now = start + Duration::from_secs(secs.into());
                        let due = |at: Option<Instant>| at.is_some_and(|at| at <= now);
                        let expected: Vec<(String, &str)> = model
                            .in_order(due)
                            .into_iter()
                            .map(|(_, id)| (id, "ping"))
                            .collect();
                        model.by_id.retain(|_, (_, at)| !due(*at));
                        prop_assert_eq!(pending.expire(now), expected);
                    }
                    Op::Drain => {
                        let expected: Vec<(String, &str)> = model
                            .in_order(|_| true)
                            .into_iter()
                            .map(|(_, id)| (id, "ping"))
                            .collect();
                        model.by_id.clear();
                        prop_assert_eq!(pending.drain(), expected);
                    }
                }
                prop_assert_eq!(pending.len(), model.by_id.len());
                let earliest = model.by_id.values().filter_map(|(_, at)| *at).min();
                prop_assert_eq!(pending.next_deadline(), earliest);
                prop_assert_eq!(pending.deadlines.len(), model.by_id.values().filter(|(_, at)| at.is_some()).count());
            }
        }
    }
}
