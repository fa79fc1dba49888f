//! `soma market`: the capsule marketplace (issue 14). One module per
//! subcommand under `market/`.

mod search;

use clap::Subcommand;

use super::{Global, exit::Code};

/// The `soma market` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum MarketCommand {
    /// Search published listings: full text with typo tolerance, facet
    /// filters and counts.
    Search(search::Args),
}

pub(crate) fn market(global: &Global, cmd: MarketCommand) -> anyhow::Result<Code> {
    match cmd {
        MarketCommand::Search(args) => search::run(global, args),
    }
}
