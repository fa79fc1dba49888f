//! `soma market …`: the capsule marketplace — authors, submissions,
//! publishing, install pins. Every command runs against this node's data
//! directory (`--data`) and prints JSON with `--json`.

use std::path::PathBuf;

use anyhow::Context as _;
use serde_json::json;
use soma_runtime::{
    market::{
        error::MarketError,
        flow::{self, Access, Artifact, Selector},
        listing::Listing,
        lock::LOCKFILE,
        store::{Market, Submission, SubmissionState},
    },
    oci::Reference,
    verify::{KeyPair, PublicKey},
};

mod card;
mod search;

use super::{
    Global,
    exit::Code,
    or_json_error,
    registry::{RegistryArgs, password, spinner},
};

/// The marketplace.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum MarketCommand {
    /// Authors: identities with their own signing keys.
    #[command(subcommand)]
    Author(AuthorCommand),
    /// Submit a capsule version: push (if a file), sign as the author, record.
    Submit(SubmitArgs),
    /// List submitted versions and their states.
    Ls(LsArgs),
    /// Countersign an approved version with the marketplace key and publish it (operator).
    Publish(StateArgs),
    /// Hide a published version from ranges (pinned digests keep resolving).
    Yank(StateArgs),
    /// Mark a published version deprecated (hidden from ranges; pins keep resolving).
    Deprecate(StateArgs),
    /// Install author/name[@range]: resolve, pull, verify both signatures, pin in soma.lock.
    Install(InstallArgs),
    /// Move the lockfile's pins to the newest published versions within their ranges.
    Update(UpdateArgs),
    /// Search published listings: full text with typo tolerance, facet
    /// filters and counts.
    Search(search::Args),
    /// The measured cost card of a listing's published versions: calls,
    /// success rate, p50/p95 latency, fuel, tokens and cost per call over
    /// the last 30 days.
    Card(card::Args),
}

