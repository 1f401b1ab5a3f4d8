//! The nemesis: a schedule of faults drawn from the seed ([`schedule`]) and its player ([`run`]).

pub mod run;
pub mod schedule;

pub use run::run;
pub use schedule::{schedule, Step};
