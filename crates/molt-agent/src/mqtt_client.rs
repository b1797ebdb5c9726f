//! What the agent's MQTT connections share (the fleet link, the local
//! source and the local sink): reconnect backoff with jitter, and the task
//! that polls rumqttc's event loop.

use std::time::Duration;

use rumqttc::Event;
use tokio::sync::mpsc;

/// Exponential reconnect backoff, each wait spread over `[half, all]` of
/// the current step so that a fleet does not reconnect in lockstep.
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    step: Duration,
    /// xorshift state for the jitter; not for secrets.
    state: u64,
}

impl Backoff {
    /// Starts at `initial_ms`, doubles up to `max_ms`; `salt` tells apart
    /// connections of one process started in the same nanosecond.
    pub(crate) fn new(initial_ms: u64, max_ms: u64, salt: u64) -> Backoff {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9, |elapsed| elapsed.as_nanos() as u64)
            ^ (salt ^ u64::from(std::process::id())).rotate_left(32);
        let initial = Duration::from_millis(initial_ms);
        Backoff {
            initial,
            max: Duration::from_millis(max_ms),
            step: initial,
            state: seed | 1,
        }
    }

    /// The wait before the next attempt; `was_up` (the connection that
    /// ended had been established) starts the backoff over.
    pub(crate) fn next_wait(&mut self, was_up: bool) -> Duration {
        if was_up {
            self.step = self.initial;
        }
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        let fraction = 0.5 + (self.state >> 11) as f64 / (1u64 << 53) as f64 / 2.0;
        let wait = self.step.mul_f64(fraction);
        self.step = (self.step * 2).min(self.max);
        wait
    }
}

/// Polls `event_loop` and forwards incoming packets and the first error to
/// `events`. It never publishes: a publish awaited on the polling task can
/// deadlock it (rumqttc #1025).
pub(crate) fn spawn_poller(
    mut event_loop: rumqttc::EventLoop,
    events_tx: mpsc::Sender<Result<Event, String>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match event_loop.poll().await {
                Ok(event @ Event::Incoming(_)) => {
                    if events_tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                Ok(Event::Outgoing(_)) => {}
                Err(error) => {
                    let _ = events_tx.send(Err(error.to_string())).await;
                    return;
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_within_the_jitter_up_to_the_max_and_start_over_after_a_connection() {
        let mut b = Backoff::new(100, 1_000, 7);
        let ms = |d: Duration| d.as_millis() as u64;
        let bounds = [(50, 100), (100, 200), (200, 400), (400, 800), (500, 1000), (500, 1000)];
        for (low, high) in bounds {
            let w = ms(b.next_wait(false));
            assert!((low..=high).contains(&w), "{w} not in {low}..={high}");
        }
        let w = ms(b.next_wait(true));
        assert!((50..=100).contains(&w), "{w} after a connection");
    }
}
