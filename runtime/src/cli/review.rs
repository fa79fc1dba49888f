//! `soma review`: the marketplace's automated review, run locally before
//! submitting (a dry run: the author signature is not checked).

use std::path::PathBuf;

use anyhow::Context as _;
use soma_runtime::market::review::{self, ReviewInput, SignatureOutcome, Status};

use super::{Global, exit::Code};

/// Review a capsule the way the marketplace will: bounds, world, least
/// privilege, smoke runs of the examples under ¼ of the limits, hostile
/// inputs, license, README, size, secrets.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The capsule component (.wasm).
    capsule: PathBuf,
    /// Example inputs: a JSON file holding an array of inputs.
    #[arg(long, value_name = "FILE")]
    examples: Option<PathBuf>,
    /// SPDX license expression, e.g. `Apache-2.0`.
    #[arg(long, value_name = "SPDX")]
    license: Option<String>,
    /// The README (Markdown).
    #[arg(long, value_name = "FILE")]
    readme: Option<PathBuf>,
    /// The marketplace's size limit, bytes.
    #[arg(long, value_name = "BYTES", default_value_t = review::DEFAULT_MAX_COMPONENT_BYTES)]
    max_bytes: usize,
    /// Base URL of an OpenAI-compatible LLM fixture for the smoke runs
    /// (otherwise llm is denied).
    #[arg(long, value_name = "URL")]
    llm_fixture: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(global: &Global, args: Args) -> anyhow::Result<Code> {
    let json = args.json;
    super::or_json_error(json, review_file(global, args))
}

fn review_file(global: &Global, args: Args) -> anyhow::Result<Code> {
    let bytes = std::fs::read(&args.capsule)
        .with_context(|| format!("cannot read {}", args.capsule.display()))?;
    let examples = match &args.examples {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} must hold a JSON array of example inputs",
                    path.display()
                )
            })?
        }
        None => Vec::new(),
    };
    let readme = match &args.readme {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?,
        ),
        None => None,
    };
    let input = ReviewInput {
        license: args.license,
        readme,
        examples,
        max_component_bytes: args.max_bytes,
        signature: SignatureOutcome::NotChecked,
        llm_fixture: args.llm_fixture,
    };
    let config = global.config()?;
    let report = review::review(&bytes, &input, &config).context("running the review")?;
    let code = if report.approved() {
        Code::Ok
    } else {
        Code::ReviewRejected
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(code);
    }
    print_report(&report)?;
    Ok(code)
}

/// The human form of a review report: one line per step (status, step,
/// reason code, reason), the cost profile, the verdict.
pub(crate) fn print_report(report: &review::ReviewReport) -> anyhow::Result<()> {
    for e in &report.evidence {
        let mark = match e.status {
            Status::Passed => "pass",
            Status::Failed => "FAIL",
            Status::Skipped => "skip",
        };
        let reason = serde_json::to_value(e.code)?;
        let step = serde_json::to_value(e.step)?;
        println!(
            "{mark}  {:<16} {:<24} {}",
            step.as_str().unwrap_or("?"),
            reason.as_str().unwrap_or("?"),
            soma_host_api::log::escape(&e.reason)
        );
    }
    if let Some(p) = &report.cost_profile {
        println!(
            "cost profile ({} examples, limits fuel {} / {} ms / {} MiB): fuel max {} mean {}, \
             wall max {} µs mean {} µs, peak memory {} bytes",
            p.calls,
            p.limits.fuel,
            p.limits.timeout_ms,
            p.limits.memory_mb,
            p.fuel_max,
            p.fuel_mean,
            p.wall_time_us_max,
            p.wall_time_us_mean,
            p.peak_memory_bytes_max
        );
    }
    let failed = report.failures().count();
    println!(
        "{} in {} ms{}",
        if report.approved() {
            "approved"
        } else {
            "rejected"
        },
        report.elapsed_ms,
        if failed > 0 {
            format!(" ({failed} failed checks)")
        } else {
            String::new()
        }
    );
    Ok(())
}
