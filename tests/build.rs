//! Builds the local tailnet program (`xtask/tailnet`, Go) so the harness can
//! start it; its path reaches the code as `TAILNET_BIN`. Only with the
//! `tailnet` feature: without it this package builds with Rust alone, and
//! says which suites are off.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=CARGO_FEATURE_TAILNET");
    if env::var_os("CARGO_FEATURE_TAILNET").is_none() {
        println!(
            "cargo:warning=the real-tailnet suites, chaos, headscale and the benchmarks are off: \
             they need Go >= 1.25, a C compiler and Chromium; `cargo xtask ci` runs everything \
             (these, and what `cargo test -p tests --features tailnet` alone leaves out: \
             ts-transport's tsnet unit tests and the rest of the `tailscale` features' code, \
             such as the kv example's tests)"
        );
        return;
    }
    let manifest_dir =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let src = manifest_dir.join("../xtask/tailnet");
    for file in ["main.go", "go.mod", "go.sum"] {
        println!("cargo:rerun-if-changed={}", src.join(file).display());
    }
    println!("cargo:rerun-if-env-changed=GOFLAGS");
    let go = env::var("GO").unwrap_or_else(|_| "go".to_owned());
    let bin = out_dir.join("tailnet");
    let status = Command::new(&go)
        .current_dir(&src)
        .args(["build", "-trimpath", "-mod=readonly", "-o"])
        .arg(&bin)
        .arg(".")
        .status()
        .unwrap_or_else(|err| panic!("could not run `{go}` to build the local tailnet ({err})"));
    assert!(status.success(), "building the local tailnet in {} failed", src.display());
    println!("cargo:rustc-env=TAILNET_BIN={}", bin.display());
}
