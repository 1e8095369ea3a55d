//! Orders: the pure state machine, the actor that hosts it, and the supervisor that
//! is the only registry of live order actors.

pub mod machine;
#[cfg(test)]
mod machine_tests;
