//! Simulators of the vendors the fleet cannot reach from here, each speaking its
//! vendor's exact dialect over real HTTP: [`paper`] (Alpaca's trading and market-data
//! APIs) and [`discord_sink`] (Discord's webhooks). They depend on nothing of the
//! fleet, only on their own copies of their vendors' wire formats.

pub mod discord_sink;
pub mod paper;
