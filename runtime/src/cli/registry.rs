//! `soma push | pull | keygen | sign | verify | cache`: capsules in OCI
//! registries, signed and verified.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use soma_runtime::{
    CapsuleRef, Engine, Resolved, Resolver,
    oci::{self, Auth, PullOptions, PushOptions, Reference, Transport},
    resolve::Credentials,
    verify::{KeyPair, PublicKey, TrustPolicy},
};

use super::{Global, exit::Code, human_bytes};

/// How to reach and authenticate to a registry (shared by every registry command).
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct RegistryArgs {
    /// Registry username (else $SOMA_REGISTRY_USERNAME, else docker config.json, else anonymous).
    #[arg(long, env = "SOMA_REGISTRY_USERNAME")]
    username: Option<String>,
    /// Registry password (prefer the environment variable over the flag).
    #[arg(long, env = "SOMA_REGISTRY_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Allow plain http to a non-loopback registry.
    #[arg(long)]
    insecure: bool,
    /// Extra CA certificate (PEM) to trust for https.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
}

impl RegistryArgs {
    /// Credentials given by flag or environment, if any (else each
    /// registry's docker config.json entry is used).
    pub(super) fn given_auth(&self) -> anyhow::Result<Option<Auth>> {
        match (&self.username, &self.password) {
            (Some(u), Some(p)) => Ok(Some(Auth::Basic {
                username: u.clone(),
                password: p.clone(),
            })),
            (Some(_), None) => {
                anyhow::bail!("--username needs a password: set SOMA_REGISTRY_PASSWORD")
            }
            _ => Ok(None),
        }
    }

    pub(super) fn auth(&self, reference: &Reference) -> anyhow::Result<Auth> {
        match (&self.username, &self.password) {
            (Some(u), Some(p)) => Ok(Auth::Basic {
                username: u.clone(),
                password: p.clone(),
            }),
            (Some(_), None) => {
                anyhow::bail!("--username needs a password: set SOMA_REGISTRY_PASSWORD")
            }
            _ => Ok(Auth::from_docker_config(reference.registry())?),
        }
    }

    pub(super) fn transport(&self) -> anyhow::Result<Transport> {
        let t = Transport {
            insecure: self.insecure,
            ..Transport::default()
        };
        Ok(match &self.ca_file {
            Some(path) => t.with_ca_file(path)?,
            None => t,
        })
    }
}

pub(super) fn spinner(message: String) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_message(message);
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// Push a capsule component to a registry as a Wasm OCI artifact.
#[derive(Debug, clap::Args)]
pub(crate) struct PushArgs {
    /// The capsule component (.wasm).
    file: PathBuf,
    /// Destination: registry[:port]/repository:tag.
    reference: String,
    /// `org.opencontainers.image.source` annotation (e.g. a repository URL).
    #[arg(long)]
    source: Option<String>,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn push(global: &Global, args: PushArgs) -> anyhow::Result<Code> {
    let reference = Reference::parse(&args.reference)?;
    let bytes =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let engine = global.engine(None)?;
    let bar = spinner(format!("pushing {reference}"));
    let options = PushOptions {
        source: args.source.clone(),
        transport: args.registry.transport()?,
    };
    let digest = oci::push(
        &engine,
        &bytes,
        &reference,
        &args.registry.auth(&reference)?,
        &options,
    );
    bar.finish_and_clear();
    let digest = digest?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "reference": reference.to_string(), "digest": digest })
        );
    } else {
        println!("{}@{digest}", reference.repository_path());
        eprintln!(
            "pushed {} ({}) as {reference}",
            args.file.display(),
            human_bytes(bytes.len() as u64)
        );
    }
    Ok(Code::Ok)
}

/// The trust policy for a pull: `--key` files if given, else `[trust]` from the config.
fn policy(global: &Global, keys: &[PathBuf]) -> anyhow::Result<TrustPolicy> {
    if keys.is_empty() {
        return Ok(TrustPolicy::from_config(&global.config()?.trust)?);
    }
    let keys = keys
        .iter()
        .map(|k| PublicKey::load(k))
        .collect::<Result<_, _>>()?;
    Ok(TrustPolicy::keys(keys))
}

