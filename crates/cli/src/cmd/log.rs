//! `warden log`: verify, prove, check-proof, consistency, show, export, rebuild, init.

use std::fs;
use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use warden_log::{
    ExportFormat, Log, LogOptions, NoteSigner, NoteVerifier, PUBLIC_KEY_FILE, Receipt,
    SIGNING_KEY_FILE, Snapshot, export_line, load_verifier, os_entropy, read_records, summary_line,
    verify_consistency, verify_dir,
};

/// The origin (and key name) of a log created without `--origin`.
pub(crate) const DEFAULT_ORIGIN: &str = "warden.local/log";

/// Arguments of `warden log`.
#[derive(Debug, Args)]
pub(crate) struct LogArgs {
    #[command(subcommand)]
    command: LogCommand,
}

#[derive(Debug, Subcommand)]
enum LogCommand {
    /// Create an empty log with a new signing key (`DIR/log-signing.key`, `DIR/log.pub`).
    Init {
        /// Log directory.
        dir: PathBuf,
        /// Checkpoint origin and key name (a schema-less URL).
        #[arg(long, default_value = DEFAULT_ORIGIN)]
        origin: String,
    },
    /// Append each FILE's bytes as one record and print its receipt (for tests and migration;
    /// the gateway and `warden check --log` append decisions themselves).
    Append {
        /// Log directory (created if missing).
        dir: PathBuf,
        /// Files whose contents are records.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Recompute everything and check every checkpoint signature and consistency; on damage
    /// say which record or byte range. Exit 0 if intact, 1 if not.
    Verify {
        /// Log directory.
        dir: PathBuf,
        /// Verifier key (a `name+id+key` string or a file holding one); default `DIR/log.pub`.
        #[arg(long)]
        key: Option<String>,
    },
    /// Write a `.tlog-proof` receipt for the record at INDEX.
    Prove {
        /// Log directory.
        dir: PathBuf,
        /// Record index.
        index: u64,
        /// Output file (default `record-INDEX.tlog-proof`; `-` for stdout).
        #[arg(long, short)]
        out: Option<PathBuf>,
        /// Also write the record's exact bytes to FILE (what `check-proof --entry` takes).
        #[arg(long, value_name = "FILE")]
        entry_out: Option<PathBuf>,
        /// Verifier key; default `DIR/log.pub`.
        #[arg(long)]
        key: Option<String>,
    },
    /// Check a `.tlog-proof` receipt against an entry and a verifier key. Exit 0 if valid, 1 if not.
    CheckProof {
        /// The `.tlog-proof` file.
        proof: PathBuf,
        /// The entry bytes (the record).
        #[arg(long)]
        entry: PathBuf,
        /// Verifier key (a `name+id+key` string or a file holding one).
        #[arg(long)]
        key: String,
    },
    /// Print a consistency proof from OLD_SIZE to the latest checkpoint.
    Consistency {
        /// Log directory.
        dir: PathBuf,
        /// The older tree size.
        old_size: u64,
        /// Verifier key; default `DIR/log.pub`.
        #[arg(long)]
        key: Option<String>,
    },
    /// Print records, one line each (a summary, or the record JSON with `--json`).
    Show {
        /// Log directory.
        dir: PathBuf,
        /// First index to print.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Print each record's JSON as stored.
        #[arg(long)]
        json: bool,
    },
    /// Export records for a SIEM: OCSF API Activity JSON lines or CEF lines.
    Export {
        /// Log directory.
        dir: PathBuf,
        /// Output format.
        #[arg(long, value_enum)]
        format: Format,
        /// First index to export.
        #[arg(long, default_value_t = 0)]
        from: u64,
    },
    /// Rewrite the tiles and the id index from the segments (the log must not be in use).
    Rebuild {
        /// Log directory.
        dir: PathBuf,
        /// Verifier key; default `DIR/log.pub`.
        #[arg(long)]
        key: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Ocsf,
    Cef,
}

/// Runs `warden log`.
pub(crate) fn run(args: LogArgs) -> ExitCode {
    match run_inner(args) {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run_inner(args: LogArgs) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match args.command {
        LogCommand::Init { dir, origin } => {
            let log = open_or_create(&dir, Some(&origin))?;
            writeln!(
                out,
                "log `{}`: {} records; verifier key {}",
                dir.display(),
                log.size(),
                log.verifier()
            )?;
            log.close()?;
        }
        LogCommand::Append { dir, files } => {
            let log = open_or_create(&dir, None)?;
            for f in files {
                let record = fs::read(&f).with_context(|| format!("reading `{}`", f.display()))?;
                let appended = log.append(record)?;
                out.write_all(&appended.receipt()?.encode())?;
            }
            log.close()?;
        }
        LogCommand::Verify { dir, key } => {
            let verifier = verifier_for(&dir, key.as_deref())?;
            let mut progress = Progress::new("verify");
            let report = verify_dir(&dir, &verifier, &mut |done, total| {
                progress.update(done, total)
            });
            progress.finish();
            match report {
                Ok(r) => {
                    writeln!(
                        out,
                        "ok: {} records in {} frames and {} segment(s); every checkpoint signature and consistency step verified",
                        r.size, r.frames, r.segments
                    )?;
                    writeln!(out, "root {} at size {}", r.root, r.size)?;
                    match r.published {
                        Some(p) => writeln!(
                            out,
                            "published checkpoint at size {p}; {} tiles and bundles match",
                            r.tiles_checked
                        )?,
                        None => writeln!(out, "no published tiles")?,
                    }
                    writeln!(out, "{} id index entries checked", r.ids_checked)?;
                    if let Some(t) = r.torn_tail {
                        writeln!(out, "note: {t}")?;
                    }
                }
                Err(e) => {
                    writeln!(out, "damaged: {e}")?;
                    return Ok(ExitCode::from(1));
                }
            }
        }
        LogCommand::Prove {
            dir,
            index,
            out: path,
            entry_out,
            key,
        } => {
            let verifier = verifier_for(&dir, key.as_deref())?;
            let snapshot = Snapshot::load(&dir, &verifier)?;
            let receipt = snapshot.receipt(index)?.encode();
            if let Some(entry_path) = entry_out {
                let mut entry = None;
                read_records(&dir, index, &mut |i, record| {
                    if i == index {
                        entry = Some(record.to_vec());
                    }
                    Ok(())
                })?;
                let entry = entry.with_context(|| format!("no record {index} in the segments"))?;
                fs::write(&entry_path, &entry)
                    .with_context(|| format!("writing `{}`", entry_path.display()))?;
            }
            let path = path.unwrap_or_else(|| PathBuf::from(format!("record-{index}.tlog-proof")));
            if path.as_os_str() == "-" {
                out.write_all(&receipt)?;
            } else {
                fs::write(&path, &receipt)
                    .with_context(|| format!("writing `{}`", path.display()))?;
                writeln!(
                    out,
                    "wrote `{}` (record {index} in a tree of {})",
                    path.display(),
                    snapshot.checkpoint().checkpoint().size
                )?;
            }
        }
        LogCommand::CheckProof { proof, entry, key } => {
            let verifier = parse_key(&key)?;
            let bytes =
                fs::read(&proof).with_context(|| format!("reading `{}`", proof.display()))?;
            let entry =
                fs::read(&entry).with_context(|| format!("reading `{}`", entry.display()))?;
            let result = Receipt::parse(&bytes)
                .and_then(|r| r.verify(&entry, &verifier).map(|cp| (r.index, cp)));
            match result {
                Ok((index, cp)) => writeln!(
                    out,
                    "valid: entry is record {index} of `{}` at size {} (root {})",
                    cp.origin, cp.size, cp.root
                )?,
                Err(e) => {
                    writeln!(out, "invalid: {e}")?;
                    return Ok(ExitCode::from(1));
                }
            }
        }
        LogCommand::Consistency { dir, old_size, key } => {
            let verifier = verifier_for(&dir, key.as_deref())?;
            let snapshot = Snapshot::load(&dir, &verifier)?;
            let (old_root, proof) = snapshot.consistency(old_size)?;
            let cp = snapshot.checkpoint().checkpoint();
            verify_consistency(old_size, cp.size, &old_root, &cp.root, &proof)?;
            writeln!(out, "old size {old_size}")?;
            writeln!(out, "old root {old_root}")?;
            for h in &proof {
                writeln!(out, "{h}")?;
            }
            writeln!(out)?;
            out.write_all(snapshot.checkpoint().note())?;
        }
        LogCommand::Show { dir, from, json } => {
            read_records(&dir, from, &mut |index, record| {
                let line = if json {
                    String::from_utf8_lossy(record).into_owned()
                } else {
                    summary_line(index, record)
                };
                writeln!(out, "{line}")
                    .map_err(|e| warden_log::LogError::Malformed(format!("writing output: {e}")))
            })?;
        }
        LogCommand::Export { dir, format, from } => {
            let format = match format {
                Format::Ocsf => ExportFormat::Ocsf,
                Format::Cef => ExportFormat::Cef,
            };
            let mut progress = Progress::new("export");
            let mut skipped = 0u64;
            let total = read_records(&dir, from, &mut |index, record| {
                progress.update(index, 0);
                match export_line(format, index, record) {
                    Ok(line) => writeln!(out, "{line}").map_err(|e| {
                        warden_log::LogError::Malformed(format!("writing output: {e}"))
                    }),
                    Err(_) => {
                        skipped += 1;
                        Ok(())
                    }
                }
            })?;
            progress.finish();
            if skipped > 0 {
                let _ = writeln!(
                    std::io::stderr(),
                    "skipped {skipped} of {total} records that are not JSON objects"
                );
            }
        }
        LogCommand::Rebuild { dir, key } => {
            let verifier = verifier_for(&dir, key.as_deref())?;
            let mut progress = Progress::new("rebuild");
            let size =
                warden_log::rebuild_derived(&dir, &verifier, &mut |d, t| progress.update(d, t));
            progress.finish();
            writeln!(out, "rebuilt tiles and id index for {} records", size?)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Opens (creating if needed) the log in `dir` with its key files. The origin is `origin`, else
/// the existing key's name, else [`DEFAULT_ORIGIN`].
pub(crate) fn open_or_create(dir: &Path, origin: Option<&str>) -> Result<Log> {
    let origin = match origin {
        Some(o) => o.to_owned(),
        None => match fs::read_to_string(dir.join(SIGNING_KEY_FILE)) {
            Ok(text) => NoteSigner::from_key_string(&text)?.name().to_owned(),
            Err(_) => DEFAULT_ORIGIN.to_owned(),
        },
    };
    Log::open_or_create(dir, &origin, &mut os_entropy, LogOptions::default())
        .with_context(|| format!("opening log `{}`", dir.display()))
}

/// Appends one record to the log in `dir` (opening or creating it) and returns its index and
/// encoded `tlog-proof` receipt once it is durable.
pub(crate) fn append_record(dir: &Path, record: Vec<u8>) -> Result<(u64, Vec<u8>)> {
    let log = open_or_create(dir, None)?;
    let appended = log
        .append(record)
        .with_context(|| format!("appending to log `{}`", dir.display()))?;
    log.close()?;
    Ok((appended.index, appended.receipt()?.encode()))
}

fn parse_key(key: &str) -> Result<NoteVerifier> {
    let path = Path::new(key);
    if path.is_file() {
        return Ok(load_verifier(path)?);
    }
    NoteVerifier::parse(key)
        .with_context(|| format!("`{key}` is neither a key file nor a verifier key"))
}

fn verifier_for(dir: &Path, key: Option<&str>) -> Result<NoteVerifier> {
    match key {
        Some(k) => parse_key(k),
        None => {
            let path = dir.join(PUBLIC_KEY_FILE);
            if !path.is_file() {
                bail!(
                    "no `{}`: pass the log's verifier key with --key",
                    path.display()
                );
            }
            Ok(load_verifier(&path)?)
        }
    }
}

/// A progress line on stderr, only when stderr is a terminal.
struct Progress {
    what: &'static str,
    tty: bool,
    last: Instant,
    shown: bool,
}

impl Progress {
    fn new(what: &'static str) -> Self {
        Self {
            what,
            tty: std::io::stderr().is_terminal(),
            last: Instant::now(),
            shown: false,
        }
    }

    /// `total` 0 means unknown: `done` is then a count of records.
    fn update(&mut self, done: u64, total: u64) {
        if !self.tty || self.last.elapsed() < Duration::from_millis(100) {
            return;
        }
        self.last = Instant::now();
        self.shown = true;
        if let Some(pct) = (done * 100).checked_div(total) {
            let _ = write!(
                std::io::stderr(),
                "\r{}: {pct:>3}% ({} of {} MiB)",
                self.what,
                done >> 20,
                total >> 20
            );
        } else {
            let _ = write!(std::io::stderr(), "\r{}: {done} records", self.what);
        }
    }

    fn finish(&self) {
        if self.shown {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }
}
