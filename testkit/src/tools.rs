//! What a test needs from the machine, and the one rule when it is missing: required in CI,
//! skipped with a reason elsewhere.

use std::path::PathBuf;

/// Whether this is a CI run: `CI` set to anything but empty, `0` or `false`. There a missing
/// tool fails the test instead of skipping it.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| {
        let value = value.trim();
        !(value.is_empty() || value == "0" || value.eq_ignore_ascii_case("false"))
    })
}

/// For a test that cannot run here: in CI this fails the test with `reason`; elsewhere it
/// prints `SKIPPED: <reason>` to stderr and returns, and the caller returns too.
pub fn skip_or_fail(reason: &str) {
    if in_ci() {
        panic!("{reason} (required because CI is set)");
    }
    eprintln!("SKIPPED: {reason}");
}

/// `name` on PATH, or `name` itself when it is a path to a file.
pub fn find_program(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let path = PathBuf::from(name);
        return path.is_file().then_some(path);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// The first of `names` found (see [`find_program`]); when there is none, [`skip_or_fail`]
/// with `install`, the command that would provide it.
pub fn require_program(names: &[&str], install: &str) -> Option<PathBuf> {
    let found = names.iter().find_map(|name| find_program(name));
    if found.is_none() {
        skip_or_fail(&format!(
            "no {} here; install it with `{install}`",
            names[0]
        ));
    }
    found
}