/// Pull (and verify) a capsule into the local cache.
#[derive(Debug, clap::Args)]
pub(crate) struct PullArgs {
    /// registry[:port]/repository[:tag][@sha256:<hex>].
    reference: String,
    /// Trust signatures by this public key (repeatable); default: the config's [[trust.rules]].
    #[arg(long = "key", value_name = "PUB")]
    keys: Vec<PathBuf>,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Where the CLI finds a capsule: `--key` files (else the config's
/// `[trust]`), the registry flags, and the directories relative files are
/// looked up in (with the flag that adds one, for the not-found message).
pub(crate) struct Source<'a> {
    pub(crate) keys: &'a [PathBuf],
    pub(crate) registry: &'a RegistryArgs,
    pub(crate) search: Vec<PathBuf>,
    pub(crate) hint: &'static str,
}

impl Source<'_> {
    /// Parse `text` and resolve it through [`Resolver`] (the one path the
    /// daemon takes too). The trust policy and the registry flags are read
    /// only for a registry reference, so a local run never needs them; a
    /// pull shows a spinner.
    pub(crate) fn resolve(
        &self,
        global: &Global,
        engine: &Engine,
        text: &str,
    ) -> anyhow::Result<Resolved> {
        let resolver = Resolver::new(engine).search(self.search.clone(), self.hint);
        let capsule = resolver.parse(text)?;
        if let CapsuleRef::Market { .. } = &capsule {
            let resolver = resolver.transport(self.registry.transport()?);
            let resolver = match self.registry.given_auth()? {
                Some(auth) => resolver.credentials(Credentials::Given(auth)),
                None => resolver,
            };
            let bar = spinner(format!("resolving {capsule}"));
            let resolved = resolver.resolve(&capsule);
            bar.finish_and_clear();
            return Ok(resolved?);
        }
        let CapsuleRef::Oci(reference) = &capsule else {
            return Ok(resolver.resolve(&capsule)?);
        };
        let resolver = resolver
            .trust(policy(global, self.keys)?)
            .transport(self.registry.transport()?)
            .credentials(Credentials::Given(self.registry.auth(reference)?));
        let bar = spinner(format!("pulling {reference}"));
        let resolved = resolver.resolve(&capsule);
        bar.finish_and_clear();
        Ok(resolved?)
    }
}

/// Resolve, verify and cache `reference` (`soma pull`).
fn fetch(
    global: &Global,
    reference: &str,
    keys: &[PathBuf],
    registry: &RegistryArgs,
) -> anyhow::Result<oci::Pulled> {
    let reference = Reference::parse(reference)?;
    let config = global.config()?;
    let options = PullOptions {
        transport: registry.transport()?,
        trust: policy(global, keys)?,
        ..PullOptions::from_config(&config)
    };
    let bar = spinner(format!("pulling {reference}"));
    let pulled = oci::pull(
        &global.data_dir()?,
        &reference,
        &registry.auth(&reference)?,
        &options,
    );
    bar.finish_and_clear();
    Ok(pulled?)
}

pub(crate) fn pull(global: &Global, args: PullArgs) -> anyhow::Result<Code> {
    let pulled = fetch(global, &args.reference, &args.keys, &args.registry)?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "reference": args.reference,
                "digest": pulled.manifest_digest,
                "layer": pulled.layer_digest,
                "component": pulled.component,
                "size": pulled.size,
                "cached": pulled.cached,
                "admission": pulled.admission,
                "annotations": pulled.annotations,
            })
        );
    } else {
        println!("{}", pulled.component.display());
        eprintln!(
            "{} {} · {} · {}",
            if pulled.cached { "cached" } else { "pulled" },
            pulled.manifest_digest,
            human_bytes(pulled.size),
            admission_text(&pulled.admission)
        );
    }
    Ok(Code::Ok)
}

fn admission_text(a: &soma_runtime::verify::Admission) -> String {
    match a {
        soma_runtime::verify::Admission::Unsigned => "unsigned (accepted by a trust rule)".into(),
        soma_runtime::verify::Admission::Keys { keys } => {
            format!("verified by {}", keys.join(", "))
        }
    }
}

