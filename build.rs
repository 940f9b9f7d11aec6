//! Compiles the git revision into chatd (`chat_build_info{revision}`), so a dashboard tells
//! which commit is running. CHATD_GIT_REVISION in the build's environment wins (the Dockerfile
//! passes its build argument of that name on, as the build context leaves .git out); else
//! `git rev-parse --short HEAD`; outside a git checkout or without git, "unknown", and the
//! build goes on.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=CHATD_GIT_REVISION");
    let revision = std::env::var("CHATD_GIT_REVISION")
        .ok()
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty())
        .or_else(|| git(&["rev-parse", "--short", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=CHATD_GIT_REVISION={revision}");
    // Run again when HEAD moves: a commit or a checkout changes HEAD, or the branch it names
    // (which may be packed). Without a checkout, only when this script changes.
    println!("cargo:rerun-if-changed=build.rs");
    for path in ["HEAD", "packed-refs"] {
        watch(git(&["rev-parse", "--git-path", path]));
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch(git(&["rev-parse", "--git-path", &branch]));
    }
}

/// What git prints for `args` in the package's directory, when it runs and succeeds.
fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (output.status.success() && !text.is_empty()).then(|| text.to_owned())
}

/// Reruns the script when the file at `path` (relative to the package) changes, if it exists.
fn watch(path: Option<String>) {
    let Some(path) = path else { return };
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path);
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
