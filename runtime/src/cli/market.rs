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
        pipeline::{self, ReviewOptions},
        records::Records,
        review::ReviewReport,
        store::{Market, Submission, SubmissionState, author_statement},
    },
    oci::Reference,
    verify::{KeyPair, PublicKey},
};

mod price;
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
    /// A listing's price: change it (increases after the notice period), show its history.
    #[command(subcommand)]
    Price(price::PriceCommand),
    /// What each author earned in a month: revenue, platform share, net, per listing.
    Payouts(price::PayoutsArgs),
    /// Re-run the automated review of a submitted version (`review ID`), or
    /// decide as a reviewer when `[market] manual_approval` is on
    /// (`review approve ID`, `review reject ID --reason R`).
    Review(ReviewArgs),
    /// Re-run every published version's examples (nightly): 3 failures in a
    /// row → under-maintenance, 30 days under maintenance → deprecated.
    /// Exit 30 when some version failed.
    Retest(RetestArgs),
    /// Rebuild the search index from every published version in this node's catalog.
    Reindex {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The measured cost card of a listing's published versions: calls,
    /// success rate, p50/p95 latency, fuel, tokens and cost per call over
    /// the last 30 days.
    Card(card::Args),
}

/// `soma market review`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(crate) struct ReviewArgs {
    /// A reviewer's decision.
    #[command(subcommand)]
    decision: Option<ReviewDecision>,
    /// author/name@version to review again (e.g. after the operator changed the fixture).
    #[arg(required = true)]
    id: Option<String>,
    /// Base URL of an OpenAI-compatible LLM fixture for the smoke runs (default: [market] review_llm).
    #[arg(long, value_name = "URL")]
    llm_fixture: Option<String>,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Print JSON: the updated version and the review's report.
    #[arg(long)]
    json: bool,
}

