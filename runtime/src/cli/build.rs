//! `soma build`: build a capsule crate for wasm32-wasip2, or a Python
//! capsule (an `app.py`, no `Cargo.toml`) with componentize-py.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::Context as _;

use super::exit::Code;

/// The target every capsule is built for.
const TARGET: &str = "wasm32-wasip2";

/// Build a capsule and print the component's path and digest: a Rust crate
/// with `cargo build --release --target wasm32-wasip2`; a Python capsule
/// (`app.py`, no `Cargo.toml`) with componentize-py, installed on first use
/// into `~/.cache/soma/tools` (or `$SOMA_TOOLS_DIR`; needs `python3`).
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The capsule directory (a crate, or a Python capsule's `app.py`).
    #[arg(long, default_value = ".")]
    path: PathBuf,
    /// Print JSON ({"component": path, "digest": ..., "size": ...}).
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: Args) -> anyhow::Result<Code> {
    let manifest = args.path.join("Cargo.toml");
    if !manifest.exists() && args.path.join("app.py").exists() {
        return python(&args);
    }
    let text = std::fs::read_to_string(&manifest).with_context(|| {
        format!(
            "{} is not a capsule: no Cargo.toml (Rust) nor app.py (Python)",
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
    report(&args, &name, &wasm, &bytes, "");
    Ok(Code::Ok)
}

/// Print what was built: the path on stdout (or the JSON document), a
/// summary with `note` on stderr.
fn report(args: &Args, name: &str, wasm: &Path, bytes: &[u8], note: &str) {
    let digest = soma_runtime::Digest::of(bytes);
    if args.json {
        println!(
            "{}",
            serde_json::json!({"component": wasm, "digest": digest, "size": bytes.len()})
        );
    } else {
        println!("{}", wasm.display());
        eprintln!("built {name} · {} bytes{note} · {digest}", bytes.len());
    }
}

/// Build the Python capsule in `args.path` into `target/NAME.wasm`, NAME
/// from the directory's name. Uses the capsule's own `soma/` SDK and
/// `wit/` when it has them (as `soma new --lang python` scaffolds), else
/// the ones this soma embeds (written under `target/`).
fn python(args: &Args) -> anyhow::Result<Code> {
    let dir = args
        .path
        .canonicalize()
        .with_context(|| format!("reading {}", args.path.display()))?;
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .context("the capsule directory has no UTF-8 name")?
        .replace('-', "_");
    let target = dir.join("target");
    let mut python_path = Vec::new();
    if !dir.join("soma/__init__.py").exists() {
        let sdk = target.join("soma-sdk");
        soma_python::write_files(&sdk, soma_python::SDK_FILES)?;
        python_path.push(sdk);
    }
    let wit = if dir.join("wit/capsule.wit").exists() {
        dir.join("wit")
    } else {
        let wit = target.join("wit");
        soma_python::write_files(&wit, soma_python::WIT_FILES)?;
        wit
    };
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.enable_steady_tick(Duration::from_millis(100));
    spinner.set_message(format!(
        "finding componentize-py in {} (installing it the first time)",
        soma_python::tools_dir().display()
    ));
    let toolchain = soma_python::Toolchain::ensure();
    spinner.set_message(format!("building {name} with componentize-py"));
    let built = toolchain.and_then(|t| {
        t.build(
            &dir,
            &python_path,
            &wit,
            &target.join(format!("{name}.wasm")),
        )
    });
    spinner.finish_and_clear();
    let built = built?;
    let bytes = std::fs::read(&built.component)
        .with_context(|| format!("reading {}", built.component.display()))?;
    let links = if built.capabilities.is_empty() {
        "no capability".to_owned()
    } else {
        built.capabilities.join(", ")
    };
    let note = if built.rebuilt {
        format!(
            " ({} before strip, {:.1} s) · links {links}",
            built.raw_bytes,
            built.elapsed.as_secs_f64()
        )
    } else {
        format!(" (sources unchanged: kept) · links {links}")
    };
    report(args, &name, &built.component, &bytes, &note);
    Ok(Code::Ok)
}
