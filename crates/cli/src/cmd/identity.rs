//! `warden identity`: the SPIFFE CA, registration entries, SVIDs, the bundle, delegation tokens
//! and the Workload API.
//!
//! State lives in one directory (`--dir`, default `.warden/identity`): `ca.json` (the CA's keys,
//! 0600), `delegation.key` (the delegation root key, 0600) and `entries.toml` (registration
//! entries managed by `entries add|remove`).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use warden_identity::delegation::{
    ArgConstraint, Attenuation, DelegationIssuer, DelegationKey, DelegationToken,
};
use warden_identity::workload::{EntryStore, SharedAuthority, WorkloadApi};
use warden_identity::{
    CaPolicy, CertificateAuthority, IdentityConfig, OsRandom, RegistrationEntry, Selector,
    SpiffeId, SystemClock, TrustDomain, X509Svid, load_entries_file, save_entries_file,
};

/// Arguments of `warden identity`.
#[derive(Debug, Args)]
pub(crate) struct IdentityArgs {
    /// Directory holding the CA, the delegation key and the entries file.
    #[arg(
        long,
        env = "WARDEN_IDENTITY_DIR",
        default_value = ".warden/identity",
        global = true
    )]
    dir: PathBuf,
    #[command(subcommand)]
    command: IdentityCommand,
}

