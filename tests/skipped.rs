//! Which tests that need more than the build were skipped, and why: the last lines of `cargo
//! test`. Those tests pass without running when their need is missing, and cargo shows only
//! "ok" for them; this target runs without libtest's harness (`harness = false` in
//! Cargo.toml), so cargo shows what it prints. It checks what the tests check (the same code,
//! `tests/it/support/requirements.rs`) and never fails: a skip is not an error, but it should
//! not look like a pass either. docs/testing.md says what each suite needs.

#[path = "it/support/requirements.rs"]
mod requirements;

fn main() {
    // `cargo test -- --list` (and tools that list tests) expect test names only: there are none.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let suites = requirements::suites();
    let skipped = suites.iter().filter(|s| s.skipped.is_some()).count();
    println!();
    println!("suites that need more than the build (docs/testing.md):");
    for suite in &suites {
        match &suite.skipped {
            None => println!("  runs     {}", suite.tests),
            Some(why) => println!("  SKIPPED  {}: {why}", suite.tests),
        }
    }
    println!(
        "skipped: {skipped} of {} suites (their tests are counted as passed above)",
        suites.len()
    );
    println!();
}
