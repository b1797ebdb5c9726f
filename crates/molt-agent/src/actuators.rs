//! Where an actuator's commands go: the log, a local MQTT topic
//! ([`MqttSink`]) or a GPIO line ([`GpioSink`]). The daemon rate-limits each
//! actuator (`commands_per_second_max`) before a command gets here; an
//! error here is counted and logged, never fatal.

use serde::Serialize;

use crate::daemon::SinkConfig;
use crate::gpio::GpioSink;
use crate::mqtt_io::{MqttSink, SinkCounters};

/// One actuator's sink.
#[derive(Debug)]
pub(crate) enum Output {
    Log(SinkCounters),
    Mqtt(MqttSink),
    Gpio(GpioSink),
}

/// One actuator sink's counters at the end of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ActuatorSummary {
    /// The actuator.
    pub actuator: String,
    /// `log`, `mqtt` or `gpio`.
    pub kind: &'static str,
    /// Its counters.
    pub counters: SinkCounters,
}

impl Output {
    /// Starts the sink `config` names: (actuator, commands per second, sink).
    pub(crate) fn start(config: &SinkConfig) -> Result<(String, u32, Output), String> {
        Ok(match config {
            SinkConfig::Log {
                actuator,
                commands_per_second_max,
            } => (
                actuator.clone(),
                *commands_per_second_max,
                Output::Log(SinkCounters {
                    ready: true,
                    ..SinkCounters::default()
                }),
            ),
            SinkConfig::Mqtt(config) => (
                config.actuator.clone(),
                config.commands_per_second_max,
                Output::Mqtt(MqttSink::start(config)?),
            ),
            SinkConfig::Gpio(config) => (
                config.actuator.clone(),
                config.commands_per_second_max,
                Output::Gpio(GpioSink::start(config)?),
            ),
        })
    }

    /// Hands one command from `policy` to the sink.
    pub(crate) fn deliver(&mut self, actuator: &str, policy: &str, value: f64) -> Result<(), String> {
        match self {
            Output::Log(counters) => {
                counters.delivered += 1;
                eprintln!("molt-agent: command {actuator} = {value} from {policy}");
                Ok(())
            }
            Output::Mqtt(sink) => sink.deliver(policy, value),
            Output::Gpio(sink) => sink.set(value),
        }
    }

    /// Stops the sink and gives its counters.
    pub(crate) fn finish(self, actuator: String) -> ActuatorSummary {
        let (kind, counters) = match self {
            Output::Log(counters) => ("log", counters),
            Output::Mqtt(sink) => ("mqtt", sink.stop()),
            Output::Gpio(sink) => ("gpio", sink.counters()),
        };
        ActuatorSummary {
            actuator,
            kind,
            counters,
        }
    }
}