#[derive(Debug, Subcommand)]
enum IdentityCommand {
    /// The certificate authority.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Registration entries: selectors that map callers of the Workload API to SPIFFE IDs.
    Entries {
        #[command(subcommand)]
        command: EntriesCommand,
    },
    /// Mints an SVID (prints the PEM chain and key, or a JWT).
    Svid {
        /// The SPIFFE ID to mint for.
        #[arg(long)]
        spiffe_id: String,
        /// Mint a JWT-SVID instead of an X.509-SVID.
        #[arg(long)]
        jwt: bool,
        /// JWT audience (repeatable); required with `--jwt`.
        #[arg(long)]
        audience: Vec<String>,
        /// Write `svid.pem` and `svid.key` (0600) here instead of printing.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Prints the trust bundle as a SPIFFE JWKS.
    Bundle,
    /// Narrows a delegation token for another agent, or mints a root token without `--token`.
    Delegate {
        /// The token to narrow (a file holding it, or `-` for stdin); omit to mint a root token.
        #[arg(long)]
        token: Option<PathBuf>,
        /// The SPIFFE ID of the next holder (the agent a root token is minted for).
        #[arg(long)]
        to: String,
        /// Tools allowed, comma-separated (`server/tool`).
        #[arg(long, value_delimiter = ',')]
        tools: Vec<String>,
        /// Lifetime, e.g. `30s`, `10m`, `1h`.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Argument constraint `NAME=PREFIX*` (prefix) or `NAME=VALUE` (exact); repeatable.
        #[arg(long = "arg")]
        args: Vec<String>,
        /// The delegator's X.509-SVID chain (PEM, leaf first: `svid.pem` of `warden identity
        /// svid --out-dir`); the new block is signed with its key. Without it (with `--token`),
        /// the SVID is fetched from the Workload API at `SPIFFE_ENDPOINT_SOCKET`.
        #[arg(long, requires = "svid_key")]
        svid_cert: Option<PathBuf>,
        /// The delegator's SVID private key (PKCS#8 PEM: `svid.key`).
        #[arg(long, requires = "svid_cert")]
        svid_key: Option<PathBuf>,
        /// A file keeping the delegator's Ed25519 delegation key and its statement signed by
        /// the SVID (0600): reused while it names the token's holder and is valid for another
        /// minute, replaced otherwise. Without it, a fresh key is made for this run.
        #[arg(long)]
        delegation_key: Option<PathBuf>,
    },
    /// Serves the Workload API on a unix socket until interrupted.
    Serve {
        /// The socket path (what clients get as `SPIFFE_ENDPOINT_SOCKET=unix:PATH`).
        #[arg(long)]
        socket: PathBuf,
        /// `warden.toml`, whose `[identity]` table gives the trust domain and entries.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Creates the CA and the delegation root key.
    Init {
        /// The trust domain, e.g. `example.org`.
        #[arg(long)]
        trust_domain: String,
        /// Replace an existing CA.
        #[arg(long)]
        force: bool,
    },
    /// Rotates the CA's keys; the old ones stay in the bundle until their SVIDs expire.
    Rotate,
}

#[derive(Debug, Subcommand)]
enum EntriesCommand {
    /// Lists the entries.
    List,
    /// Adds an entry.
    Add {
        /// The SPIFFE ID granted.
        #[arg(long)]
        spiffe_id: String,
        /// A selector, e.g. `unix:uid:1000` (repeatable; all must match).
        #[arg(long = "selector", required = true)]
        selectors: Vec<String>,
        /// A hint sent with the SVID.
        #[arg(long)]
        hint: Option<String>,
    },
    /// Removes every entry for a SPIFFE ID.
    Remove {
        /// The SPIFFE ID.
        #[arg(long)]
        spiffe_id: String,
    },
}

pub(crate) fn run(args: IdentityArgs) -> ExitCode {
    match execute(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "warden identity: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn ca_path(dir: &Path) -> PathBuf {
    dir.join("ca.json")
}

fn entries_path(dir: &Path) -> PathBuf {
    dir.join("entries.toml")
}

fn delegation_key_path(dir: &Path) -> PathBuf {
    dir.join("delegation.key")
}

fn load_ca(dir: &Path) -> anyhow::Result<CertificateAuthority> {
    let path = ca_path(dir);
    CertificateAuthority::load(&path, Arc::new(SystemClock), Arc::new(OsRandom::new()))
        .with_context(|| {
            format!(
                "no usable CA at `{}`; run `warden identity ca init`",
                path.display()
            )
        })
}

fn out(text: &str) -> anyhow::Result<()> {
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(())
}

fn execute(args: IdentityArgs) -> anyhow::Result<()> {
    let dir = args.dir;
    match args.command {
        IdentityCommand::Ca {
            command:
                CaCommand::Init {
                    trust_domain,
                    force,
                },
        } => {
            let path = ca_path(&dir);
            if path.exists() && !force {
                bail!(
                    "a CA already exists at `{}` (use --force to replace it)",
                    path.display()
                );
            }
            std::fs::create_dir_all(&dir)?;
            let ca = CertificateAuthority::generate(
                TrustDomain::new(&trust_domain)?,
                CaPolicy::default(),
                Arc::new(SystemClock),
                Arc::new(OsRandom::new()),
            )?;
            ca.save(&path)?;
            let issuer = DelegationIssuer::generate();
            write_secret(
                &delegation_key_path(&dir),
                hex::encode(issuer.private_key()).as_bytes(),
            )?;
            out(&format!(
                "trust domain: {trust_domain}\nca: {}\ndelegation root public key: {}\n",
                path.display(),
                hex::encode(issuer.public_key())
            ))
        }
        IdentityCommand::Ca {
            command: CaCommand::Rotate,
        } => {
            let mut ca = load_ca(&dir)?;
            ca.rotate()?;
            ca.save(&ca_path(&dir))?;
            out(&format!(
                "rotated; bundle sequence {}\n",
                ca.bundle().sequence()
            ))
        }
        IdentityCommand::Entries { command } => entries(&dir, command),
        IdentityCommand::Svid {
            spiffe_id,
            jwt,
            audience,
            out_dir,
        } => {
            let ca = load_ca(&dir)?;
            let id = SpiffeId::new(&spiffe_id)?;
            if jwt {
                if audience.is_empty() {
                    bail!("`--jwt` needs at least one `--audience`");
                }
                let svid = ca.mint_jwt_svid(&id, &audience)?;
                return out(&format!("{}\n", svid.token));
            }
            let svid = ca.mint_x509_svid(&id)?;
            match out_dir {
                Some(d) => {
                    std::fs::create_dir_all(&d)?;
                    std::fs::write(d.join("svid.pem"), svid.cert_chain_pem())?;
                    write_secret(&d.join("svid.key"), svid.private_key_pem().as_bytes())?;
                    std::fs::write(
                        d.join("bundle.pem"),
                        ca.bundle()
                            .x509_authorities()
                            .iter()
                            .map(|c| pem_cert(c.as_ref()))
                            .collect::<String>(),
                    )?;
                    out(&format!(
                        "wrote svid.pem, svid.key and bundle.pem to `{}`\n",
                        d.display()
                    ))
                }
                None => out(&format!(
                    "{}{}",
                    svid.cert_chain_pem(),
                    svid.private_key_pem()
                )),
            }
        }
        IdentityCommand::Bundle => {
            let ca = load_ca(&dir)?;
            out(&format!("{}\n", ca.bundle().to_jwks()?))
        }
        IdentityCommand::Delegate {
            token,
            to,
            tools,
            ttl,
            args,
            svid_cert,
            svid_key,
            delegation_key,
        } => {
            let holder = SpiffeId::new(&to)?;
            let now = SystemTime::now();
            let expires = now + parse_ttl(&ttl)?;
            let key_hex = std::fs::read_to_string(delegation_key_path(&dir))
                .context("no delegation key; run `warden identity ca init`")?;
            let issuer = DelegationIssuer::from_private_key(&hex::decode(key_hex.trim())?)?;
            let narrowed = match token {
                None => {
                    if !args.is_empty() {
                        bail!("argument constraints go on delegated tokens, not root tokens");
                    }
                    issuer.mint(&holder, &tools, now, expires)?
                }
                Some(file) => {
                    let text = if file.as_os_str() == "-" {
                        std::io::read_to_string(std::io::stdin())?
                    } else {
                        std::fs::read_to_string(&file)
                            .with_context(|| format!("reading `{}`", file.display()))?
                    };
                    let parent = DelegationToken::from_base64(text.trim(), &issuer.public_key())?;
                    let current = parent
                        .holders()?
                        .pop()
                        .context("the token names no holder")?;
                    let delegator = match reusable_key(delegation_key.as_deref(), &current, now)? {
                        Some(key) => key,
                        None => {
                            let svid = match (svid_cert, svid_key) {
                                (Some(cert), Some(key)) => X509Svid::from_pem(
                                    &std::fs::read(&cert)
                                        .with_context(|| format!("reading `{}`", cert.display()))?,
                                    &std::fs::read(&key)
                                        .with_context(|| format!("reading `{}`", key.display()))?,
                                )?,
                                _ => workload_svid()?,
                            };
                            let key = DelegationKey::new(&svid, now, &OsRandom::new())?;
                            if let Some(path) = &delegation_key {
                                key.save(path)?;
                            }
                            key
                        }
                    };
                    parent.attenuate(
                        &Attenuation {
                            holder,
                            tools: if tools.is_empty() { None } else { Some(tools) },
                            args: args
                                .iter()
                                .map(|a| parse_arg(a))
                                .collect::<anyhow::Result<_>>()?,
                            expires,
                        },
                        &delegator,
                        now,
                    )?
                }
            };
            out(&format!("{}\n", narrowed.to_base64()?))
        }
        IdentityCommand::Serve { socket, config } => serve(&dir, &socket, config.as_deref()),
    }
}

/// The delegation key kept at `path`, if there is one naming `holder` that stays valid for
/// another minute. A key file naming someone else is an error (it is not ours to replace).
fn reusable_key(
    path: Option<&Path>,
    holder: &SpiffeId,
    now: SystemTime,
) -> anyhow::Result<Option<DelegationKey>> {
    let Some(path) = path.filter(|p| p.exists()) else {
        return Ok(None);
    };
    let key = DelegationKey::load(path)?;
    if key.spiffe_id() != holder {
        bail!(
            "the delegation key in `{}` belongs to `{}`, not to the token's holder `{holder}`",
            path.display(),
            key.spiffe_id()
        );
    }
    Ok((key.not_after() > now + Duration::from_secs(60)).then_some(key))
}

/// The caller's own X.509-SVID from the Workload API at `SPIFFE_ENDPOINT_SOCKET`.
fn workload_svid() -> anyhow::Result<X509Svid> {
    if std::env::var_os("SPIFFE_ENDPOINT_SOCKET").is_none() {
        bail!(
            "narrowing a token needs the delegator's SVID: `--svid-cert` and `--svid-key`, or \
             `SPIFFE_ENDPOINT_SOCKET` naming a Workload API"
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let svid = rt
        .block_on(async {
            let client = spiffe::WorkloadApiClient::connect_env().await?;
            client.fetch_x509_svid().await
        })
        .context("fetching the X.509-SVID from `SPIFFE_ENDPOINT_SOCKET`")?;
    let chain = svid
        .cert_chain()
        .iter()
        .map(|c| rustls::pki_types::CertificateDer::from(c.as_bytes().to_vec()))
        .collect();
    Ok(X509Svid::from_der(
        chain,
        svid.private_key().as_bytes().to_vec(),
    )?)
}

fn entries(dir: &Path, command: EntriesCommand) -> anyhow::Result<()> {
    let path = entries_path(dir);
    let mut list = load_entries_file(&path)?;
    match command {
        EntriesCommand::List => {
            let mut text = String::new();
            for e in &list {
                let selectors: Vec<String> =
                    e.selectors().iter().map(Selector::to_string).collect();
                text.push_str(&format!("{}\t{}\n", e.spiffe_id(), selectors.join(" ")));
            }
            out(&text)
        }
        EntriesCommand::Add {
            spiffe_id,
            selectors,
            hint,
        } => {
            let selectors = selectors
                .iter()
                .map(|s| s.parse::<Selector>())
                .collect::<Result<Vec<_>, _>>()?;
            let entry = RegistrationEntry::new(SpiffeId::new(&spiffe_id)?, selectors, hint)?;
            if list.contains(&entry) {
                bail!("entry already present");
            }
            list.push(entry);
            std::fs::create_dir_all(dir)?;
            save_entries_file(&path, &list)?;
            out(&format!("added `{spiffe_id}`\n"))
        }
        EntriesCommand::Remove { spiffe_id } => {
            let id = SpiffeId::new(&spiffe_id)?;
            let before = list.len();
            list.retain(|e| e.spiffe_id() != &id);
            if list.len() == before {
                bail!("no entry for `{spiffe_id}`");
            }
            save_entries_file(&path, &list)?;
            out(&format!(
                "removed {} entr{} for `{spiffe_id}`\n",
                before - list.len(),
                if before - list.len() == 1 { "y" } else { "ies" }
            ))
        }
    }
}

/// The CA (shared, persisted) and registration entries of the identity directory `dir`,
/// overridden and extended by the manifest's `[identity]` table when `config` is given.
pub(crate) fn load_identity(
    dir: &Path,
    config: Option<&Path>,
) -> anyhow::Result<(SharedAuthority, Vec<RegistrationEntry>)> {
    let mut entries = load_entries_file(&entries_path(dir))?;
    let mut ca_file = ca_path(dir);
    let mut trust_domain = None;
    if let Some(config) = config {
        let text = std::fs::read_to_string(config)
            .with_context(|| format!("reading `{}`", config.display()))?;
        let manifest: toml::Table = text.parse()?;
        let table = manifest
            .get("identity")
            .and_then(toml::Value::as_table)
            .context("the manifest has no `[identity]` table")?;
        let identity = IdentityConfig::from_table(table)?;
        let base = config.parent().unwrap_or(Path::new("."));
        if let Some(f) = &identity.ca_file {
            ca_file = base.join(f);
        }
        if let Some(f) = &identity.entries_file {
            entries.extend(load_entries_file(&base.join(f))?);
        }
        entries.extend(identity.entries);
        trust_domain = Some(identity.trust_domain);
    }
    let ca = CertificateAuthority::load(&ca_file, Arc::new(SystemClock), Arc::new(OsRandom::new()))
        .with_context(|| format!("no usable CA at `{}`", ca_file.display()))?;
    if let Some(td) = trust_domain
        && &td != ca.trust_domain()
    {
        bail!(
            "the manifest's trust domain `{td}` is not the CA's `{}`",
            ca.trust_domain()
        );
    }
    Ok((SharedAuthority::persisted(ca, ca_file), entries))
}

/// The identity directory of commands without an `--identity-dir` flag (`warden mcp`):
/// `WARDEN_IDENTITY_DIR`, else `.warden/identity`.
pub(crate) fn default_dir() -> PathBuf {
    std::env::var_os("WARDEN_IDENTITY_DIR")
        .map_or_else(|| PathBuf::from(".warden/identity"), PathBuf::from)
}

/// How often a gateway that does not run the CA itself re-reads the CA file for its bundle.
const CA_FILE_POLL: Duration = Duration::from_secs(10);

/// Keeps the delegation verifier of a gateway whose `[gateway.delegation]` has no
/// `bundle_file` on the embedded CA's bundle (delegators' SVIDs chain to it): from `live`, the
/// CA this process runs (every rotation at once), else by re-reading the CA file (from
/// `identity_dir` or the manifest's `[identity] ca_file`) every 10 s. Nothing to do for a
/// gateway with a bundle file or without delegation. Fails when the CA cannot be read at start.
/// Runs inside a tokio runtime.
pub(crate) fn follow_delegation_bundle(
    gateway: &warden_gateway::GatewayConfig,
    identity_dir: &Path,
    config: &Path,
    live: Option<&SharedAuthority>,
) -> anyhow::Result<()> {
    let Some(trust) = gateway.delegation_follows_authority().cloned() else {
        return Ok(());
    };
    if let Some(ca) = live {
        trust.set(ca.bundle());
        let ca = ca.clone();
        let mut changes = ca.subscribe();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                trust.set(ca.bundle());
            }
        });
        return Ok(());
    }
    let ca_file = ca_file(identity_dir, Some(config))?;
    let read = move || -> anyhow::Result<warden_identity::TrustBundle> {
        let ca =
            CertificateAuthority::load(&ca_file, Arc::new(SystemClock), Arc::new(OsRandom::new()))
                .with_context(|| format!("no usable CA at `{}`", ca_file.display()))?;
        Ok(ca.bundle())
    };
    let mut current = read()?;
    trust.set(current.clone());
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(CA_FILE_POLL).await;
            // A CA file being rewritten may not read: keep the bundle in force until it does.
            if let Ok(bundle) = read()
                && bundle != current
            {
                trust.set(bundle.clone());
                current = bundle;
            }
        }
    });
    Ok(())
}

