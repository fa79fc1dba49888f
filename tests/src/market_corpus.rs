//! A deterministic generator of realistic marketplace listings for the
//! search bench and tests: authors, hyphenated names, summaries, Markdown
//! READMEs of a few hundred words, keywords, categories, kinds, prices,
//! licenses, WIT imports/exports, capabilities, review states, installs
//! (heavy-tailed) and success rates. The same `(count, seed)` always gives
//! the same listings.

use soma_runtime::{
    capsule::CapsuleKind,
    market::search::{PriceModel, ReviewState, SearchDoc},
};

const AUTHORS: [&str; 40] = [
    "acme", "nimbus", "orbit", "quill", "lumen", "vertex", "cobalt", "ember", "harbor", "juniper",
    "kestrel", "lattice", "meridian", "nova", "onyx", "prism", "quartz", "raven", "sable", "tidal",
    "umbra", "vellum", "willow", "xenon", "yarrow", "zephyr", "atlas", "beacon", "cinder", "delta",
    "echo", "fjord", "granite", "helix", "iris", "jade", "koi", "lynx", "maple", "north",
];
const AUTHOR_SUFFIX: [&str; 10] = [
    "", "-labs", "-io", "-dev", "-ai", "-works", "-tools", "-hq", "-org", "-studio",
];
const VERBS: [&str; 32] = [
    "summarize",
    "translate",
    "classify",
    "extract",
    "convert",
    "validate",
    "transform",
    "parse",
    "tokenize",
    "compress",
    "encrypt",
    "render",
    "score",
    "rank",
    "detect",
    "redact",
    "normalize",
    "deduplicate",
    "enrich",
    "geocode",
    "transcribe",
    "moderate",
    "plan",
    "review",
    "approve",
    "schedule",
    "route",
    "aggregate",
    "index",
    "search",
    "format",
    "lint",
];
const OBJECTS: [&str; 40] = [
    "pdf",
    "text",
    "csv",
    "json",
    "markdown",
    "html",
    "email",
    "invoice",
    "receipt",
    "contract",
    "image",
    "audio",
    "video",
    "log",
    "metric",
    "address",
    "sentence",
    "document",
    "code",
    "commit",
    "ticket",
    "review",
    "tweet",
    "article",
    "resume",
    "table",
    "spreadsheet",
    "query",
    "sql",
    "yaml",
    "xml",
    "url",
    "date",
    "currency",
    "language",
    "sentiment",
    "entity",
    "keyword",
    "embedding",
    "graph",
];
const ADJECTIVES: [&str; 16] = [
    "fast",
    "small",
    "accurate",
    "streaming",
    "multilingual",
    "structured",
    "secure",
    "robust",
    "lightweight",
    "batch",
    "incremental",
    "deterministic",
    "cheap",
    "private",
    "offline",
    "typed",
];
const CATEGORIES: [&str; 20] = [
    "ai",
    "text",
    "data",
    "finance",
    "security",
    "devtools",
    "media",
    "search",
    "analytics",
    "compliance",
    "productivity",
    "communication",
    "education",
    "health",
    "legal",
    "geo",
    "ops",
    "marketing",
    "science",
    "utilities",
];
const LICENSES: [&str; 8] = [
    "MIT",
    "Apache-2.0",
    "MIT",
    "Apache-2.0",
    "BSD-3-Clause",
    "MPL-2.0",
    "ISC",
    "GPL-3.0-only",
];
const FILLER: [&str; 48] = [
    "the",
    "capsule",
    "input",
    "output",
    "returns",
    "with",
    "for",
    "each",
    "every",
    "call",
    "schema",
    "field",
    "value",
    "error",
    "when",
    "this",
    "uses",
    "model",
    "tokens",
    "limit",
    "budget",
    "result",
    "example",
    "request",
    "response",
    "host",
    "runtime",
    "fuel",
    "memory",
    "quickly",
    "reliably",
    "large",
    "files",
    "records",
    "batch",
    "stream",
    "configurable",
    "options",
    "default",
    "version",
    "support",
    "handles",
    "unicode",
    "languages",
    "format",
    "and",
    "a",
    "of",
];
const HOSTS: [&str; 8] = [
    "api.example.com",
    "data.example.org",
    "maps.example.net",
    "news.example.com",
    "pay.example.com",
    "mail.example.org",
    "files.example.net",
    "search.example.com",
];

/// A small deterministic PRNG (splitmix64).
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `count` listings (one published version each), deterministic in `seed`.
/// Listing ids are unique.
pub fn listings(count: usize, seed: u64) -> Vec<SearchDoc> {
    let mut rng = Rng(seed);
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let author = format!("{}{}", rng.pick(&AUTHORS), rng.pick(&AUTHOR_SUFFIX));
        let verb = rng.pick(&VERBS);
        let object = rng.pick(&OBJECTS);
        let mut name = match rng.below(4) {
            0 => format!("{verb}-{object}"),
            1 => format!("{object}-{verb}r"),
            2 => format!("{}-{object}-{verb}", rng.pick(&ADJECTIVES)),
            _ => format!("{object}-to-{}", rng.pick(&OBJECTS)),
        };
        if !seen.insert(format!("{author}/{name}")) {
            name = format!("{name}-{}", out.len());
            seen.insert(format!("{author}/{name}"));
        }
        out.push(listing(&mut rng, &author, &name, verb, object));
    }
    out
}

