//! Delegation chains with Biscuit tokens that can only narrow, each hop signed by its delegator.
//!
//! Warden mints an agent's root token ([`DelegationIssuer::mint`]): its authority block lists
//! the tools the agent may call (`right("server/tool")`), an expiry, and a signed context naming
//! the holder and the issue time. The holder narrows it for a sub-agent
//! ([`DelegationToken::attenuate`]) by appending a Biscuit *third-party block* of checks (tools,
//! argument constraints, expiry) signed with its [`DelegationKey`]: an Ed25519 key bound to the
//! holder's X.509-SVID by a statement (SPIFFE ID, Ed25519 public key, not-after) that the SVID's
//! P-256 key signed. The block's signed context names the next holder and carries the issue
//! time, the statement, its signature and the delegator's SVID chain. The external signature
//! covers the previous block's signature, so a block cannot be moved to another token.
//!
//! The verifier ([`DelegationVerifier::authorize`]) checks every Biscuit signature with the root
//! public key, bounds the depth, and then, for every block after the root: it carries an
//! external signature; its SVID chain verifies against the X.509 trust bundle at the block's
//! issue time; that SVID names the holder of the previous block; the statement is signed by the
//! SVID's key, names the same SPIFFE ID and the key that signed the block, and its not-after is
//! neither before the block's issue time nor after the SVID's; issue times never decrease along
//! the chain and none is more than [`MAX_CLOCK_SKEW`] in the future. The presenter must be the
//! last holder named. Then the Datalog runs with explicit [`RunLimits`] against the call's time,
//! tool and arguments, and the verifier returns the [`DelegationChain`].
//!
//! Widening is impossible by construction: the authorizer's one `allow` policy reads `right`
//! facts only from the authority block (Biscuit's default scope), and appended blocks can only
//! add checks that must all pass. A fact such as `right("x")` in an appended block is invisible
//! to the policy.
//!
//! Replay by another agent is refused: a thief holding a token's bytes cannot present it (it is
//! bound to the last holder's SPIFFE ID, which the gateway authenticates by mTLS or JWT-SVID),
//! and cannot append a block naming itself, because that block must be signed with a delegation
//! key that the previous holder's SVID key bound to the previous holder.
//!
//! Why an SVID is checked at the block's issue time and not at presentation: SVIDs rotate
//! hourly, and a sub-agent's token must not die when its delegator's SVID rotates. The damage of
//! a delegator key stolen after its SVID expired is bounded by the root token's expiry, which
//! Warden sets, and by the trust bundle: once the CA key that signed the SVID leaves the bundle,
//! every block signed under it is refused.
//!
//! Verified chains are cached (bounded, keyed by the SHA-256 of the token and tied to the trust
//! bundle in force): a token presented again skips the signature work but still runs the
//! Datalog with the call's time, tool and arguments, and the presenter check. Verified delegator
//! keys (SVID chain and statement) are cached the same way, keyed by the SHA-256 of the chain,
//! statement and signature: a fresh token from a known delegator pays only the Biscuit (Ed25519)
//! signatures; the checks that involve the block (holder, block key, issue time within the
//! statement and the chain's validity) run every time.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
/// The Biscuit crate [`DelegationToken::biscuit`] exposes, for tools that need raw access.
pub use biscuit_auth;
use biscuit_auth::builder::{self, Term};
pub use biscuit_auth::datalog::RunLimits;
use biscuit_auth::{
    Algorithm, AuthorizerBuilder, Biscuit, BlockBuilder, KeyPair, PrivateKey, PublicKey,
};
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub use crate::delegation_key::DelegationKey;
use crate::delegation_key::{KeyStatement, ed25519_public, verify_statement_signature};
use crate::tls::TrustStore;
use crate::x509::{SvidUsage, verify_x509_svid};
use crate::{Error, SpiffeId, TrustBundle};

/// Tokens larger than this are refused before decoding.
pub const MAX_TOKEN_BYTES: usize = 64 * 1024;
/// The default bound on the number of delegations after the root.
pub const DEFAULT_MAX_DEPTH: usize = 8;
/// How far in the future (by the verifier's clock) an issue time may be: delegators' clocks
/// drift.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);
/// The default number of verified chains a verifier remembers.
pub const DEFAULT_CACHE_ENTRIES: usize = 1024;
/// The default number of verified delegator keys (SVID chain and statement) a verifier
/// remembers.
pub const DEFAULT_KEY_CACHE_ENTRIES: usize = 1024;
/// At most this many certificates in one block's SVID chain (leaf and intermediates).
const MAX_CHAIN_CERTS: usize = 4;

/// The explicit evaluation limits used unless the verifier is told otherwise. Facts and
/// iterations bound the work a hostile token can cause; the time limit is wall-clock, so it is
/// set far above the ~0.3 ms a chain costs to stay clear of scheduling delays on a loaded host.
pub fn default_run_limits() -> RunLimits {
    RunLimits {
        max_facts: 1000,
        max_iterations: 100,
        max_time: Duration::from_millis(100),
    }
}

/// A delegation chain as the policy sees it (`context.delegation`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelegationChain {
    /// The agent Warden minted the root token for.
    pub origin: SpiffeId,
    /// Delegations after the root: 0 for the root token itself.
    pub depth: usize,
    /// The holders in order, `origin` first, the presenter last.
    pub hops: Vec<SpiffeId>,
}

/// A constraint on one argument of the call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArgConstraint {
    /// The argument must equal the value.
    Equals(String, String),
    /// The (string) argument must start with the prefix.
    Prefix(String, String),
    /// The argument must be one of the values.
    OneOf(String, Vec<String>),
}

/// A value of a call argument, as the verifier is given it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArgValue {
    /// A string.
    Str(String),
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
}

/// What a holder hands on: the next holder and how the rights narrow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attenuation {
    /// The only agent that may present the narrowed token.
    pub holder: SpiffeId,
    /// When set, only these tools (intersected with what the token already allows).
    pub tools: Option<Vec<String>>,
    /// Constraints on arguments.
    pub args: Vec<ArgConstraint>,
    /// The narrowed token's expiry.
    pub expires: SystemTime,
}

/// One call as the gateway presents it to the verifier.
#[derive(Clone, Debug)]
pub struct Presentation<'a> {
    /// The authenticated caller (mTLS or JWT-SVID identity).
    pub presenter: &'a SpiffeId,
    /// The tool called, `server/tool`.
    pub tool: &'a str,
    /// The call's arguments.
    pub args: &'a [(String, ArgValue)],
    /// The current time.
    pub now: SystemTime,
}

