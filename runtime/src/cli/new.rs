//! `soma new`: scaffold a capsule: a Rust crate, or with `--lang python`
//! an `app.py` over the `soma` Python SDK.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::exit::Code;

/// Scaffold a capsule that builds with `soma build`: a Rust crate, or with
/// `--lang python` a Python capsule (app.py, the `soma` SDK and the WIT).
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Capsule name (lowercase letters, digits and '-'); also the directory name.
    name: String,
    /// Parent directory (default: current directory).
    #[arg(long, default_value = ".")]
    path: PathBuf,
    /// Capsule kind.
    #[arg(long, value_enum, default_value = "worker")]
    kind: Kind,
    /// The capsule's language.
    #[arg(long, value_enum, default_value = "rust")]
    lang: Lang,
    /// Path to the soma-sdk crate (default: the SDK this soma was built
    /// from). Rust only: a Python capsule gets a copy of the Python SDK.
    #[arg(long)]
    sdk: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Lang {
    Rust,
    Python,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Kind {
    Worker,
    Planner,
    Gate,
}

/// Where the SDK of this source tree is.
fn default_sdk() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk")
}

pub(crate) fn run(args: Args) -> anyhow::Result<Code> {
    let name = args.name.as_str();
    anyhow::ensure!(
        !name.is_empty()
            && name.len() <= 64
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
        "capsule name {name:?} must start with a lowercase letter and contain only lowercase letters, digits and '-'"
    );
    let dir = args.path.join(name);
    anyhow::ensure!(!dir.exists(), "{} already exists", dir.display());
    let (ctor, what) = match args.kind {
        Kind::Worker => ("worker", "Does one unit of work"),
        Kind::Planner => ("planner", "Decomposes a goal into a sub-DAG"),
        Kind::Gate => ("gate", "Approves or returns work with feedback"),
    };
    if args.lang == Lang::Python {
        anyhow::ensure!(
            args.sdk.is_none(),
            "--sdk names the Rust SDK crate; a Python capsule gets its own copy of the Python SDK (soma/)"
        );
        return python(name, &dir, ctor, what);
    }
    let sdk = args.sdk.unwrap_or_else(default_sdk);
    let sdk = sdk
        .canonicalize()
        .with_context(|| format!("soma-sdk not found at {} (pass --sdk PATH)", sdk.display()))?;
    anyhow::ensure!(
        sdk.join("Cargo.toml").exists(),
        "{} is not the soma-sdk crate",
        sdk.display()
    );

    std::fs::create_dir_all(dir.join("src"))
        .with_context(|| format!("creating {}", dir.display()))?;
    let manifest = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
soma-sdk = {{ path = {sdk:?} }}
serde = {{ version = "1", features = ["derive"] }}

# A capsule is its own workspace, so it builds wherever it lives.
[workspace]

[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
strip = "debuginfo"
"#,
        sdk = sdk.display().to_string()
    );
    let type_name = camel_case(name);
    let lib = format!(
        r#"//! `{name}`: {what}.

use serde::{{Deserialize, Serialize}};
use soma_sdk::{{Capsule, Error, Info, json}};

#[derive(Deserialize)]
struct Input {{
    text: String,
}}

#[derive(Serialize)]
struct Output {{
    text: String,
}}

struct {type_name};

impl Capsule for {type_name} {{
    fn info() -> Info {{
        Info::{ctor}("{name}", env!("CARGO_PKG_VERSION")).description("{what}")
    }}

    fn run(input: &str) -> Result<String, Error> {{
        let input: Input = json::parse(input)?;
        json::output(&Output {{ text: input.text.to_uppercase() }})
    }}
}}

soma_sdk::capsule!({type_name});
"#
    );
    std::fs::write(dir.join("Cargo.toml"), manifest)?;
    std::fs::write(dir.join("src/lib.rs"), lib)?;
    std::fs::write(dir.join(".gitignore"), "/target\n")?;
    println!("created capsule {name} in {}", dir.display());
    println!(
        "next: soma build --path {0} && soma run {0}/target/wasm32-wasip2/release/{1}.wasm --input '{{\"text\":\"hi\"}}'",
        dir.display(),
        name.replace('-', "_")
    );
    Ok(Code::Ok)
}

