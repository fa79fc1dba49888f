//! The `soma` binary and `soma daemon` end to end, one module per former
//! test file: analytics through the outbox and the shipper (`analytics`) and
//! its external sinks against real servers (`analytics_sinks`), the CLI (`cli`), the daemon over HTTP (`daemon`), its log
//! (`daemon_log`) and its `/metrics` scraped by Prometheus
//! (`daemon_prometheus`), two daemons on one PostgreSQL (`daemon_pg`),
//! `soma dag` (`dag`), the `fetch` example calling a real API with a
//! granted secret (`fetch`), the fuel charged after an epoch interrupt
//! (`fuel_after_interrupt`), the one resolve stage (`resolve`) and the DAG
//! conformance suite on the embedded and the Temporal engine (`temporal`)
//! and chaos on the Temporal engine (`temporal_chaos`).
//! One test binary: each file linked alone cost a ~220 MB
//! link (docs/ci.md).

mod analytics;
mod analytics_sinks;
mod cli;
mod common;
mod daemon;
mod daemon_log;
mod daemon_pg;
mod daemon_prometheus;
mod dag;
mod fetch;
mod fuel_after_interrupt;
mod resolve;
mod temporal;
mod temporal_chaos;