fn listing(rng: &mut Rng, author: &str, name: &str, verb: &str, object: &str) -> SearchDoc {
    let uses_llm = rng.chance(45);
    let uses_http = rng.chance(25);
    let uses_kv = rng.chance(30);
    let adjective = rng.pick(&ADJECTIVES);
    let other = rng.pick(&OBJECTS);
    let summary = format!(
        "{} {object} {} {adjective} {other} output{}.",
        capitalize(verb),
        rng.pick(&["into", "as", "to", "with"]),
        if uses_llm { " using an LLM" } else { "" }
    );
    let mut readme = format!("# {name}\n\n{summary}\n\n## Usage\n\n");
    let paragraphs = 3 + rng.below(5);
    for _ in 0..paragraphs {
        let sentences = 3 + rng.below(4);
        for _ in 0..sentences {
            let words = 8 + rng.below(10);
            let mut sentence = Vec::with_capacity(words);
            for _ in 0..words {
                sentence.push(match rng.below(10) {
                    0 => rng.pick(&VERBS),
                    1 | 2 => rng.pick(&OBJECTS),
                    3 => rng.pick(&ADJECTIVES),
                    _ => rng.pick(&FILLER),
                });
            }
            readme.push_str(&capitalize(&sentence.join(" ")));
            readme.push_str(". ");
        }
        readme.push_str("\n\n");
    }
    readme.push_str("```json\n{\"input\": \"...\"}\n```\n");
    let mut keywords = vec![verb.to_owned(), object.to_owned()];
    for _ in 0..rng.below(4) {
        keywords.push(rng.pick(&OBJECTS).to_owned());
    }
    if uses_llm {
        keywords.push("llm".to_owned());
    }
    keywords.dedup();
    let mut categories = vec![rng.pick(&CATEGORIES).to_owned()];
    if rng.chance(40) {
        categories.push(rng.pick(&CATEGORIES).to_owned());
    }
    if uses_llm && rng.chance(60) {
        categories.push("ai".to_owned());
    }
    categories.sort();
    categories.dedup();
    let kind = match rng.below(10) {
        0 => CapsuleKind::Planner,
        1 => CapsuleKind::Gate,
        _ => CapsuleKind::Worker,
    };
    let price = match rng.below(20) {
        0..=9 => PriceModel::Free,
        10..=14 => PriceModel::PerCall,
        15..=17 => PriceModel::PerKiloTokens,
        _ => PriceModel::PerEvent,
    };
    let mut imports = vec![
        "soma:capsule/log@0.2.0".to_owned(),
        "soma:capsule/types@0.2.0".to_owned(),
        "wasi:cli/environment@0.2.6".to_owned(),
        "wasi:io/streams@0.2.6".to_owned(),
    ];
    let mut capabilities = Vec::new();
    if uses_llm {
        imports.push("soma:capsule/llm@0.2.0".to_owned());
        capabilities.push(format!("llm:{}", rng.pick(&["small", "large", "fast"])));
    }
    if uses_kv {
        imports.push("soma:capsule/kv@0.2.0".to_owned());
        capabilities.push("kv".to_owned());
    }
    if uses_http {
        imports.push("wasi:http/outgoing-handler@0.2.6".to_owned());
        imports.push("wasi:http/types@0.2.6".to_owned());
        capabilities.push(format!("http:{}", rng.pick(&HOSTS)));
    }
    if rng.chance(20) {
        imports.push("soma:capsule/events@0.2.0".to_owned());
    }
    let review = match rng.below(20) {
        0..=13 => ReviewState::Verified,
        14..=15 => ReviewState::UnderMaintenance,
        _ => ReviewState::Unreviewed,
    };
    // Heavy-tailed installs: most listings have few, a few have many.
    let installs = (10f64.powf(rng.unit() * rng.unit() * 6.0)) as u64;
    let success_rate = rng.chance(90).then(|| 0.7 + 0.3 * rng.unit());
    SearchDoc {
        listing: format!("{author}/{name}"),
        version: format!("{}.{}.{}", rng.below(3), rng.below(10), rng.below(20)),
        summary,
        readme,
        keywords,
        categories,
        kind,
        price,
        license: rng.pick(&LICENSES).to_owned(),
        imports,
        exports: vec!["describe".to_owned(), "run".to_owned()],
        capabilities,
        review,
        installs,
        success_rate,
        yanked: false,
        deprecated: false,
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_are_deterministic_unique_and_valid() {
        let a = listings(500, 7);
        assert_eq!(a, listings(500, 7));
        assert_ne!(a, listings(500, 8));
        let ids: std::collections::HashSet<_> = a.iter().map(|d| d.listing.as_str()).collect();
        assert_eq!(ids.len(), a.len());
        let mut index = soma_runtime::market::search::SearchIndex::new();
        index.rebuild(a).expect("every generated listing is valid");
        assert_eq!(index.shown(), 500);
    }
}
