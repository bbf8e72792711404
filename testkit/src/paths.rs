//! Where things are: the workspace, the debug binary tests run, the static binary that
//! benchmarks and container tests run.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The command that builds the static binary (`cargo static` is its alias).
pub const STATIC_BUILD: &str = "cargo build --release --locked --target x86_64-unknown-linux-musl";

/// The static binary's place under the target folder.
const STATIC_BINARY: &str = "x86_64-unknown-linux-musl/release/roomcast";

/// The repository root: this crate lives in its `testkit/` folder.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ has a parent")
        .to_path_buf()
}

/// `CARGO_TARGET_DIR` (relative to the root), or `target/` in the root.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace_root().join(dir),
        _ => workspace_root().join("target"),
    }
}

/// The `roomcast` that cargo built next to the running test, as assert_cmd finds it:
/// `target/debug/deps/<test>` → `target/debug/roomcast`. Cargo builds it before it runs
/// integration tests.
pub fn debug_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = exe
        .parent()
        .filter(|dir| dir.ends_with("deps"))
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("{} is not in a target/<profile>/deps folder", exe.display()));
    let binary = profile_dir.join("roomcast");
    assert!(
        binary.is_file(),
        "no roomcast binary at {} (cargo builds it for integration tests)",
        binary.display()
    );
    binary
}

/// `ROOMCAST_BIN` (relative to the root), or the static release build; `Err` says how to get
/// one.
pub fn static_binary() -> Result<PathBuf, String> {
    let (path, from_env) = match std::env::var("ROOMCAST_BIN") {
        Ok(path) if !path.trim().is_empty() => (workspace_root().join(path), true),
        _ => (target_dir().join(STATIC_BINARY), false),
    };
    if path.is_file() {
        return Ok(path);
    }
    let origin = if from_env {
        "ROOMCAST_BIN points to"
    } else {
        "no release binary at"
    };
    Err(format!(
        "{origin} {}\n  build it first:  {STATIC_BUILD}\n  (or set ROOMCAST_BIN to a roomcast binary)",
        path.display()
    ))
}

/// Says so on stderr when the sources changed after `binary` was built: an old binary tests
/// old code (CI builds it first).
pub fn warn_if_stale(binary: &Path) {
    let root = workspace_root();
    let built = modified(binary);
    let changed = [root.join("src"), root.join("Cargo.lock")]
        .iter()
        .filter_map(|path| newest(path))
        .max();
    if let (Some(built), Some(changed)) = (built, changed)
        && changed > built
    {
        eprintln!(
            "WARNING: {} is older than the sources; rebuild it with `{STATIC_BUILD}`",
            binary.display()
        );
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The latest modification time of a file, or of any file below a folder.
fn newest(path: &Path) -> Option<SystemTime> {
    if !path.is_dir() {
        return modified(path);
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| newest(&entry.path()))
        .max()
}
