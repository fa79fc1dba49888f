//! Python capsules (componentize-py + the `soma` Python SDK), run through
//! the real runtime under the operator's default limits: `py-word-count`
//! gives the same answers as the Rust `word-count`, `py-summarize` as the
//! Rust `summarize` (with an LLM, over budget, and with the provider down).

use serde_json::{Value, json};
use soma_runtime::{
    CallOptions, Config, Failure, Outcome,
    budget::{Limit, Scope},
};
use soma_tests::{TestEngine, llm_fixture::LlmFixture, shared};

use crate::economics::engine;

fn call(path: &str, input: &str) -> Outcome {
    let t = shared();
    let capsule = t.load(path);
    let options = CallOptions::for_capsule(&t.engine, &capsule);
    t.engine.call(&capsule, input, &options)
}

/// Both capsules on `text`: the outputs, exactly as each returned them.
fn both(text: &str) -> (String, String) {
    let input = json!({ "text": text }).to_string();
    let rust = call(soma_capsules::WORD_COUNT_COMPONENT, &input)
        .result
        .unwrap_or_else(|f| panic!("word-count on {text:?}: {f:?}"));
    let python = call(soma_capsules::PY_WORD_COUNT_COMPONENT, &input)
        .result
        .unwrap_or_else(|f| panic!("py-word-count on {text:?}: {f:?}"));
    (rust, python)
}

#[test]
fn python_and_rust_word_count_give_the_same_answers() {
    let many_lines: String = (0..500)
        .map(|i| format!("line {i} of {}\n", i % 7))
        .collect();
    let long_words = "supercalifragilistic ".repeat(300);
    let inputs = [
        "",
        " \t ",
        "a",
        "a\n",
        "\n\nx",
        "a\r\nb\r\n",
        "Hello, world! 42 times-over",
        "a_b c-d x1 2y",
        "Don't stop: rock 'n' roll, don’t, 'quoted' dogs' o''clock ' '' '",
        "héllo wörld 🦀 Straße STRASSE İ ΟΔΟΣ οδος",
        "日本語 テキスト 日本語, نص عربي مُشَكَّل, नमस्ते दुनिया, ⓐⓑⓒ Ⓐ",
        "the cat and the dog and THE bird, a fish; a cow",
        // Ties at the cut: eight words once each, then two pairs.
        "h g f e d c b a zz yy zz yy",
        "¹²³ ½ Ⅻ ٣ x²",
        many_lines.as_str(),
        long_words.as_str(),
    ];
    for text in inputs {
        let (rust, python) = both(text);
        assert_eq!(rust, python, "on {text:?}");
        let parsed: Value = serde_json::from_str(&python).expect("JSON output");
        assert!(
            parsed["words"].is_u64() && parsed["top"].is_array(),
            "{python}"
        );
    }
}

#[test]
fn python_and_rust_split_words_alike_on_every_bmp_character() {
    // Every BMP scalar value (no surrogates), in chunks, once alone and once
    // glued to a letter: any char the two capsules classify differently
    // (alphanumeric or not) changes the word count of its chunk.
    let chars: Vec<char> = (0u32..0x1_0000).filter_map(char::from_u32).collect();
    for chunk in chars.chunks(4096) {
        let alone: String = chunk.iter().flat_map(|&c| [c, ' ']).collect();
        let glued: String = chunk.iter().flat_map(|&c| ['q', c, ' ']).collect();
        for text in [alone, glued] {
            let (rust, python) = both(&text);
            assert_eq!(
                rust,
                python,
                "chunk starting at U+{:04X}",
                u32::from(chunk[0])
            );
        }
    }
}

#[test]
fn python_word_count_reports_bad_input_like_rust() {
    for input in ["hello", "{}", r#"{"text": 1}"#, "", "[1]"] {
        for path in [
            soma_capsules::WORD_COUNT_COMPONENT,
            soma_capsules::PY_WORD_COUNT_COMPONENT,
        ] {
            match call(path, input).result {
                Err(Failure::CapsuleError {
                    code, retryable, ..
                }) => {
                    assert_eq!(code, "bad-input", "{path} on {input:?}");
                    assert!(!retryable);
                }
                other => panic!("{path} on {input:?}: expected bad-input, got {other:?}"),
            }
        }
    }
}