/// A reviewer's decision on a version awaiting approval.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum ReviewDecision {
    /// Approve a version whose automated review passed (then `soma market publish`).
    Approve {
        /// author/name@version.
        id: String,
        /// Why (recorded in the history).
        #[arg(long)]
        reason: Option<String>,
        /// Who decides (default: $USER).
        #[arg(long, value_name = "NAME")]
        reviewer: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Reject a version before it is published; the reason is recorded for the author.
    Reject {
        /// author/name@version.
        id: String,
        /// Why (required; recorded in the history and the review).
        #[arg(long)]
        reason: String,
        /// Who decides (default: $USER).
        #[arg(long, value_name = "NAME")]
        reviewer: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `soma market retest`.
#[derive(Debug, clap::Args)]
pub(crate) struct RetestArgs {
    /// Only this capsule (author/name); default: every published version.
    name: Option<String>,
    /// Base URL of an OpenAI-compatible LLM fixture for the smoke runs (default: [market] review_llm).
    #[arg(long, value_name = "URL")]
    llm_fixture: Option<String>,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Author identities.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum AuthorCommand {
    /// Register an author name with its key pair (from `soma keygen`): the
    /// private key signs a proof of possession, the public key is stored.
    Register {
        /// The author (namespace) name: lowercase letters, digits, '-'.
        #[arg(long)]
        name: String,
        /// The author's encrypted private key (password from $SOMA_PASSWORD
        /// or a prompt): it signs `soma-market-author-v1\n<name>\n<tenant>\n`
        /// here, so nobody registers a key it does not hold.
        #[arg(long, value_name = "KEY")]
        key_file: PathBuf,
        /// The author's public key (.pub). Optional, and accepted only
        /// together with --key-file: it must be that key's public half.
        #[arg(long, value_name = "PUB")]
        key: Option<PathBuf>,
        /// The daemon tenant that owns the namespace (only its tokens may
        /// submit into it over /v1/market). Default: none, operator-owned.
        #[arg(long, value_name = "TENANT")]
        tenant: Option<String>,
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
    /// Base URL of an OpenAI-compatible LLM fixture for the review's smoke
    /// runs (default: [market] review_llm; with neither, llm is denied to them).
    #[arg(long, value_name = "URL")]
    llm_fixture: Option<String>,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Print JSON: the submission and the review's report.
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

/// The marketplace tables as `[store]` configures them: the data
/// directory's (the only handle on its database in this process: redb
/// opens a file once), or the fleet's on PostgreSQL.
fn market(global: &Global) -> anyhow::Result<Market> {
    Ok(Market::new(records(global, &global.data_dir()?)?))
}

/// [`market`]'s records over `data`, a data directory the caller also reads.
pub(crate) fn records(
    global: &Global,
    data: &soma_runtime::store::DataDir,
) -> anyhow::Result<Records> {
    Ok(Records::open(
        &global.config()?.store,
        data.database().clone(),
    )?)
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
        MarketCommand::Price(price::PriceCommand::Set(a)) => a.json,
        MarketCommand::Price(price::PriceCommand::Show { json, .. }) => *json,
        MarketCommand::Payouts(a) => a.json,
        MarketCommand::Review(a) => match &a.decision {
            Some(ReviewDecision::Approve { json, .. } | ReviewDecision::Reject { json, .. }) => {
                *json
            }
            None => a.json,
        },
        MarketCommand::Retest(a) => a.json,
        MarketCommand::Reindex { json } => *json,
        MarketCommand::Card(a) => a.json,
    };
    or_json_error(json, run(global, cmd))
}

fn run(global: &Global, cmd: MarketCommand) -> anyhow::Result<Code> {
    match cmd {
        MarketCommand::Search(args) => return search::run(global, args),
        MarketCommand::Card(args) => return card::run(global, args),
        MarketCommand::Price(cmd) => return price::price(global, cmd),
        MarketCommand::Payouts(args) => return price::payouts(global, args),
        MarketCommand::Author(AuthorCommand::Register {
            name,
            key_file,
            key,
            tenant,
            json,
        }) => {
            let pair = KeyPair::load(&key_file, password(false)?.as_bytes())?;
            let public = pair.public();
            if let Some(key) = key
                && PublicKey::load(&key)?.id() != public.id()
            {
                anyhow::bail!(
                    "--key {} is not the public half of --key-file {}: give the matching pair",
                    key.display(),
                    key_file.display()
                );
            }
            let tenant = tenant.as_deref();
            let proof = pair.sign(author_statement(&name, tenant).as_bytes());
            let author = market(global)?.register_author_proven(&name, &public, tenant, &proof)?;
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
        MarketCommand::Review(args) => return review(global, args),
        MarketCommand::Retest(args) => return retest(global, args),
        MarketCommand::Reindex { json } => {
            let engine = global.engine(None)?;
            let market = Market::new(Records::of(&engine));
            let n = pipeline::reindex(&engine, &market)?;
            if json {
                println!("{}", json!({ "ok": true, "indexed": n }));
            } else {
                println!("indexed {n} published versions");
            }
        }
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
            let engine = global.engine(None)?;
            let market = Market::new(Records::of(&engine));
            let bar = spinner(format!("publishing {}", args.id));
            let published =
                flow::publish(&market, &args.id, &key, &access(global, &args.registry)?);
            bar.finish_and_clear();
            let s = published?;
            index(&engine, &market, &s)?;
            print_state(
                &s,
                args.json,
                "published (author + marketplace signatures), indexed for search",
            );
        }
        MarketCommand::Yank(args) => {
            let engine = global.engine(None)?;
            let market = Market::new(Records::of(&engine));
            let s = market.transition(&args.id, SubmissionState::Yanked, args.reason, |_| {})?;
            index(&engine, &market, &s)?;
            print_state(
                &s,
                args.json,
                "yanked: hidden from ranges and search, pinned digests still resolve",
            );
        }
        MarketCommand::Deprecate(args) => {
            let engine = global.engine(None)?;
            let market = Market::new(Records::of(&engine));
            let s =
                market.transition(&args.id, SubmissionState::Deprecated, args.reason, |_| {})?;
            index(&engine, &market, &s)?;
            print_state(
                &s,
                args.json,
                "deprecated: hidden from ranges and search, pinned digests still resolve",
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
                &Market::new(records(global, &data)?),
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
                &Market::new(records(global, &data)?),
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
    let access = access(global, &args.registry)?;
    let market = Market::new(Records::of(&engine));
    let bar = spinner(format!("submitting {}", listing.id()));
    let submitted = flow::submit(&engine, &market, listing, artifact, &key, &access);
    bar.finish_and_clear();
    let mut submitted = submitted?;
    let id = submitted.submission.id();
    // A new submission (or one whose review never ran) is reviewed now;
    // submitting the same component again shows the review on record.
    let report = match &submitted.submission.review {
        Some(r) if !submitted.created => {
            serde_json::from_value::<ReviewReport>(r.evidence.clone()).ok()
        }
        _ => {
            let defaults = ReviewOptions::from_config(&config);
            let options = ReviewOptions {
                llm_fixture: args.llm_fixture.clone().or(defaults.llm_fixture.clone()),
                access: access.clone(),
                ..defaults
            };
            let bar = spinner(format!("reviewing {id}"));
            let reviewed = pipeline::review_submission(&engine, &market, &id, &options);
            bar.finish_and_clear();
            let reviewed = reviewed?;
            submitted.submission = reviewed.submission;
            Some(reviewed.report)
        }
    };
    let what = format!(
        "{id} {} (signed by {}, verified against the registered key)",
        if submitted.created {
            "submitted"
        } else {
            "already submitted with this component"
        },
        key.public().id()
    );
    report_review(
        &submitted.submission,
        report.as_ref(),
        args.json,
        json!({ "submitted": submitted }),
        &what,
    )
}

/// Print a recorded review (JSON: `extra` plus `review`, the report) and
/// pick the exit code: 30 (`review-rejected`, naming every reason) when
/// the version is rejected, else 0.
fn report_review(
    s: &Submission,
    report: Option<&ReviewReport>,
    json_out: bool,
    extra: serde_json::Value,
    what: &str,
) -> anyhow::Result<Code> {
    let rejected = s.state == SubmissionState::Rejected;
    let reasons = s
        .review
        .as_ref()
        .map(|r| r.reasons.join(", "))
        .unwrap_or_default();
    let message = format!("{} was rejected by the review: {reasons}", s.id());
    if json_out {
        let mut doc = json!({ "ok": !rejected, "review": report });
        if let (Some(doc), Some(extra)) = (doc.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                doc.insert(k.clone(), v.clone());
            }
            if rejected {
                doc.insert(
                    "error".into(),
                    json!({
                        "class": Code::ReviewRejected.name(),
                        "message": message,
                        "exit_code": Code::ReviewRejected as u8,
                    }),
                );
            }
        }
        println!("{doc}");
    } else {
        println!("{}", line(s));
        if let Some(report) = report {
            super::review::print_report(report)?;
        }
        eprintln!("{what}");
        match s.state {
            SubmissionState::Rejected => eprintln!("{message}"),
            SubmissionState::AwaitingApproval => eprintln!(
                "{} passed the review and awaits a reviewer: soma market review approve {} (or reject {} --reason R)",
                s.id(),
                s.id(),
                s.id()
            ),
            SubmissionState::Approved => {
                eprintln!("{} approved: soma market publish {}", s.id(), s.id())
            }
            _ => {}
        }
    }
    Ok(if rejected {
        Code::ReviewRejected
    } else {
        Code::Ok
    })
}

/// Keep search in step with `s`; a failure says the state change itself stands.
fn index(engine: &soma_runtime::Engine, market: &Market, s: &Submission) -> anyhow::Result<()> {
    pipeline::index_submission(engine, market, s).with_context(|| {
        format!(
            "{} is {}, but the search index was not updated (soma market reindex repairs it)",
            s.id(),
            s.state
        )
    })
}

fn reviewer(given: Option<String>) -> String {
    given
        .or_else(|| std::env::var("USER").ok())
        .filter(|r| !r.trim().is_empty())
        .unwrap_or_else(|| "operator".to_owned())
}

fn review(global: &Global, args: ReviewArgs) -> anyhow::Result<Code> {
    match args.decision {
        Some(ReviewDecision::Approve {
            id,
            reason,
            reviewer: who,
            json,
        }) => {
            let s = market(global)?.approve(&id, &reviewer(who), reason)?;
            print_state(&s, json, "approved by a reviewer: soma market publish ID");
            Ok(Code::Ok)
        }
        Some(ReviewDecision::Reject {
            id,
            reason,
            reviewer: who,
            json,
        }) => {
            let s = market(global)?.reject(&id, &reviewer(who), &reason)?;
            print_state(&s, json, "rejected by a reviewer");
            Ok(Code::Ok)
        }
        None => {
            let id = args
                .id
                .context("give the version to review: soma market review author/name@version")?;
            let config = global.config()?;
            let engine = global.engine(None)?;
            let market = Market::new(Records::of(&engine));
            let defaults = ReviewOptions::from_config(&config);
            let options = ReviewOptions {
                llm_fixture: args.llm_fixture.or(defaults.llm_fixture.clone()),
                access: access(global, &args.registry)?,
                ..defaults
            };
            let bar = spinner(format!("reviewing {id}"));
            let reviewed = pipeline::review_submission(&engine, &market, &id, &options);
            bar.finish_and_clear();
            let reviewed = reviewed?;
            report_review(
                &reviewed.submission,
                Some(&reviewed.report),
                args.json,
                json!({ "version": reviewed.submission }),
                &format!("{id} reviewed again"),
            )
        }
    }
}

fn retest(global: &Global, args: RetestArgs) -> anyhow::Result<Code> {
    let config = global.config()?;
    let engine = global.engine(None)?;
    let market = Market::new(Records::of(&engine));
    let defaults = ReviewOptions::from_config(&config);
    let options = ReviewOptions {
        llm_fixture: args.llm_fixture.or(defaults.llm_fixture.clone()),
        access: access(global, &args.registry)?,
        ..defaults
    };
    let bar = spinner("re-testing published versions".to_owned());
    let retested = pipeline::retest(
        &engine,
        &market,
        args.name.as_deref(),
        &options,
        soma_runtime::market::store::now_ms(),
    );
    bar.finish_and_clear();
    let retested = retested?;
    let failed = retested.iter().filter(|r| !r.passed).count();
    if args.json {
        println!(
            "{}",
            json!({ "ok": failed == 0, "retested": retested, "failed": failed })
        );
    } else {
        for r in &retested {
            let moved = if r.state_before == r.state {
                String::new()
            } else {
                format!(" ({} -> {})", r.state_before, r.state)
            };
            println!(
                "{}  {}  {} failures in a row  {}{moved}{}",
                r.id,
                if r.passed { "pass" } else { "FAIL" },
                r.consecutive_failures,
                r.reasons.join(", "),
                r.error
                    .as_ref()
                    .map(|e| format!("  error: {e}"))
                    .unwrap_or_default()
            );
        }
        eprintln!("{} versions re-tested, {failed} failed", retested.len());
    }
    Ok(if failed > 0 {
        Code::ReviewRejected
    } else {
        Code::Ok
    })
}
