//! Forwards the bot's own warn and error events to the controller as `BotMessage::Log`, with
//! their fields and the bot's and recording's ids, so the controller can log them again and
//! count them (alerts fire from those counts).
//!
//! A `tracing` layer; it only queues messages and must never block or log itself.

use std::sync::{Arc, Mutex};

use recfleet_proto::protocol::{BotMessage, LogLevel};
use tokio::sync::mpsc;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

#[derive(Debug, Default)]
struct Target {
    outbox: Option<mpsc::UnboundedSender<BotMessage>>,
    bot_id: String,
    recording_id: Option<String>,
}

/// Where forwarded events go; set once the connection to the controller exists.
#[derive(Debug, Clone, Default)]
pub struct LogForward {
    target: Arc<Mutex<Target>>,
}

impl LogForward {
    pub fn connect(&self, bot_id: &str, outbox: mpsc::UnboundedSender<BotMessage>) {
        let mut t = self.target.lock().expect("forward lock");
        t.outbox = Some(outbox);
        t.bot_id = bot_id.to_string();
    }

    /// Stops forwarding (the connection is closing: its queue must be allowed to end).
    pub fn disconnect(&self) {
        self.target.lock().expect("forward lock").outbox = None;
    }

    pub fn recording(&self, recording_id: &str) {
        self.target.lock().expect("forward lock").recording_id = Some(recording_id.to_string());
    }

    /// The layer to install in the subscriber.
    pub fn layer(&self) -> ForwardLayer {
        ForwardLayer { target: self.target.clone() }
    }
}

#[derive(Debug)]
pub struct ForwardLayer {
    target: Arc<Mutex<Target>>,
}

#[derive(Default)]
struct Fields {
    message: String,
    fields: serde_json::Map<String, serde_json::Value>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.fields.insert(field.name().to_string(), value.into());
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields.insert(field.name().to_string(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields.insert(field.name().to_string(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.fields.insert(field.name().to_string(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields.insert(field.name().to_string(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.fields.insert(field.name().to_string(), text.into());
        }
    }
}

impl<S: Subscriber> Layer<S> for ForwardLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = match *event.metadata().level() {
            Level::ERROR => LogLevel::Error,
            Level::WARN => LogLevel::Warn,
            _ => return,
        };
        let target = self.target.lock().expect("forward lock");
        let Some(outbox) = &target.outbox else { return };
        let mut visit = Fields::default();
        event.record(&mut visit);
        visit.fields.insert("target".into(), event.metadata().target().into());
        visit.fields.insert("bot_id".into(), target.bot_id.clone().into());
        if let Some(id) = &target.recording_id {
            visit.fields.insert("recording_id".into(), id.clone().into());
        }
        let _ = outbox.send(BotMessage::Log { level, message: visit.message, fields: visit.fields });
    }
}
