//! Marketplace search: typo tolerance, facets and their counts, ranking,
//! hidden versions, persistence, query abuse, and `soma market search`.

use std::{
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

use soma_runtime::{
    capsule::CapsuleKind,
    market::search::{
        Facet, Filters, MAX_LIMIT, MAX_QUERY_BYTES, MAX_QUERY_WORDS, MAX_WORD_CHARS, PriceModel,
        ReviewState, SearchAnswer, SearchDoc, SearchError, SearchIndex, SearchQuery,
    },
};

/// A plain listing: text from `summary`, everything else neutral.
fn doc(listing: &str, version: &str, summary: &str) -> SearchDoc {
    SearchDoc {
        listing: listing.to_owned(),
        version: version.to_owned(),
        summary: summary.to_owned(),
        readme: String::new(),
        keywords: Vec::new(),
        categories: Vec::new(),
        kind: CapsuleKind::Worker,
        price: PriceModel::Free,
        license: "MIT".to_owned(),
        imports: Vec::new(),
        exports: vec!["describe".to_owned(), "run".to_owned()],
        capabilities: Vec::new(),
        review: ReviewState::Verified,
        installs: 0,
        success_rate: None,
        yanked: false,
        deprecated: false,
    }
}

fn ids(answer: &SearchAnswer) -> Vec<&str> {
    answer.hits.iter().map(|h| h.listing.as_str()).collect()
}

fn search(index: &SearchIndex, text: &str) -> SearchAnswer {
    index.search(&SearchQuery::text(text)).expect("search")
}

/// A handful of hand-written listings plus 2,000 generated ones.
fn realistic() -> SearchIndex {
    let mut docs = soma_tests::market_corpus::listings(2_000, 3);
    let mut summarize = doc(
        "acme/summarize",
        "1.0.0",
        "Summarize long documents into a few bullet points",
    );
    summarize.keywords = vec!["summarization".into(), "llm".into()];
    summarize.readme = "# summarize\n\nGive it text; it returns a summary.".into();
    docs.push(summarize);
    docs.push(doc(
        "polyglot/translator",
        "2.1.0",
        "Translate between fifty languages",
    ));
    docs.push(doc(
        "numbers/calculator",
        "0.3.0",
        "Evaluate arithmetic expressions",
    ));
    let mut index = SearchIndex::new();
    index.rebuild(docs).expect("build");
    index
}

#[test]
fn typo_queries_find_the_listing() {
    let index = realistic();
    // Exact first.
    assert_eq!(ids(&search(&index, "calculator"))[0], "numbers/calculator");
    // One edit (deletion), a swap of neighbours, a substitution, two edits.
    for typo in ["calculater", "calcualtor", "calculatpr", "calcuater"] {
        let a = search(&index, typo);
        assert_eq!(
            ids(&a).first(),
            Some(&"numbers/calculator"),
            "{typo}: {a:?}"
        );
        assert!(
            a.words[0].terms.contains(&"calculator".to_owned()),
            "{typo}"
        );
    }
    assert_eq!(
        ids(&search(&index, "transalte fifty"))[0],
        "polyglot/translator"
    );
    // Short words are exact: 3 characters tolerate no edit.
    assert!(search(&index, "llm").total > 0);
    assert_eq!(search(&index, "lmm").total, 0);
    // From 4 characters, one edit.
    assert_eq!(
        ids(&search(&index, "fiftx languages")),
        ["polyglot/translator"]
    );
    // Prefix of the last word (type-ahead), and typo + prefix together.
    assert!(ids(&search(&index, "arithm")).contains(&"numbers/calculator"));
    assert!(ids(&search(&index, "evalaute arith")).contains(&"numbers/calculator"));
    // Matches in the name, keywords and README count too.
    assert_eq!(ids(&search(&index, "summarization"))[0], "acme/summarize");
    assert!(ids(&search(&index, "bulet points")).contains(&"acme/summarize"));
}

#[test]
fn every_word_must_match_somewhere() {
    let index = realistic();
    let a = search(&index, "calculator languages");
    assert_eq!(a.total, 0, "{:?}", ids(&a));
    // Stop words are not required.
    let a = search(&index, "translate the languages");
    assert!(ids(&a).contains(&"polyglot/translator"), "{:?}", ids(&a));
    assert_eq!(a.words.len(), 2);
}

fn faceted() -> SearchIndex {
    let mut a = doc("alpha/pdf-llm", "1.0.0", "Extract tables from pdf files");
    a.categories = vec!["AI".into(), "data".into()];
    a.imports = vec![
        "soma:capsule/llm@0.2.0".into(),
        "wasi:http/outgoing-handler@0.2.6".into(),
    ];
    a.capabilities = vec!["llm:small".into(), "http:api.example.com".into()];
    a.price = PriceModel::PerCall;
    a.license = "Apache-2.0".into();
    let mut b = doc("beta/pdf-kv", "1.0.0", "Extract text from pdf files");
    b.categories = vec!["data".into()];
    b.imports = vec!["soma:capsule/kv@0.2.0".into()];
    b.capabilities = vec!["kv".into()];
    b.kind = CapsuleKind::Gate;
    b.review = ReviewState::Unreviewed;
    let mut c = doc("gamma/pdf-planner", "1.0.0", "Plan work over pdf files");
    c.categories = vec!["ai".into()];
    c.imports = vec!["soma:capsule/llm@0.1.0".into()];
    c.capabilities = vec!["llm:large".into()];
    c.kind = CapsuleKind::Planner;
    c.price = PriceModel::PerKiloTokens;
    c.exports = vec!["run".into(), "wasi:http/incoming-handler@0.2.6".into()];
    let d = doc("delta/csv", "1.0.0", "Convert csv to json");
    let mut index = SearchIndex::new();
    index.rebuild([a, b, c, d]).expect("build");
    index
}

fn filtered(index: &SearchIndex, text: &str, filters: Filters) -> SearchAnswer {
    index
        .search(&SearchQuery {
            text: text.to_owned(),
            filters,
            ..SearchQuery::default()
        })
        .expect("search")
}

fn sorted(v: Vec<&str>) -> Vec<String> {
    let mut v: Vec<String> = v.into_iter().map(str::to_owned).collect();
    v.sort_unstable();
    v
}

#[test]
fn facets_filter_and_count() {
    let index = faceted();
    // Counts over the matching listings, values spelled as first seen.
    let all = filtered(&index, "pdf", Filters::default());
    assert_eq!(all.total, 3);
    assert_eq!(all.facets.count(Facet::Category, "ai"), 2);
    assert_eq!(all.facets.count(Facet::Category, "data"), 2);
    assert_eq!(all.facets.category[0].value, "AI");
    assert_eq!(all.facets.count(Facet::Kind, "worker"), 1);
    assert_eq!(all.facets.count(Facet::Kind, "gate"), 1);
    assert_eq!(all.facets.count(Facet::Kind, "planner"), 1);
    assert_eq!(all.facets.count(Facet::Price, "free"), 1);
    assert_eq!(all.facets.count(Facet::License, "mit"), 2);
    assert_eq!(all.facets.count(Facet::Review, "unreviewed"), 1);
    assert_eq!(all.facets.count(Facet::Review, "verified"), 2);
    assert_eq!(
        all.facets.count(Facet::Imports, "soma:capsule/llm@0.2.0"),
        1
    );
    assert_eq!(all.facets.count(Facet::Capability, "kv"), 1);
    assert_eq!(all.facets.count(Facet::Exports, "run"), 3);
    assert_eq!(all.facets.count(Facet::Exports, "describe"), 2);
    // The csv listing does not match "pdf": counted nowhere.
    assert_eq!(all.facets.count(Facet::Exports, "describe"), 2);

    let by = |filters: Filters| sorted(ids(&filtered(&index, "", filters)));
    // Category, case-insensitive; OR within a facet.
    assert_eq!(
        by(Filters {
            category: vec!["ai".into()],
            ..Filters::default()
        }),
        ["alpha/pdf-llm", "gamma/pdf-planner"]
    );
    assert_eq!(
        by(Filters {
            kind: vec![CapsuleKind::Gate, CapsuleKind::Planner],
            ..Filters::default()
        }),
        ["beta/pdf-kv", "gamma/pdf-planner"]
    );
    // Interfaces: exact version, any version, the package.
    let imports = |i: &str| {
        by(Filters {
            imports: vec![i.to_owned()],
            ..Filters::default()
        })
    };
    assert_eq!(imports("soma:capsule/llm@0.2.0"), ["alpha/pdf-llm"]);
    assert_eq!(
        imports("soma:capsule/llm"),
        ["alpha/pdf-llm", "gamma/pdf-planner"]
    );
    assert_eq!(
        imports("soma:capsule"),
        ["alpha/pdf-llm", "beta/pdf-kv", "gamma/pdf-planner"]
    );
    assert_eq!(imports("wasi:http"), ["alpha/pdf-llm"]);
    assert!(imports("wasi:http/outgoing-handler@9.9.9").is_empty());
    assert_eq!(
        by(Filters {
            exports: vec!["wasi:http/incoming-handler".into()],
            ..Filters::default()
        }),
        ["gamma/pdf-planner"]
    );
    // Capability by name matches any argument.
    assert_eq!(
        by(Filters {
            capability: vec!["llm".into()],
            ..Filters::default()
        }),
        ["alpha/pdf-llm", "gamma/pdf-planner"]
    );
    assert_eq!(
        by(Filters {
            capability: vec!["LLM:small".into()],
            ..Filters::default()
        }),
        ["alpha/pdf-llm"]
    );
    // AND across facets, with text; counts follow the filtered set.
    let a = filtered(
        &index,
        "pdf",
        Filters {
            category: vec!["data".into()],
            license: vec!["apache-2.0".into()],
            ..Filters::default()
        },
    );
    assert_eq!(ids(&a), ["alpha/pdf-llm"]);
    assert_eq!(a.facets.count(Facet::Category, "data"), 1);
    assert_eq!(a.facets.count(Facet::Category, "ai"), 1);
    assert_eq!(a.facets.count(Facet::Kind, "gate"), 0);
    // Price and review.
    assert_eq!(
        by(Filters {
            price: vec![PriceModel::PerKiloTokens],
            ..Filters::default()
        }),
        ["gamma/pdf-planner"]
    );
    assert_eq!(
        by(Filters {
            review: vec![ReviewState::Unreviewed],
            ..Filters::default()
        }),
        ["beta/pdf-kv"]
    );
    // A value nobody has: nothing, and no counts.
    let none = filtered(
        &index,
        "",
        Filters {
            category: vec!["nope".into()],
            ..Filters::default()
        },
    );
    assert_eq!(none.total, 0);
    assert!(none.facets.kind.is_empty());
}

#[test]
fn facet_counts_match_a_brute_force_count_over_a_generated_corpus() {
    let docs = soma_tests::market_corpus::listings(3_000, 11);
    let mut index = SearchIndex::new();
    index.rebuild(docs.clone()).expect("build");
    let filters = Filters {
        category: vec!["finance".into()],
        capability: vec!["llm".into()],
        ..Filters::default()
    };
    let a = filtered(&index, "", filters);
    let matching: Vec<&SearchDoc> = docs
        .iter()
        .filter(|d| d.categories.iter().any(|c| c == "finance"))
        .filter(|d| d.capabilities.iter().any(|c| c.starts_with("llm:")))
        .collect();
    assert!(matching.len() > 20, "the corpus has enough of them");
    assert_eq!(a.total, matching.len());
    for kind in ["worker", "planner", "gate"] {
        let want = matching.iter().filter(|d| d.kind.name() == kind).count();
        assert_eq!(a.facets.count(Facet::Kind, kind), want, "{kind}");
    }
    for price in PriceModel::ALL {
        let want = matching.iter().filter(|d| d.price == price).count();
        assert_eq!(a.facets.count(Facet::Price, price.name()), want, "{price}");
    }
    let want = matching
        .iter()
        .filter(|d| {
            d.imports
                .iter()
                .any(|i| i == "wasi:http/outgoing-handler@0.2.6")
        })
        .count();
    assert_eq!(
        a.facets
            .count(Facet::Imports, "wasi:http/outgoing-handler@0.2.6"),
        want
    );
    // Default limit, best first: hits are a prefix of the total.
    assert_eq!(a.hits.len(), a.total.min(20));
    assert!(a.hits.windows(2).all(|w| w[0].score >= w[1].score));
}

#[test]
fn ranking_prefers_verified_and_more_installs_at_equal_relevance() {
    let same = "Render markdown to html";
    let mut popular = doc("a/render-popular", "1.0.0", same);
    popular.installs = 50_000;
    popular.success_rate = Some(0.99);
    let mut fresh = doc("b/render-fresh", "1.0.0", same);
    fresh.installs = 10;
    fresh.success_rate = Some(0.99);
    let mut unreviewed = doc("c/render-unreviewed", "1.0.0", same);
    unreviewed.installs = 50_000;
    unreviewed.success_rate = Some(0.99);
    unreviewed.review = ReviewState::Unreviewed;
    let mut broken = doc("d/render-broken", "1.0.0", same);
    broken.installs = 50_000;
    broken.success_rate = Some(0.99);
    broken.review = ReviewState::UnderMaintenance;
    let mut flaky = doc("e/render-flaky", "1.0.0", same);
    flaky.installs = 10;
    flaky.success_rate = Some(0.2);
    let mut index = SearchIndex::new();
    index
        .rebuild([broken, flaky, unreviewed, fresh, popular])
        .expect("build");
    let a = search(&index, "markdown html");
    assert_eq!(
        ids(&a),
        [
            // Verified and popular; verified but new (review outweighs
            // installs); popular but unreviewed; verified, new and failing;
            // under maintenance last.
            "a/render-popular",
            "b/render-fresh",
            "c/render-unreviewed",
            "e/render-flaky",
            "d/render-broken",
        ],
        "{a:#?}"
    );
    // Same text relevance for all: the blend decides.
    assert!(a.hits.windows(2).all(|w| w[0].relevance == w[1].relevance));
    // Facet-only queries rank by the same signals.
    let a = filtered(
        &index,
        "",
        Filters {
            license: vec!["MIT".into()],
            ..Filters::default()
        },
    );
    assert_eq!(a.hits[0].listing, "a/render-popular");
    assert_eq!(a.hits[4].listing, "d/render-broken");
}

#[test]
fn text_relevance_outweighs_popularity() {
    let mut strong = doc("a/invoice-parser", "1.0.0", "Parse invoice documents");
    strong.keywords = vec!["invoice".into()];
    strong.review = ReviewState::Unreviewed;
    let mut weak = doc("b/everything", "1.0.0", "Many things");
    weak.readme = "It can also read an invoice, among a hundred other formats and things \
                   and more words that make this readme long and the match weak."
        .into();
    weak.installs = 1_000_000;
    weak.success_rate = Some(1.0);
    let mut index = SearchIndex::new();
    index.rebuild([weak, strong]).expect("build");
    assert_eq!(
        ids(&search(&index, "invoice")),
        ["a/invoice-parser", "b/everything"]
    );
}

#[test]
fn yanked_and_deprecated_versions_are_hidden() {
    let mut index = SearchIndex::new();
    let mut v2 = doc("acme/yanky", "2.0.0", "Yanky capsule");
    v2.yanked = true;
    index
        .upsert(doc("acme/yanky", "1.5.0", "Yanky capsule"))
        .expect("upsert");
    index.upsert(v2).expect("upsert");
    // The newest is yanked: the one before it is shown.
    let a = search(&index, "yanky");
    assert_eq!(a.total, 1);
    assert_eq!(a.hits[0].version, "1.5.0");
    // Yank that one too: gone.
    let mut v15 = doc("acme/yanky", "1.5.0", "Yanky capsule");
    v15.yanked = true;
    index.upsert(v15).expect("upsert");
    assert_eq!(search(&index, "yanky").total, 0);
    assert!(index.shown_version("acme/yanky").is_none());
    assert_eq!(index.listings(), 1);

    // Deprecated newest version: the listing is hidden (older versions
    // do not come back).
    index
        .upsert(doc("acme/old", "1.0.0", "Old deprecated capsule"))
        .expect("upsert");
    assert_eq!(search(&index, "deprecated").total, 1);
    let mut v2 = doc("acme/old", "2.0.0", "Old deprecated capsule");
    v2.deprecated = true;
    index.upsert(v2).expect("upsert");
    let a = search(&index, "deprecated");
    assert_eq!(a.total, 0);
    // Facet-only queries and counts do not see them either.
    let a = filtered(
        &index,
        "",
        Filters {
            license: vec!["MIT".into()],
            ..Filters::default()
        },
    );
    assert_eq!(a.total, 0);
    assert!(a.facets.license.is_empty());
    // Un-yanking (the store's correction) brings a version back.
    index
        .upsert(doc("acme/yanky", "2.0.0", "Yanky capsule"))
        .expect("upsert");
    assert_eq!(search(&index, "yanky").hits[0].version, "2.0.0");
}

#[test]
fn two_versions_show_only_the_newest() {
    let mut index = SearchIndex::new();
    index
        .upsert(doc("acme/sum", "1.10.0", "Summarize, version ten"))
        .expect("upsert");
    index
        .upsert(doc("acme/sum", "1.2.0", "Summarize, version two"))
        .expect("upsert");
    index
        .upsert(doc("acme/sum", "2.0.0-beta.1", "Summarize, the beta"))
        .expect("upsert");
    let a = search(&index, "summarize");
    assert_eq!(a.total, 1);
    // Semver order (1.10 > 1.2), stable before pre-release.
    assert_eq!(a.hits[0].version, "1.10.0");
    assert_eq!(a.hits[0].summary, "Summarize, version ten");
    // The older version's words are not searchable.
    assert_eq!(search(&index, "two").total, 0);
    // A pre-release is shown only when no stable version is left.
    for v in ["1.10.0", "1.2.0"] {
        let mut d = doc("acme/sum", v, "yanked");
        d.yanked = true;
        index.upsert(d).expect("upsert");
    }
    assert_eq!(search(&index, "summarize").hits[0].version, "2.0.0-beta.1");
    // Replacing a version (same precedence) updates it in place.
    let mut beta = doc("acme/sum", "2.0.0-beta.1", "Summarize, the beta");
    beta.installs = 7;
    index.upsert(beta).expect("upsert");
    assert_eq!(search(&index, "summarize").hits[0].installs, 7);
    assert!(index.remove("acme/sum").expect("remove"));
    assert_eq!(search(&index, "summarize").total, 0);
    assert!(!index.remove("acme/sum").expect("remove"));
}

#[test]
fn bad_documents_are_refused_with_a_typed_error() {
    let mut index = SearchIndex::new();
    assert!(matches!(
        index.upsert(doc("no-slash", "1.0.0", "x")),
        Err(SearchError::InvalidListing { .. })
    ));
    assert!(matches!(
        index.upsert(doc("a/b", "one", "x")),
        Err(SearchError::InvalidVersion { .. })
    ));
    let mut nan = doc("a/b", "1.0.0", "not a number");
    nan.success_rate = Some(f64::NAN);
    index.upsert(nan).expect("NaN is treated as unknown");
    assert_eq!(search(&index, "number").hits[0].success_rate, None);
    assert_eq!(index.listings(), 1);
}

#[test]
fn an_index_directory_persists_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("market/search");
    let docs = soma_tests::market_corpus::listings(300, 5);
    let query = SearchQuery::text("extract pdf");
    let before = {
        let mut index = SearchIndex::open(&path).expect("open");
        // One writer at a time.
        assert!(matches!(
            SearchIndex::open(&path),
            Err(SearchError::Locked { .. })
        ));
        index.rebuild(docs.clone()).expect("rebuild");
        index
            .upsert(doc("acme/persisted", "1.0.0", "Persisted listing"))
            .expect("upsert");
        index
            .upsert(doc("acme/persisted", "1.1.0", "Persisted listing, newer"))
            .expect("upsert");
        assert!(index.remove(&docs[0].listing).expect("remove"));
        // A reader alongside the writer sees what was written.
        let reader = SearchIndex::open_read_only(&path).expect("read");
        assert_eq!(reader.listings(), index.listings());
        index.search(&query).expect("search")
    };
    let reader = SearchIndex::open_read_only(&path).expect("reopen");
    assert_eq!(reader.listings(), 300);
    // The same answer (floats go through JSON: compare what ranks).
    let after = reader.search(&query).expect("search");
    assert_eq!(after.total, before.total);
    assert_eq!(after.facets, before.facets);
    assert_eq!(after.words, before.words);
    let shown = |a: &SearchAnswer| {
        a.hits
            .iter()
            .map(|h| (h.listing.clone(), h.version.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(shown(&after), shown(&before));
    assert_eq!(
        reader
            .shown_version("acme/persisted")
            .map(|d| d.version.as_str()),
        Some("1.1.0")
    );
    assert!(reader.shown_version(&docs[0].listing).is_none());
    assert!(matches!(
        SearchIndex::open_read_only(&path)
            .expect("read")
            .upsert(doc("a/b", "1.0.0", "x")),
        Err(SearchError::ReadOnly)
    ));
    // The lock went with the writer; a rebuild to fewer listings deletes
    // the others' files.
    let mut writer = SearchIndex::open(&path).expect("reopen for writing");
    writer.rebuild(docs[..10].to_vec()).expect("rebuild");
    drop(writer);
    assert_eq!(
        SearchIndex::open_read_only(&path).expect("read").listings(),
        10
    );
    // No index there: a typed error, not an empty answer.
    assert!(matches!(
        SearchIndex::open_read_only(&dir.path().join("nothing")),
        Err(SearchError::NoIndex { .. })
    ));
}

#[test]
fn a_damaged_listing_file_is_a_typed_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut index = SearchIndex::open(dir.path()).expect("open");
        index.upsert(doc("a/b", "1.0.0", "x")).expect("upsert");
    }
    let listings = dir.path().join("listings");
    let file = std::fs::read_dir(&listings)
        .expect("listings")
        .next()
        .expect("one file")
        .expect("entry")
        .path();
    std::fs::write(&file, b"{\"versions\": [tru").expect("damage");
    assert!(matches!(
        SearchIndex::open_read_only(dir.path()),
        Err(SearchError::Corrupt { .. })
    ));
    std::fs::write(
        dir.path().join("format.json"),
        br#"{"format":"soma-market-search","version":99}"#,
    )
    .expect("format");
    assert!(matches!(
        SearchIndex::open_read_only(dir.path()),
        Err(SearchError::Format { .. })
    ));
}

#[test]
fn query_abuse_is_refused_or_bounded_never_a_panic() {
    let index = realistic();
    let q = |text: String| index.search(&SearchQuery::text(text));
    // Too long.
    assert!(matches!(
        q("a".repeat(MAX_QUERY_BYTES + 1)),
        Err(SearchError::QueryTooLong { .. })
    ));
    // Too many words.
    let many: Vec<String> = (0..=MAX_QUERY_WORDS).map(|i| format!("w{i}")).collect();
    assert!(matches!(
        q(many.join(" ")),
        Err(SearchError::TooManyWords { count, .. }) if count == MAX_QUERY_WORDS + 1
    ));
    // The same word many times is one word.
    q("pdf ".repeat(200)).expect("repeated word");
    // A word longer than any indexed word.
    assert!(matches!(
        q("x".repeat(MAX_WORD_CHARS + 1)),
        Err(SearchError::WordTooLong { .. })
    ));
    // Paging caps.
    let limit = index.search(&SearchQuery {
        limit: MAX_LIMIT + 1,
        ..SearchQuery::default()
    });
    assert!(matches!(limit, Err(SearchError::LimitTooLarge { .. })));
    let offset = index.search(&SearchQuery {
        offset: 1_000_000,
        ..SearchQuery::default()
    });
    assert!(matches!(offset, Err(SearchError::OffsetTooLarge { .. })));
    // Filter caps.
    let too_many = index.search(&SearchQuery {
        filters: Filters {
            category: vec!["x".into(); 17],
            ..Filters::default()
        },
        ..SearchQuery::default()
    });
    assert!(matches!(
        too_many,
        Err(SearchError::TooManyFilterValues {
            facet: Facet::Category,
            ..
        })
    ));
    let too_long = index.search(&SearchQuery {
        filters: Filters {
            imports: vec!["i".repeat(300)],
            ..Filters::default()
        },
        ..SearchQuery::default()
    });
    assert!(matches!(
        too_long,
        Err(SearchError::FilterValueTooLong { .. })
    ));
    // Every query-parser metacharacter (Lucene, tantivy, SQL LIKE, regex,
    // shell) is only a separator: a bounded answer.
    for text in [
        r#"calculator AND (evaluate OR "arith*") NOT ~2 ^3 title:x \ -y +z"#,
        "% _ * ? [a-z] {1,2} | & ; $ ` ' \" < > / \\ : ~ ^",
        "\0\u{1}\u{7f} \u{202e}calculator\u{200b}",
        "😀🚀 calculator 🧮",
        "",
        "   ",
        "\"unterminated",
        "((((((((((((((((((((",
    ] {
        let a = q(text.to_owned()).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert!(a.hits.len() <= 20, "{text:?}");
    }
    assert!(ids(&q("(calculator)".into()).expect("parens")).contains(&"numbers/calculator"));
    // The worst accepted query: 16 long typo-tolerant words, the last a
    // short prefix, over 2,000+ listings: still fast.
    let worst: Vec<String> = (0..MAX_QUERY_WORDS - 1)
        .map(|i| format!("transformation{}", (b'a' + i as u8) as char))
        .chain(["s".to_owned()])
        .collect();
    let start = Instant::now();
    let a = q(worst.join(" ")).expect("worst");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert!(a.words.iter().all(|w| w.terms.len() <= 8));
    // One- and two-letter prefixes expand to at most MAX_EXPANSIONS terms.
    let a = q("s".into()).expect("one letter");
    assert!(a.hits.len() <= 20);
}

fn soma(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_soma"))
        .args(args)
        .arg("--data")
        .arg(data)
        .env_remove("SOMA_CONFIG")
        .env_remove("SOMA_SERVER")
        .output()
        .expect("spawn soma")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn soma_market_search_reads_the_node_index() {
    let data = tempfile::tempdir().expect("tempdir");
    let index_dir =
        soma_runtime::market::search::default_dir(&soma_runtime::store::DataDir::new(data.path()));
    // No index yet: exit 1 and a message that says what to do.
    let out = soma(data.path(), &["market", "search", "pdf"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no search index"),
        "{}",
        text(&out.stderr)
    );
    let out = soma(data.path(), &["market", "search", "pdf", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json error");
    assert_eq!(doc["ok"], false);

    {
        let mut index = SearchIndex::open(&index_dir).expect("open");
        let mut a = doc_with("alpha/pdf-llm", "Extract tables from pdf files", "ai");
        a.capabilities = vec!["llm:small".into()];
        a.imports = vec!["soma:capsule/llm@0.2.0".into()];
        a.installs = 1200;
        index.upsert(a).expect("upsert");
        index
            .upsert(doc_with(
                "beta/pdf-kv",
                "Extract text from pdf files \u{1b}[31m",
                "data",
            ))
            .expect("upsert");
    }
    // The CLI reads while a writer holds the directory.
    let _writer = SearchIndex::open(&index_dir).expect("writer");
    let out = soma(data.path(), &["market", "search", "extrat", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["total"], 2);
    assert_eq!(doc["hits"][0]["listing"], "alpha/pdf-llm");
    assert_eq!(doc["facets"]["category"][0]["count"], 1);

    let out = soma(
        data.path(),
        &[
            "market",
            "search",
            "extract",
            "--category",
            "ai",
            "--capability",
            "llm",
            "--imports",
            "soma:capsule/llm",
            "--kind",
            "worker",
            "--price",
            "free",
            "--license",
            "mit",
            "--review",
            "verified",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("1 listing for \"extract\""), "{stdout}");
    assert!(stdout.contains("alpha/pdf-llm 1.0.0"), "{stdout}");
    assert!(stdout.contains("1200 installs"), "{stdout}");
    assert!(!stdout.contains("beta/pdf-kv"), "{stdout}");
    // Typo reported, author text escaped.
    let out = soma(data.path(), &["market", "search", "extrcat", "--index"]);
    assert_eq!(out.status.code(), Some(2), "--index needs a value");
    let out = soma(
        data.path(),
        &[
            "market",
            "search",
            "extrcat",
            "--index",
            index_dir.to_str().expect("utf-8"),
        ],
    );
    let stdout = text(&out.stdout);
    assert!(stdout.contains("extrcat → extract"), "{stdout}");
    assert!(!stdout.contains('\u{1b}'), "{stdout:?}");
    // Bad flags: clap's usage error; over a cap: exit 1 with the cap named.
    let out = soma(data.path(), &["market", "search", "--price", "cheap"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("per-call"),
        "{}",
        text(&out.stderr)
    );
    let out = soma(data.path(), &["market", "search", "--limit", "5000"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("limit 5000"),
        "{}",
        text(&out.stderr)
    );
}

fn doc_with(listing: &str, summary: &str, category: &str) -> SearchDoc {
    let mut d = doc(listing, "1.0.0", summary);
    d.categories = vec![category.to_owned()];
    d
}

/// Queries of every kind for comparing two indexes: words, typos, a prefix,
/// stop words, facets alone and with text, paging, counts only.
fn probe_queries() -> Vec<SearchQuery> {
    let mut queries: Vec<SearchQuery> = [
        "summarize",
        "translate invoice",
        "sumarize contrcat",
        "tok",
        "the pdf",
        "extract pdf to json",
        "zzzz",
        "",
    ]
    .into_iter()
    .map(SearchQuery::text)
    .collect();
    queries.push(SearchQuery {
        filters: Filters {
            category: vec!["finance".into()],
            ..Filters::default()
        },
        ..SearchQuery::default()
    });
    queries.push(SearchQuery {
        text: "extract pdf".into(),
        filters: Filters {
            price: vec![PriceModel::Free, PriceModel::PerCall],
            capability: vec!["llm".into()],
            imports: vec!["wasi:http".into()],
            ..Filters::default()
        },
        ..SearchQuery::default()
    });
    queries.push(SearchQuery {
        text: "summarize".into(),
        limit: 0,
        ..SearchQuery::default()
    });
    queries.push(SearchQuery {
        text: "convert".into(),
        limit: 7,
        offset: 13,
        ..SearchQuery::default()
    });
    queries.push(SearchQuery {
        filters: Filters {
            review: vec![ReviewState::UnderMaintenance],
            kind: vec![CapsuleKind::Planner, CapsuleKind::Gate],
            ..Filters::default()
        },
        limit: MAX_LIMIT,
        ..SearchQuery::default()
    });
    queries
}

#[test]
fn incremental_and_persisted_indexes_answer_exactly_like_a_fresh_rebuild() {
    let docs = soma_tests::market_corpus::listings(3_000, 14);
    let mut fresh = SearchIndex::new();
    fresh.rebuild(docs.clone()).expect("rebuild");

    // The same listings through upserts in another order, after a first
    // round of different documents for some of them was removed again:
    // other slots, a free list, terms no listing uses any more.
    let dir = tempfile::tempdir().expect("tempdir");
    let answers_of = |index: &SearchIndex| -> Vec<SearchAnswer> {
        probe_queries()
            .iter()
            .map(|q| index.search(q).expect("search"))
            .collect()
    };
    {
        let mut incremental = SearchIndex::open(dir.path()).expect("open");
        for d in docs.iter().rev().take(500) {
            let mut other = d.clone();
            other.summary = "quokka wombat platypus".into();
            other.readme = "an entirely different readme".into();
            incremental.upsert(other).expect("upsert other");
        }
        for d in docs.iter().rev().take(500) {
            assert!(incremental.remove(&d.listing).expect("remove"));
        }
        for d in docs.iter().rev() {
            incremental.upsert(d.clone()).expect("upsert");
        }
        let want = answers_of(&fresh);
        assert_eq!(answers_of(&incremental), want);
        // Asked again (the per-query memory is reused): the same answers.
        assert_eq!(answers_of(&incremental), want);
        assert!(want.iter().any(|a| a.total > 100), "the probes match");
    }
    let persisted = SearchIndex::open_read_only(dir.path()).expect("reopen");
    assert_eq!(answers_of(&persisted), answers_of(&fresh));
}