/// The signed context of a block: who holds the token from this block on, when the block was
/// issued, and (after the root) the delegator's SVID chain.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HopContext {
    holder: String,
    /// Seconds since the Unix epoch.
    issued: u64,
    /// The delegator's X.509-SVID chain, leaf first, standard base64 DER; absent on the root.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    svid: Vec<String>,
    /// The statement binding the Ed25519 key that signed the block to the SVID; absent on the
    /// root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<KeyBinding>,
}

/// A delegation key statement and its signature by the SVID's key.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyBinding {
    /// The canonical statement text.
    statement: String,
    /// Standard base64 of the ECDSA P-256 (ASN.1) signature.
    signature: String,
}

/// Warden's delegation root: mints root tokens.
pub struct DelegationIssuer {
    root: KeyPair,
}

impl fmt::Debug for DelegationIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DelegationIssuer")
            .field("public_key", &self.root.public().to_bytes_hex())
            .finish_non_exhaustive()
    }
}

impl DelegationIssuer {
    /// A new Ed25519 root key (from the system's random source).
    pub fn generate() -> Self {
        Self {
            root: KeyPair::new_with_algorithm(Algorithm::Ed25519),
        }
    }

    /// A root from its 32-byte private key.
    pub fn from_private_key(bytes: &[u8]) -> Result<Self, Error> {
        let key = PrivateKey::from_bytes(bytes, Algorithm::Ed25519).map_err(delegation)?;
        Ok(Self {
            root: KeyPair::from(&key),
        })
    }

    /// The private key bytes. Handle as a secret.
    pub fn private_key(&self) -> Vec<u8> {
        self.root.private().to_bytes().to_vec()
    }

    /// The public key verifiers need, 32 bytes.
    pub fn public_key(&self) -> Vec<u8> {
        self.root.public().to_bytes()
    }

    /// Mints `agent`'s root token allowing `tools` until `expires`, issued at `now`.
    pub fn mint(
        &self,
        agent: &SpiffeId,
        tools: &[String],
        now: SystemTime,
        expires: SystemTime,
    ) -> Result<DelegationToken, Error> {
        if tools.is_empty() {
            return Err(Error::Delegation(
                "a root token must allow at least one tool".into(),
            ));
        }
        let mut b = Biscuit::builder();
        for tool in tools {
            b = b
                .code_with_params(
                    "right({tool});",
                    params([("tool", tool.as_str().into())]),
                    HashMap::new(),
                )
                .map_err(delegation)?;
        }
        let context = HopContext {
            holder: agent.to_string(),
            issued: unix_seconds(now)?,
            svid: Vec::new(),
            key: None,
        };
        b = b
            .code_with_params(
                "check if time($t), $t <= {exp};",
                params([("exp", builder::date(&expires))]),
                HashMap::new(),
            )
            .map_err(delegation)?
            .context(encode_context(&context)?);
        let token = b.build(&self.root).map_err(delegation)?;
        Ok(DelegationToken(token))
    }
}

/// A verified-signature delegation token.
#[derive(Clone)]
pub struct DelegationToken(Biscuit);

impl fmt::Debug for DelegationToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DelegationToken")
            .field("blocks", &self.0.block_count())
            .finish_non_exhaustive()
    }
}

impl DelegationToken {
    /// Decodes a base64url token and verifies every block's signature (and every external
    /// signature) with `root_public_key`. The hop bindings are checked by the
    /// [`DelegationVerifier`], which needs the trust bundle.
    pub fn from_base64(token: &str, root_public_key: &[u8]) -> Result<Self, Error> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Error::Delegation("token is larger than 64 KiB".into()));
        }
        let root =
            PublicKey::from_bytes(root_public_key, Algorithm::Ed25519).map_err(delegation)?;
        Biscuit::from_base64(token.trim(), root)
            .map(Self)
            .map_err(delegation)
    }

    /// The token as base64url; bound to its last holder by the verifier.
    pub fn to_base64(&self) -> Result<String, Error> {
        self.0.to_base64().map_err(delegation)
    }

    /// Appends a narrowing block for `next.holder`, signed with `delegator`'s Ed25519 key and
    /// carrying its statement, the statement's signature and the SVID chain that signed it,
    /// issued at `now`. The delegator must be the token's current holder and its key valid at
    /// `now`; nobody can widen the token.
    pub fn attenuate(
        &self,
        next: &Attenuation,
        delegator: &DelegationKey,
        now: SystemTime,
    ) -> Result<Self, Error> {
        let holders = self.holders()?;
        let Some(current) = holders.last() else {
            return Err(Error::Delegation("empty token".into()));
        };
        if current != delegator.spiffe_id() {
            return Err(Error::Delegation(format!(
                "the token is held by `{current}`, not by the delegator `{}`",
                delegator.spiffe_id()
            )));
        }
        if now > delegator.not_after() {
            return Err(Error::Delegation(format!(
                "the delegation key of `{}` has expired",
                delegator.spiffe_id()
            )));
        }
        let context = hop_context(&next.holder, delegator, now)?;
        let block = narrowing_block(next)?.context(encode_context(&context)?);
        self.append_signed(block, delegator.signing_key())
    }

    /// Appends `block` as a third-party block signed by `key`.
    fn append_signed(&self, block: BlockBuilder, key: &PrivateKey) -> Result<Self, Error> {
        let request = self.0.third_party_request().map_err(delegation)?;
        let signed = request.create_block(key, block).map_err(delegation)?;
        self.0
            .append_third_party(key.public(), signed)
            .map(Self)
            .map_err(delegation)
    }

    /// The holders named by the blocks, in order. Fails on a block without a valid holder.
    pub fn holders(&self) -> Result<Vec<SpiffeId>, Error> {
        self.contexts()?
            .iter()
            .map(|c| SpiffeId::new(&c.holder))
            .collect()
    }

    fn contexts(&self) -> Result<Vec<HopContext>, Error> {
        contexts(&self.0)
    }

    /// The underlying Biscuit, for tests and tools that need raw access.
    pub fn biscuit(&self) -> &Biscuit {
        &self.0
    }

    /// Wraps a Biscuit (e.g. one built with raw blocks in a test).
    pub fn from_biscuit(biscuit: Biscuit) -> Self {
        Self(biscuit)
    }
}

/// The decoded contexts of `token`'s blocks.
fn contexts(token: &Biscuit) -> Result<Vec<HopContext>, Error> {
    token
        .context()
        .into_iter()
        .map(|c| {
            let c = c.ok_or_else(|| Error::Delegation("a block names no holder".into()))?;
            serde_json::from_str(&c)
                .map_err(|e| Error::Delegation(format!("bad block context: {e}")))
        })
        .collect()
}

