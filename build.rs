//! Stamps the binary with the commit it was built from, for `--version` and
//! the `tailpass_build_info` metric.
//!
//! `TAILPASS_COMMIT` (packagers, Nix, builds without `.git`) wins; else
//! `git rev-parse` in the source tree; else `unknown`. The Go shim and its
//! bindings are built by crates/tailnet/build.rs.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=TAILPASS_COMMIT");
    let commit = std::env::var("TAILPASS_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=TAILPASS_COMMIT={}", commit.trim());
}

/// The short commit of HEAD, watching the files that change with it.
fn git_commit() -> Option<String> {
    let git = |args: &[&str]| {
        let out = Command::new("git").args(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let dir = git(&["rev-parse", "--absolute-git-dir"])?;
    let dir = Path::new(&dir);
    println!("cargo:rerun-if-changed={}", dir.join("HEAD").display());
    if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
        // Worktrees keep refs in the common dir.
        let common = git(&["rev-parse", "--git-common-dir"]).unwrap_or_default();
        for base in [dir, Path::new(&common)] {
            let f = base.join(&r);
            if f.exists() {
                println!("cargo:rerun-if-changed={}", f.display());
            }
        }
        let packed = Path::new(&common).join("packed-refs");
        if packed.exists() {
            println!("cargo:rerun-if-changed={}", packed.display());
        }
    }
    git(&["rev-parse", "--short=12", "HEAD"])
}