#[test]
fn python_capsule_runs_under_the_default_limits() {
    // The shared engine runs the operator defaults (`Config::default()`):
    // loading runs describe() under its fixed allowance; the call runs
    // under the default fuel, memory and deadline.
    let defaults = Config::default().limits;
    let t = shared();
    let capsule = t.load(soma_capsules::PY_WORD_COUNT_COMPONENT);
    let m = capsule.manifest();
    assert_eq!(m.name, "py-word-count");
    assert!(m.input_schema["required"] == json!(["text"]), "{m:?}");
    let options = CallOptions::for_capsule(&t.engine, &capsule);
    assert_eq!(options.limits, defaults, "py-word-count asks for no limits");
    let text = "the quick brown fox jumps over the lazy dog\n".repeat(200);
    let outcome = t
        .engine
        .call(&capsule, &json!({ "text": text }).to_string(), &options);
    let out: Value = serde_json::from_str(&outcome.result.expect("ok")).expect("JSON");
    assert_eq!(out["words"], 1800);
    assert_eq!(out["top"][0], json!({"word": "the", "count": 400}));
    let fuel = outcome.usage.fuel_consumed.expect("fuel metering");
    assert!(fuel > 0 && fuel < defaults.fuel);
    assert!(outcome.usage.peak_memory_bytes <= defaults.memory_mb * 1024 * 1024);
    eprintln!(
        "py-word-count, 1,800 words: fuel {fuel} of {}, peak memory {:.1} MiB of {} MiB, {} µs",
        defaults.fuel,
        outcome.usage.peak_memory_bytes as f64 / (1024.0 * 1024.0),
        defaults.memory_mb,
        outcome.usage.wall_time_us
    );
}

/// `path` on `input` with a fresh run whose token budget is `run_tokens`.
fn summarize(t: &TestEngine, path: &str, input: &str, run_tokens: Option<u64>) -> Value {
    let capsule = t.load(path);
    let options = CallOptions::for_capsule(&t.engine, &capsule);
    if let Some(tokens) = run_tokens {
        t.engine
            .metering()
            .set_limit(
                Scope::Run(options.run_id.to_string()),
                Some(Limit {
                    tokens: Some(tokens),
                    micros: None,
                }),
            )
            .expect("budget");
    }
    let out = t
        .engine
        .call(&capsule, input, &options)
        .result
        .unwrap_or_else(|f| panic!("{path}: {f:?}"));
    serde_json::from_str(&out).expect("JSON")
}

/// `value` with every `run:<id>` in its `note` written `run:RUN`.
fn without_run_id(value: &Value) -> Value {
    let mut value = value.clone();
    if let Some(note) = value["note"].as_str() {
        let masked: Vec<String> = note
            .split(' ')
            .map(|word| match word.strip_prefix("run:") {
                Some(_) => "run:RUN".to_owned(),
                None => word.to_owned(),
            })
            .collect();
        value["note"] = Value::String(masked.join(" "));
    }
    value
}

#[test]
fn py_summarize_answers_like_summarize_with_an_llm_and_without() {
    let input = json!({
        "text": "The quick brown fox jumps over the lazy dog. It was fun. Then it slept all day long.",
        "max_words": 8,
    })
    .to_string();
    let both = |t: &TestEngine, run_tokens| {
        let rust = summarize(t, soma_capsules::SUMMARIZE_COMPONENT, &input, run_tokens);
        let python = summarize(t, soma_capsules::PY_SUMMARIZE_COMPONENT, &input, run_tokens);
        // Each call is its own run: its id is the one thing a note may differ by.
        assert_eq!(without_run_id(&rust), without_run_id(&python));
        python
    };
    let fixture = LlmFixture::start();
    let t = engine(&fixture, "fixture-ok");
    let out = both(&t, None);
    assert_eq!(out["source"], "llm", "{out}");
    assert!(
        out["usage"]["prompt_tokens"]
            .as_u64()
            .is_some_and(|n| n > 0)
    );
    // A run budget of one token cannot cover the reservation: budget-exceeded.
    let out = both(&t, Some(1));
    assert_eq!(out["source"], "extractive", "{out}");
    assert!(
        out["note"]
            .as_str()
            .is_some_and(|n| n.starts_with("budget exceeded")),
        "{out}"
    );
    assert_eq!(out["summary"], "The quick brown fox jumps over the lazy");

    let down = LlmFixture::start();
    let t = engine(&down, "fixture-500");
    let out = both(&t, None);
    assert_eq!(out["source"], "extractive", "{out}");
    assert!(
        out["note"]
            .as_str()
            .is_some_and(|n| n.starts_with("llm unavailable")),
        "{out}"
    );
}
