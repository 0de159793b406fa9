//! The deployment config (the body of `POST /deploy`): parsing and
//! validation never panic, for either driver, and a config that passes
//! validates again after a round trip.
#![no_main]

use decnet_agent::config::{DeploymentConfig, DriverKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for driver in [DriverKind::Process, DriverKind::Compose] {
        if let Ok(c) = DeploymentConfig::parse(data, driver) {
            let again = serde_json::to_vec(&c).expect("serializes");
            DeploymentConfig::parse(&again, driver).expect("a valid config stays valid");
        }
    }
});
