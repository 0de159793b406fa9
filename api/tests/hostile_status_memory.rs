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

/// One measurement at a time: the count is the whole process's.
static MEASURING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A JSON array of about `n` bytes of the smallest objects (the costliest
/// shape to decode into a tree).
fn tree(n: usize) -> String {
    let mut s = String::with_capacity(n + 2);
    s.push('[');
    while s.len() < n {
        s.push_str("{\"\":0},");
    }
    s.pop();
    s.push(']');
    s
}

/// Decode `answer` as a `T`, and check that what the decoding holds stays
/// under twice the answer's size.
fn decode_weighing<T: serde::de::DeserializeOwned>(answer: &str) -> T {
    let before = LIVE.load(Ordering::Relaxed);
    let decoded: T = serde_json::from_str(answer).expect("valid JSON");
    let held = LIVE.load(Ordering::Relaxed).saturating_sub(before);
    assert!(
        held < 2 * answer.len(),
        "decoding a {} KiB answer holds {} KiB",
        answer.len() >> 10,
        held >> 10
    );
    decoded
}

/// A `/status` answer of about `bytes` whose free-form fields are trees of
/// the smallest objects.
fn hostile_status(bytes: usize) -> String {
    let per_field = bytes / 3;
    format!(
        r#"{{"host":"w1","version":"1","driver":"process","containment":{c},"lan":{l},"deckies":[{{"name":"d","state":"running","observed":{o}}}]}}"#,
        c = tree(per_field),
        l = tree(per_field),
        o = tree(per_field),
    )
}

#[test]
fn a_hostile_status_costs_the_master_what_it_weighs() {
    let _one = MEASURING.lock().unwrap_or_else(|p| p.into_inner());
    let answer = hostile_status(4 << 20);
    let status: AgentStatus = decode_weighing(&answer);
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
fn a_hostile_relocation_costs_what_it_weighs_and_shows_only_its_strings() {
    let _one = MEASURING.lock().unwrap_or_else(|p| p.into_inner());
    let tree = tree(4 << 20);
    let answer = format!(
        r#"{{"host":"w1","operation_id":"op","deckies":[],"error":null,"relocation":{{"from_parent":"eth0","to_parent":{tree},"addresses":{tree},"reason":"subnet"}}}}"#
    );
    let deploy: decnet_api::HostDeploy = decode_weighing(&answer);
    let summary = decnet_api::worker::RelocationSummary::of(deploy.relocation.as_ref().unwrap());
    assert_eq!(summary.from_parent.as_deref(), Some("eth0"));
    assert_eq!(summary.to_parent, None, "a tree is not a name");
    assert_eq!(summary.reason.as_deref(), Some("subnet"));
}

#[test]
fn free_form_fields_that_are_not_json_are_refused() {
    let _one = MEASURING.lock().unwrap_or_else(|p| p.into_inner());
    let bad = r#"{"host":"w1","version":"1","driver":"process","containment":{"a":},"deckies":[]}"#;
    assert!(serde_json::from_str::<AgentStatus>(bad).is_err());
}
