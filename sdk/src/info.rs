//! [`Info`]: the builder behind a capsule's `describe()`.

use crate::{CapabilityRequest, CapsuleInfo, CapsuleKind, LimitsRequest};

/// What a capsule says about itself. Build it with [`Info::worker`],
/// [`Info::planner`] or [`Info::gate`] and the chained setters.
#[derive(Debug, Clone)]
pub struct Info {
    name: String,
    version: String,
    description: String,
    kind: CapsuleKind,
    input_schema: String,
    output_schema: String,
    capabilities: Vec<CapabilityRequest>,
    limits: LimitsRequest,
}

impl Info {
    fn new(kind: CapsuleKind, name: &str, version: &str) -> Self {
        Self {
            name: name.to_owned(),
            version: version.to_owned(),
            description: String::new(),
            kind,
            input_schema: "{}".to_owned(),
            output_schema: "{}".to_owned(),
            capabilities: Vec::new(),
            limits: LimitsRequest {
                fuel: None,
                memory_mb: None,
                timeout_ms: None,
            },
        }
    }

    /// A worker capsule: one unit of work.
    pub fn worker(name: &str, version: &str) -> Self {
        Self::new(CapsuleKind::Worker, name, version)
    }

    /// A planner capsule: returns a sub-DAG as JSON.
    pub fn planner(name: &str, version: &str) -> Self {
        Self::new(CapsuleKind::Planner, name, version)
    }

    /// A gate capsule: returns `{approved, score, feedback}` as JSON.
    pub fn gate(name: &str, version: &str) -> Self {
        Self::new(CapsuleKind::Gate, name, version)
    }

    /// One-line human description.
    #[must_use]
    pub fn description(mut self, text: &str) -> Self {
        text.clone_into(&mut self.description);
        self
    }

    /// JSON Schema of the input, as a JSON document.
    #[must_use]
    pub fn input_schema(mut self, schema: &str) -> Self {
        schema.clone_into(&mut self.input_schema);
        self
    }

    /// JSON Schema of the output, as a JSON document.
    #[must_use]
    pub fn output_schema(mut self, schema: &str) -> Self {
        schema.clone_into(&mut self.output_schema);
        self
    }

    /// Ask for capability `name` with `args` — any capability, including
    /// one this SDK has no shortcut for yet (a host that does not know it
    /// keeps the request and grants nothing for it). Requests of the same
    /// name add up: `wants("llm", &["a"])` then `wants("llm", &["b"])`
    /// asks for both models.
    #[must_use]
    pub fn wants(mut self, name: &str, args: &[&str]) -> Self {
        let args = args.iter().map(|a| (*a).to_owned());
        match self.capabilities.iter_mut().find(|r| r.name == name) {
            Some(r) => r.args.extend(args),
            None => self.capabilities.push(CapabilityRequest {
                name: name.to_owned(),
                args: args.collect(),
            }),
        }
        self
    }

    /// Ask for the key-value store (`kv`).
    #[must_use]
    pub fn wants_kv(self) -> Self {
        self.wants("kv", &[])
    }

    /// Ask for an LLM model or operator alias (`llm`).
    #[must_use]
    pub fn wants_llm_model(self, model: &str) -> Self {
        self.wants("llm", &[model])
    }

    /// Ask for outbound HTTP to URLs matching `pattern` (`http`), e.g.
    /// `https://api.example.com` or `https://*.example.com:8443`.
    #[must_use]
    pub fn wants_http_host(self, pattern: &str) -> Self {
        self.wants("http", &[pattern])
    }

    /// Ask for outbound HTTP to URLs matching any of `patterns` (`http`;
    /// see [`crate::http`]).
    #[must_use]
    pub fn wants_http(self, patterns: &[&str]) -> Self {
        self.wants("http", patterns)
    }

    /// Ask for secret `name` (`secrets`); read it with
    /// [`crate::secrets::get`].
    #[must_use]
    pub fn wants_secret(self, name: &str) -> Self {
        self.wants("secrets", &[name])
    }

    /// Ask for a preopened directory at guest path `path` (`dir`).
    #[must_use]
    pub fn wants_dir(self, path: &str) -> Self {
        self.wants("dir", &[path])
    }

    /// The capabilities asked for so far, as `describe()` returns them.
    pub fn capabilities(&self) -> &[CapabilityRequest] {
        &self.capabilities
    }

    /// Ask for at most `fuel` units per call.
    #[must_use]
    pub fn fuel(mut self, fuel: u64) -> Self {
        self.limits.fuel = Some(fuel);
        self
    }

    /// Ask for at most `mb` MiB of memory.
    #[must_use]
    pub fn memory_mb(mut self, mb: u32) -> Self {
        self.limits.memory_mb = Some(mb);
        self
    }

    /// Ask for a wall-clock deadline of `ms` milliseconds.
    #[must_use]
    pub fn timeout_ms(mut self, ms: u32) -> Self {
        self.limits.timeout_ms = Some(ms);
        self
    }
}

impl From<Info> for CapsuleInfo {
    fn from(i: Info) -> Self {
        CapsuleInfo {
            name: i.name,
            version: i.version,
            description: i.description,
            kind: i.kind,
            input_schema: i.input_schema,
            output_schema: i.output_schema,
            capabilities: i.capabilities,
            limits: i.limits,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_of_one_name_add_up_and_any_name_can_be_asked_for() {
        let info = Info::worker("w", "1")
            .wants_kv()
            .wants_llm_model("small")
            .wants_llm_model("large")
            .wants_dir("/data")
            .wants("secrets", &["api-key"]);
        let requests: Vec<(&str, Vec<&str>)> = info
            .capabilities()
            .iter()
            .map(|r| (r.name.as_str(), r.args.iter().map(String::as_str).collect()))
            .collect();
        assert_eq!(
            requests,
            [
                ("kv", vec![]),
                ("llm", vec!["small", "large"]),
                ("dir", vec!["/data"]),
                ("secrets", vec!["api-key"]),
            ]
        );
        let described = CapsuleInfo::from(info);
        assert_eq!(described.capabilities.len(), 4);
        assert!(
            Info::gate("g", "1").capabilities().is_empty(),
            "nothing is asked for by default"
        );
    }
}
