//! The trading platform's domain, shared by the jobs and the binary: tenant-confined
//! transactions ([`tenancy`]), the audit chain ([`audit`]), credential references
//! ([`secrets`]), venues and their clients ([`venue`]), Discord's webhook dialect
//! ([`discord`]), bounds on what comes from outside ([`bounds`]) and the clients a
//! process shares ([`Services`]). It knows no queue and no job.

pub mod audit;
pub mod bounds;
pub mod discord;
pub mod secrets;
mod services;
pub mod status;
pub mod tenancy;
pub mod venue;

pub use services::Services;
