//! Builds the Go half of tailpass (vendor/tsshim, a c-archive over tsnet),
//! links it statically and generates the Rust bindings from its C header.
//!
//! Environment:
//! - `TAILPASS_TSSHIM_LIB_DIR`: a directory holding a prebuilt `libtsshim.a`
//!   (built from this same vendor/tsshim with `go build -buildmode=c-archive`).
//!   When set, Go is not needed; packagers and Nix use this.
//! - `GO`: the go command to use (default `go` on PATH).
//! - `LIBCLANG_PATH`: where bindgen finds libclang, if not in a standard place.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

// Paths are relative to this crate (crates/tailnet), where cargo runs the
// build script; the Go module lives at the repository root.
const SHIM_DIR: &str = "../../vendor/tsshim";
const HEADER: &str = "../../vendor/tsshim/capi/tsshim.h";

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-env-changed=TAILPASS_TSSHIM_LIB_DIR");
    println!("cargo:rerun-if-env-changed=GO");
    println!("cargo:rerun-if-env-changed=CC");
    println!("cargo:rerun-if-changed={HEADER}");

    let lib_dir = match env::var_os("TAILPASS_TSSHIM_LIB_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            let lib = dir.join("libtsshim.a");
            if !lib.is_file() {
                fail(&format!(
                    "TAILPASS_TSSHIM_LIB_DIR is set to {} but {} does not exist",
                    dir.display(),
                    lib.display()
                ));
            }
            println!("cargo:rerun-if-changed={}", lib.display());
            dir
        }
        None => {
            watch_go_sources(Path::new(SHIM_DIR));
            build_archive(&out);
            out.clone()
        }
    };

    println!("cargo:rustc-link-search=native={}", lib_dir.display());
    println!("cargo:rustc-link-lib=static=tsshim");
    // Go's cgo DNS resolver calls res_search from libresolv.
    if crt_static() {
        // A fully static build (`-C target-feature=+crt-static`, see
        // scripts/release and docs/release.md) takes libresolv.a. As `dylib`
        // rustc would pass `-Bdynamic -lresolv`: the linker then sees
        // libresolv.so, and rust-lld keeps dynamic relocations against weak
        // undefined symbols (__gmon_start__) that glibc's static-pie startup
        // resolves to the load address: the binary crashes in _init.
        println!("cargo:rustc-link-lib=static:-bundle=resolv");
    } else {
        println!("cargo:rustc-link-lib=dylib=resolv");
    }

    generate_bindings(&out);
}

fn watch_go_sources(dir: &Path) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => fail(&format!("cannot read {}: {e}", dir.display())),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            watch_go_sources(&path);
        } else if let Some(name) = path.file_name().and_then(|n| n.to_str())
            && (name.ends_with(".go")
                || name.ends_with(".h")
                || name == "go.mod"
                || name == "go.sum")
        {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}

fn build_archive(out: &Path) {
    let go = env::var("GO").unwrap_or_else(|_| "go".to_string());
    match Command::new(&go).arg("version").output() {
        Ok(o) if o.status.success() => {}
        _ => fail(&format!(
            "the Go toolchain (`{go}`) was not found. tailpass embeds Tailscale's tsnet, \
             built from vendor/tsshim with Go 1.26 or newer. Install Go \
             (https://go.dev/dl/, or your distribution's golang package), set GO to its \
             path, or set TAILPASS_TSSHIM_LIB_DIR to a directory with a prebuilt libtsshim.a"
        )),
    }
    let mut goflags = env::var("GOFLAGS").unwrap_or_default();
    for flag in ["-trimpath", "-buildvcs=false"] {
        if !goflags.split_whitespace().any(|f| f == flag) {
            goflags.push(' ');
            goflags.push_str(flag);
        }
    }
    let lib = out.join("libtsshim.a");
    let status = Command::new(&go)
        .current_dir(SHIM_DIR)
        .env("CGO_ENABLED", "1")
        .env("GOFLAGS", goflags.trim())
        .args(["build", "-buildmode=c-archive", "-o"])
        .arg(&lib)
        .arg("./capi")
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => fail(&format!(
            "`go build -buildmode=c-archive` of {SHIM_DIR}/capi failed ({s}); see its output above"
        )),
        Err(e) => fail(&format!("could not run {go}: {e}")),
    }
}

fn generate_bindings(out: &Path) {
    let result = std::panic::catch_unwind(|| {
        bindgen::Builder::default()
            .header(HEADER)
            .allowlist_function("tsshim_.*")
            .use_core()
            .generate_comments(true)
            .layout_tests(false)
            .generate()
    });
    let bindings = match result {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => fail(&format!(
            "bindgen could not parse {HEADER}: {e}. It needs libclang: install \
             libclang-dev (Debian/Ubuntu), clang-devel (Fedora) or clang (Arch), \
             or point LIBCLANG_PATH at the directory holding libclang.so"
        )),
        Err(_) => fail(
            "bindgen could not load libclang. Install libclang-dev (Debian/Ubuntu), \
             clang-devel (Fedora) or clang (Arch), or point LIBCLANG_PATH at the \
             directory holding libclang.so",
        ),
    };
    bindings
        .write_to_file(out.join("tsshim_bindings.rs"))
        .unwrap_or_else(|e| fail(&format!("writing bindings: {e}")));
}

fn fail(msg: &str) -> ! {
    // cargo shows build-script stderr on failure; the panic makes it fail.
    eprintln!("\nerror: {msg}\n");
    panic!("{msg}");
}

/// Whether the target links the C runtime statically (`+crt-static`).
fn crt_static() -> bool {
    env::var("CARGO_CFG_TARGET_FEATURE")
        .map(|features| features.split(',').any(|f| f == "crt-static"))
        .unwrap_or(false)
}
