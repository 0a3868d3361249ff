//! Waiting for a condition within a deadline.
//!
//! A condition is polled until it holds; once the deadline has passed
//! without it, [`eventually`] panics with what it waited for and, where
//! the condition said why it did not hold yet, the last reason. A poll
//! returns a [`Condition`]: `bool`, `Option<T>` (the value once there) or
//! `Result<T, E>` (`Err` says why not yet).
//!
//! [`never()`] is the other side: a window in which something must not
//! happen, for when nothing observable marks that the system has looked
//! and decided not to act.

use std::fmt::Display;
use std::time::Duration;

use tokio::time::Instant;

/// How often [`eventually`] polls.
pub const POLL: Duration = Duration::from_millis(20);

/// What one poll found: done with a value, or not yet (perhaps with a
/// reason).
pub trait Condition {
    /// The value once the condition holds.
    type Output;
    /// `Ok` once the condition holds; `Err` with a reason, if any, while
    /// it does not.
    fn check(self) -> Result<Self::Output, Option<String>>;
}

impl Condition for bool {
    type Output = ();
    fn check(self) -> Result<(), Option<String>> {
        if self { Ok(()) } else { Err(None) }
    }
}

impl<T> Condition for Option<T> {
    type Output = T;
    fn check(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: Display> Condition for Result<T, E> {
    type Output = T;
    fn check(self) -> Result<T, Option<String>> {
        self.map_err(|why| Some(why.to_string()))
    }
}

/// Polls `poll` every [`POLL`] until its condition holds and returns the
/// condition's value; panics naming `what` once `within` has passed.
pub async fn eventually<C: Condition>(
    within: Duration,
    what: impl Display,
    poll: impl AsyncFnMut() -> C,
) -> C::Output {
    eventually_every(within, POLL, what, poll).await
}

/// [`eventually`], polling every `every` (for conditions that are
/// expensive to check).
pub async fn eventually_every<C: Condition>(
    within: Duration,
    every: Duration,
    what: impl Display,
    poll: impl AsyncFnMut() -> C,
) -> C::Output {
    match until(within, every, poll).await {
        Ok(value) => value,
        Err(why) => fail(within, &what, why),
    }
}

/// Polls `poll` every `every` until its condition holds: its value, or,
/// once `within` has passed, `Err` with the last reason it gave (for
/// callers that go on without it or report it their own way).
pub async fn poll_until<C: Condition>(
    within: Duration,
    every: Duration,
    poll: impl AsyncFnMut() -> C,
) -> Result<C::Output, Option<String>> {
    until(within, every, poll).await
}

async fn until<C: Condition>(
    within: Duration,
    every: Duration,
    mut poll: impl AsyncFnMut() -> C,
) -> Result<C::Output, Option<String>> {
    let deadline = Instant::now() + within;
    loop {
        match poll().await.check() {
            Ok(value) => return Ok(value),
            Err(why) if Instant::now() >= deadline => return Err(why),
            Err(_) => tokio::time::sleep(every).await,
        }
    }
}

/// [`eventually`] for code outside a runtime: polls `poll` every [`POLL`]
/// on this thread.
pub fn eventually_blocking<C: Condition>(
    within: Duration,
    what: impl Display,
    mut poll: impl FnMut() -> C,
) -> C::Output {
    let deadline = std::time::Instant::now() + within;
    loop {
        match poll().check() {
            Ok(value) => return value,
            Err(why) if std::time::Instant::now() >= deadline => fail(within, &what, why),
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// What one look of [`never()`] found: whether the thing it watches for
/// happened, and what it was: `bool`, or `Option<T>` (`Some` says what
/// happened).
pub trait Happened {
    /// `Some` with what happened (empty if there is nothing to say) once
    /// it has; `None` while it has not.
    fn happened(self) -> Option<String>;
}

impl Happened for bool {
    fn happened(self) -> Option<String> {
        self.then(String::new)
    }
}

impl<T: Display> Happened for Option<T> {
    fn happened(self) -> Option<String> {
        self.map(|what| what.to_string())
    }
}

/// Polls `happened` every [`POLL`] for `within` (and once more at its
/// end) and panics naming `what`, and what the poll said happened, the
/// first time it has.
///
/// A bounded observation, not a proof: it passes as well if the system
/// never got round to acting in the window. Use it only where nothing
/// observable says the system has considered the case and decided not to
/// act (a counter of rounds, say, would be a condition to wait on), and
/// make `within` several of the periods in which it would act.
pub async fn never<H: Happened>(
    within: Duration,
    what: impl Display,
    mut happened: impl AsyncFnMut() -> H,
) {
    let deadline = Instant::now() + within;
    loop {
        match happened().await.happened() {
            Some(it) if it.is_empty() => panic!("within {within:?}: {what}"),
            Some(it) => panic!("within {within:?}: {what}: {it}"),
            None if Instant::now() >= deadline => return,
            None => tokio::time::sleep(POLL).await,
        }
    }
}

fn fail(within: Duration, what: &dyn Display, why: Option<String>) -> ! {
    match why {
        Some(why) => panic!("not within {within:?}: {what} (last: {why})"),
        None => panic!("not within {within:?}: {what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn returns_the_value_once_the_condition_holds() {
        let mut polls = 0;
        let value = eventually(Duration::from_secs(1), "the third poll", async || {
            polls += 1;
            (polls == 3).then_some(polls)
        })
        .await;
        assert_eq!(value, 3);
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "not within 1s: the impossible (last: still 7)")]
    async fn panics_naming_what_it_waited_for_and_why_not() {
        eventually(Duration::from_secs(1), "the impossible", async || {
            Err::<(), _>(format!("still {}", 7))
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn poll_until_gives_up_at_the_deadline() {
        let started = Instant::now();
        let found = poll_until(Duration::from_secs(2), Duration::from_millis(300), async || false);
        assert_eq!(found.await, Err(None));
        assert!(started.elapsed() >= Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn never_watches_the_whole_window() {
        let started = Instant::now();
        let mut polls = 0;
        never(Duration::from_secs(1), "the impossible", async || {
            polls += 1;
            false
        })
        .await;
        assert!(started.elapsed() >= Duration::from_secs(1));
        assert!(polls > 1_000 / POLL.as_millis(), "polled {polls} times");
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "within 1s: the sixth poll held")]
    async fn never_panics_once_it_happens() {
        let mut polls = 0;
        never(Duration::from_secs(1), "the sixth poll held", async || {
            polls += 1;
            polls == 6
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "within 1s: the count reached 3: at poll 3")]
    async fn never_says_what_happened() {
        let mut polls = 0;
        never(Duration::from_secs(1), "the count reached 3", async || {
            polls += 1;
            (polls == 3).then(|| format!("at poll {polls}"))
        })
        .await;
    }

    #[test]
    #[should_panic(expected = "not within 50ms: never")]
    fn blocking_panics_at_the_deadline() {
        eventually_blocking(Duration::from_millis(50), "never", || false);
    }
}
