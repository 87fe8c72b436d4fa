//! Helpers shared by integration tests. Each test binary includes this with
//! `mod support;` and uses only part of it, hence the dead-code allowance.
#![allow(dead_code)]

pub mod busybox;
