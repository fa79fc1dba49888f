//! Token counting with tiktoken's `cl100k_base`, for reservations and for
//! providers that do not report usage.

use std::{panic::AssertUnwindSafe, sync::OnceLock};

use tiktoken_rs::CoreBPE;

use crate::bindings::soma::capsule::llm::Message;

/// Tokens OpenAI's chat format adds per message (role and separators).
const PER_MESSAGE: u64 = 3;
/// Tokens that prime the assistant's reply.
const PER_REPLY: u64 = 3;

/// A lazily built `cl100k_base` encoder. The BPE tables are embedded in the
/// binary (no network), but building them takes ~100 ms and ~20 MB, so it
/// happens once per [`super::Shared`], on the first call that needs it.
#[derive(Default)]
pub(crate) struct Tokenizer {
    bpe: OnceLock<Option<CoreBPE>>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("built", &self.bpe.get().is_some())
            .finish()
    }
}

impl Tokenizer {
    /// Build the encoder now (else the first call pays for it).
    pub(crate) fn warm(&self) {
        self.bpe();
    }

    fn bpe(&self) -> Option<&CoreBPE> {
        self.bpe
            .get_or_init(|| match tiktoken_rs::cl100k_base() {
                Ok(bpe) => Some(bpe),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot build cl100k_base; counting bytes as tokens");
                    None
                }
            })
            .as_ref()
    }

    /// Tokens in `text`. Never fails: if the encoder is missing or gives up
    /// on a pathological input (its regex has a backtracking limit), the
    /// byte length is used — an upper bound, since every token is ≥ 1 byte.
    pub(crate) fn count(&self, text: &str) -> u64 {
        let bytes = text.len() as u64;
        if text.is_empty() {
            return 0;
        }
        let Some(bpe) = self.bpe() else {
            return bytes;
        };
        // `encode_ordinary` unwraps the regex's backtrack-limit error; the
        // text is the capsule's, so contain that instead of trapping.
        std::panic::catch_unwind(AssertUnwindSafe(|| bpe.encode_ordinary(text).len() as u64))
            .unwrap_or(bytes)
    }

    /// Prompt tokens of a conversation in OpenAI's chat format.
    pub(crate) fn count_prompt(&self, messages: &[Message]) -> u64 {
        messages
            .iter()
            .map(|m| self.count(&m.content) + PER_MESSAGE)
            .sum::<u64>()
            + PER_REPLY
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_offline_with_the_embedded_tables() {
        let t = Tokenizer::default();
        assert_eq!(t.count(""), 0);
        // "hello world" is two cl100k tokens.
        assert_eq!(t.count("hello world"), 2);
        assert!(t.bpe().is_some(), "cl100k_base built from embedded data");
    }
}
