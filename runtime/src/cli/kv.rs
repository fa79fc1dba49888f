//! `soma kv`: operator actions on the kv store of a data directory.

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::json;

use super::{Global, exit::Code};

#[derive(Debug, Subcommand)]
pub(crate) enum KvCommand {
    /// Give every pre-0.2 kv entry (stored before kv was keyed by tenant,
    /// so it reaches no tenant) to one tenant, and drop the legacy tables.
    ///
    /// Only for a node that ever had a single tenant (e.g. `local`, the
    /// CLI's): the old layout never recorded who wrote an entry. One
    /// transaction; the tenant's usage is recomputed; entries it already
    /// has are kept; quotas are not enforced. Run it with the daemon
    /// stopped (it owns the database). Exit 0 also when there was nothing
    /// to adopt.
    AdoptLegacy(AdoptArgs),
}

#[derive(Debug, Args)]
pub(crate) struct AdoptArgs {
    /// The tenant that receives the legacy entries.
    #[arg(long)]
    tenant: String,
    /// Print one JSON object: `{"ok", "tenant", "entries", "bytes"}`.
    #[arg(long)]
    json: bool,
}

pub(crate) fn kv(global: &Global, cmd: KvCommand) -> anyhow::Result<Code> {
    global.local_only("kv")?;
    match cmd {
        KvCommand::AdoptLegacy(args) => {
            let json = args.json;
            super::or_json_error(json, adopt_legacy(global, &args))
        }
    }
}

fn adopt_legacy(global: &Global, args: &AdoptArgs) -> anyhow::Result<Code> {
    anyhow::ensure!(
        !args.tenant.trim().is_empty(),
        "--tenant: name the tenant that receives the legacy entries"
    );
    let data = global.data_dir()?;
    let adopted = soma_host_api::kv::adopt_legacy(data.database(), &args.tenant)
        .with_context(|| format!("adopting legacy kv entries in {}", data.root().display()))?;
    if args.json {
        println!(
            "{}",
            json!({
                "ok": true,
                "tenant": args.tenant,
                "entries": adopted.entries,
                "bytes": adopted.bytes,
            })
        );
    } else if adopted.entries == 0 {
        println!("no legacy kv entries: nothing to adopt");
    } else {
        println!(
            "adopted {} legacy kv entries ({}) into tenant {}",
            adopted.entries,
            super::human_bytes(adopted.bytes),
            args.tenant
        );
    }
    Ok(Code::Ok)
}
