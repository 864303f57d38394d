//! Runtimes drive the operators' stages. The embedded runtime (here) connects them with
//! bounded in-process channels for `strata batch` and tests; the Kafka runtime will drive the
//! same stages from topics.

pub mod embedded;
