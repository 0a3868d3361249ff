//! `cargo xtask headscale`: the kv example against headscale, a real,
//! independent control server, on 127.0.0.1.
//!
//! headscale is built from the Go module proxy at one pinned version (its
//! module checksum pinned too) and cached under
//! `target/headscale/<version>/headscale`, so only the first run pays for
//! the build. The suite itself is `tests/src/headscale.rs`, run by the
//! `headscale-suite` program this builds.

use std::env;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use crate::{Result, TAILNET_ENV, cargo, run, target_dir, workspace_root};

/// The headscale module.
const MODULE: &str = "github.com/juanfont/headscale";
/// The pinned version: its `go.mod` says `go 1.25.5` and it uses
/// tailscale.com v1.94.1, the version our tsnet is built from.
pub(crate) const VERSION: &str = "v0.28.0";
/// The module's checksum (`go.sum` `h1:` form) at [`VERSION`]. `go mod
/// download` also checks it against the checksum database; pinning it here
/// makes a change of the proxy's answer an error, not a different build.
const MODULE_SUM: &str = "h1:1lz1wj1NhKH2Y+U6URaVochCMrBsb+IUNDjQdwKn37Q=";

/// `cargo xtask headscale [--build-only] [suite flags]`.
pub(crate) fn headscale(args: &[&str]) -> Result {
    let bin = build_headscale()?;
    if args == ["--build-only"] {
        return Ok(());
    }
    run(
        "build kv example and headscale suite",
        cargo().args([
            "build",
            "--locked",
            "--package",
            "consensus",
            "--example",
            "kv",
            "--package",
            "tests",
            "--bin",
            "headscale-suite",
            "--features",
            "consensus/tailscale,tests/tailnet",
        ]),
    )?;
    let target = target_dir();
    let mut command = Command::new(target.join("debug/headscale-suite"));
    command
        .current_dir(workspace_root())
        .envs(TAILNET_ENV.iter().copied())
        .arg("--headscale-bin")
        .arg(&bin)
        .arg("--kv-bin")
        .arg(target.join("debug/examples/kv"))
        .args(args);
    run("headscale suite", &mut command)
}

/// The headscale binary at [`VERSION`]: from the cache under `target/`, or
/// built from the module proxy's source (`go install …@version` is not
/// used: some proxies refuse the version list it asks for).
fn build_headscale() -> Result<PathBuf> {
    let dir = target_dir().join("headscale").join(VERSION);
    let bin = dir.join("headscale");
    if bin.is_file() {
        eprintln!("\n==> headscale {VERSION}: cached at {}", bin.display());
        return Ok(bin);
    }
    let started = Instant::now();
    eprintln!("\n==> headscale {VERSION}: not cached; building it from the Go module proxy");
    let source = download_module()?;
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    // Build beside the final path and rename: an interrupted build never
    // leaves a binary that later runs would take for a good one.
    let partial = dir.join("headscale.partial");
    run(
        &format!("go build headscale {VERSION} (several minutes the first time)"),
        Command::new("go")
            .current_dir(&source)
            // The module's own go.sum checks every dependency; -mod=readonly
            // refuses to change it.
            .args(["build", "-trimpath", "-mod=readonly", "-o"])
            .arg(&partial)
            .arg("./cmd/headscale"),
    )?;
    std::fs::rename(&partial, &bin)
        .map_err(|e| format!("move {} to {}: {e}", partial.display(), bin.display()))?;
    eprintln!("==> headscale {VERSION}: built in {:.1?} at {}", started.elapsed(), bin.display());
    Ok(bin)
}

/// Downloads the headscale module into the module cache (a no-op when it is
/// there) and returns its directory, after checking its checksum.
fn download_module() -> Result<PathBuf> {
    let module = format!("{MODULE}@{VERSION}");
    eprintln!("==> go mod download {module}");
    // Outside any module, so that no go.mod around here takes part.
    let output = Command::new("go")
        .current_dir(env::temp_dir())
        .env("GO111MODULE", "on")
        .args(["mod", "download", "-json", &module])
        .output()
        .map_err(|e| format!("go mod download: could not start go: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if let Some(error) = json_string(&text, "Error") {
        return Err(format!("go mod download {module}: {error}"));
    }
    if !output.status.success() {
        return Err(format!(
            "go mod download {module} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let sum = json_string(&text, "Sum").ok_or_else(|| format!("go mod download said {text:?}"))?;
    if sum != MODULE_SUM {
        return Err(format!("{module} has checksum {sum}, expected {MODULE_SUM}"));
    }
    let dir = json_string(&text, "Dir").ok_or_else(|| format!("go mod download said {text:?}"))?;
    let dir = PathBuf::from(dir);
    if !dir.join("cmd/headscale").is_dir() {
        return Err(format!("{} has no cmd/headscale", dir.display()));
    }
    Ok(dir)
}

/// The string value of `"key": "..."` in `go mod download -json` output (a
/// flat object). Escapes other than `\"` and `\\` are not expected there and
/// are kept as they are.
fn json_string(text: &str, key: &str) -> Option<String> {
    let pattern = format!("\"{key}\":");
    let rest = text[text.find(&pattern)? + pattern.len()..].trim_start().strip_prefix('"')?;
    let mut value = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(value),
            '\\' => match chars.next()? {
                escaped @ ('"' | '\\' | '/') => value.push(escaped),
                other => {
                    value.push('\\');
                    value.push(other);
                }
            },
            c => value.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_go_mod_download_json() {
        let text = r#"{
	"Path": "github.com/juanfont/headscale",
	"Version": "v0.28.0",
	"Dir": "/root/go/pkg/mod/github.com/juanfont/headscale@v0.28.0",
	"Sum": "h1:1lz1wj1NhKH2Y+U6URaVochCMrBsb+IUNDjQdwKn37Q=",
	"Odd": "a \"quoted\" \\ word"
}"#;
        assert_eq!(
            json_string(text, "Dir").as_deref(),
            Some("/root/go/pkg/mod/github.com/juanfont/headscale@v0.28.0")
        );
        assert_eq!(json_string(text, "Sum").as_deref(), Some(MODULE_SUM));
        assert_eq!(json_string(text, "Odd").as_deref(), Some(r#"a "quoted" \ word"#));
        assert_eq!(json_string(text, "Error"), None);
        assert_eq!(json_string(r#"{"Error": "not found"#, "Error"), None, "unterminated");
        assert_eq!(json_string(r#"{"Error": 3}"#, "Error"), None, "not a string");
    }
}
