//! One module per subcommand; each returns the process exit code.

use std::process::ExitCode;

use crate::Command;

// ---- kernel ----

// ---- log ----

// ---- sandbox ----

// ---- identity ----
pub(crate) mod identity;

// ---- gateway ----

pub(crate) fn dispatch(command: Command) -> ExitCode {
    match command {
        // ---- kernel ----

        // ---- log ----

        // ---- sandbox ----

        // ---- identity ----
        Command::Identity(args) => identity::run(args),
        // ---- gateway ----
    }
}
