//! Integration tests: one binary (each extra test file would be another slow link).
//! They start the real `latchkeyd` and talk to it with the tonic client generated from `proto/`.

// A panic in a test is a test failure, which is what unwrap and expect mean here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// A scenario test reads top to bottom as the scenario it walks; the 100-line limit is for
// the daemon's and the CLI's code.
#![allow(clippy::too_many_lines)]

mod architecture;
mod audit;
mod breakglass;
mod browser;
mod crash;
mod delivery;
mod fido2;
mod fleet;
mod golden;
mod hardening;
mod lifecycle;
mod newcomer;
mod notify;
mod operations;
mod piv;
mod python;
mod remote;
mod revocation;
mod serving;
mod support;
