//! The floor binary: benches/floor/floor.rs compiled at run time into a static musl program,
//! so that it starts the way the release `roomcast` does, std and all.

use std::path::PathBuf;
use std::process::Command;

use testkit::bench::fail;
use testkit::paths;

/// Compiles benches/floor/floor.rs into a static musl binary under target/roomcast-bench/.
pub fn build() -> PathBuf {
    let source = paths::workspace_root().join("benches/floor/floor.rs");
    let out_dir = paths::workspace_root().join("target/roomcast-bench");
    let out = out_dir.join("floor");
    if let Err(error) = std::fs::create_dir_all(&out_dir) {
        fail(format!("cannot create {}: {error}", out_dir.display()));
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let args = [
        "--edition",
        "2021",
        "-C",
        "opt-level=3",
        "-C",
        "strip=symbols",
        "--target",
        "x86_64-unknown-linux-musl",
        "-C",
        "target-feature=+crt-static",
    ];
    let output = Command::new(&rustc)
        .args(args)
        .arg("-o")
        .arg(&out)
        .arg(&source)
        .output();
    match output {
        Ok(output) if output.status.success() => {}
        Ok(output) => fail(format!(
            "building the floor binary failed ({rustc} {} -o {} {}):\n{}\n\
             (the musl target is needed: rustup target add x86_64-unknown-linux-musl)",
            args.join(" "),
            out.display(),
            source.display(),
            String::from_utf8_lossy(&output.stderr)
        )),
        Err(error) => fail(format!("cannot run {rustc}: {error}")),
    }
    out
}