/// The context of a block for `holder` signed with `key`, issued at `now`.
fn hop_context(
    holder: &SpiffeId,
    key: &DelegationKey,
    now: SystemTime,
) -> Result<HopContext, Error> {
    Ok(HopContext {
        holder: holder.to_string(),
        issued: unix_seconds(now)?,
        svid: key
            .svid_chain()
            .iter()
            .map(|c| STANDARD.encode(c.as_ref()))
            .collect(),
        key: Some(KeyBinding {
            statement: key.statement_text().to_owned(),
            signature: STANDARD.encode(key.signature()),
        }),
    })
}

/// The checks of a narrowing block (no context yet).
fn narrowing_block(next: &Attenuation) -> Result<BlockBuilder, Error> {
    let mut block = BlockBuilder::new()
        .code_with_params(
            "check if time($t), $t <= {exp};",
            params([("exp", builder::date(&next.expires))]),
            HashMap::new(),
        )
        .map_err(delegation)?;
    if let Some(tools) = &next.tools {
        block = block
            .code_with_params(
                "check if tool($t), {tools}.contains($t);",
                params([("tools", string_set(tools))]),
                HashMap::new(),
            )
            .map_err(delegation)?;
    }
    for constraint in &next.args {
        let (source, name, value) = match constraint {
            ArgConstraint::Equals(n, v) => (
                "check if arg({name}, $v), $v == {value};",
                n,
                Term::from(v.as_str()),
            ),
            ArgConstraint::Prefix(n, p) => (
                "check if arg({name}, $v), $v.starts_with({value});",
                n,
                Term::from(p.as_str()),
            ),
            ArgConstraint::OneOf(n, vs) => (
                "check if arg({name}, $v), {value}.contains($v);",
                n,
                string_set(vs),
            ),
        };
        block = block
            .code_with_params(
                source,
                params([("name", name.as_str().into()), ("value", value)]),
                HashMap::new(),
            )
            .map_err(delegation)?;
    }
    Ok(block)
}

/// A token whose signatures and hop bindings were verified against one trust bundle.
#[derive(Debug)]
struct VerifiedChain {
    token: Biscuit,
    hops: Vec<SpiffeId>,
    /// The latest issue time of any block: the chain is refused while it is in the future.
    latest_issue: SystemTime,
}

/// Verifies delegation tokens presented with calls.
#[derive(Clone, Debug)]
pub struct DelegationVerifier {
    root_public_key: Vec<u8>,
    trust: TrustStore,
    max_depth: usize,
    limits: RunLimits,
    cache: Arc<BundleCache<Arc<VerifiedChain>>>,
    key_cache: Arc<BundleCache<Arc<VerifiedKey>>>,
}

impl DelegationVerifier {
    /// A verifier trusting `root_public_key` for tokens and `trust` for the delegators' SVIDs,
    /// allowing [`DEFAULT_MAX_DEPTH`] delegations and caching [`DEFAULT_CACHE_ENTRIES`] chains.
    pub fn new(root_public_key: &[u8], trust: TrustStore) -> Self {
        Self {
            root_public_key: root_public_key.to_vec(),
            trust,
            max_depth: DEFAULT_MAX_DEPTH,
            limits: default_run_limits(),
            cache: Arc::new(BundleCache::new(DEFAULT_CACHE_ENTRIES)),
            key_cache: Arc::new(BundleCache::new(DEFAULT_KEY_CACHE_ENTRIES)),
        }
    }

    /// Sets the maximum number of delegations after the root.
    pub fn with_max_depth(mut self, max_depth: usize) -> Self {
        self.max_depth = max_depth;
        self.cache = Arc::new(BundleCache::new(self.cache.capacity));
        self
    }

