//! One file per subcommand: glue from the resolved config to the library, and the only place
//! (with progress bars) that prints to the terminal.

pub mod export_hf;
pub mod ppl_eval;
pub mod ranks;
pub mod report;
pub mod sample_eval;
pub mod setup;
pub mod train;
