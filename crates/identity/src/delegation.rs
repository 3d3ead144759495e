//! Delegation chains with Biscuit tokens that can only narrow.
//!
//! Warden mints an agent's root token ([`DelegationIssuer::mint`]): its authority block lists
//! the tools the agent may call (`right("server/tool")`) and an expiry. The holder narrows it for
//! a sub-agent ([`DelegationToken::attenuate`]) by appending a block of checks (tools, argument
//! constraints, expiry) whose signed context names the next holder. The verifier
//! ([`DelegationVerifier::authorize`]) checks every signature with the root public key alone,
//! bounds the depth, requires the presenter to be the last hop's named holder, evaluates the
//! Datalog with explicit [`RunLimits`], and returns the [`DelegationChain`].
//!
//! Widening is impossible by construction: the authorizer's one `allow` policy reads `right`
//! facts only from the authority block (Biscuit's default scope), and appended blocks can only
//! add checks that must all pass. A facts such as `right("x")` in an appended block is invisible
//! to the policy.
//!
//! What it does not do: prove that a block was appended by the previous holder. Anyone who holds
//! the token's bytes can append a block naming themselves; binding each hop to the delegator's
//! SVID key is future work. Keep tokens short-lived and pass them only over mTLS.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::time::{Duration, SystemTime};

use biscuit_auth::builder::{self, Term};
pub use biscuit_auth::datalog::RunLimits;
use biscuit_auth::{
    Algorithm, AuthorizerBuilder, Biscuit, BlockBuilder, KeyPair, PrivateKey, PublicKey,
};
use serde::{Deserialize, Serialize};

use crate::{Error, SpiffeId};

/// Tokens larger than this are refused before decoding.
pub const MAX_TOKEN_BYTES: usize = 64 * 1024;
/// The default bound on the number of delegations after the root.
pub const DEFAULT_MAX_DEPTH: usize = 8;

/// The explicit evaluation limits used unless the verifier is told otherwise.
pub fn default_run_limits() -> RunLimits {
    RunLimits {
        max_facts: 1000,
        max_iterations: 100,
        max_time: Duration::from_millis(20),
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

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HopContext {
    holder: String,
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

    /// Mints `agent`'s root token allowing `tools` until `expires`.
    pub fn mint(
        &self,
        agent: &SpiffeId,
        tools: &[String],
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
        b = b
            .code_with_params(
                "check if time($t), $t <= {exp};",
                params([("exp", builder::date(&expires))]),
                HashMap::new(),
            )
            .map_err(delegation)?
            .context(hop_context(agent)?);
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
    /// Decodes a base64url token and verifies every block's signature with `root_public_key`.
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

    /// The token as base64url; a bearer secret until it is bound to a holder by the verifier.
    pub fn to_base64(&self) -> Result<String, Error> {
        self.0.to_base64().map_err(delegation)
    }

    /// Appends a narrowing block for `next.holder`. No key is needed: anyone holding a token may
    /// narrow it, and nobody can widen it.
    pub fn attenuate(&self, next: &Attenuation) -> Result<Self, Error> {
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
        block = block.context(hop_context(&next.holder)?);
        self.0.append(block).map(Self).map_err(delegation)
    }

    /// The holders named by the blocks, in order. Fails on a block without a valid holder.
    pub fn holders(&self) -> Result<Vec<SpiffeId>, Error> {
        self.0
            .context()
            .into_iter()
            .map(|c| {
                let c = c.ok_or_else(|| Error::Delegation("a block names no holder".into()))?;
                let hop: HopContext = serde_json::from_str(&c)
                    .map_err(|e| Error::Delegation(format!("bad block context: {e}")))?;
                SpiffeId::new(&hop.holder)
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

/// Verifies delegation tokens presented with calls.
#[derive(Clone, Debug)]
pub struct DelegationVerifier {
    root_public_key: Vec<u8>,
    max_depth: usize,
    limits: RunLimits,
}

impl DelegationVerifier {
    /// A verifier trusting `root_public_key`, allowing [`DEFAULT_MAX_DEPTH`] delegations.
    pub fn new(root_public_key: &[u8]) -> Self {
        Self {
            root_public_key: root_public_key.to_vec(),
            max_depth: DEFAULT_MAX_DEPTH,
            limits: default_run_limits(),
        }
    }

    /// Sets the maximum number of delegations after the root.
    pub fn with_max_depth(mut self, max_depth: usize) -> Self {
        self.max_depth = max_depth;
        self
    }

    /// Sets the Datalog evaluation limits.
    pub fn with_limits(mut self, limits: RunLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Decodes, verifies and authorizes `token` for `call`; returns the chain.
    pub fn authorize(
        &self,
        token: &str,
        call: &Presentation<'_>,
    ) -> Result<DelegationChain, Error> {
        let token = DelegationToken::from_base64(token, &self.root_public_key)?;
        self.authorize_token(&token, call)
    }

    /// Authorizes an already decoded token (its signatures were checked when it was decoded).
    pub fn authorize_token(
        &self,
        token: &DelegationToken,
        call: &Presentation<'_>,
    ) -> Result<DelegationChain, Error> {
        if token.0.root_key_id().is_some() {
            return Err(Error::Delegation("root key ids are not used".into()));
        }
        let blocks = token.0.block_count();
        let depth = blocks.saturating_sub(1);
        if depth > self.max_depth {
            return Err(Error::Delegation(format!(
                "chain depth {depth} exceeds the maximum {}",
                self.max_depth
            )));
        }
        let hops = token.holders()?;
        let (Some(origin), Some(last)) = (hops.first(), hops.last()) else {
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
            .build(&token.0)
            .map_err(delegation)?;
        authorizer.authorize().map_err(delegation)?;
        Ok(DelegationChain {
            origin: origin.clone(),
            depth,
            hops,
        })
    }
}

fn hop_context(holder: &SpiffeId) -> Result<String, Error> {
    serde_json::to_string(&HopContext {
        holder: holder.to_string(),
    })
    .map_err(|e| Error::Delegation(e.to_string()))
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
