//! Delegation chains with Biscuit tokens that can only narrow, each hop signed by its delegator.
//!
//! Warden mints an agent's root token ([`DelegationIssuer::mint`]): its authority block lists
//! the tools the agent may call (`right("server/tool")`), an expiry, and a signed context naming
//! the holder and the issue time. The holder narrows it for a sub-agent
//! ([`DelegationToken::attenuate`]) by appending a Biscuit *third-party block* of checks (tools,
//! argument constraints, expiry) signed with the holder's own X.509-SVID key. The block's signed
//! context names the next holder, carries the delegator's SVID chain and the issue time. The
//! external signature covers the previous block's signature, so a block cannot be moved to
//! another token.
//!
//! The verifier ([`DelegationVerifier::authorize`]) checks every Biscuit signature with the root
//! public key, bounds the depth, and then, for every block after the root: it carries an
//! external signature; its SVID chain verifies against the X.509 trust bundle at the block's
//! issue time; that SVID names the holder of the previous block; the SVID's public key is the
//! key that signed the block; issue times never decrease along the chain and none is more than
//! [`MAX_CLOCK_SKEW`] in the future. The presenter must be the last holder named. Then the
//! Datalog runs with explicit [`RunLimits`] against the call's time, tool and arguments, and the
//! verifier returns the [`DelegationChain`].
//!
//! Widening is impossible by construction: the authorizer's one `allow` policy reads `right`
//! facts only from the authority block (Biscuit's default scope), and appended blocks can only
//! add checks that must all pass. A fact such as `right("x")` in an appended block is invisible
//! to the policy.
//!
//! Replay by another agent is refused: a thief holding a token's bytes cannot present it (it is
//! bound to the last holder's SPIFFE ID, which the gateway authenticates by mTLS or JWT-SVID),
//! and cannot append a block naming itself, because that block must be signed with the SVID key
//! of the previous holder.
//!
//! Why an SVID is checked at the block's issue time and not at presentation: SVIDs rotate
//! hourly, and a sub-agent's token must not die when its delegator's SVID rotates. The damage of
//! a delegator key stolen after its SVID expired is bounded by the root token's expiry, which
//! Warden sets, and by the trust bundle: once the CA key that signed the SVID leaves the bundle,
//! every block signed under it is refused.
//!
//! Verified chains are cached (bounded, keyed by the SHA-256 of the token and tied to the trust
//! bundle in force): a token presented again skips the signature work but still runs the
//! Datalog with the call's time, tool and arguments, and the presenter check.

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

use crate::tls::TrustStore;
use crate::x509::{SvidUsage, verify_x509_svid};
use crate::{Error, SpiffeId, TrustBundle, X509Svid};