/// `word-count` → `WordCount`: a capsule name as a Rust type or Python
/// class name.
fn camel_case(name: &str) -> String {
    name.split('-')
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// The scaffolded Python capsule's native tests (`python3 -m unittest test_app`),
/// over `soma_native`'s stand-in bindings.
fn python_test(name: &str) -> String {
    format!(
        r#""""Native tests of `{name}`: `python3 -m unittest test_app` in this directory.

soma_native imports app.py against the SDK with stand-ins for the host
capabilities (no build, no host); the component itself runs with soma run.
"""

import json
import unittest

import soma_native


class App(unittest.TestCase):
    def setUp(self):
        self.host = soma_native.install()
        self.addCleanup(self.host.uninstall)
        import app

        self.world = app.WitWorld()

    def test_describe(self):
        info = self.world.describe()
        self.assertEqual((info.name, info.version), ("{name}", "0.1.0"))
        self.assertEqual([c.name for c in info.capabilities], [])

    def test_run(self):
        out = json.loads(self.world.run(json.dumps({{"text": "hi"}})))
        self.assertEqual(out, {{"text": "HI"}})
        self.assertEqual(self.host.logged, [("INFO", "shouting")])

    def test_bad_input(self):
        with self.assertRaises(self.host.Err) as e:
            self.world.run("{{}}")
        self.assertEqual(e.exception.value.code, "bad-input")


if __name__ == "__main__":
    unittest.main()
"#
    )
}

/// Scaffold the Python capsule `name` in `dir`: `app.py`, `test_app.py`,
/// the `soma` SDK (`soma/`, `soma_native.py`), Soma's WIT (`wit/`), a
/// README and a `.gitignore`.
fn python(name: &str, dir: &Path, ctor: &str, what: &str) -> anyhow::Result<Code> {
    let class = camel_case(name);
    let app = format!(
        r#""""`{name}`: {what}."""

import soma


class {class}(soma.Capsule):
    def describe(self):
        return (
            soma.Info.{ctor}("{name}", "0.1.0")
            .description("{what}")
            .input_schema({{"type": "object", "properties": {{"text": {{"type": "string"}}}}, "required": ["text"]}})
        )

    def run(self, input):
        text = soma.json.field(soma.json.parse(input), "text", str)
        soma.log.info("shouting", chars=len(text))
        return {{"text": text.upper()}}


# componentize-py exports the class named WitWorld from app.py.
WitWorld = soma.export({class})
"#
    );
    let readme = format!(
        r#"# {name}

{what}. A Soma capsule written in Python, built with
[componentize-py](https://github.com/bytecodealliance/componentize-py).

- `app.py` — the capsule: a `soma.Capsule` subclass with `describe()` and
  `run()`, exported as `WitWorld`.
- `soma/` — the Soma Python SDK (JSON helpers; `log`, `kv`, `llm`, `events`,
  `secrets`). Raise `soma.CapsuleError(code, message, retryable)` to fail.
- `test_app.py` — native tests (`python3 -m unittest test_app`), over
  `soma_native.py`'s stand-ins for the host capabilities.
- `wit/` — Soma's contract (`soma:capsule@0.2.0`, world `capsule`).

Build and run:

```sh
python3 -m unittest test_app    # the native tests: no build, no host
soma build                      # installs componentize-py once (needs python3), then builds target/{file}.wasm
soma run target/{file}.wasm --input '{{"text":"hi"}}'
soma inspect target/{file}.wasm
```

Only the standard library and pure-Python modules beside `app.py` can be
imported; native extensions need WASI builds. Imports run at build time
(componentize-py snapshots the initialized interpreter), so keep work out of
module level. `describe()` also runs on the host's `python3` at build time:
`soma build` links only the capabilities it asks for (`.wants_kv()`,
`.wants_llm_model(...)`, ...), so ask there for every capability `run()` uses.
See `docs/authoring.md` (Python) for limits and testing.
"#,
        file = name.replace('-', "_")
    );
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("app.py"), app)?;
    std::fs::write(dir.join("README.md"), readme)?;
    std::fs::write(dir.join("test_app.py"), python_test(name))?;
    std::fs::write(dir.join(".gitignore"), "/target\n__pycache__/\n")?;
    soma_python::write_files(dir, soma_python::SDK_FILES)?;
    soma_python::write_files(&dir.join("wit"), soma_python::WIT_FILES)?;
    println!("created Python capsule {name} in {}", dir.display());
    println!(
        "next: soma build --path {0} && soma run {0}/target/{1}.wasm --input '{{\"text\":\"hi\"}}'",
        dir.display(),
        name.replace('-', "_")
    );
    Ok(Code::Ok)
}
