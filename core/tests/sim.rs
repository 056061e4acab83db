//! The deterministic simulation (tests/simulation/mod.rs) over a fixed
//! budget of seeds, as CI runs it. `cargo run -p blockwire-core --example
//! sim -- --seeds N --seed S` runs any number, and replays a failing one.

#[path = "simulation/mod.rs"]
mod simulation;

/// Seeds and steps per seed CI runs: a few seconds in a debug build.
const SEEDS: u64 = 200;
const STEPS: u64 = 3_000;

#[test]
fn simulated_deployments_keep_every_promise() {
    let mut failures = Vec::new();
    let mut total = simulation::Stats::default();
    for seed in 0..SEEDS {
        match simulation::run_seed(seed, STEPS) {
            Ok(s) => total.add(&s),
            Err(e) => failures.push(e),
        }
    }
    eprintln!("{SEEDS} seeds: {total:?}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The budget must exercise what it claims to.
    assert!(total.crashes > 0 && total.resets > 0 && total.reads_checked > 1000);
}

#[test]
fn a_seed_replays_the_same_run() {
    let a = simulation::run_seed(7, 2_000).map(|s| format!("{s:?}"));
    let b = simulation::run_seed(7, 2_000).map(|s| format!("{s:?}"));
    assert_eq!(a, b);
}
