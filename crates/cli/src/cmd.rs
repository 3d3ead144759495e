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
pub(crate) mod identity;

// ---- gateway ----
pub(crate) mod approvals;
pub(crate) mod mcp;
pub(crate) mod replay;
pub(crate) mod serve;
pub(crate) mod tools;

pub(crate) fn dispatch(command: Command) -> ExitCode {
    match command {
        // ---- kernel ----
        Command::Init(args) => init::run(&args),
        Command::Policy(command) => policy::run(&command),
        Command::Check(args) => check::run(&args),
        Command::Cert(command) => cert::run(&command),
        Command::Demo(args) => demo::run(&args),
        Command::DemoServer(args) => crate::demo_server::run(&args),
        // ---- log ----
        Command::Log(args) => log::run(args),
        // ---- sandbox ----
        Command::Run(args) => run::run(args),
        // ---- identity ----
        Command::Identity(args) => identity::run(args),
        // ---- gateway ----
        Command::Mcp(args) => {
            log_warnings();
            mcp::run(&args)
        }
        Command::Serve(args) => {
            log_warnings();
            serve::run(&args)
        }
        Command::Replay(args) => replay::run(&args),
        Command::Approvals(command) => approvals::run(&command),
        Command::Tools(command) => tools::run(&command),
    }
}

/// The long-running gateway commands report the gateway's warnings (e.g. notifications dropped
/// for an agent that does not read them) on standard error; standard output may be the MCP
/// channel itself.
fn log_warnings() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .with_target(false)
        .try_init();
}
