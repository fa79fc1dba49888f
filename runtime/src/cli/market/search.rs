//! `soma market search`: query a search index directory (by default the
//! node's, `<data>/market/search`).

use std::path::PathBuf;

use serde::Serialize;
use soma_host_api::log::escape;
use soma_runtime::{
    capsule::CapsuleKind,
    market::search::{
        DEFAULT_LIMIT, Facet, Filters, PriceModel, ReviewState, SearchAnswer, SearchIndex,
        SearchQuery, default_dir, parse_kind, parse_price, parse_review,
    },
};

use crate::cli::{Global, exit::Code, or_json_error};

/// Search published listings. Every flag may be repeated (any of its
/// values); different flags must all hold.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Words to find in names, keywords, summaries and READMEs (typos
    /// tolerated; the last word also matches as a prefix). None: every
    /// listing that passes the filters.
    query: Vec<String>,
    /// Only listings in this category.
    #[arg(long, value_name = "C")]
    category: Vec<String>,
    /// Only capsules of this kind: worker, planner, gate.
    #[arg(long, value_name = "K", value_parser = parse_kind)]
    kind: Vec<CapsuleKind>,
    /// Only this price model: free, per-call, per-1k-tokens, per-event.
    #[arg(long, value_name = "P", value_parser = parse_price)]
    price: Vec<PriceModel>,
    /// Only this SPDX license id.
    #[arg(long, value_name = "L")]
    license: Vec<String>,
    /// Only components importing this interface (`ns:pkg/iface@ver`; without
    /// `@ver` any version; `ns:pkg` any interface of the package).
    #[arg(long, value_name = "I")]
    imports: Vec<String>,
    /// Only components exporting this interface (matched like --imports).
    #[arg(long, value_name = "I")]
    exports: Vec<String>,
    /// Only capsules asking for this capability (`llm` matches `llm:small`).
    #[arg(long, value_name = "C")]
    capability: Vec<String>,
    /// Only this review status: verified, under-maintenance, unreviewed.
    #[arg(long, value_name = "STATE", value_parser = parse_review)]
    review: Vec<ReviewState>,
    /// Hits to show (0: counts only; at most 100).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_LIMIT)]
    limit: usize,
    /// Hits to skip (paging; at most 1000).
    #[arg(long, value_name = "N", default_value_t = 0)]
    offset: usize,
    /// The search index directory. Default: <data>/market/search.
    #[arg(long, value_name = "DIR")]
    index: Option<PathBuf>,
    /// Print one JSON object: `{"ok": true, "total", "hits", "facets", "words"}`.
    #[arg(long)]
    pub(super) json: bool,
}

/// The `--json` answer: the library's answer with `ok`.
#[derive(Serialize)]
struct JsonAnswer<'a> {
    ok: bool,
    #[serde(flatten)]
    answer: &'a SearchAnswer,
}

pub(crate) fn run(global: &Global, args: Args) -> anyhow::Result<Code> {
    let json = args.json;
    or_json_error(json, search(global, args))
}

fn search(global: &Global, args: Args) -> anyhow::Result<Code> {
    global.local_only("soma market search")?;
    let dir = match &args.index {
        Some(dir) => dir.clone(),
        None => default_dir(&global.data_dir()?),
    };
    let index = SearchIndex::open_read_only(&dir)?;
    let query = SearchQuery {
        text: args.query.join(" "),
        filters: Filters {
            category: args.category,
            kind: args.kind,
            price: args.price,
            license: args.license,
            imports: args.imports,
            exports: args.exports,
            capability: args.capability,
            review: args.review,
        },
        limit: args.limit,
        offset: args.offset,
    };
    let answer = index.search(&query)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&JsonAnswer {
                ok: true,
                answer: &answer,
            })?
        );
        return Ok(Code::Ok);
    }
    print!("{}", render(&query, &answer));
    Ok(Code::Ok)
}

/// The human form of an answer. Author-written text is escaped (no control
/// bytes reach the terminal).
fn render(query: &SearchQuery, answer: &SearchAnswer) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let what = if query.text.trim().is_empty() {
        String::new()
    } else {
        format!(" for \"{}\"", escape(query.text.trim()))
    };
    let corrected: Vec<String> = answer
        .words
        .iter()
        .filter(|w| !w.terms.is_empty() && !w.terms.contains(&w.word))
        .map(|w| {
            format!(
                "{} → {}",
                w.word,
                w.terms
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
        .collect();
    let _ = write!(
        out,
        "{} listing{}{what}",
        answer.total,
        if answer.total == 1 { "" } else { "s" }
    );
    if !corrected.is_empty() {
        let _ = write!(out, " (matched {})", escape(&corrected.join("; ")));
    }
    if answer.hits.len() < answer.total {
        let _ = write!(
            out,
            "; showing {}–{}",
            query.offset + usize::from(!answer.hits.is_empty()),
            query.offset + answer.hits.len()
        );
    }
    out.push('\n');
    for hit in &answer.hits {
        let success = hit.success_rate.map_or("no calls yet".to_owned(), |r| {
            format!("{:.0} % ok", r * 100.0)
        });
        let _ = writeln!(
            out,
            "  {} {}  {}  {} installs  {}  {}  {}  {}  (score {:.3})",
            escape(&hit.listing),
            escape(&hit.version),
            hit.review,
            hit.installs,
            success,
            hit.price,
            escape(&hit.license),
            hit.kind,
            hit.score
        );
        if !hit.summary.is_empty() {
            let _ = writeln!(out, "      {}", escape(&hit.summary));
        }
    }
    let facets: Vec<String> = Facet::ALL
        .iter()
        .filter_map(|&f| {
            let counts = answer.facets.get(f);
            (!counts.is_empty()).then(|| {
                let values: Vec<String> = counts
                    .iter()
                    .take(8)
                    .map(|c| format!("{} {}", escape(&c.value), c.count))
                    .collect();
                let more = if counts.len() > 8 { ", …" } else { "" };
                format!("  {:<10} {}{more}", f.name(), values.join(", "))
            })
        })
        .collect();
    if !facets.is_empty() {
        out.push_str("facets\n");
        for line in facets {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}
