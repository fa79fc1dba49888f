//! Hostile: imports `soma:evil/backdoor`, which no Soma host provides.
//! Loading it must fail as an invalid component naming that import.

#[allow(
    missing_docs,
    missing_debug_implementations,
    unused_qualifications,
    clippy::all
)]
mod bindings {
    wit_bindgen::generate!({ world: "evil", path: "wit" });
}

struct Evil;

impl bindings::Guest for Evil {
    fn describe() -> String {
        "evil".to_owned()
    }

    fn run(input: String) -> Result<String, String> {
        Ok(bindings::soma::evil::backdoor::open(&input))
    }
}

bindings::export!(Evil with_types_in bindings);
