//! Builds the Go tsnet shim in `go/` as a C archive when the `tailscale`
//! feature is on, and links it.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if env::var_os("CARGO_FEATURE_TAILSCALE").is_none() {
        return;
    }
    let manifest_dir =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let go_dir = manifest_dir.join("go");
    for file in [
        "tailscale.go",
        "direct.go",
        "notify.go",
        "testhooks_on.go",
        "testhooks_off.go",
        "go.mod",
        "go.sum",
    ] {
        println!("cargo:rerun-if-changed={}", go_dir.join(file).display());
    }
    for var in ["GOFLAGS", "GOPROXY", "GOTOOLCHAIN", "CC", "CGO_CFLAGS"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let go = env::var("GO").unwrap_or_else(|_| "go".to_owned());
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
    let status = build.arg("-o").arg(&archive).arg(".").status().unwrap_or_else(|err| {
        panic!(
            "could not run `{go}` to build the tsnet archive ({err}); the `tailscale` \
                 feature needs Go >= 1.25 on PATH (or set GO=/path/to/go)"
        )
    });
    assert!(status.success(), "`go build -buildmode=c-archive` of {} failed", go_dir.display());
    println!("cargo:rustc-link-search=native={}", out_dir.display());
    println!("cargo:rustc-link-lib=static=tsnetffi");
    // The Go runtime needs these from libc on Linux.
    println!("cargo:rustc-link-lib=dylib=pthread");
    println!("cargo:rustc-link-lib=dylib=resolv");
}