/// Author identities.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum AuthorCommand {
    /// Register an author name with its public key (cosign .pub, from `soma keygen`).
    Register {
        /// The author (namespace) name: lowercase letters, digits, '-'.
        #[arg(long)]
        name: String,
        /// The author's public key.
        #[arg(long, value_name = "PUB")]
        key: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List registered authors.
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `soma market submit`.
#[derive(Debug, clap::Args)]
pub(crate) struct SubmitArgs {
    /// The component file (.wasm), or a registry reference already pushed.
    artifact: String,
    /// The listing file (listing.toml).
    #[arg(long, value_name = "FILE")]
    listing: PathBuf,
    /// The author's encrypted private key; password from $SOMA_PASSWORD or a prompt.
    #[arg(long, value_name = "KEY")]
    key: PathBuf,
    /// Registry host[:port] to push a file to (default: [market] registry).
    #[arg(long = "registry", value_name = "HOST")]
    to: Option<String>,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `soma market ls`.
#[derive(Debug, clap::Args)]
pub(crate) struct LsArgs {
    /// Only this capsule (author/name).
    name: Option<String>,
    /// Print JSON (whole records, with listing and review).
    #[arg(long)]
    json: bool,
}

/// A state change of one version.
#[derive(Debug, clap::Args)]
pub(crate) struct StateArgs {
    /// author/name@version.
    id: String,
    /// Why (recorded in the version's history).
    #[arg(long)]
    reason: Option<String>,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `soma market install`.
#[derive(Debug, clap::Args)]
pub(crate) struct InstallArgs {
    /// author/name[@semver-range], e.g. acme/summarize@^1.
    name: String,
    /// The lockfile (default: ./soma.lock).
    #[arg(long, value_name = "PATH", default_value = LOCKFILE)]
    lock: PathBuf,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `soma market update`.
#[derive(Debug, clap::Args)]
pub(crate) struct UpdateArgs {
    /// Only this pin (author/name); default: every pin.
    name: Option<String>,
    /// The lockfile (default: ./soma.lock).
    #[arg(long, value_name = "PATH", default_value = LOCKFILE)]
    lock: PathBuf,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn access(global: &Global, registry: &RegistryArgs) -> anyhow::Result<Access> {
    Ok(Access {
        transport: registry.transport()?,
        auth: registry.given_auth()?,
        limits: global.config()?.pull,
    })
}

/// The marketplace tables of the data directory (the only handle on its
/// database in this process: redb opens a file once).
fn market(global: &Global) -> anyhow::Result<Market> {
    Ok(Market::new(global.data_dir()?.database().clone()))
}

fn line(s: &Submission) -> String {
    let review = match &s.review {
        Some(r) if r.passed => "review passed".to_owned(),
        Some(r) => format!("review failed: {}", r.reasons.join(", ")),
        None => "not reviewed".to_owned(),
    };
    format!(
        "{}  {}  {}  {}  {}",
        s.id(),
        s.state,
        s.listing.price.model(),
        s.pinned_reference(),
        review
    )
}

pub(crate) fn market_cmd(global: &Global, cmd: MarketCommand) -> anyhow::Result<Code> {
    global.local_only("soma market")?;
    let json = match &cmd {
        MarketCommand::Author(
            AuthorCommand::Register { json, .. } | AuthorCommand::Ls { json },
        ) => *json,
        MarketCommand::Submit(a) => a.json,
        MarketCommand::Ls(a) => a.json,
        MarketCommand::Publish(a) | MarketCommand::Yank(a) | MarketCommand::Deprecate(a) => a.json,
        MarketCommand::Install(a) => a.json,
        MarketCommand::Update(a) => a.json,
        MarketCommand::Search(a) => a.json,
        MarketCommand::Card(a) => a.json,
    };
    or_json_error(json, run(global, cmd))
}

fn run(global: &Global, cmd: MarketCommand) -> anyhow::Result<Code> {
    match cmd {
        MarketCommand::Search(args) => return search::run(global, args),
        MarketCommand::Card(args) => return card::run(global, args),
        MarketCommand::Author(AuthorCommand::Register { name, key, json }) => {
            let public = PublicKey::load(&key)?;
            let author = market(global)?.register_author(&name, &public)?;
            if json {
                println!("{}", json!({ "ok": true, "author": author }));
            } else {
                println!("{} {}", author.name, author.key_id);
            }
        }
        MarketCommand::Author(AuthorCommand::Ls { json }) => {
            let authors = market(global)?.authors()?;
            if json {
                println!("{}", json!({ "ok": true, "authors": authors }));
            } else {
                for a in authors {
                    println!("{}  {}", a.name, a.key_id);
                }
            }
        }
        MarketCommand::Submit(args) => return submit(global, args),
        MarketCommand::Ls(args) => {
            let versions = market(global)?.versions(args.name.as_deref())?;
            if args.json {
                let versions = card::with_cards(global, &versions)?;
                println!("{}", json!({ "ok": true, "versions": versions }));
            } else {
                for s in &versions {
                    println!("{}", line(s));
                }
            }
        }
        MarketCommand::Publish(args) => {
            let config = global.config()?;
            let key_path = config
                .market
                .key
                .clone()
                .ok_or(MarketError::NotConfigured {
                    key: "key",
                    why: "publishing countersigns with the marketplace's private key",
                })?;
            let key = KeyPair::load(&key_path, password(false)?.as_bytes())?;
            let bar = spinner(format!("publishing {}", args.id));
            let published = flow::publish(
                &market(global)?,
                &args.id,
                &key,
                &access(global, &args.registry)?,
            );
            bar.finish_and_clear();
            let s = published?;
            print_state(&s, args.json, "published (author + marketplace signatures)");
        }
        MarketCommand::Yank(args) => {
            let s = market(global)?.transition(
                &args.id,
                SubmissionState::Yanked,
                args.reason,
                |_| {},
            )?;
            print_state(
                &s,
                args.json,
                "yanked: hidden from ranges, pinned digests still resolve",
            );
        }
        MarketCommand::Deprecate(args) => {
            let s = market(global)?.transition(
                &args.id,
                SubmissionState::Deprecated,
                args.reason,
                |_| {},
            )?;
            print_state(
                &s,
                args.json,
                "deprecated: hidden from ranges, pinned digests still resolve",
            );
        }
        MarketCommand::Install(args) => {
            let (name, selector) = flow::parse_name(&args.name)?;
            let Selector::Range(range) = selector else {
                anyhow::bail!(
                    "install takes a semver range (author/name@^1); a digest is already a pin: write it into {} or run market:{}",
                    args.lock.display(),
                    args.name
                );
            };
            let config = global.config()?;
            let data = global.data_dir()?;
            let bar = spinner(format!("installing {name}@{range}"));
            let installed = flow::install(
                &data,
                &config,
                &Market::new(data.database().clone()),
                &name,
                &range,
                &args.lock,
                &access(global, &args.registry)?,
            );
            bar.finish_and_clear();
            let i = installed?;
            if args.json {
                println!(
                    "{}",
                    json!({ "ok": true, "installed": i, "lock": args.lock })
                );
            } else {
                println!("{} {} {}", i.name, i.pin.version, i.pin.digest);
                eprintln!(
                    "pinned {}@{} in {} (author + marketplace signatures verified)",
                    i.name,
                    i.pin.version,
                    args.lock.display()
                );
            }
        }
        MarketCommand::Update(args) => {
            let config = global.config()?;
            let data = global.data_dir()?;
            let bar = spinner(format!("updating {}", args.lock.display()));
            let updated = flow::update(
                &data,
                &config,
                &Market::new(data.database().clone()),
                &args.lock,
                args.name.as_deref(),
                &access(global, &args.registry)?,
            );
            bar.finish_and_clear();
            let updated = updated?;
            if args.json {
                println!(
                    "{}",
                    json!({ "ok": true, "updated": updated, "lock": args.lock })
                );
            } else {
                for i in &updated {
                    match &i.previous {
                        Some(p) if *p != i.pin.version => {
                            println!("{} {} -> {} {}", i.name, p, i.pin.version, i.pin.digest)
                        }
                        _ => println!("{} {} (newest in {})", i.name, i.pin.version, i.pin.range),
                    }
                }
            }
        }
    }
    Ok(Code::Ok)
}

fn print_state(s: &Submission, json: bool, what: &str) {
    if json {
        println!("{}", json!({ "ok": true, "version": s }));
    } else {
        println!("{}", line(s));
        eprintln!("{} {what}", s.id());
    }
}

fn submit(global: &Global, args: SubmitArgs) -> anyhow::Result<Code> {
    let listing = Listing::load(&args.listing).map_err(MarketError::from)?;
    let config = global.config()?;
    let engine = global.engine(None)?;
    let key = KeyPair::load(&args.key, password(false)?.as_bytes())
        .with_context(|| format!("reading the author key {}", args.key.display()))?;
    let path = PathBuf::from(&args.artifact);
    let registry = args.to.clone().or(config.market.registry.clone());
    let artifact = if path.is_file() {
        Artifact::File {
            path: &path,
            registry: registry.as_deref().ok_or(MarketError::NotConfigured {
                key: "registry",
                why: "submitting a file pushes it there (or pass --registry HOST)",
            })?,
        }
    } else {
        Artifact::Reference(Reference::parse(&args.artifact)?)
    };
    let bar = spinner(format!("submitting {}", listing.id()));
    let submitted = flow::submit(
        &engine,
        &Market::new(engine.data().database().clone()),
        listing,
        artifact,
        &key,
        &access(global, &args.registry)?,
    );
    bar.finish_and_clear();
    let submitted = submitted?;
    if args.json {
        println!("{}", json!({ "ok": true, "submitted": submitted }));
    } else {
        println!("{}", line(&submitted.submission));
        eprintln!(
            "{} {} (signed by {}, verified against the registered key)",
            submitted.submission.id(),
            if submitted.created {
                "submitted"
            } else {
                "already submitted with this component"
            },
            key.public().id()
        );
    }
    Ok(Code::Ok)
}
