//! A hostile worker's `/status` answer costs the master what it weighs.
//!
//! The master asks every worker at once and holds each answer until the
//! last. The free-form parts of an answer (containment, LAN, what a driver
//! observes) used to be decoded into a JSON tree, which takes up to about
//! 95 times the memory of its text: 4 MiB of `{"":0},` became 384 MiB.
//! This test plays that worker and measures what decoding its answer
//! allocates (a counting allocator, this test binary's own: the one
//! `unsafe` here is the allocator trait's, passing calls to the system's).
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use decnet_api::AgentStatus;

/// The system allocator, counting the bytes live at once.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A `/status` answer of about `bytes` whose free-form fields are trees of
/// the smallest objects (the costliest shape to decode).
fn hostile_status(bytes: usize) -> String {
    let per_field = bytes / 3;
    let tree = |n: usize| {
        let mut s = String::with_capacity(n + 2);
        s.push('[');
        while s.len() < n {
            s.push_str("{\"\":0},");
        }
        s.pop();
        s.push(']');
        s
    };
    format!(
        r#"{{"host":"w1","version":"1","driver":"process","containment":{c},"lan":{l},"deckies":[{{"name":"d","state":"running","observed":{o}}}]}}"#,
        c = tree(per_field),
        l = tree(per_field),
        o = tree(per_field),
    )
}

#[test]
fn a_hostile_status_costs_the_master_what_it_weighs() {
    let answer = hostile_status(4 << 20);
    let before = LIVE.load(Ordering::Relaxed);
    let status: AgentStatus = serde_json::from_str(&answer).expect("valid JSON");
    let held = LIVE.load(Ordering::Relaxed).saturating_sub(before);
    assert!(
        held < 2 * answer.len(),
        "decoding a {} KiB answer holds {} KiB",
        answer.len() >> 10,
        held >> 10
    );
    // Kept whole, and passed on as it came.
    let containment = status.containment.as_ref().expect("containment kept");
    assert!(containment.get().starts_with("[{\"\":0}"));
    let again = serde_json::to_string(&status).unwrap();
    assert!(again.contains(containment.get()));
    // An operator's tool still reads what it shows.
    assert_eq!(
        status.deckies[0].observed.as_ref().unwrap().to_value()[0][""],
        0
    );
}

#[test]
fn free_form_fields_that_are_not_json_are_refused() {
    let bad = r#"{"host":"w1","version":"1","driver":"process","containment":{"a":},"deckies":[]}"#;
    assert!(serde_json::from_str::<AgentStatus>(bad).is_err());
}
