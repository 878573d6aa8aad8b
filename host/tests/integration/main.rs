//! `warden` as an operator runs it: the binary and `warden serve` as real
//! processes (CLI, webhooks, durability, cluster, approvals) and fuzz bursts on
//! the parsers. One test binary, so the host and its dependencies link once.

mod common;

mod approvals;
mod authors;
mod cli;
mod cluster;
mod fuzz_parsers;
mod serve;