    /// Sets the Datalog evaluation limits.
    pub fn with_limits(mut self, limits: RunLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets how many verified tokens are remembered; 0 turns the token cache off.
    pub fn with_cache_capacity(mut self, entries: usize) -> Self {
        self.cache = Arc::new(BundleCache::new(entries));
        self
    }

    /// Sets how many verified delegator keys (SVID chain and statement) are remembered; 0
    /// turns the key cache off.
    pub fn with_key_cache_capacity(mut self, entries: usize) -> Self {
        self.key_cache = Arc::new(BundleCache::new(entries));
        self
    }

    /// The trust bundle the delegators' SVIDs are checked against (replace its bundle on CA
    /// rotation).
    pub fn trust(&self) -> &TrustStore {
        &self.trust
    }

    /// Decodes, verifies and authorizes `token` for `call`; returns the chain.
    pub fn authorize(
        &self,
        token: &str,
        call: &Presentation<'_>,
    ) -> Result<DelegationChain, Error> {
        let token = token.trim();
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Error::Delegation("token is larger than 64 KiB".into()));
        }
        let bundle = self.trust.get();
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let chain = match self.cache.get(&key, &bundle) {
            Some(chain) => chain,
            None => {
                let decoded = DelegationToken::from_base64(token, &self.root_public_key)?;
                let chain = Arc::new(self.verify_chain(decoded.0, &bundle, call.now)?);
                self.cache.insert(key, &bundle, Arc::clone(&chain));
                chain
            }
        };
        self.authorize_chain(&chain, call)
    }

    /// Verifies and authorizes an already decoded token (its Biscuit signatures were checked
    /// when it was decoded; the hop bindings are checked here, without the cache).
    pub fn authorize_token(
        &self,
        token: &DelegationToken,
        call: &Presentation<'_>,
    ) -> Result<DelegationChain, Error> {
        let chain = self.verify_chain(token.0.clone(), &self.trust.get(), call.now)?;
        self.authorize_chain(&chain, call)
    }

    /// Everything that does not depend on the call: depth, contexts, and each hop's binding to
    /// its delegator's SVID.
    fn verify_chain(
        &self,
        token: Biscuit,
        bundle: &Arc<TrustBundle>,
        now: SystemTime,
    ) -> Result<VerifiedChain, Error> {
        if token.root_key_id().is_some() {
            return Err(Error::Delegation("root key ids are not used".into()));
        }
        let depth = token.block_count().saturating_sub(1);
        if depth > self.max_depth {
            return Err(Error::Delegation(format!(
                "chain depth {depth} exceeds the maximum {}",
                self.max_depth
            )));
        }
        let contexts = contexts(&token)?;
        let latest = now
            .checked_add(MAX_CLOCK_SKEW)
            .ok_or_else(|| Error::Delegation("the current time is out of range".into()))?;
        let mut hops: Vec<SpiffeId> = Vec::with_capacity(contexts.len());
        let mut previous_issue: Option<SystemTime> = None;
        for (i, context) in contexts.iter().enumerate() {
            let holder = SpiffeId::new(&context.holder)?;
            let issued = UNIX_EPOCH
                .checked_add(Duration::from_secs(context.issued))
                .ok_or_else(|| Error::Delegation(format!("block {i}: issue time out of range")))?;
            if issued > latest {
                return Err(Error::Delegation(format!(
                    "block {i} is issued in the future (more than {}s ahead)",
                    MAX_CLOCK_SKEW.as_secs()
                )));
            }
            if previous_issue.is_some_and(|p| issued < p) {
                return Err(Error::Delegation(format!(
                    "block {i} is issued before the block it narrows"
                )));
            }
            let external = token.block_external_key(i).map_err(delegation)?;
            match (hops.last(), external) {
                (None, None) if context.svid.is_empty() => {}
                (None, _) => {
                    return Err(Error::Delegation(
                        "the root block carries a delegator signature".into(),
                    ));
                }
                (Some(_), None) => {
                    return Err(Error::Delegation(format!(
                        "block {i} is not signed by its delegator"
                    )));
                }
                (Some(previous), Some(external)) => {
                    check_delegator(
                        i,
                        context,
                        previous,
                        &external,
                        issued,
                        bundle,
                        &self.key_cache,
                    )?;
                }
            }
            previous_issue = Some(issued);
            hops.push(holder);
        }
        let Some(latest_issue) = previous_issue else {
            return Err(Error::Delegation("empty token".into()));
        };
        Ok(VerifiedChain {
            token,
            hops,
            latest_issue,
        })
    }

    /// What depends on the call: the issue times against its clock, the presenter, and the
    /// Datalog with its time, tool and arguments.
    fn authorize_chain(
        &self,
        chain: &VerifiedChain,
        call: &Presentation<'_>,
    ) -> Result<DelegationChain, Error> {
        let latest = call
            .now
            .checked_add(MAX_CLOCK_SKEW)
            .ok_or_else(|| Error::Delegation("the current time is out of range".into()))?;
        if chain.latest_issue > latest {
            return Err(Error::Delegation("a block is issued in the future".into()));
        }
        let (Some(origin), Some(last)) = (chain.hops.first(), chain.hops.last()) else {
            return Err(Error::Delegation("empty token".into()));
        };
        if last != call.presenter {
            return Err(Error::Delegation(format!(
                "token is held by `{last}`, presented by `{}`",
                call.presenter
            )));
        }

        let mut authorizer = AuthorizerBuilder::new()
            .code_with_params(
                "time({now}); tool({tool}); allow if tool($t), right($t);",
                params([
                    ("now", builder::date(&call.now)),
                    ("tool", call.tool.into()),
                ]),
                HashMap::new(),
            )
            .map_err(delegation)?;
        for (name, value) in call.args {
            let value = match value {
                ArgValue::Str(s) => Term::from(s.as_str()),
                ArgValue::Int(i) => Term::from(*i),
                ArgValue::Bool(b) => builder::boolean(*b),
            };
            authorizer = authorizer
                .code_with_params(
                    "arg({name}, {value});",
                    params([("name", name.as_str().into()), ("value", value)]),
                    HashMap::new(),
                )
                .map_err(delegation)?;
        }
        let mut authorizer = authorizer
            .set_limits(self.limits.clone())
            .build(&chain.token)
            .map_err(delegation)?;
        authorizer.authorize().map_err(|e| match e {
            biscuit_auth::error::Token::RunLimit(limit) => {
                Error::Delegation(format!("evaluation limit reached: {limit}"))
            }
            other => delegation(other),
        })?;
        Ok(DelegationChain {
            origin: origin.clone(),
            depth: chain.hops.len().saturating_sub(1),
            hops: chain.hops.clone(),
        })
    }
}

/// A delegator's SVID chain and delegation key statement, verified against one bundle.
#[derive(Debug)]
struct VerifiedKey {
    /// The SVID's (and the statement's) SPIFFE ID.
    signer: SpiffeId,
    /// The Ed25519 key the statement binds.
    key: PublicKey,
    /// The statement's `not-after`.
    not_after: SystemTime,
    /// The chain verifies at every instant of `[valid_from, valid_until]`: the intersection of
    /// its certificates' validity periods, the only time-dependent part of the verification.
    valid_from: SystemTime,
    valid_until: SystemTime,
}

/// Block `i` was signed with `external`: its SVID chain must verify against `bundle` at the
/// block's issue time and name `previous` (the holder the block narrows the token of); its
/// statement must be signed by the SVID's key, name the same ID, bind `external`, and not end
/// before the block's issue time nor after the SVID. A chain and statement verified once are
/// remembered in `cache` for this bundle; every check that involves the block still runs.
fn check_delegator(
    i: usize,
    context: &HopContext,
    previous: &SpiffeId,
    external: &PublicKey,
    issued: SystemTime,
    bundle: &Arc<TrustBundle>,
    cache: &BundleCache<Arc<VerifiedKey>>,
) -> Result<(), Error> {
    if context.svid.is_empty() || context.svid.len() > MAX_CHAIN_CERTS {
        return Err(Error::Delegation(format!(
            "block {i} must carry its delegator's SVID chain (1 to {MAX_CHAIN_CERTS} certificates)"
        )));
    }
    let digest = context
        .key
        .as_ref()
        .map(|b| binding_digest(&context.svid, b));
    let cached = digest
        .as_ref()
        .and_then(|d| cache.get(d, bundle))
        .filter(|v| v.valid_from <= issued && issued <= v.valid_until);
    let verified = match cached {
        Some(v) => v,
        None => {
            let v = Arc::new(verify_binding(i, context, previous, issued, bundle)?);
            if let Some(d) = digest {
                cache.insert(d, bundle, Arc::clone(&v));
            }
            v
        }
    };
    let signer = &verified.signer;
    if signer != previous {
        return Err(Error::Delegation(format!(
            "block {i} is signed by `{signer}`, but the token it narrows is held by `{previous}`"
        )));
    }
    if &verified.key != external {
        return Err(Error::Delegation(format!(
            "block {i} is not signed with the delegation key of `{signer}`"
        )));
    }
    if issued > verified.not_after {
        return Err(Error::Delegation(format!(
            "block {i} is issued after its delegation key's not-after"
        )));
    }
    Ok(())
}

/// The cache key of a block's chain and statement: SHA-256 over each part, length-prefixed.
fn binding_digest(svid: &[String], binding: &KeyBinding) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut part = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    part(&(svid.len() as u64).to_be_bytes());
    for cert in svid {
        part(cert.as_bytes());
    }
    part(binding.statement.as_bytes());
    part(binding.signature.as_bytes());
    h.finalize().into()
}

