//! kalive's output read back: every line must be one of its records.

use anyhow::{Context as _, Result};
use kalive_common::event::Event;
use serde_json::Value;

/// A line `kalive --format json` wrote, as its typed record.
///
/// # Errors
/// When the line is not a record kalive can write.
pub fn parse(line: &str) -> Result<Event> {
    serde_json::from_str(line)
        .with_context(|| format!("kalive wrote a line that is not a record: {line}"))
}

/// A line as its typed record (checked) and as JSON to look into.
///
/// # Errors
/// As [`parse`].
pub fn parse_with_json(line: &str) -> Result<(Event, Value)> {
    let event = parse(line)?;
    let value = serde_json::from_str(line).with_context(|| format!("invalid JSON: {line}"))?;
    Ok((event, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_not_records() {
        let lost =
            "{\"ts\":\"2026-11-22T03:50:14.364912Z\",\"event\":\"events_lost\",\"count\":12}";
        let (event, value) = parse_with_json(lost).expect("a record");
        assert_eq!(event.kind().name(), "events_lost");
        assert_eq!(value["count"], 12);
        assert!(parse("{\"event\":\"probe_sent\"}").is_err());
        assert!(
            parse("{\"ts\":\"2026-11-22T03:50:14.364912Z\",\"event\":\"no_such_event\"}").is_err()
        );
    }
}
