//! One module per subcommand; each returns the process exit code.

use std::process::ExitCode;

use crate::Command;

// ---- kernel ----

// ---- log ----

// ---- sandbox ----
pub(crate) mod run;

// ---- identity ----

// ---- gateway ----

pub(crate) fn dispatch(command: Command) -> ExitCode {
    match command {
        // ---- kernel ----

        // ---- log ----

        // ---- sandbox ----
        Command::Run(args) => run::run(args),
        // ---- identity ----

        // ---- gateway ----
    }
}
