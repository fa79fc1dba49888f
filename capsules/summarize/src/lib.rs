//! `summarize`: summarizes text with an LLM through the SDK.
//!
//! Input: `{"text": "...", "model": "default", "max_words": 60}`.
//! Output: `{"summary": "...", "source": "llm" | "extractive", "model": ..., "usage": {...}, "note": ...}`.
//!
//! When the LLM is unavailable or the budget is exhausted it does not fail:
//! it falls back to an extractive summary (the leading sentences) and says
//! why in `note`, so a DAG can continue and the operator sees the cause.

use serde::{Deserialize, Serialize};
use soma_sdk::{
    Capsule, Error, Info, json,
    llm::{self, LlmError},
};

#[derive(Deserialize)]
struct Input {
    text: String,
    #[serde(default = "default_model")]
    model: String,
    #[serde(default = "default_words")]
    max_words: u32,
}

fn default_model() -> String {
    "default".to_owned()
}

fn default_words() -> u32 {
    60
}

#[derive(Serialize)]
struct Output {
    summary: String,
    source: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: u32,
    completion_tokens: u32,
    estimated: bool,
}

/// The leading sentences of `text`, at most `max_words` words.
fn extractive(text: &str, max_words: u32) -> String {
    let mut out = Vec::new();
    for word in text.split_whitespace() {
        if out.len() as u32 >= max_words {
            break;
        }
        out.push(word);
        if out.len() as u32 >= max_words / 2 && word.ends_with(['.', '!', '?']) {
            break;
        }
    }
    out.join(" ")
}

struct Summarize;

impl Capsule for Summarize {
    fn info() -> Info {
        Info::worker("summarize", env!("CARGO_PKG_VERSION"))
            .description("Summarizes text with an LLM, or extractively when none is available")
            .input_schema(
                r#"{"type":"object","required":["text"],"properties":{"text":{"type":"string"},"model":{"type":"string"},"max_words":{"type":"integer","minimum":1}}}"#,
            )
            .wants_llm_model("default")
    }

    fn run(input: &str) -> Result<String, Error> {
        let input: Input = json::parse(input)?;
        if input.text.trim().is_empty() {
            return Err(Error::bad_input("text is empty"));
        }
        let request = llm::Chat::new(&input.model)
            .system(
                "Summarize the user's text faithfully and briefly. Reply with the summary only.",
            )
            .user(&input.text)
            .max_tokens(input.max_words.saturating_mul(2).max(16));
        let fallback = |note: String| Output {
            summary: extractive(&input.text, input.max_words),
            source: "extractive",
            model: None,
            usage: None,
            note: Some(note),
        };
        let out = match request.send() {
            Ok(c) => Output {
                summary: c.text.trim().to_owned(),
                source: "llm",
                model: Some(c.model),
                usage: Some(Usage {
                    prompt_tokens: c.usage.prompt_tokens,
                    completion_tokens: c.usage.completion_tokens,
                    estimated: c.estimated,
                }),
                note: None,
            },
            Err(LlmError::BudgetExceeded(why)) => fallback(format!("budget exceeded: {why}")),
            Err(LlmError::Unavailable(why)) => fallback(format!("llm unavailable: {why}")),
            Err(e) => return Err(e.into()),
        };
        json::output(&out)
    }
}

soma_sdk::capsule!(Summarize);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extractive_stops_at_a_sentence_or_the_word_cap() {
        assert_eq!(extractive("One two three. Four five.", 4), "One two three.");
        assert_eq!(extractive("a b c d e f", 3), "a b c");
    }
}
