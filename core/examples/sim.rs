//! Run the deterministic simulation (core/tests/simulation/mod.rs) over
//! any number of seeds:
//!
//! ```text
//! cargo run -p blockwire-core --release --example sim -- --seeds 100000
//! cargo run -p blockwire-core --example sim -- --seed 1234          # replay one
//! cargo run -p blockwire-core --example sim -- --seeds 1000 --seed 5000 --steps 20000
//! ```
//!
//! `--seed S` is the first seed (default 0), `--seeds N` how many (default
//! 1 with `--seed`, else 1000), `--steps` the steps per seed (default
//! 3000). Exits non-zero after printing every failing seed.

#[path = "../tests/simulation/mod.rs"]
mod simulation;

fn main() -> std::process::ExitCode {
    let mut first: Option<u64> = None;
    let mut count: Option<u64> = None;
    let mut steps = 3_000u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| -> u64 {
            let v = args
                .next()
                .unwrap_or_else(|| usage(&format!("{name} needs a value")));
            v.parse()
                .unwrap_or_else(|_| usage(&format!("{name}: {v:?} is not a number")))
        };
        match a.as_str() {
            "--seed" => first = Some(value("--seed")),
            "--seeds" => count = Some(value("--seeds")),
            "--steps" => steps = value("--steps"),
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    let count = count.unwrap_or(if first.is_some() { 1 } else { 1000 });
    let first = first.unwrap_or(0);
    // A panic is reported as a failing seed, not with a backtrace.
    std::panic::set_hook(Box::new(|_| {}));
    let mut failed = 0u64;
    let mut total = simulation::Stats::default();
    for seed in first..first.saturating_add(count) {
        match simulation::run_seed(seed, steps) {
            Ok(s) => total.add(&s),
            Err(e) => {
                failed += 1;
                println!("FAIL {e}");
            }
        }
    }
    println!("{count} seeds from {first}, {failed} failed; {total:?}");
    if failed == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

fn usage(why: &str) -> ! {
    if !why.is_empty() {
        eprintln!("sim: {why}");
    }
    eprintln!("usage: sim [--seed FIRST] [--seeds COUNT] [--steps STEPS]");
    std::process::exit(2)
}
