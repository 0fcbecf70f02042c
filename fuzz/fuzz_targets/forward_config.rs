//! The `crwatch forward` configuration (crwatch-forward's `ForwardConfig::parse`: serde-saphyr
//! with located errors, then the range and consistency checks `--check` runs), and the
//! subject/routing-key templates of its sinks.
//!
//! Input: the YAML file. Invariants: no panic; an error names the file; an accepted
//! configuration has a sink for every resource and its numbers within the documented bounds
//! (queueSize, parallelism, retry), so nothing a typo multiplies gets allocated.
#![no_main]

use crwatch_forward::config::{ForwardConfig, bounds};
use crwatch_forward::sink::Template;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Template::parse(text);
    match ForwardConfig::parse(text, "forward.yaml") {
        Err(e) => {
            assert!(e.to_string().starts_with("forward.yaml"), "{e}");
        }
        Ok(config) => {
            for r in &config.resources {
                let _ = ForwardConfig::entry_location(r);
                assert!(!config.sinks_of(r).is_empty());
            }
            for s in &config.sinks {
                assert!((1..=bounds::MAX_QUEUE_SIZE).contains(&s.queue_size));
                assert!((1..=s.queue_size.min(bounds::MAX_PARALLELISM)).contains(&s.parallelism));
                assert!(s.retry.initial_backoff <= s.retry.max_backoff);
                assert!(
                    s.retry
                        .max_attempts
                        .is_none_or(|n| (1..=bounds::MAX_ATTEMPTS).contains(&n))
                );
            }
        }
    }
});
