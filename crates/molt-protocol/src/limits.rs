//! Every bound on a message, by name.

/// Bounds on what a message may hold. The server configures them under the
/// same names (`[protocol]` in its config file) and names the one a message
/// broke when it refuses it; the agent checks the same bounds before it
/// queues a message, so it never sends what the server would refuse.
///
/// The defaults suit a gateway on a cellular link: a telemetry message of
/// the largest size is about 30 KiB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload, in bytes, of any message; checked before decoding.
    pub payload_bytes_max: usize,
    /// Most points in one [`crate::Telemetry`] message.
    pub points_per_message_max: usize,
    /// Most distinct metric names in one [`crate::Telemetry`] message.
    pub metrics_per_message_max: usize,
    /// Longest metric name, in bytes.
    pub metric_len_max: usize,
    /// Most alerts in one [`crate::Alerts`] message.
    pub alerts_per_message_max: usize,
    /// Longest free text (alert message, event detail, error), in bytes.
    pub text_len_max: usize,
    /// Longest name or version (policy, hardware class, agent version,
    /// rollout id), in bytes.
    pub name_len_max: usize,
    /// Most policies in one [`crate::Reported`] state.
    pub policies_max: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            payload_bytes_max: 64 * 1024,
            points_per_message_max: 2048,
            metrics_per_message_max: 256,
            metric_len_max: 128,
            alerts_per_message_max: 256,
            text_len_max: 2048,
            name_len_max: 128,
            policies_max: 64,
        }
    }
}
