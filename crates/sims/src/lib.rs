//! Simulators of the vendors the fleet cannot reach from here, each speaking its
//! vendor's exact dialect over real HTTP: [`paper`] (Alpaca's trading and market-data
//! APIs), [`discord_sink`] (Discord's webhooks) and [`oauth_broker`] (Schwab's OAuth
//! token endpoint). They depend on nothing of the
//! fleet, only on their own copies of their vendors' wire formats.

pub mod discord_sink;
pub mod oauth_broker;
pub mod paper;
