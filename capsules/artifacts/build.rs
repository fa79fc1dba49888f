//! Builds every capsule crate under `capsules/` for `wasm32-wasip2` and
//! generates `<NAME>_COMPONENT` path constants plus one `foreach_*!` macro
//! per group (the wasmtime `test-programs` pattern).
//!
//! A capsule directory with an `app.py` and no `Cargo.toml` is a Python
//! capsule: built with componentize-py through `soma-python` (installed on
//! first use into its tool directory), stripped, and skipped when its
//! sources, the Python SDK and the WIT are unchanged (a build takes ~20 s).
//!
//! A capsule this script cannot classify fails the build, so every capsule
//! is provably used by a test or the demo.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

/// Well-behaved capsules: examples, demo parts, bench kernels.
const EXAMPLES: &[&str] = &[
    "echo",
    "py-word-count",
    "py-summarize",
    "py-echo",
    "calculator",
    "word-count",
    "kernels",
    "notebook",
    "summarize",
    "kamachiq-planner",
    "kamachiq-coder",
    "kamachiq-reviewer",
    "py-kamachiq-coder",
    "flaky",
    "http-probe",
    "fetch",
];
/// Valid components that are not Soma capsules (another world).
const FOREIGN: &[&str] = &["wrong-world"];
/// Capsules built against a frozen contract version (`wit/compat/<v>/`),
/// proving the host still loads them (`tests/tests/integration/compat.rs`).
const COMPAT: &[&str] = &["compat-v0-1"];
/// Capsules that each break one marketplace review rule
/// (`runtime/tests/market/review.rs` names the reason code of each).
const REVIEW_FIXTURES: &[&str] = &[
    "review-llm-unused",
    "review-kv-undeclared",
    "review-bad-output",
    "review-secret",
];
/// Capsules that probe one capability's promises (`secret-probe`: the
/// redaction test in `runtime/tests/attack/secrets.rs`).
const PROBES: &[&str] = &["secret-probe"];
/// Capsules that attack the host; each must end in its own failure class.
const HOSTILE_PREFIX: &str = "hostile-";

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let capsules_dir = manifest_dir.parent().expect("capsules/").to_path_buf();
    let workspace = capsules_dir.parent().expect("workspace root").to_path_buf();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));

    for dir in ["sdk", "wit"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    println!("cargo:rerun-if-changed={}", capsules_dir.display());

    let mut names = Vec::new();
    let mut python = Vec::new();
    for entry in fs::read_dir(&capsules_dir).expect("read capsules/") {
        let path = entry.expect("capsules/ entry").path();
        if path == manifest_dir {
            continue;
        }
        if !path.join("Cargo.toml").exists() {
            if path.join("app.py").exists() {
                println!("cargo:rerun-if-changed={}", path.display());
                python.push(path);
            }
            continue;
        }
        println!("cargo:rerun-if-changed={}", path.display());
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("capsule dir name is UTF-8")
            .to_owned();
        names.push(name);
    }
    names.sort();

    build(&workspace, &out_dir, &names);
    let wasm_dir = out_dir.join("target").join(TARGET).join("release");
    let mut components: Vec<(String, PathBuf)> = names
        .iter()
        .map(|name| {
            let file = name.replace('-', "_");
            (name.clone(), wasm_dir.join(format!("{file}.wasm")))
        })
        .collect();
    components.extend(build_python(&workspace, &out_dir, &python));
    components.sort();

    let mut consts = String::new();
    let mut hostile = Vec::new();
    let mut examples = Vec::new();
    for (name, path) in &components {
        let file = name.replace('-', "_");
        assert!(
            path.exists(),
            "capsule {name} did not produce {}",
            path.display()
        );
        let konst = format!("{}_COMPONENT", file.to_uppercase());
        consts.push_str(&format!(
            "/// Path of the `{name}` capsule component (built for {TARGET})."
        ));
        consts.push('\n');
        consts.push_str(&format!(
            "pub const {konst}: &str = {:?};",
            path.display().to_string()
        ));
        consts.push('\n');
        if name.starts_with(HOSTILE_PREFIX) {
            hostile.push((file, konst));
        } else if EXAMPLES.contains(&name.as_str()) {
            examples.push((file, konst));
        } else if !FOREIGN.contains(&name.as_str())
            && !COMPAT.contains(&name.as_str())
            && !REVIEW_FIXTURES.contains(&name.as_str())
            && !PROBES.contains(&name.as_str())
        {
            panic!(
                "capsules/{name} is neither an example, a foreign component, a compat fixture, \
                 a review fixture, a probe nor `{HOSTILE_PREFIX}*`: classify it in capsules/artifacts/build.rs \
                 so a test uses it"
            );
        }
    }
    write_foreach(&mut consts, "foreach_hostile", &hostile);
    write_foreach(&mut consts, "foreach_example", &examples);
    fs::write(out_dir.join("capsules.rs"), consts).expect("write capsules.rs");
}

