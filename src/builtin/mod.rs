//! Job types owned by the runtime rather than the business: they act on the queue's
//! own tables. (`canary` lives in the jobs crate: it is an ordinary job.)

pub mod prune;
