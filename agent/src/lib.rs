//! ghostwire: traces services nobody instrumented.
//!
//! Data flows one way, one module per stage:
//! `capture` (kernel probes, ring buffer) → `conn` (connection table, reassembly) →
//! `protocol` (pure parsers, request/response pairing) → `span` (span builder, context,
//! resources, linker) → `metrics` (RED and service graph, from every span) → `sample`
//! (which traces are exported) → `export` (bounded queues, OTLP, JSONL, terminal
//! waterfall).
//! `stats` counts every event and drop.
pub mod capture;
pub mod config;
pub mod conn;
pub mod export;
pub mod k8s;
pub mod metrics;
pub mod pipeline;
pub mod protocol;
pub mod sample;
pub mod span;
pub mod stats;