/// The CA file: `ca.json` in `dir`, unless the manifest's `[identity] ca_file` names another.
fn ca_file(dir: &Path, config: Option<&Path>) -> anyhow::Result<PathBuf> {
    let Some(config) = config else {
        return Ok(ca_path(dir));
    };
    let text = std::fs::read_to_string(config)
        .with_context(|| format!("reading `{}`", config.display()))?;
    let manifest: toml::Table = text.parse()?;
    let Some(table) = manifest.get("identity").and_then(toml::Value::as_table) else {
        return Ok(ca_path(dir));
    };
    let identity = IdentityConfig::from_table(table)?;
    let base = config.parent().unwrap_or(Path::new("."));
    Ok(match &identity.ca_file {
        Some(f) => base.join(f),
        None => ca_path(dir),
    })
}

fn serve(dir: &Path, socket: &Path, config: Option<&Path>) -> anyhow::Result<()> {
    let (shared, entries) = load_identity(dir, config)?;
    let api = WorkloadApi::new(shared, EntryStore::new(entries));
    let runtime = tokio::runtime::Runtime::new()?;
    let socket = socket.to_owned();
    let _ = writeln!(
        std::io::stderr(),
        "serving the Workload API on unix:{}",
        socket.display()
    );
    runtime.block_on(async move {
        api.serve(&socket, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
    })?;
    Ok(())
}

fn parse_ttl(s: &str) -> anyhow::Result<Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().with_context(|| format!("bad duration `{s}`"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => bail!("bad duration `{s}`: use s, m, h or d"),
    };
    if secs == 0 {
        bail!("duration `{s}` is zero");
    }
    Ok(Duration::from_secs(secs))
}

fn parse_arg(s: &str) -> anyhow::Result<ArgConstraint> {
    let (name, value) = s
        .split_once('=')
        .with_context(|| format!("bad `--arg {s}`: use NAME=VALUE"))?;
    Ok(match value.strip_suffix('*') {
        Some(prefix) => ArgConstraint::Prefix(name.to_owned(), prefix.to_owned()),
        None => ArgConstraint::Equals(name.to_owned(), value.to_owned()),
    })
}

fn write_secret(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating `{}`", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}

fn pem_cert(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        s.push_str(&String::from_utf8_lossy(chunk));
        s.push('\n');
    }
    s.push_str("-----END CERTIFICATE-----\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generate_ca() -> CertificateAuthority {
        CertificateAuthority::generate(
            TrustDomain::new("example.org").unwrap(),
            CaPolicy::default(),
            Arc::new(SystemClock),
            Arc::new(OsRandom::new()),
        )
        .unwrap()
    }

    /// A gateway whose `[gateway.delegation]` has no `bundle_file` under `[identity]`.
    fn follower(dir: &Path) -> (warden_gateway::GatewayConfig, PathBuf) {
        let text = format!(
            "trust_domain = \"example.org\"\n[gateway.delegation]\nroot_public_key = \"{}\"\n\
             [identity]\ntrust_domain = \"example.org\"\n",
            "58".repeat(32)
        );
        let config = dir.join("warden.toml");
        std::fs::write(&config, &text).unwrap();
        (warden_gateway::GatewayConfig::parse(&text).unwrap(), config)
    }

    #[tokio::test]
    async fn the_delegation_bundle_follows_the_ca_file_or_the_live_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let (cfg, config) = follower(tmp.path());
        let trust = cfg.delegation_follows_authority().unwrap().clone();
        assert!(trust.get().x509_authorities().is_empty());
        // No CA file yet: a start-up error, not a gateway that silently refuses everything.
        assert!(follow_delegation_bundle(&cfg, tmp.path(), &config, None).is_err());
        let ca = generate_ca();
        ca.save(&ca_path(tmp.path())).unwrap();
        follow_delegation_bundle(&cfg, tmp.path(), &config, None).unwrap();
        assert_eq!(*trust.get(), ca.bundle());

        // The CA run by this process: every rotation reaches the verifier.
        let (cfg, config) = follower(tmp.path());
        let trust = cfg.delegation_follows_authority().unwrap().clone();
        let live = SharedAuthority::new(generate_ca());
        follow_delegation_bundle(&cfg, tmp.path(), &config, Some(&live)).unwrap();
        assert_eq!(*trust.get(), live.bundle());
        live.rotate().unwrap();
        for _ in 0..100 {
            if *trust.get() == live.bundle() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(*trust.get(), live.bundle());
        assert_eq!(trust.get().x509_authorities().len(), 2);
    }
}
