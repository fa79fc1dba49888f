//! `soma build`: build a capsule crate for wasm32-wasip2.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::Context as _;

use super::exit::Code;

/// The target every capsule is built for.
const TARGET: &str = "wasm32-wasip2";

/// Build a capsule crate (cargo build --release --target wasm32-wasip2) and
/// print the component's path and digest.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The capsule crate directory.
    #[arg(long, default_value = ".")]
    path: PathBuf,
    /// Print JSON ({"component": path, "digest": ..., "size": ...}).
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: Args) -> anyhow::Result<Code> {
    let manifest = args.path.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).with_context(|| {
        format!(
            "{} is not a capsule crate (no Cargo.toml)",
            args.path.display()
        )
    })?;
    let package: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", manifest.display()))?;
    let name = package
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .context("Cargo.toml has no package.name")?
        .replace('-', "_");

    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_message(format!("building {name} for {TARGET}"));
    spinner.enable_steady_tick(Duration::from_millis(100));
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--target", TARGET, "--manifest-path"])
        .arg(&manifest)
        .arg("--message-format=short")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("running cargo")?;
    spinner.finish_and_clear();
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("target may not be installed") {
            anyhow::bail!("the {TARGET} target is not installed: run `rustup target add {TARGET}`");
        }
        anyhow::bail!("cargo build failed:\n{stderr}");
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| args.path.join("target"));
    let wasm = target_dir
        .join(TARGET)
        .join("release")
        .join(format!("{name}.wasm"));
    let bytes = std::fs::read(&wasm)
        .with_context(|| format!("cargo succeeded but {} is missing", wasm.display()))?;
    let digest = soma_runtime::Digest::of(&bytes);
    if args.json {
        println!(
            "{}",
            serde_json::json!({"component": wasm, "digest": digest, "size": bytes.len()})
        );
    } else {
        println!("{}", wasm.display());
        eprintln!("built {name} · {} bytes · {digest}", bytes.len());
    }
    Ok(Code::Ok)
}