fn write_foreach(out: &mut String, macro_name: &str, items: &[(String, String)]) {
    out.push_str("/// Calls `$mac!(name, CONSTANT)` for each capsule of this group.");
    out.push('\n');
    out.push_str(&format!(
        "#[macro_export]\nmacro_rules! {macro_name} {{\n    ($mac:ident) => {{"
    ));
    out.push('\n');
    for (name, konst) in items {
        out.push_str(&format!("        $mac!({name}, $crate::{konst});"));
        out.push('\n');
    }
    out.push_str("    };\n}");
    out.push('\n');
}

/// Build the Python capsules in `dirs` into `OUT_DIR/python/`; returns each
/// capsule's name and component.
fn build_python(workspace: &Path, out_dir: &Path, dirs: &[PathBuf]) -> Vec<(String, PathBuf)> {
    if dirs.is_empty() {
        return Vec::new();
    }
    for dir in ["sdk/python/soma", "sdk/python/src"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    println!("cargo:rerun-if-env-changed=SOMA_TOOLS_DIR");
    println!("cargo:rerun-if-env-changed=SOMA_PYTHON");
    let toolchain = soma_python::Toolchain::ensure()
        .unwrap_or_else(|e| panic!("installing the Python capsule toolchain: {e}"));
    let sdk = workspace.join("sdk/python");
    let wit = workspace.join("wit");
    dirs.iter()
        .map(|dir| {
            let name = dir
                .file_name()
                .and_then(|n| n.to_str())
                .expect("capsule dir name is UTF-8")
                .to_owned();
            let out = out_dir
                .join("python")
                .join(format!("{}.wasm", name.replace('-', "_")));
            let built = toolchain
                .build(dir, std::slice::from_ref(&sdk), &wit, &out)
                .unwrap_or_else(|e| panic!("building the Python capsule {name}: {e}"));
            if built.rebuilt {
                println!(
                    "cargo:warning=built Python capsule {name} in {:.1} s: {} bytes ({} before strip)",
                    built.elapsed.as_secs_f64(),
                    built.bytes,
                    built.raw_bytes
                );
            }
            (name, built.component)
        })
        .collect()
}

fn build(workspace: &Path, out_dir: &Path, names: &[String]) {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .arg("build")
        .arg("--release")
        .arg("--target")
        .arg(TARGET)
        .arg("--target-dir")
        .arg(out_dir.join("target"));
    for name in names {
        cmd.arg("-p").arg(name);
    }
    // The outer build's flags and target are for the host, not the guests.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
    // Guests keep their name section (for trap backtraces) but no DWARF.
    cmd.env("CARGO_PROFILE_RELEASE_DEBUG", "false");
    // This build's host side is the bindings generator (wit-bindgen's
    // macro over wasmparser, wit-parser, wit-component, syn), run once per
    // capsule over a few WIT files: unoptimised it expands as fast, and
    // compiles in a third of the CPU (277 → 98 s for the whole build,
    // docs/ci.md). The guests' code is the same; only symbol hashes in
    // their name sections differ.
    cmd.env("CARGO_PROFILE_RELEASE_BUILD_OVERRIDE_OPT_LEVEL", "0");
    let status = cmd.status().expect("spawn cargo to build capsules");
    assert!(
        status.success(),
        "building the capsules for {TARGET} failed (compiler output above); if the target is missing: \
         run `rustup target add {TARGET}` (`cargo xtask test` does it for you)"
    );
}