/// The key password: $SOMA_PASSWORD, else a prompt on the terminal.
pub(super) fn password(confirm: bool) -> anyhow::Result<String> {
    if let Ok(p) = std::env::var("SOMA_PASSWORD") {
        return Ok(p);
    }
    let p = rpassword::prompt_password("key password: ")
        .context("no terminal to prompt on: set SOMA_PASSWORD")?;
    if confirm {
        let again = rpassword::prompt_password("again: ").context("reading the password")?;
        anyhow::ensure!(p == again, "the passwords differ");
    }
    Ok(p)
}

/// Generate an ECDSA P-256 key pair in cosign's format (PREFIX.key + PREFIX.pub).
#[derive(Debug, clap::Args)]
pub(crate) struct KeygenArgs {
    /// Output prefix.
    #[arg(long, default_value = "cosign")]
    output_key_prefix: PathBuf,
}

pub(crate) fn keygen(args: KeygenArgs) -> anyhow::Result<Code> {
    let password = password(true)?;
    let (key, public) = KeyPair::generate().save(&args.output_key_prefix, password.as_bytes())?;
    println!("{}", public.display());
    eprintln!(
        "private key {} (encrypted), public key {}",
        key.display(),
        public.display()
    );
    Ok(Code::Ok)
}

/// Sign the artifact a reference points at (cosign's key-based layout).
#[derive(Debug, clap::Args)]
pub(crate) struct SignArgs {
    /// registry[:port]/repository[:tag][@sha256:<hex>].
    reference: String,
    /// The encrypted private key (cosign.key); password from $SOMA_PASSWORD or a prompt.
    #[arg(long)]
    key: PathBuf,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub(crate) fn sign(global: &Global, args: SignArgs) -> anyhow::Result<Code> {
    let reference = Reference::parse(&args.reference)?;
    let limits = global.config()?.pull;
    let key = KeyPair::load(&args.key, password(false)?.as_bytes())?;
    let digest = oci::sign_with_limits(
        &reference,
        &args.registry.auth(&reference)?,
        &key,
        &args.registry.transport()?,
        &limits,
    )?;
    println!("{}@{digest}", reference.repository_path());
    eprintln!(
        "signed {digest} with {} ({})",
        args.key.display(),
        key.public().id()
    );
    Ok(Code::Ok)
}

/// Verify a reference's signatures with public keys (without pulling it).
#[derive(Debug, clap::Args)]
pub(crate) struct VerifyArgs {
    /// registry[:port]/repository[:tag][@sha256:<hex>].
    reference: String,
    /// Public key(s) to trust (cosign.pub); any one suffices.
    #[arg(long = "key", value_name = "PUB", required = true)]
    keys: Vec<PathBuf>,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn verify(global: &Global, args: VerifyArgs) -> anyhow::Result<Code> {
    let reference = Reference::parse(&args.reference)?;
    let limits = global.config()?.pull;
    let keys = args
        .keys
        .iter()
        .map(|k| PublicKey::load(k))
        .collect::<Result<_, _>>()?;
    let (digest, admission) = oci::verify_remote_with_limits(
        &reference,
        &args.registry.auth(&reference)?,
        &TrustPolicy::keys(keys),
        &args.registry.transport()?,
        &limits,
    )?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "reference": args.reference, "digest": digest, "admission": admission })
        );
    } else {
        println!(
            "{}@{digest}: {}",
            reference.repository_path(),
            admission_text(&admission)
        );
    }
    Ok(Code::Ok)
}

/// The local blob cache.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum CacheCommand {
    /// List cached components.
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove unindexed files and index entries whose files are missing.
    Gc,
}

pub(crate) fn cache(global: &Global, cmd: CacheCommand) -> anyhow::Result<Code> {
    let data = global.data_dir()?;
    match cmd {
        CacheCommand::Ls { json } => {
            let blobs = oci::cache_ls(&data)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&blobs)?);
            } else {
                for b in &blobs {
                    println!(
                        "{}  {:>10}  {}{}",
                        b.digest,
                        human_bytes(b.size),
                        b.reference,
                        if b.present { "" } else { "  (missing)" }
                    );
                }
            }
        }
        CacheCommand::Gc => {
            let r = oci::cache_gc(&data)?;
            println!(
                "removed {} file(s) ({}) and {} index entr(ies)",
                r.removed_files.len(),
                human_bytes(r.freed_bytes),
                r.removed_entries
            );
        }
    }
    Ok(Code::Ok)
}
