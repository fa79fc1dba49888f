//! `soma secrets`: a tenant's secrets through a running daemon's API
//! (`--server URL --token T`, an admin token of the tenant or an operator
//! token). Write-only like the API: `set` sends a value, `ls` lists names,
//! grants and update times, `rm` deletes; nothing prints a value.

use std::io::Read as _;
use std::path::PathBuf;

use anyhow::Context as _;
use soma_runtime::daemon::secrets::{SecretRequest, SecretRow};

use super::{Global, exit::Code};

/// Largest value read from stdin or a file (the store refuses larger ones
/// with its own message; this only bounds what is read).
const MAX_READ: u64 = 1024 * 1024;

/// Tenant secrets, through the daemon (`--server URL --token T`).
#[derive(Debug, clap::Subcommand)]
pub(crate) enum SecretsCommand {
    /// Set (or replace) a secret. The value comes from --from-file,
    /// --from-env, or stdin (one trailing newline dropped); never from the
    /// command line, where it would show in the process list and history.
    Set {
        /// The tenant it belongs to.
        #[arg(long)]
        tenant: String,
        /// The secret's name.
        name: String,
        /// Read the value from this file.
        #[arg(long, value_name = "FILE", conflicts_with = "from_env")]
        from_file: Option<PathBuf>,
        /// Read the value from this environment variable.
        #[arg(long, value_name = "VAR")]
        from_env: Option<String>,
        /// Globs over where a capsule was loaded from (its reference or
        /// path, its repository, or its digest) that may read it;
        /// repeatable. None: no capsule may read it yet.
        #[arg(long, value_name = "GLOB")]
        grant: Vec<String>,
    },
    /// List a tenant's secrets: names, grants, update times (never values).
    Ls {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Delete a secret.
    Rm {
        /// The tenant it belongs to.
        #[arg(long)]
        tenant: String,
        /// The secret's name.
        name: String,
    },
}

/// Run `soma secrets …` against the daemon of `--server`.
pub(crate) fn secrets(global: &Global, cmd: SecretsCommand) -> anyhow::Result<Code> {
    let remote = global.remote()?.context(
        "tenant secrets live in the daemon's database, sealed with its key: give --server URL \
         (or SOMA_SERVER) and --token (an admin token of the tenant, or an operator token)",
    )?;
    match cmd {
        SecretsCommand::Set {
            tenant,
            name,
            from_file,
            from_env,
            grant,
        } => {
            let value = read_value(from_file.as_deref(), from_env.as_deref())?;
            let row: SecretRow =
                remote.put(&path(&tenant, Some(&name)), &SecretRequest { value, grant })?;
            println!(
                "secret {} of tenant {tenant} set (readable by: {})",
                row.name,
                grants(&row.grant)
            );
        }
        SecretsCommand::Ls { tenant, json } => {
            let rows: Vec<SecretRow> = remote.get(&path(&tenant, None))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                for r in &rows {
                    println!(
                        "{:<32} updated at unix ms {:<14} readable by: {}",
                        r.name,
                        r.updated_ms,
                        grants(&r.grant)
                    );
                }
            }
        }
        SecretsCommand::Rm { tenant, name } => {
            remote.delete(&path(&tenant, Some(&name)))?;
            println!("secret {name} of tenant {tenant} deleted");
        }
    }
    Ok(Code::Ok)
}

/// `/v1/tenants/{tenant}/secrets[/{name}]`, each segment percent-encoded
/// (all but unreserved characters), so a name cannot change the route.
fn path(tenant: &str, name: Option<&str>) -> String {
    let enc = |s: &str| {
        s.bytes()
            .fold(String::with_capacity(s.len()), |mut out, b| {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                    out.push(char::from(b));
                } else {
                    out.push_str(&format!("%{b:02X}"));
                }
                out
            })
    };
    match name {
        Some(n) => format!("/v1/tenants/{}/secrets/{}", enc(tenant), enc(n)),
        None => format!("/v1/tenants/{}/secrets", enc(tenant)),
    }
}

fn grants(list: &[String]) -> String {
    if list.is_empty() {
        "no capsule".to_owned()
    } else {
        list.join(", ")
    }
}

/// The value from the file, the variable, or stdin (one trailing newline
/// dropped, as `echo` and editors add one). Never echoed.
fn read_value(file: Option<&std::path::Path>, env: Option<&str>) -> anyhow::Result<String> {
    let mut value = if let Some(file) = file {
        let mut text = String::new();
        std::fs::File::open(file)
            .and_then(|f| f.take(MAX_READ).read_to_string(&mut text))
            .with_context(|| format!("reading the secret's value from {}", file.display()))?;
        text
    } else if let Some(var) = env {
        std::env::var(var)
            .with_context(|| format!("--from-env {var}: the variable is not set (or not UTF-8)"))?
    } else {
        if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
            eprintln!("reading the secret's value from stdin (end with Ctrl-D)");
        }
        let mut text = String::new();
        std::io::stdin()
            .take(MAX_READ)
            .read_to_string(&mut text)
            .context("reading the secret's value from stdin")?;
        text
    };
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    anyhow::ensure!(
        !value.is_empty(),
        "the secret's value is empty: give it with --from-file, --from-env or on stdin"
    );
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(path("acme", None), "/v1/tenants/acme/secrets");
        assert_eq!(
            path("acme", Some("../x y")),
            "/v1/tenants/acme/secrets/..%2Fx%20y"
        );
    }
}