/// The uncached half of [`check_delegator`]: the SVID chain at `issued`, its ID against
/// `previous`, and the statement.
fn verify_binding(
    i: usize,
    context: &HopContext,
    previous: &SpiffeId,
    issued: SystemTime,
    bundle: &TrustBundle,
) -> Result<VerifiedKey, Error> {
    let chain = context
        .svid
        .iter()
        .map(|c| STANDARD.decode(c).map(CertificateDer::from))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Delegation(format!("block {i}: bad SVID encoding: {e}")))?;
    let signer = verify_x509_svid(&chain, bundle, issued, SvidUsage::Client)
        .map_err(|e| Error::Delegation(format!("block {i}: delegator SVID refused: {e}")))?;
    if &signer != previous {
        return Err(Error::Delegation(format!(
            "block {i} is signed by `{signer}`, but the token it narrows is held by `{previous}`"
        )));
    }
    let Some(binding) = &context.key else {
        return Err(Error::Delegation(format!(
            "block {i} carries no delegation key statement"
        )));
    };
    let leaf = chain
        .first()
        .ok_or_else(|| Error::Delegation(format!("block {i}: empty SVID chain")))?;
    let signature = STANDARD
        .decode(&binding.signature)
        .map_err(|e| Error::Delegation(format!("block {i}: bad statement signature: {e}")))?;
    let statement = KeyStatement::parse(&binding.statement)?;
    verify_statement_signature(leaf, &binding.statement, &signature).map_err(|_| {
        Error::Delegation(format!(
            "block {i}: the delegation key statement is not signed by the SVID's key"
        ))
    })?;
    if statement.spiffe_id != signer {
        return Err(Error::Delegation(format!(
            "block {i}: the delegation key statement names `{}`, not the SVID's `{signer}`",
            statement.spiffe_id
        )));
    }
    let (valid_from, valid_until) = validity_window(&chain)?;
    let not_after = statement.not_after_time()?;
    if not_after > valid_until {
        return Err(Error::Delegation(format!(
            "block {i}: the delegation key outlives the SVID that signed it"
        )));
    }
    Ok(VerifiedKey {
        signer,
        key: ed25519_public(&statement.key)?,
        not_after,
        valid_from,
        valid_until,
    })
}

