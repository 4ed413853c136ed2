//! The trading platform's domain, shared by the jobs and the binary: tenant-confined
//! transactions ([`tenancy`]), the audit chain ([`audit`]), credential references
//! ([`secrets`]), venues and their clients ([`venue`]), Discord's webhook dialect
//! ([`discord`]), bounds on what comes from outside ([`bounds`]) and the clients a
//! process shares ([`Services`]). It knows no queue and no job.

pub mod audit;
pub mod bounds;
pub mod brokers;
pub mod discord;
pub mod lifecycle;
pub mod secrets;
mod services;
pub mod status;
pub mod stripe;
pub mod tenancy;
pub mod trade_streams;
pub mod venue;
pub mod watcher;

pub use services::Services;

/// Stores an enum with `ALL` and `as_str` in a text column (the schema CHECKs the
/// spellings): `FromStr` over `ALL`, and encoded and decoded as text, so a spelling the
/// code does not know fails to decode instead of slipping through as a string.
#[macro_export]
macro_rules! text_column {
    ($ty:ty, $what:literal) => {
        impl std::str::FromStr for $ty {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                <$ty>::ALL
                    .into_iter()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| format!(concat!("unknown ", $what, " `{}`"), s))
            }
        }

        impl sqlx::Type<sqlx::Postgres> for $ty {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::Type<sqlx::Postgres>>::type_info()
            }

            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <&str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }

        impl sqlx::postgres::PgHasArrayType for $ty {
            fn array_type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::postgres::PgHasArrayType>::array_type_info()
            }
        }

        impl sqlx::Encode<'_, sqlx::Postgres> for $ty {
            fn encode_by_ref(
                &self,
                buf: &mut sqlx::postgres::PgArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<sqlx::Postgres>>::encode(self.as_str(), buf)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Postgres> for $ty {
            fn decode(
                value: sqlx::postgres::PgValueRef<'r>,
            ) -> Result<Self, sqlx::error::BoxDynError> {
                Ok(<&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?.parse::<$ty>()?)
            }
        }
    };
}
