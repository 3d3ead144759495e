//! One module per subcommand; each returns the process exit code.

use std::process::ExitCode;

use crate::Command;

// ---- kernel ----
pub(crate) mod cert;
pub(crate) mod check;
pub(crate) mod demo;
pub(crate) mod init;
pub(crate) mod kernel_config;
pub(crate) mod policy;

// ---- log ----
pub(crate) mod log;

// ---- sandbox ----
pub(crate) mod run;

// ---- identity ----

// ---- gateway ----

pub(crate) fn dispatch(command: Command) -> ExitCode {
    match command {
        // ---- kernel ----
        Command::Init(args) => init::run(&args),
        Command::Policy(command) => policy::run(&command),
        Command::Check(args) => check::run(&args),
        Command::Cert(command) => cert::run(&command),
        Command::Demo(args) => demo::run(&args),
        // ---- log ----
        Command::Log(args) => log::run(args),
        // ---- sandbox ----
        Command::Run(args) => run::run(args),
        // ---- identity ----

        // ---- gateway ----
    }
}