/// The intersection of the validity periods of `chain`'s certificates.
fn validity_window(chain: &[CertificateDer<'_>]) -> Result<(SystemTime, SystemTime), Error> {
    let mut from = UNIX_EPOCH;
    let mut until: Option<SystemTime> = None;
    for cert in chain {
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
            .map_err(|e| Error::Delegation(format!("unparsable SVID: {e}")))?;
        let time = |t: i64| {
            u64::try_from(t)
                .ok()
                .and_then(|s| UNIX_EPOCH.checked_add(Duration::from_secs(s)))
                .ok_or_else(|| Error::Delegation("certificate validity out of range".into()))
        };
        let validity = parsed.validity();
        from = from.max(time(validity.not_before.timestamp())?);
        let end = time(validity.not_after.timestamp())?;
        until = Some(until.map_or(end, |u| u.min(end)));
    }
    let until = until.ok_or_else(|| Error::Delegation("empty SVID chain".into()))?;
    Ok((from, until))
}

/// Verified values by a SHA-256 key, valid for one trust bundle: the cache is emptied when the
/// bundle in force changes, and when it is full.
#[derive(Debug)]
struct BundleCache<V> {
    capacity: usize,
    state: Mutex<CacheState<V>>,
}

#[derive(Debug)]
struct CacheState<V> {
    /// The bundle the entries were verified against. Holding the `Arc` keeps its address from
    /// being reused, so pointer equality tells whether the bundle in force is still this one.
    bundle: Option<Arc<TrustBundle>>,
    entries: HashMap<[u8; 32], V>,
}

impl<V: Clone> BundleCache<V> {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            state: Mutex::new(CacheState {
                bundle: None,
                entries: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheState<V>> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn get(&self, key: &[u8; 32], bundle: &Arc<TrustBundle>) -> Option<V> {
        if self.capacity == 0 {
            return None;
        }
        let state = self.lock();
        let same = state
            .bundle
            .as_ref()
            .is_some_and(|b| Arc::ptr_eq(b, bundle));
        if !same {
            return None;
        }
        state.entries.get(key).cloned()
    }

    fn insert(&self, key: [u8; 32], bundle: &Arc<TrustBundle>, value: V) {
        if self.capacity == 0 {
            return;
        }
        let mut state = self.lock();
        let same = state
            .bundle
            .as_ref()
            .is_some_and(|b| Arc::ptr_eq(b, bundle));
        if !same || state.entries.len() >= self.capacity {
            state.entries.clear();
            state.bundle = Some(Arc::clone(bundle));
        }
        state.entries.insert(key, value);
    }
}

fn unix_seconds(t: SystemTime) -> Result<u64, Error> {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| Error::Delegation("issue time before 1970".into()))
}

fn encode_context(context: &HopContext) -> Result<String, Error> {
    serde_json::to_string(context).map_err(|e| Error::Delegation(e.to_string()))
}

fn string_set(values: &[String]) -> Term {
    builder::set(
        values
            .iter()
            .map(|v| Term::from(v.as_str()))
            .collect::<BTreeSet<_>>(),
    )
}

fn params<const N: usize>(pairs: [(&str, Term); N]) -> HashMap<String, Term> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fn delegation(e: impl fmt::Display) -> Error {
    Error::Delegation(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CaPolicy, CertificateAuthority, FixedClock, OsRandom, TrustDomain, X509Svid};

    const A: &str = "spiffe://example.org/agent/a";
    const B: &str = "spiffe://example.org/agent/b";
    const C: &str = "spiffe://example.org/agent/c";
    const T: &str = "spiffe://example.org/agent/thief";

    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn at(secs: u64) -> SystemTime {
        t0() + Duration::from_secs(secs)
    }

    fn id(s: &str) -> SpiffeId {
        SpiffeId::new(s).unwrap()
    }

    struct World {
        clock: Arc<FixedClock>,
        ca: CertificateAuthority,
        issuer: DelegationIssuer,
        verifier: DelegationVerifier,
    }

    /// A CA whose clock stands at `t0()`, a delegation root, and a verifier trusting both.
    fn world() -> World {
        let clock = Arc::new(FixedClock::new(t0()));
        let ca = CertificateAuthority::generate(
            TrustDomain::new("example.org").unwrap(),
            CaPolicy::default(),
            clock.clone(),
            Arc::new(OsRandom::new()),
        )
        .unwrap();
        let issuer = DelegationIssuer::generate();
        let verifier = DelegationVerifier::new(&issuer.public_key(), TrustStore::new(ca.bundle()));
        World {
            clock,
            ca,
            issuer,
            verifier,
        }
    }

    fn key_of(svid: &X509Svid) -> DelegationKey {
        DelegationKey::new(svid, t0(), &OsRandom::new()).unwrap()
    }

    /// A fresh Ed25519 key, unbound.
    fn ed25519() -> PrivateKey {
        let mut seed = [0u8; 32];
        crate::Random::fill(&OsRandom::new(), &mut seed).unwrap();
        PrivateKey::from_bytes(&seed, Algorithm::Ed25519).unwrap()
    }

    /// A statement about `key` naming `who` until `not_after`, signed by `svid`'s key.
    fn bound(svid: &X509Svid, who: &str, key: PrivateKey, not_after: SystemTime) -> DelegationKey {
        let statement = KeyStatement {
            spiffe_id: id(who),
            key: key.public().to_bytes().try_into().unwrap(),
            not_after: unix_seconds(not_after).unwrap(),
        };
        DelegationKey::bind(svid, statement, key).unwrap()
    }

    impl World {
        fn svid(&self, who: &str) -> X509Svid {
            self.ca.mint_x509_svid(&id(who)).unwrap()
        }

        /// A fresh delegation key of `who`, bound to a fresh SVID.
        fn key(&self, who: &str) -> DelegationKey {
            key_of(&self.svid(who))
        }

        /// A's root token for `fs/read` and `fs/write`, issued at `t0() + 10 s`, valid 10 h.
        fn root(&self) -> DelegationToken {
            self.issuer
                .mint(
                    &id(A),
                    &["fs/read".to_owned(), "fs/write".to_owned()],
                    at(10),
                    at(36_000),
                )
                .unwrap()
        }

        fn check_with(
            &self,
            verifier: &DelegationVerifier,
            token: &DelegationToken,
            presenter: &str,
            now: SystemTime,
        ) -> Result<DelegationChain, Error> {
            let presenter = id(presenter);
            let args = [("path".to_owned(), ArgValue::Str("/tmp/x".into()))];
            verifier.authorize(
                &token.to_base64().unwrap(),
                &Presentation {
                    presenter: &presenter,
                    tool: "fs/read",
                    args: &args,
                    now,
                },
            )
        }

        fn check(
            &self,
            token: &DelegationToken,
            presenter: &str,
            now: SystemTime,
        ) -> Result<DelegationChain, Error> {
            self.check_with(&self.verifier, token, presenter, now)
        }
    }

    fn to(holder: &str) -> Attenuation {
        Attenuation {
            holder: id(holder),
            tools: Some(vec!["fs/read".to_owned()]),
            args: Vec::new(),
            expires: at(36_000),
        }
    }

    /// A block for `holder` carrying `key`'s statement and SVID chain, signed with `signer`,
    /// issued at `issued`: what a forger can build by hand, skipping `attenuate`'s checks.
    fn forged_hop(
        token: &DelegationToken,
        holder: &str,
        key: &DelegationKey,
        signer: &PrivateKey,
        issued: SystemTime,
    ) -> DelegationToken {
        let context = hop_context(&id(holder), key, issued).unwrap();
        let block = narrowing_block(&to(holder))
            .unwrap()
            .context(encode_context(&context).unwrap());
        token.append_signed(block, signer).unwrap()
    }

    fn refused(r: Result<DelegationChain, Error>, why: &str) {
        let e = r.unwrap_err().to_string();
        assert!(e.contains(why), "`{e}` lacks `{why}`");
    }

    #[test]
    fn honest_three_hop_chain_passes() {
        let w = world();
        let (ka, kb, kc) = (w.key(A), w.key(B), w.key(C));
        const D: &str = "spiffe://example.org/agent/d";
        let d = id(D);
        let to_b = w.root().attenuate(&to(B), &ka, at(20)).unwrap();
        let to_c = to_b.attenuate(&to(C), &kb, at(30)).unwrap();
        let to_d = to_c.attenuate(&to(D), &kc, at(40)).unwrap();
        let chain = w.check(&to_d, D, at(50)).unwrap();
        assert_eq!(chain.origin, id(A));
        assert_eq!(chain.depth, 3);
        assert_eq!(chain.hops, vec![id(A), id(B), id(C), d.clone()]);
        // Presented again (from the cache): same answer; the Datalog still runs with the call.
        assert_eq!(w.check(&to_d, D, at(60)).unwrap(), chain);
        refused(w.check(&to_d, D, at(36_001)), "delegation refused");
        refused(w.check(&to_d, C, at(60)), "presented by");
        // Every hop keeps working after the delegators' SVIDs expired (checked at issue time).
        assert!(w.check(&to_d, D, at(7200)).is_ok());
    }

    #[test]
    fn a_thief_cannot_append_a_block_naming_itself() {
        let w = world();
        let to_b = w.root().attenuate(&to(B), &w.key(A), at(20)).unwrap();
        // T has stolen B's token and holds a valid SVID and delegation key of its own.
        let kt = w.key(T);
        let stolen = forged_hop(&to_b, T, &kt, kt.signing_key(), at(30));
        let thief = "is signed by `spiffe://example.org/agent/thief`, but the token it narrows is held by `spiffe://example.org/agent/b`";
        refused(w.check(&stolen, T, at(40)), thief);
        // Once T's key is known to the verifier (T delegated honestly before), still refused.
        let t_root = w
            .issuer
            .mint(&id(T), &["fs/read".to_owned()], at(10), at(36_000))
            .unwrap();
        let honest = t_root.attenuate(&to(C), &kt, at(20)).unwrap();
        assert!(w.check(&honest, C, at(40)).is_ok());
        // A's key (from the first check) and T's.
        assert_eq!(w.verifier.key_cache.lock().entries.len(), 2);
        let stolen = forged_hop(&to_b, T, &kt, kt.signing_key(), at(31));
        refused(w.check(&stolen, T, at(40)), thief);
        // `attenuate` refuses to build it in the first place.
        refused(
            to_b.attenuate(&to(T), &kt, at(30)).map(|_| unreachable!()),
            "not by the delegator",
        );
        // Presenting B's token itself is refused too.
        refused(w.check(&to_b, T, at(40)), "presented by");
    }

    #[test]
    fn a_signed_block_asserting_rights_does_not_widen() {
        let w = world();
        let ka = w.key(A);
        let context = hop_context(&id(B), &ka, at(20)).unwrap();
        // Properly signed by A, but asserting a right and a rule deriving rights.
        let block = BlockBuilder::new()
            .code(r#"right("shell/exec"); right($t) <- tool($t);"#)
            .unwrap()
            .context(encode_context(&context).unwrap());
        let wide = w.root().append_signed(block, ka.signing_key()).unwrap();
        let b = id(B);
        let p = |tool| Presentation {
            presenter: &b,
            tool,
            args: &[],
            now: at(30),
        };
        let b64 = wide.to_base64().unwrap();
        refused(
            w.verifier.authorize(&b64, &p("shell/exec")),
            "delegation refused",
        );
        assert!(w.verifier.authorize(&b64, &p("fs/read")).is_ok());
    }

    #[test]
    fn a_plain_block_is_refused() {
        let w = world();
        let context = HopContext {
            holder: B.to_owned(),
            issued: unix_seconds(at(20)).unwrap(),
            svid: Vec::new(),
            key: None,
        };
        let block = narrowing_block(&to(B))
            .unwrap()
            .context(encode_context(&context).unwrap());
        let plain = DelegationToken(w.root().0.append(block).unwrap());
        refused(
            w.check(&plain, B, at(30)),
            "block 1 is not signed by its delegator",
        );
        // Even carrying A's SVID chain and statement it is not signed by A.
        let context = hop_context(&id(B), &w.key(A), at(20)).unwrap();
        let block = narrowing_block(&to(B))
            .unwrap()
            .context(encode_context(&context).unwrap());
        let plain = DelegationToken(w.root().0.append(block).unwrap());
        refused(w.check(&plain, B, at(30)), "not signed by its delegator");
    }

    #[test]
    fn a_block_without_a_statement_is_refused() {
        let w = world();
        let ka = w.key(A);
        let mut context = hop_context(&id(B), &ka, at(20)).unwrap();
        context.key = None;
        let block = narrowing_block(&to(B))
            .unwrap()
            .context(encode_context(&context).unwrap());
        let token = w.root().append_signed(block, ka.signing_key()).unwrap();
        refused(
            w.check(&token, B, at(30)),
            "block 1 carries no delegation key statement",
        );
    }

    #[test]
    fn an_svid_from_a_foreign_ca_is_refused() {
        let w = world();
        let other = world();
        // Same trust domain name, other CA: its SVID for A does not chain to the bundle.
        let to_b = w.root().attenuate(&to(B), &other.key(A), at(20)).unwrap();
        refused(w.check(&to_b, B, at(30)), "block 1: delegator SVID refused");
    }

    #[test]
    fn an_svid_of_someone_else_than_the_holder_is_refused() {
        let w = world();
        // C signs the block of A's token with its own valid SVID and key.
        let kc = w.key(C);
        let to_b = forged_hop(&w.root(), B, &kc, kc.signing_key(), at(20));
        refused(
            w.check(&to_b, B, at(30)),
            "is signed by `spiffe://example.org/agent/c`, but the token it narrows is held by `spiffe://example.org/agent/a`",
        );
    }

    #[test]
    fn a_block_signed_by_another_ed25519_key_is_refused() {
        let w = world();
        let ka = w.key(A);
        // A's chain and statement, but the block is signed with another key (A's other key, or
        // an unbound one).
        for signer in [w.key(A).signing_key().clone(), ed25519()] {
            let to_b = forged_hop(&w.root(), B, &ka, &signer, at(20));
            refused(
                w.check(&to_b, B, at(30)),
                "block 1 is not signed with the delegation key of `spiffe://example.org/agent/a`",
            );
        }
        // With the statement's key the same block passes.
        let to_b = forged_hop(&w.root(), B, &ka, ka.signing_key(), at(20));
        assert!(w.check(&to_b, B, at(30)).is_ok());
    }

    #[test]
    fn a_statement_signed_by_another_svid_key_is_refused() {
        let w = world();
        let sa = w.svid(A);
        // A second SVID of A (another key) signs the statement; the block carries the first.
        let key = ed25519();
        let other = bound(&w.svid(A), A, key.clone(), sa.expiry());
        let mut context = hop_context(&id(B), &other, at(20)).unwrap();
        context.svid = sa
            .cert_chain()
            .iter()
            .map(|c| STANDARD.encode(c.as_ref()))
            .collect();
        let block = narrowing_block(&to(B))
            .unwrap()
            .context(encode_context(&context).unwrap());
        let token = w.root().append_signed(block, &key).unwrap();
        refused(
            w.check(&token, B, at(30)),
            "block 1: the delegation key statement is not signed by the SVID's key",
        );
        // Signed by the SVID it travels with, the same statement passes.
        let good = bound(&sa, A, key.clone(), sa.expiry());
        let token = forged_hop(&w.root(), B, &good, &key, at(20));
        assert!(w.check(&token, B, at(30)).is_ok());
    }

    #[test]
    fn a_statement_naming_another_id_is_refused() {
        let w = world();
        let sa = w.svid(A);
        let key = ed25519();
        // A's SVID key signs a statement naming C.
        let lying = bound(&sa, C, key.clone(), sa.expiry());
        let token = forged_hop(&w.root(), B, &lying, &key, at(20));
        refused(
            w.check(&token, B, at(30)),
            "the delegation key statement names `spiffe://example.org/agent/c`, not the SVID's `spiffe://example.org/agent/a`",
        );
    }

    #[test]
    fn a_block_issued_after_the_statements_not_after_is_refused() {
        let w = world();
        let sa = w.svid(A);
        let key = ed25519();
        let short = bound(&sa, A, key.clone(), at(100));
        let late = forged_hop(&w.root(), B, &short, &key, at(101));
        refused(
            w.check(&late, B, at(200)),
            "block 1 is issued after its delegation key's not-after",
        );
        // Also when the key is already known (cached) from an earlier, timely block.
        let timely = forged_hop(&w.root(), B, &short, &key, at(100));
        assert!(w.check(&timely, B, at(200)).is_ok());
        refused(
            w.check(&late, B, at(200)),
            "block 1 is issued after its delegation key's not-after",
        );
        // `attenuate` refuses to sign with an expired key.
        assert!(w.root().attenuate(&to(B), &short, at(101)).is_err());
    }

    #[test]
    fn a_statement_outliving_its_svid_is_refused() {
        let w = world();
        let sa = w.svid(A);
        let key = ed25519();
        let long = bound(&sa, A, key.clone(), sa.expiry() + Duration::from_secs(1));
        let token = forged_hop(&w.root(), B, &long, &key, at(20));
        refused(
            w.check(&token, B, at(30)),
            "the delegation key outlives the SVID that signed it",
        );
    }

    #[test]
    fn an_svid_expired_at_the_issue_time_is_refused() {
        let w = world();
        let ka = w.key(A); // SVID valid [t0 - backdate, t0 + 1 h], key until t0 + 1 h
        assert!(w.root().attenuate(&to(B), &ka, at(2 * 3600)).is_err());
        // Forged past the key's life: the chain check refuses it first.
        let to_b = forged_hop(&w.root(), B, &ka, ka.signing_key(), at(2 * 3600));
        refused(
            w.check(&to_b, B, at(2 * 3600 + 10)),
            "delegator SVID refused",
        );
        // Issued within its validity, the same key is fine.
        let to_b = w.root().attenuate(&to(B), &ka, at(3000)).unwrap();
        assert!(w.check(&to_b, B, at(2 * 3600 + 10)).is_ok());
        // Once cached, the chain is still not trusted before its validity: a block issued a
        // day before the SVID existed (under a root token issued then) is refused.
        let day_before = t0() - Duration::from_secs(86_400);
        let old_root = w
            .issuer
            .mint(&id(A), &["fs/read".to_owned()], day_before, at(36_000))
            .unwrap();
        let early = forged_hop(&old_root, B, &ka, ka.signing_key(), day_before);
        refused(w.check(&early, B, at(30)), "delegator SVID refused");
    }

    #[test]
    fn delegation_keys_survive_a_file_and_refuse_tampering() {
        let w = world();
        let ka = w.key(A);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("delegation.json");
        ka.save(&path).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let loaded = DelegationKey::load(&path).unwrap();
        assert_eq!(loaded.public_key(), ka.public_key());
        assert_eq!(loaded.spiffe_id(), &id(A));
        let to_b = w.root().attenuate(&to(B), &loaded, at(20)).unwrap();
        assert!(w.check(&to_b, B, at(30)).is_ok());
        // Another private key under the same statement is refused on load.
        let json: serde_json::Value = serde_json::from_str(&ka.to_json().unwrap()).unwrap();
        let mut other = json.clone();
        other["private_key"] = hex::encode(&*ed25519().to_bytes()).into();
        refused(
            DelegationKey::from_json(&other.to_string()).map(|_| unreachable!()),
            "does not name this key",
        );
        let mut resigned = json;
        resigned["signature"] = serde_json::to_value(
            serde_json::from_str::<serde_json::Value>(&w.key(A).to_json().unwrap()).unwrap()
                ["signature"]
                .clone(),
        )
        .unwrap();
        refused(
            DelegationKey::from_json(&resigned.to_string()).map(|_| unreachable!()),
            "not signed by the SVID's key",
        );
    }

    #[test]
    fn issue_times_in_the_future_or_decreasing_are_refused() {
        let w = world();
        let ka = w.key(A);
        let kb = w.key(B);
        let ahead = w.root().attenuate(&to(B), &ka, at(1000)).unwrap();
        refused(w.check(&ahead, B, at(1000 - 61)), "issued in the future");
        assert!(w.check(&ahead, B, at(1000 - 59)).is_ok());
        // Cached after that success, it is still refused when presented with an earlier clock.
        refused(w.check(&ahead, B, at(1000 - 61)), "issued in the future");
        let root_ahead = w
            .issuer
            .mint(&id(A), &["fs/read".to_owned()], at(500), at(36_000))
            .unwrap();
        refused(
            w.check(&root_ahead, A, at(400)),
            "block 0 is issued in the future",
        );

        let to_b = w.root().attenuate(&to(B), &ka, at(300)).unwrap();
        let back = to_b.attenuate(&to(C), &kb, at(200)).unwrap();
        refused(
            w.check(&back, C, at(400)),
            "block 2 is issued before the block it narrows",
        );
        let before_root = w.root().attenuate(&to(B), &ka, at(5)).unwrap();
        refused(
            w.check(&before_root, B, at(400)),
            "block 1 is issued before",
        );
    }

    #[test]
    fn a_bundle_change_empties_the_cache() {
        let w = world();
        let ka = w.key(A);
        let to_b = w.root().attenuate(&to(B), &ka, at(20)).unwrap();
        assert!(w.check(&to_b, B, at(30)).is_ok());
        // The CA that signed A's SVID leaves the bundle: the cached chain is not used.
        w.verifier.trust().set(world().ca.bundle());
        refused(w.check(&to_b, B, at(30)), "delegator SVID refused");
        w.verifier.trust().set(w.ca.bundle());
        assert!(w.check(&to_b, B, at(30)).is_ok());
        // A rotation keeps the old key in the bundle: still valid.
        let mut w = w;
        w.clock.set(at(60));
        w.ca.rotate().unwrap();
        w.verifier.trust().set(w.ca.bundle());
        assert!(w.check(&to_b, B, at(90)).is_ok());

        // The key cache alone (no token cache): a new token from a known key is accepted from
        // the cache, and refused once the bundle changes.
        let keys_only = w.verifier.clone().with_cache_capacity(0);
        let fresh = |s| w.root().attenuate(&to(B), &ka, at(s)).unwrap();
        assert!(w.check_with(&keys_only, &fresh(21), B, at(90)).is_ok());
        assert_eq!(keys_only.key_cache.lock().entries.len(), 1);
        assert!(w.check_with(&keys_only, &fresh(22), B, at(90)).is_ok());
        assert_eq!(keys_only.key_cache.lock().entries.len(), 1);
        keys_only.trust().set(world().ca.bundle());
        refused(
            w.check_with(&keys_only, &fresh(23), B, at(90)),
            "delegator SVID refused",
        );
    }

    #[test]
    fn the_caches_are_bounded_and_can_be_off() {
        let w = world();
        let verifier = w
            .verifier
            .clone()
            .with_cache_capacity(2)
            .with_key_cache_capacity(2);
        for i in 0..5 {
            let t = w.root().attenuate(&to(B), &w.key(A), at(20 + i)).unwrap();
            w.check_with(&verifier, &t, B, at(100)).unwrap();
            assert!(verifier.cache.lock().entries.len() <= 2);
            assert!(verifier.key_cache.lock().entries.len() <= 2);
        }
        let off = w
            .verifier
            .clone()
            .with_cache_capacity(0)
            .with_key_cache_capacity(0);
        let t = w.root().attenuate(&to(B), &w.key(A), at(20)).unwrap();
        w.check_with(&off, &t, B, at(100)).unwrap();
        w.check_with(&off, &t, B, at(100)).unwrap();
        assert!(off.cache.lock().entries.is_empty());
        assert!(off.key_cache.lock().entries.is_empty());
    }
}
