//! Multi-agent DAGs: a spec (YAML/JSON) of capsule calls with dependencies,
//! templates, retries, fan-outs, planners that splice in sub-DAGs and gates
//! that send work back — run by a durable scheduler over redb.

pub mod spec;
pub mod source;
pub mod template;
pub mod history;
pub mod kinds;
pub mod status;
pub mod report;
pub mod journal;
pub mod approval;
pub mod state;
pub mod scheduler;
