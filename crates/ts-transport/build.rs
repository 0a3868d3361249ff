//! Builds the Go tsnet shim in `go/` as a C archive when the `tailscale`
//! feature is on, and links it.
//!
//! Needs Go >= 1.25 (`go` on PATH, or `GO=/path/to/go`), a C compiler for
//! cgo (`CC`, else `gcc`), and `tailscale.com` v1.94.1 from the Go module
//! proxy or the module cache. Each missing piece stops the build with a
//! message that names it. On docs.rs (`DOCS_RS`) nothing is built: rustdoc
//! does not link.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Oldest Go that builds the shim (go/go.mod).
const MIN_GO: (u32, u32) = (1, 25);
/// The Go sources the archive is built from.
const GO_FILES: [&str; 7] = [
    "tailscale.go",
    "direct.go",
    "notify.go",
    "testhooks_on.go",
    "testhooks_off.go",
    "go.mod",
    "go.sum",
];

/// Stops the build with `message` and how to do without Tailscale.
fn fail(message: String) -> ! {
    panic!(
        "\n\nts-transport, feature `tailscale`: {message}\n\nThe `tailscale` feature builds Go's \
         tailscale.com/tsnet into a C archive. Without it (default-features = false), the \
         in-memory and TCP transports build with Rust alone.\n"
    )
}

/// `go version` output such as `go version go1.26.8 linux/amd64` → (1, 26).
fn go_version(text: &str) -> Option<(u32, u32)> {
    let version = text.split_whitespace().find_map(|word| {
        word.strip_prefix("go").filter(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
    })?;
    let mut parts = version.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn check_go(go: &str) {
    let output = match Command::new(go).arg("version").output() {
        Ok(output) if output.status.success() => output,
        Ok(output) => fail(format!(
            "`{go} version` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )),
        Err(err) => fail(format!(
            "Go is missing: cannot run `{go}` ({err}). Install Go >= {}.{} \
             (https://go.dev/dl/) and put it on PATH, or set GO=/path/to/go.",
            MIN_GO.0, MIN_GO.1
        )),
    };
    let text = String::from_utf8_lossy(&output.stdout);
    match go_version(&text) {
        Some(found) if found >= MIN_GO => {}
        Some((major, minor)) => fail(format!(
            "Go {major}.{minor} is too old (`{go}`): Go >= {}.{} is needed.",
            MIN_GO.0, MIN_GO.1
        )),
        None => println!("cargo:warning=cannot read the Go version from {:?}", text.trim()),
    }
}

fn check_c_compiler() {
    let cc = env::var("CC").unwrap_or_else(|_| "gcc".to_owned());
    let program = cc.split_whitespace().next().unwrap_or("gcc").to_owned();
    if Command::new(&program).arg("--version").output().is_err() {
        fail(format!(
            "no C compiler: cgo runs `{program}` (from CC, else gcc) and it cannot be run. \
             Install gcc or clang, or set CC."
        ));
    }
}

fn check_sources(go_dir: &Path) {
    let missing: Vec<&str> =
        GO_FILES.iter().copied().filter(|file| !go_dir.join(file).is_file()).collect();
    if !missing.is_empty() {
        fail(format!(
            "the Go sources {missing:?} are missing from {}: this copy of the crate is \
             incomplete.",
            go_dir.display()
        ));
    }
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if env::var_os("CARGO_FEATURE_TAILSCALE").is_none() {
        return;
    }
    println!("cargo:rerun-if-env-changed=DOCS_RS");
    if env::var_os("DOCS_RS").is_some() {
        return;
    }
    let manifest_dir =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let go_dir = manifest_dir.join("go");
    for file in GO_FILES {
        println!("cargo:rerun-if-changed={}", go_dir.join(file).display());
    }
    for var in ["GO", "GOFLAGS", "GOPROXY", "GOTOOLCHAIN", "CC", "CGO_CFLAGS"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    check_sources(&go_dir);
    let go = env::var("GO").unwrap_or_else(|_| "go".to_owned());
    check_go(&go);
    check_c_compiler();
    let archive = out_dir.join("libtsnetffi.a");
    let mut build = Command::new(&go);
    build.current_dir(&go_dir).env("CGO_ENABLED", "1").args([
        "build",
        "-buildmode=c-archive",
        "-trimpath",
        "-mod=readonly",
    ]);
    // The `test-hooks` feature compiles go/testhooks_on.go (test-only entry
    // points); every other build gets the inert go/testhooks_off.go.
    if env::var_os("CARGO_FEATURE_TEST_HOOKS").is_some() {
        build.arg("-tags=tsnetffi_testhooks");
    }
    let status = build
        .arg("-o")
        .arg(&archive)
        .arg(".")
        .status()
        .unwrap_or_else(|err| fail(format!("could not run `{go} build`: {err}")));
    if !status.success() {
        fail(format!(
            "`{go} build -buildmode=c-archive` in {} failed ({status}; its output is above). \
             It downloads tailscale.com v1.94.1 through the Go module proxy unless the module \
             cache has it: without network, set GOPROXY to a reachable proxy or fill the cache \
             (`go mod download` in that directory).",
            go_dir.display()
        ));
    }
    println!("cargo:rustc-link-search=native={}", out_dir.display());
    println!("cargo:rustc-link-lib=static=tsnetffi");
    // The Go runtime needs these from libc on Linux.
    println!("cargo:rustc-link-lib=dylib=pthread");
    println!("cargo:rustc-link-lib=dylib=resolv");
}
