//! Concurrent operations on the same key, answered by one store operation.
//!
//! Webhooks come from few addresses: a sender's burst is many requests at once from
//! one IP, and each needs a rate check on that IP's bucket. On a shared store every
//! check is a script run, the dearest operation a request costs the store. Checks for
//! the same key that are ready in the same scheduler tick join one group; the first
//! becomes its leader, lets the tick finish (so the others can join), then asks the
//! store once for the whole group and hands each member its own answer, in the order
//! they arrived. The store must answer a group exactly as it would have answered the
//! members one after another at that instant, so that grouping changes the cost and
//! nothing else.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::Hash;
use std::sync::Mutex;

use tokio::sync::oneshot;

/// Open groups by key: the members that joined after the leader, waiting for it.
pub struct Groups<K, T> {
    open: Mutex<HashMap<K, Vec<oneshot::Sender<T>>>>,
}

impl<K: Hash + Eq + Copy, T> Default for Groups<K, T> {
    fn default() -> Self {
        Groups {
            open: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Copy, T> Groups<K, T> {
    /// This caller's answer. `run(n)` asks the store for a group of `n` members and
    /// returns their answers in order; the leader runs it for its group, and a member
    /// whose leader went away before answering (its task was cancelled) runs it alone.
    pub async fn join<F, Fut>(&self, key: K, run: F) -> T
    where
        F: Fn(usize) -> Fut,
        Fut: Future<Output = Vec<T>>,
    {
        let waiting = {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
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
            return first(run(1).await);
        }
        let leader = Leader {
            groups: self,
            key: Some(key),
        };
        // Let the other requests that are ready in this tick join before the group closes.
        tokio::task::yield_now().await;
        let members = leader.close();
        let mut answers = run(1 + members.len()).await.into_iter();
        let mine = answers.next();
        // A member left without an answer (too few came back) asks alone.
        for (member, answer) in members.into_iter().zip(answers) {
            let _ = member.send(answer);
        }
        match mine {
            Some(answer) => answer,
            None => first(run(1).await),
        }
    }
}

fn first<T>(answers: Vec<T>) -> T {
    answers
        .into_iter()
        .next()
        .expect("a store answers a group of one with one answer")
}

/// Closes the leader's group even when the leader is dropped before it runs: its members
/// then see their answer channel closed and ask alone.
struct Leader<'g, K: Hash + Eq + Copy, T> {
    groups: &'g Groups<K, T>,
    key: Option<K>,
}

impl<K: Hash + Eq + Copy, T> Leader<'_, K, T> {
    fn close(mut self) -> Vec<oneshot::Sender<T>> {
        self.take().unwrap_or_default()
    }

    fn take(&mut self) -> Option<Vec<oneshot::Sender<T>>> {
        let key = self.key.take()?;
        let mut open = self.groups.open.lock().unwrap_or_else(|p| p.into_inner());
        open.remove(&key)
    }
}

impl<K: Hash + Eq + Copy, T> Drop for Leader<'_, K, T> {
    fn drop(&mut self) {
        self.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A store that numbers the members of each group it is asked for, and counts runs.
    async fn numbered(runs: &AtomicUsize, n: usize) -> Vec<(usize, usize)> {
        let run = runs.fetch_add(1, Ordering::SeqCst);
        (0..n).map(|i| (run, i)).collect()
    }

    #[tokio::test]
    async fn callers_ready_together_share_one_run_and_get_their_own_answers_in_order() {
        let groups = Arc::new(Groups::<u8, (usize, usize)>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        // Spawned together, so they are all ready in the same tick.
        let tasks: Vec<_> = (0..5)
            .map(|_| {
                let (groups, runs) = (groups.clone(), runs.clone());
                tokio::spawn(async move { groups.join(7, |n| numbered(&runs, n)).await })
            })
            .collect();
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(task.await.unwrap());
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(answers, [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4)]);
        assert!(groups.open.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn different_keys_are_never_grouped() {
        let groups = Groups::<u8, (usize, usize)>::default();
        let runs = AtomicUsize::new(0);
        let (a, b) = tokio::join!(
            groups.join(1, |n| numbered(&runs, n)),
            groups.join(2, |n| numbered(&runs, n)),
        );
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert_eq!((a.1, b.1), (0, 0));
    }

    #[tokio::test]
    async fn members_of_a_cancelled_leader_ask_alone() {
        let groups = Groups::<u8, &str>::default();
        let leader = groups.join(1, |_| async { vec!["leader's group"; 2] });
        let member = groups.join(1, |n| async move {
            assert_eq!(n, 1);
            vec!["alone"]
        });
        // The leader registers, the member joins, then the leader is dropped mid-yield.
        let mut leader = Box::pin(leader);
        assert!(poll_once(&mut leader).await.is_none());
        let mut member = Box::pin(member);
        assert!(poll_once(&mut member).await.is_none());
        drop(leader);
        assert_eq!(member.await, "alone");
        assert!(groups.open.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_short_answer_leaves_the_rest_to_ask_alone() {
        let groups = Groups::<u8, usize>::default();
        let runs = AtomicUsize::new(0);
        let short = |n: usize| {
            let run = runs.fetch_add(1, Ordering::SeqCst);
            async move { (0..n.min(1)).map(|_| run).collect::<Vec<_>>() }
        };
        let (a, b) = tokio::join!(groups.join(1, short), groups.join(1, short));
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
