//! Log output as runc writes it, so clients that read the runtime's `--log` understand it:
//! `--log-format json` gives one `{"level","msg","time"}` object per line.

use std::fmt;
use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};

use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::state::rfc3339_now;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Collects an event's message and other fields into one line of text.
#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        if field.name() == "message" {
            self.0.push_str(&format!("{value:?}"));
        } else {
            self.0.push_str(&format!("{}={value:?}", field.name()));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            if !self.0.is_empty() {
                self.0.push(' ');
            }
            self.0.push_str(value);
        } else {
            self.record_debug(field, &value);
        }
    }
}

struct RuncFormat(LogFormat);

impl<S, N> FormatEvent<S, N> for RuncFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut msg = Message::default();
        event.record(&mut msg);
        let level = match *event.metadata().level() {
            Level::ERROR => "error",
            Level::WARN => "warning",
            Level::INFO => "info",
            Level::DEBUG => "debug",
            Level::TRACE => "trace",
        };
        let time = rfc3339_now();
        match self.0 {
            LogFormat::Json => {
                let line = serde_json::json!({ "level": level, "msg": msg.0, "time": time });
                writeln!(writer, "{line}")
            }
            LogFormat::Text => {
                writeln!(writer, "time={time:?} level={level} msg={:?}", msg.0)
            }
        }
    }
}

/// Sends logs to `file` (appended) or stderr. Without `debug`, only warnings and errors.
pub fn init(file: Option<&Path>, format: LogFormat, debug: bool) -> std::io::Result<()> {
    // libcgroups warns about every v1 controller the host lacks; that is not the user's concern.
    let filter = if debug {
        "debug"
    } else {
        "warn,libcgroups=error"
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .event_format(RuncFormat(format));
    match file {
        Some(path) => {
            let f = OpenOptions::new().create(true).append(true).open(path)?;
            builder.with_writer(Mutex::new(f)).init();
        }
        None => builder.with_writer(std::io::stderr).init(),
    }
    Ok(())
}
