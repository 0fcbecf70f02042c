//! KEP-5866 shard selectors: crwatch-apiserver's `shardSelector` parser on arbitrary text, and
//! the selectors the runtime's shard rings send (`crwatch::shard`) against that parser.
//!
//! Input: byte 0 picks the slot count (1 to 256), byte 1 the number of members (1 to 5), byte 2
//! which member this replica is, byte 3 the key (uid or namespace); the rest is text, both a
//! selector for the parser and a uid/namespace value to hash.
//! Invariants: no panic; a selector the server accepts prints (as lists echo it) to one it
//! accepts again unchanged; every selector a ring sends is accepted, and server and runtime
//! agree for any value whether it is selected.
#![no_main]

use crwatch::shard::{ShardKey, SlotSet, fnv1a64, slot_of};
use crwatch_apiserver::shard::ShardSelector;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let text = String::from_utf8_lossy(&data[4..]);

    // The server's parser: never panics; its normal form is a fixed point.
    if let Ok(parsed) = ShardSelector::parse(&text) {
        let echoed = parsed.to_string();
        let again = ShardSelector::parse(&echoed).expect("the echoed selector parses");
        assert_eq!(again.to_string(), echoed);
    }

    // A ring's selector for this replica's slots.
    let slots = 1u32 << (data[0] % 9);
    let n = usize::from(data[1] % 5) + 1;
    let members: Vec<String> = (0..n).map(|i| format!("replica-{i}-{}", data[2] / 7)).collect();
    let me = &members[usize::from(data[2]) % n];
    let set = SlotSet::assigned(&members, me, slots);
    if set.is_empty() {
        return;
    }
    let key = if data[3] % 2 == 0 { ShardKey::Uid } else { ShardKey::Namespace };
    let selector = set.selector(key);
    let server = ShardSelector::parse(&selector).expect("the server accepts a ring's selector");
    assert_eq!(server.to_string(), selector, "a ring sends the normal form");
    let hash = fnv1a64(text.as_bytes());
    assert_eq!(
        server.matches_field(&text),
        set.contains(slot_of(hash, slots)),
        "server and runtime disagree on {text:?} (hash {hash:#x}) for {selector}"
    );
});