/// Tokens larger than this are refused before decoding.
pub const MAX_TOKEN_BYTES: usize = 64 * 1024;
/// The default bound on the number of delegations after the root.
pub const DEFAULT_MAX_DEPTH: usize = 8;
/// How far in the future (by the verifier's clock) an issue time may be: delegators' clocks
/// drift.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);
/// The default number of verified chains a verifier remembers.
pub const DEFAULT_CACHE_ENTRIES: usize = 1024;
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

    /// Appends a narrowing block for `next.holder`, signed with `delegator`'s X.509-SVID key
    /// (ECDSA P-256) and carrying its certificate chain, issued at `now`. The delegator must be
    /// the token's current holder; nobody can widen the token.
    pub fn attenuate(
        &self,
        next: &Attenuation,
        delegator: &X509Svid,
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
        let key = svid_signing_key(delegator)?;
        let leaf = delegator
            .cert_chain()
            .first()
            .ok_or_else(|| Error::Delegation("the delegator's SVID has no certificate".into()))?;
        if leaf_public_key(leaf)? != key.public() {
            return Err(Error::Delegation(
                "the delegator's private key does not match its SVID".into(),
            ));
        }
        let context = HopContext {
            holder: next.holder.to_string(),
            issued: unix_seconds(now)?,
            svid: delegator
                .cert_chain()
                .iter()
                .map(|c| STANDARD.encode(c.as_ref()))
                .collect(),
        };
        let block = narrowing_block(next)?.context(encode_context(&context)?);
        self.append_signed(block, &key)
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
        self.0
            .context()
            .into_iter()
            .map(|c| {
                let c = c.ok_or_else(|| Error::Delegation("a block names no holder".into()))?;
                serde_json::from_str(&c)
                    .map_err(|e| Error::Delegation(format!("bad block context: {e}")))
            })
            .collect()
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
    cache: Arc<ChainCache>,
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
            cache: Arc::new(ChainCache::new(DEFAULT_CACHE_ENTRIES)),
        }
    }

    /// Sets the maximum number of delegations after the root.
    pub fn with_max_depth(mut self, max_depth: usize) -> Self {
        self.max_depth = max_depth;
        self.cache = Arc::new(ChainCache::new(self.cache.capacity));
        self
    }

    /// Sets the Datalog evaluation limits.
    pub fn with_limits(mut self, limits: RunLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets how many verified chains are remembered; 0 turns the cache off.
    pub fn with_cache_capacity(mut self, entries: usize) -> Self {
        self.cache = Arc::new(ChainCache::new(entries));
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
        bundle: &TrustBundle,
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
        let contexts = DelegationToken(token.clone()).contexts()?;
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
                    check_delegator(i, context, previous, &external, issued, bundle)?;
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

/// Block `i` was signed with `external`: its SVID chain must verify against `bundle` at the
/// block's issue time, name `previous` (the holder the block narrows the token of), and hold
/// `external` as its key.
fn check_delegator(
    i: usize,
    context: &HopContext,
    previous: &SpiffeId,
    external: &PublicKey,
    issued: SystemTime,
    bundle: &TrustBundle,
) -> Result<(), Error> {
    if context.svid.is_empty() || context.svid.len() > MAX_CHAIN_CERTS {
        return Err(Error::Delegation(format!(
            "block {i} must carry its delegator's SVID chain (1 to {MAX_CHAIN_CERTS} certificates)"
        )));
    }
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
    let leaf = chain
        .first()
        .ok_or_else(|| Error::Delegation(format!("block {i}: empty SVID chain")))?;
    if &leaf_public_key(leaf)? != external {
        return Err(Error::Delegation(format!(
            "block {i} is not signed with the key of `{signer}`'s SVID"
        )));
    }
    Ok(())
}

/// The P-256 key of a leaf certificate, as Biscuit represents it.
fn leaf_public_key(leaf: &CertificateDer<'_>) -> Result<PublicKey, Error> {
    use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| Error::Delegation(format!("unparsable SVID: {e}")))?;
    let spki = cert.public_key();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY || curve != Some(OID_EC_P256) {
        return Err(Error::Delegation(
            "a delegator's SVID key must be ECDSA P-256".into(),
        ));
    }
    PublicKey::from_bytes(&spki.subject_public_key.data, Algorithm::Secp256r1).map_err(delegation)
}

/// The delegator's SVID private key (PKCS#8) as a Biscuit P-256 key.
fn svid_signing_key(svid: &X509Svid) -> Result<PrivateKey, Error> {
    PrivateKey::from_der_with_algorithm(svid.private_key_pkcs8(), Algorithm::Secp256r1)
        .map_err(|e| Error::Delegation(format!("the delegator's SVID key is unusable: {e}")))
}

/// Verified chains by the SHA-256 of their token, valid for one trust bundle: the cache is
/// emptied when the bundle in force changes, and when it is full.
#[derive(Debug)]
struct ChainCache {
    capacity: usize,
    state: Mutex<CacheState>,
}

#[derive(Debug, Default)]
struct CacheState {
    /// The bundle the entries were verified against. Holding the `Arc` keeps its address from
    /// being reused, so pointer equality tells whether the bundle in force is still this one.
    bundle: Option<Arc<TrustBundle>>,
    entries: HashMap<[u8; 32], Arc<VerifiedChain>>,
}

impl ChainCache {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            state: Mutex::new(CacheState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheState> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn get(&self, key: &[u8; 32], bundle: &Arc<TrustBundle>) -> Option<Arc<VerifiedChain>> {
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

    fn insert(&self, key: [u8; 32], bundle: &Arc<TrustBundle>, chain: Arc<VerifiedChain>) {
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
        state.entries.insert(key, chain);
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
    use crate::{CaPolicy, CertificateAuthority, FixedClock, OsRandom, TrustDomain};

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

    impl World {
        fn svid(&self, who: &str) -> X509Svid {
            self.ca.mint_x509_svid(&id(who)).unwrap()
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

        fn check(
            &self,
            token: &DelegationToken,
            presenter: &str,
            now: SystemTime,
        ) -> Result<DelegationChain, Error> {
            let presenter = id(presenter);
            let args = [("path".to_owned(), ArgValue::Str("/tmp/x".into()))];
            self.verifier.authorize(
                &token.to_base64().unwrap(),
                &Presentation {
                    presenter: &presenter,
                    tool: "fs/read",
                    args: &args,
                    now,
                },
            )
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

    /// A block for `holder` carrying `chain` as its SVID, signed with `key`'s private key,
    /// issued at `issued`: what a forger can build by hand.
    fn forged_hop(
        token: &DelegationToken,
        holder: &str,
        chain: &[CertificateDer<'static>],
        key: &X509Svid,
        issued: SystemTime,
    ) -> DelegationToken {
        let context = HopContext {
            holder: holder.to_owned(),
            issued: unix_seconds(issued).unwrap(),
            svid: chain.iter().map(|c| STANDARD.encode(c.as_ref())).collect(),
        };
        let block = narrowing_block(&to(holder))
            .unwrap()
            .context(encode_context(&context).unwrap());
        token
            .append_signed(block, &svid_signing_key(key).unwrap())
            .unwrap()
    }

    fn refused(r: Result<DelegationChain, Error>, why: &str) {
        let e = r.unwrap_err().to_string();
        assert!(e.contains(why), "`{e}` lacks `{why}`");
    }

    #[test]
    fn honest_three_hop_chain_passes() {
        let w = world();
        let (sa, sb, sc) = (w.svid(A), w.svid(B), w.svid(C));
        const D: &str = "spiffe://example.org/agent/d";
        let d = id(D);
        let to_b = w.root().attenuate(&to(B), &sa, at(20)).unwrap();
        let to_c = to_b.attenuate(&to(C), &sb, at(30)).unwrap();
        let to_d = to_c.attenuate(&to(D), &sc, at(40)).unwrap();
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
        let to_b = w.root().attenuate(&to(B), &w.svid(A), at(20)).unwrap();
        // T has stolen B's token and holds a valid SVID of its own.
        let st = w.svid(T);
        let stolen = forged_hop(&to_b, T, st.cert_chain(), &st, at(30));
        refused(
            w.check(&stolen, T, at(40)),
            "is signed by `spiffe://example.org/agent/thief`, but the token it narrows is held by `spiffe://example.org/agent/b`",
        );
        // `attenuate` refuses to build it in the first place.
        refused(
            to_b.attenuate(&to(T), &st, at(30)).map(|_| unreachable!()),
            "not by the delegator",
        );
        // Presenting B's token itself is refused too.
        refused(w.check(&to_b, T, at(40)), "presented by");
    }

    #[test]
    fn a_signed_block_asserting_rights_does_not_widen() {
        let w = world();
        let sa = w.svid(A);
        let context = HopContext {
            holder: B.to_owned(),
            issued: unix_seconds(at(20)).unwrap(),
            svid: sa
                .cert_chain()
                .iter()
                .map(|c| STANDARD.encode(c.as_ref()))
                .collect(),
        };
        // Properly signed by A, but asserting a right and a rule deriving rights.
        let block = BlockBuilder::new()
            .code(r#"right("shell/exec"); right($t) <- tool($t);"#)
            .unwrap()
            .context(encode_context(&context).unwrap());
        let wide = w
            .root()
            .append_signed(block, &svid_signing_key(&sa).unwrap())
            .unwrap();
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
        };
        let block = narrowing_block(&to(B))
            .unwrap()
            .context(encode_context(&context).unwrap());
        let plain = DelegationToken(w.root().0.append(block).unwrap());
        refused(
            w.check(&plain, B, at(30)),
            "block 1 is not signed by its delegator",
        );
        // Even carrying A's SVID chain it is not signed by A.
        let sa = w.svid(A);
        let context = HopContext {
            svid: vec![STANDARD.encode(sa.cert_chain()[0].as_ref())],
            ..context
        };
        let block = narrowing_block(&to(B))
            .unwrap()
            .context(encode_context(&context).unwrap());
        let plain = DelegationToken(w.root().0.append(block).unwrap());
        refused(w.check(&plain, B, at(30)), "not signed by its delegator");
    }

    #[test]
    fn an_svid_from_a_foreign_ca_is_refused() {
        let w = world();
        let other = world();
        // Same trust domain name, other CA: its SVID for A does not chain to the bundle.
        let foreign = other.svid(A);
        let to_b = w.root().attenuate(&to(B), &foreign, at(20)).unwrap();
        refused(w.check(&to_b, B, at(30)), "block 1: delegator SVID refused");
    }

    #[test]
    fn an_svid_of_someone_else_than_the_holder_is_refused() {
        let w = world();
        // C signs the block of A's token with C's valid SVID.
        let sc = w.svid(C);
        let to_b = forged_hop(&w.root(), B, sc.cert_chain(), &sc, at(20));
        refused(
            w.check(&to_b, B, at(30)),
            "is signed by `spiffe://example.org/agent/c`, but the token it narrows is held by `spiffe://example.org/agent/a`",
        );
    }

    #[test]
    fn a_key_other_than_the_svid_key_is_refused() {
        let w = world();
        // A's certificate, but the block is signed with another (valid) key.
        let sa = w.svid(A);
        let other_key = w.svid(A);
        let to_b = forged_hop(&w.root(), B, sa.cert_chain(), &other_key, at(20));
        refused(w.check(&to_b, B, at(30)), "is not signed with the key of");
        // With the matching key the same block passes.
        let to_b = forged_hop(&w.root(), B, sa.cert_chain(), &sa, at(20));
        assert!(w.check(&to_b, B, at(30)).is_ok());
    }

    #[test]
    fn an_svid_expired_at_the_issue_time_is_refused() {
        let w = world();
        let sa = w.svid(A); // valid [t0 - backdate, t0 + 1 h]
        let to_b = w.root().attenuate(&to(B), &sa, at(2 * 3600)).unwrap();
        refused(
            w.check(&to_b, B, at(2 * 3600 + 10)),
            "delegator SVID refused",
        );
        // Issued within its validity, the same SVID is fine.
        let to_b = w.root().attenuate(&to(B), &sa, at(3000)).unwrap();
        assert!(w.check(&to_b, B, at(2 * 3600 + 10)).is_ok());
    }

    #[test]
    fn issue_times_in_the_future_or_decreasing_are_refused() {
        let w = world();
        let sa = w.svid(A);
        let sb = w.svid(B);
        let ahead = w.root().attenuate(&to(B), &sa, at(1000)).unwrap();
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

        let to_b = w.root().attenuate(&to(B), &sa, at(300)).unwrap();
        let back = to_b.attenuate(&to(C), &sb, at(200)).unwrap();
        refused(
            w.check(&back, C, at(400)),
            "block 2 is issued before the block it narrows",
        );
        let before_root = w.root().attenuate(&to(B), &sa, at(5)).unwrap();
        refused(
            w.check(&before_root, B, at(400)),
            "block 1 is issued before",
        );
    }

    #[test]
    fn a_bundle_change_empties_the_cache() {
        let w = world();
        let to_b = w.root().attenuate(&to(B), &w.svid(A), at(20)).unwrap();
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
    }

    #[test]
    fn the_cache_is_bounded_and_can_be_off() {
        let w = world();
        let sa = w.svid(A);
        let verifier = w.verifier.clone().with_cache_capacity(2);
        for i in 0..5 {
            let t = w.root().attenuate(&to(B), &sa, at(20 + i)).unwrap();
            let b = id(B);
            verifier
                .authorize(
                    &t.to_base64().unwrap(),
                    &Presentation {
                        presenter: &b,
                        tool: "fs/read",
                        args: &[],
                        now: at(100),
                    },
                )
                .unwrap();
            assert!(verifier.cache.lock().entries.len() <= 2);
        }
        let off = w.verifier.clone().with_cache_capacity(0);
        let t = w.root().attenuate(&to(B), &sa, at(20)).unwrap();
        let b = id(B);
        let p = Presentation {
            presenter: &b,
            tool: "fs/read",
            args: &[],
            now: at(100),
        };
        off.authorize(&t.to_base64().unwrap(), &p).unwrap();
        assert!(off.cache.lock().entries.is_empty());
    }
}
