//! One module per subcommand; each returns the process exit code.

use std::process::ExitCode;

use crate::Command;

// ---- kernel ----

// ---- log ----
pub(crate) mod log;

// ---- sandbox ----

// ---- identity ----

// ---- gateway ----

pub(crate) fn dispatch(command: Command) -> ExitCode {
    match command {
        // ---- kernel ----

        // ---- log ----
        Command::Log(args) => log::run(args),
        // ---- sandbox ----

        // ---- identity ----

        // ---- gateway ----
    }
}
