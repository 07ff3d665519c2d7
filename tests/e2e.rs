//! One end-to-end test binary: every test starts the real binaries (see `util`).
//! Modules group the tests by the issue they prove.

mod agent_pipeline;
mod aggregator_api;
mod bench_smoke;
mod browser;
mod config_layers;
mod config_reference;
mod corrupt_buckets;
mod crash;
mod disk_full;
mod docs;
mod endpoints;
mod hardening;
mod hostile;
mod hung_reads;
mod lifecycle;
mod live;
mod model;
mod msrv;
mod operator;
mod overload;
mod power_cut;
mod redis_keys;
mod refusals;
mod reload;
mod retention;
mod scale_out;
mod sealing;
mod search;
mod search_clients;
mod service;
mod structure;
mod timestamps;
mod tls;
mod tracking;
mod vendored;
