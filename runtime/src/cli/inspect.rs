//! `soma inspect`: what a capsule is.

use std::path::PathBuf;

use soma_runtime::{CapsuleRef, Resolver};

use super::{Global, exit::Code, human_bytes};

/// Show describe(), imports, exports, size and digest of a capsule.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The capsule component (.wasm).
    capsule: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(global: &Global, args: Args) -> anyhow::Result<Code> {
    let engine = global.engine(None)?;
    let capsule = Resolver::new(&engine)
        .resolve(&CapsuleRef::File(args.capsule.clone()))?
        .capsule;
    let m = capsule.manifest();
    let imports = capsule.imports(engine.wasmtime());
    let exports = capsule.exports(engine.wasmtime());
    if args.json {
        let doc = serde_json::json!({
            "digest": capsule.digest(),
            "size": capsule.size(),
            "manifest": m,
            "imports": imports,
            "exports": exports,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(Code::Ok);
    }
    println!("{} {} ({})", m.name, m.version, m.kind);
    if !m.description.is_empty() {
        println!("  {}", m.description);
    }
    println!("digest   {}", capsule.digest());
    println!("contract {}", m.contract);
    println!(
        "size     {} ({} bytes)",
        human_bytes(capsule.size() as u64),
        capsule.size()
    );
    println!("imports  {}", imports.join(", "));
    println!("exports  {}", exports.join(", "));
    let wants = m.wants.words();
    println!(
        "wants    {}",
        if wants.is_empty() {
            "nothing".to_owned()
        } else {
            wants.join(", ")
        }
    );
    let show = |v: Option<String>| v.unwrap_or_else(|| "default".to_owned());
    println!(
        "limits   fuel {}, memory {}, timeout {} (requested; the operator's apply where tighter)",
        show(m.limits.fuel.map(|f| f.to_string())),
        show(m.limits.memory_mb.map(|x| format!("{x} MiB"))),
        show(m.limits.timeout_ms.map(|x| format!("{x} ms"))),
    );
    println!("input    {}", m.input_schema);
    println!("output   {}", m.output_schema);
    Ok(Code::Ok)
}
