//! kalive's output read back: every line must be one of its records.

use anyhow::{Context as _, Result, ensure};
use kalive_common::event::Event;
use serde_json::Value;

/// A line `kalive --format json` wrote, as its typed record.
///
/// # Errors
/// When the line is not a record kalive can write.
pub fn parse(line: &str) -> Result<Event> {
    let event: Event = serde_json::from_str(line)
        .with_context(|| format!("kalive wrote a line that is not a record: {line}"))?;
    ensure!(
        event.is_whole(),
        "kalive wrote a record without its socket: {line}"
    );
    Ok(event)
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
        // A probe_sent whose socket does not read (a state kalive has no name for).
        let odd = "{\"ts\":\"2026-11-22T03:50:14.364912Z\",\"event\":\"probe_sent\",\"next_ms\":1,\"late\":false,\"sent\":true,\
            \"pid\":1,\"comm\":\"x\",\"owner\":\"kernel\",\"shared\":false,\"family\":\"ipv4\",\
            \"saddr\":\"10.0.0.1\",\"sport\":1,\"daddr\":\"10.0.0.2\",\"dport\":2,\"netns\":3,\
            \"cookie\":4,\"state\":\"NO_SUCH_STATE\",\"probes\":1,\"idle_ms\":5,\"keepidle_ms\":6,\
            \"keepintvl_ms\":7,\"keepcnt\":8,\"user_timeout_ms\":0}";
        assert!(parse(&odd.replace("NO_SUCH_STATE", "ESTABLISHED")).is_ok());
        assert!(parse(odd).is_err());
        assert!(
            parse("{\"ts\":\"2026-11-22T03:50:14.364912Z\",\"event\":\"no_such_event\"}").is_err()
        );
    }
}
