//! The rate search: double while clean, then bisect to 5 %, repeating a failure that ran on
//! a busy machine.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;

use testkit::bench::print_table;

use crate::BUSY_OTHERS;
use crate::args::Plan;
use crate::report::{STEP_HEADER, ms_of_us, print_server_log, step_row};
use crate::run::{Outcome, run as run_once};

/// How often the search repeats a failed rate that ran on a busy machine.
const SEARCH_RETRIES: usize = 2;

pub fn run(
    plan: &Plan,
    start_rate: f64,
    max_steps: usize,
    budget: Duration,
    bin: &Path,
    runtime: &Runtime,
) -> Result<(), String> {
    println!(
        "search:  from {start_rate} msg/s, double while clean, then bisect to 5 %; {} s per step, \
         at most {max_steps} steps and {} s; clean = zero loss, no duplicate, no close, \
         p99 < 100 ms, publish rate reached",
        plan.secs,
        budget.as_secs()
    );
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut best: Option<Outcome> = None;
    let mut lowest_fail: Option<f64> = None;
    let mut rate = start_rate.round().max(1.0);
    let mut retries = 0;
    for step in 1..=max_steps {
        let expected_time = plan.secs + plan.drain.as_secs_f64() + 3.0;
        if step > 1 && started.elapsed().as_secs_f64() + expected_time > budget.as_secs_f64() {
            println!("(time budget reached)");
            break;
        }
        let outcome = run_once(plan, rate, bin, runtime, step)?;
        let row = step_row(step, &outcome);
        eprintln!("  step {step}: {}", row[1..].join("  "));
        rows.push(row);
        print_server_log(&outcome);
        let clean = outcome.failures().is_empty();
        // A failure while other processes took CPU says little about roomcast: repeat it.
        if !clean && outcome.other_cpu > BUSY_OTHERS && retries < SEARCH_RETRIES {
            retries += 1;
            eprintln!("    (other processes were busy during that run: repeating {rate} msg/s)");
            continue;
        }
        retries = 0;
        if clean {
            if best.as_ref().is_none_or(|b| rate > b.rate) {
                best = Some(outcome);
            }
            // A pass above an earlier failure makes that failure noise.
            if lowest_fail.is_some_and(|fail| rate >= fail) {
                lowest_fail = None;
            }
        } else if lowest_fail.is_none_or(|fail| rate < fail) {
            lowest_fail = Some(rate);
        }
        let highest_pass = best.as_ref().map(|b| b.rate);
        rate = match (highest_pass, lowest_fail) {
            (Some(pass), None) => pass * 2.0,
            (None, Some(fail)) => (fail / 2.0).floor(),
            (Some(pass), Some(fail)) => {
                if fail - pass <= 0.05 * pass {
                    break;
                }
                ((pass + fail) / 2.0).round()
            }
            (None, None) => unreachable!(),
        };
        if rate < 1.0 {
            break;
        }
    }
    print_table(&STEP_HEADER, &rows);
    match best {
        Some(best) => println!(
            "highest clean rate for {}: {:.0} msg/s = {:.0} deliveries/s (p99 {} ms){} [{:.0} s]",
            plan.shape(),
            best.rate,
            best.deliveries_per_sec(),
            ms_of_us(best.latency_us.percentile(99.0)),
            lowest_fail.map_or(" (upper bound not reached)".to_string(), |f| format!(
                "; {f:.0} msg/s was not clean"
            )),
            started.elapsed().as_secs_f64()
        ),
        None => println!(
            "no clean rate found for {} [{:.0} s]",
            plan.shape(),
            started.elapsed().as_secs_f64()
        ),
    }
    Ok(())
}
