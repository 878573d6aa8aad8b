//! warden end to end: stories, connectors and hostile guests through the real
//! engine, runtime, run store and server, against the vendor simulators. One
//! test binary, so the host and its dependencies link once; each file is the
//! tests of one surface.

mod connector_pack;
mod connectors;
mod console;
mod email;
mod extremes;
mod host_runtime;
mod hostile;
mod languages;
mod replay;
mod stories;
mod teams;
mod telemetry;
mod tines;
