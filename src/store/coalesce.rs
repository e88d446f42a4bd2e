//! Concurrent operations on the same key, answered by one store operation.
//!
//! Webhooks come from few addresses: a sender's burst is many requests at once from
//! one IP, and each needs a rate check on that IP's bucket. On a shared store every
//! check is a script run, the dearest operation a request costs the store. The first
//! check for a key opens a group and becomes its leader; checks for the same key that
//! come while the group is open join it. The leader's operation *seals* the group when
//! it is actually sent (on Redis, when its batch is written, so the group costs no wait
//! of its own), asks the store once for all members, and hands each its own answer, in
//! the order they came. The store must answer a group exactly as it would have answered
//! the members one after another at that instant, so that grouping changes the cost
//! and nothing else.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

/// Open groups by key: the members that joined after the leader, waiting for it.
pub struct Groups<K, T> {
    open: Mutex<HashMap<K, Vec<oneshot::Sender<T>>>>,
}

impl<K, T> Default for Groups<K, T> {
    fn default() -> Self {
        Groups {
            open: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Copy, T> Groups<K, T> {
    /// This caller's answer. `run(seal)` asks the store for the group `seal` closes, and
    /// returns as many answers as `seal.close()` counted members, in order. The leader
    /// runs it for its group; a member whose leader went away without answering (its
    /// task was cancelled) runs it alone.
    pub async fn join<F, Fut>(self: &Arc<Self>, key: K, run: F) -> T
    where
        F: Fn(Seal<K, T>) -> Fut,
        Fut: Future<Output = Vec<T>>,
    {
        let waiting = {
            let mut open = self.lock();
            match open.entry(key) {
                Entry::Occupied(mut group) => {
                    let (member, answer) = oneshot::channel();
                    group.get_mut().push(member);
                    Some(answer)
                }
                Entry::Vacant(slot) => {
                    slot.insert(Vec::new());
                    None
                }
            }
        };
        if let Some(answer) = waiting {
            if let Ok(answer) = answer.await {
                return answer;
            }
            return first(run(Seal::alone()).await);
        }
        let seal = Seal(Arc::new(SealState {
            group: Some((self.clone(), key)),
            closed: Mutex::new(None),
        }));
        let mut answers = run(seal.clone()).await.into_iter();
        let mine = answers.next();
        // Members left without an answer (fewer came back than joined) ask alone.
        for (member, answer) in seal.members().into_iter().zip(answers) {
            let _ = member.send(answer);
        }
        match mine {
            Some(answer) => answer,
            None => first(run(Seal::alone()).await),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, Vec<oneshot::Sender<T>>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn first<T>(answers: Vec<T>) -> T {
    answers
        .into_iter()
        .next()
        .expect("a store answers a group of one with one answer")
}

/// Closes a leader's group to newcomers and tells its size; cheap to clone, so the
/// command that carries the group can close it when it is sent. Dropped unclosed (the
/// leader was cancelled), it closes the group, and its members ask alone.
pub struct Seal<K: Hash + Eq + Copy, T>(Arc<SealState<K, T>>);

impl<K: Hash + Eq + Copy, T> Clone for Seal<K, T> {
    fn clone(&self) -> Self {
        Seal(self.0.clone())
    }
}

struct SealState<K: Hash + Eq + Copy, T> {
    /// The groups and key of a leader's group; `None` for a caller alone.
    group: Option<(Arc<Groups<K, T>>, K)>,
    /// Once closed: the members that joined (`None` again once the leader took them).
    closed: Mutex<Option<Closed<T>>>,
}

struct Closed<T> {
    size: usize,
    members: Option<Vec<oneshot::Sender<T>>>,
}

impl<K: Hash + Eq + Copy, T> Seal<K, T> {
    /// A group of one that nobody can join.
    fn alone() -> Self {
        Seal(Arc::new(SealState {
            group: None,
            closed: Mutex::new(Some(Closed {
                size: 1,
                members: Some(Vec::new()),
            })),
        }))
    }

    /// Closes the group (the first call does) and returns its size, leader included.
    pub fn close(&self) -> usize {
        let mut closed = self.0.closed.lock().unwrap_or_else(|p| p.into_inner());
        closed.get_or_insert_with(|| self.0.take_members()).size
    }

    /// The members, in the order they joined; closes the group if still open.
    fn members(&self) -> Vec<oneshot::Sender<T>> {
        self.close();
        let mut closed = self.0.closed.lock().unwrap_or_else(|p| p.into_inner());
        closed
            .as_mut()
            .and_then(|closed| closed.members.take())
            .unwrap_or_default()
    }
}

impl<K: Hash + Eq + Copy, T> SealState<K, T> {
    fn take_members(&self) -> Closed<T> {
        let members = match &self.group {
            Some((groups, key)) => groups.lock().remove(key).unwrap_or_default(),
            None => Vec::new(),
        };
        Closed {
            size: 1 + members.len(),
            members: Some(members),
        }
    }
}

impl<K: Hash + Eq + Copy, T> Drop for SealState<K, T> {
    fn drop(&mut self) {
        let closed = self.closed.get_mut().unwrap_or_else(|p| p.into_inner());
        if closed.is_none() {
            self.take_members();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A store that closes the group after a yield (as a batch is written a tick later),
    /// numbers its members, and counts runs.
    async fn numbered(runs: &AtomicUsize, seal: Seal<u8, (usize, usize)>) -> Vec<(usize, usize)> {
        tokio::task::yield_now().await;
        let run = runs.fetch_add(1, Ordering::SeqCst);
        (0..seal.close()).map(|i| (run, i)).collect()
    }

    #[tokio::test]
    async fn callers_before_the_seal_share_one_run_and_get_their_own_answers_in_order() {
        let groups = Arc::new(Groups::default());
        let runs = Arc::new(AtomicUsize::new(0));
        // Spawned together, so they all join before the leader's run closes the group.
        let tasks: Vec<_> = (0..5)
            .map(|_| {
                let (groups, runs) = (groups.clone(), runs.clone());
                tokio::spawn(async move { groups.join(7, |seal| numbered(&runs, seal)).await })
            })
            .collect();
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(task.await.unwrap());
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(answers, [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4)]);
        assert!(groups.lock().is_empty());
    }

    #[tokio::test]
    async fn callers_after_the_seal_start_a_new_group() {
        let groups = Arc::new(Groups::default());
        let runs = AtomicUsize::new(0);
        let sealed_at_once = |seal: Seal<u8, (usize, usize)>| {
            let run = runs.fetch_add(1, Ordering::SeqCst);
            let size = seal.close();
            async move {
                tokio::task::yield_now().await;
                (0..size).map(|i| (run, i)).collect::<Vec<_>>()
            }
        };
        let (a, b) = tokio::join!(
            groups.join(1, sealed_at_once),
            groups.join(1, sealed_at_once)
        );
        assert_eq!((a, b), ((0, 0), (1, 0)));
    }

    #[tokio::test]
    async fn different_keys_are_never_grouped() {
        let groups = Arc::new(Groups::default());
        let runs = AtomicUsize::new(0);
        let (a, b) = tokio::join!(
            groups.join(1, |seal| numbered(&runs, seal)),
            groups.join(2, |seal| numbered(&runs, seal)),
        );
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert_eq!((a.1, b.1), (0, 0));
    }

    #[tokio::test]
    async fn members_of_a_cancelled_leader_ask_alone() {
        let groups = Arc::new(Groups::<u8, &str>::default());
        let mut leader = Box::pin(groups.join(1, |seal| async move {
            tokio::task::yield_now().await;
            vec!["leader's group"; seal.close()]
        }));
        let mut member = Box::pin(groups.join(1, |seal| async move {
            assert_eq!(seal.close(), 1);
            vec!["alone"]
        }));
        // The leader opens the group, the member joins, then the leader is dropped.
        assert!(poll_once(&mut leader).await.is_none());
        assert!(poll_once(&mut member).await.is_none());
        drop(leader);
        assert_eq!(member.await, "alone");
        assert!(groups.lock().is_empty());
    }

    #[tokio::test]
    async fn a_short_answer_leaves_the_rest_to_ask_alone() {
        let groups = Arc::new(Groups::default());
        let runs = AtomicUsize::new(0);
        let one_answer = |seal: Seal<u8, usize>| {
            let run = runs.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::task::yield_now().await;
                seal.close();
                vec![run]
            }
        };
        let (a, b) = tokio::join!(groups.join(1, one_answer), groups.join(1, one_answer));
        assert_eq!((a, b), (0, 1));
    }

    async fn poll_once<F: Future + Unpin>(future: &mut F) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut *future).poll(cx) {
                std::task::Poll::Ready(value) => Some(value),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}
