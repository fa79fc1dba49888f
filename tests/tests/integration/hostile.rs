//! Every hostile capsule ends in its own failure class within 2× its
//! deadline, and a well-behaved call right after it on the same engine
//! succeeds.

use std::time::{Duration, Instant};

use soma_runtime::{CallOptions, Failure, LoadError, Outcome};
use soma_tests::shared;

const DEADLINE: Duration = Duration::from_millis(500);

/// Run the hostile capsule at `path` with tight limits, then prove the host
/// still serves: echo must succeed right after.
fn attack(path: &str, tweak: impl FnOnce(&mut CallOptions)) -> (Outcome, Duration) {
    let t = shared();
    let capsule = t.load(path);
    let mut options = CallOptions::for_capsule(&t.engine, &capsule);
    options.limits.timeout_ms = DEADLINE.as_millis() as u64;
    options.limits.memory_mb = 32;
    tweak(&mut options);
    let start = Instant::now();
    let outcome = t.engine.call(&capsule, "{}", &options);
    let elapsed = start.elapsed();
    assert!(
        elapsed < 2 * DEADLINE,
        "took {elapsed:?}, more than twice the {DEADLINE:?} deadline"
    );

    let echo = t.load(soma_capsules::ECHO_COMPONENT);
    let after = t.engine.call(
        &echo,
        "still alive",
        &CallOptions::for_capsule(&t.engine, &echo),
    );
    assert_eq!(
        after.result.as_deref(),
        Ok("still alive"),
        "the next call must be unaffected"
    );
    (outcome, elapsed)
}

/// The expectation for each hostile capsule. A hostile capsule added to
/// `capsules/` without an expectation here fails its generated test.
fn check(name: &str, path: &str) {
    match name {
        "hostile_loop" => {
            // Fuel far beyond what 500 ms can burn: only the deadline stops it.
            let budget = 1 << 50;
            let (o, _) = attack(path, |opt| opt.limits.fuel = budget);
            assert!(
                matches!(
                    o.result,
                    Err(Failure::DeadlineExceeded {
                        timeout_ms: 500,
                        ..
                    })
                ),
                "{:?}",
                o.result
            );
            assert_eq!(
                o.usage.fuel_consumed,
                Some(budget),
                "a deadline kill is charged the whole budget"
            );
            // The same loop under a small fuel budget ends as out-of-fuel.
            let (o, _) = attack(path, |opt| opt.limits.fuel = 5_000_000);
            assert!(
                matches!(
                    o.result,
                    Err(Failure::OutOfFuel {
                        limit: 5_000_000,
                        ..
                    })
                ),
                "{:?}",
                o.result
            );
            assert_eq!(o.usage.fuel_consumed, Some(5_000_000));
        }
        "hostile_memory" => {
            let (o, _) = attack(path, |_| {});
            match o.result {
                Err(Failure::MemoryLimit {
                    requested, limit, ..
                }) => {
                    assert_eq!(limit, 32 << 20);
                    assert!(requested > limit);
                }
                other => panic!("expected memory-limit, got {other:?}"),
            }
            assert!(o.usage.peak_memory_bytes <= 32 << 20);
        }
        "hostile_recursion" => {
            let (o, _) = attack(path, |_| {});
            assert!(
                matches!(o.result, Err(Failure::StackOverflow { limit_kb: 512 })),
                "{:?}",
                o.result
            );
        }
        "hostile_output" => {
            let (o, _) = attack(path, |_| {});
            assert_eq!(o.result, Err(Failure::OutputLimit { limit: 1 << 20 }));
        }
        "hostile_trap" => {
            let (o, _) = attack(path, |_| {});
            match &o.result {
                Err(Failure::Trap { kind, .. }) => assert_eq!(kind, "unreachable-code-reached"),
                other => panic!("expected trap, got {other:?}"),
            }
            assert!(
                o.stderr.contains("hostile-trap was asked to crash"),
                "panic message captured: {:?}",
                o.stderr
            );
        }
        "hostile_import" => {
            let err = shared()
                .engine
                .load_file(path.as_ref())
                .expect_err("must not load");
            match &err {
                LoadError::UnknownImport { name, .. } => {
                    assert!(name.contains("soma:evil/backdoor"), "{err}")
                }
                other => panic!("expected unknown import, got {other}"),
            }
            assert!(err.to_string().contains("soma:evil/backdoor"));
        }
        "hostile_regrow" => {
            // Whatever ends the retry loop — the deadline or the fuel — the
            // cause reported is the refused growth.
            let (o, _) = attack(path, |opt| opt.limits.fuel = 1 << 50);
            match &o.result {
                Err(Failure::MemoryLimit { limit, then, .. }) => {
                    assert_eq!(*limit, 32 << 20);
                    let then = then.as_deref().unwrap_or_default();
                    assert!(then.contains("deadline"), "{then}");
                }
                other => panic!("expected memory-limit, got {other:?}"),
            }
            assert!(o.usage.peak_memory_bytes <= 32 << 20);
            let (o, _) = attack(path, |opt| opt.limits.fuel = 20_000_000);
            match &o.result {
                Err(f @ Failure::MemoryLimit { then, .. }) => {
                    assert!(then.as_deref().unwrap_or_default().contains("fuel"), "{f}");
                    assert!(!f.to_string().contains("--timeout-ms"), "{f}");
                }
                other => panic!("expected memory-limit, got {other:?}"),
            }
        }
        "hostile_log" => {
            let (o, _) = attack(path, |_| {});
            let output = o.result.as_deref().expect("hostile-log returns an output");
            // The data is kept as the capsule wrote it (JSON and the API
            // escape it); what reaches a log or a terminal is escaped.
            assert!(output.contains("\n2026-11-28T00:00:00Z ERROR soma: forged host line\r"));
            let line = o.logs.first().expect("a log line");
            assert_eq!(line.level, "error");
            let escaped = soma_host_api::log::escape(&line.message);
            assert!(
                !escaped.chars().any(|c| c.is_control()),
                "escaped line still holds control characters: {escaped:?}"
            );
            assert!(
                escaped.contains("\\n2026-11-28T00:00:00Z ERROR soma: forged"),
                "{escaped}"
            );
        }
        other => panic!(
            "hostile capsule {other} has no expectation in tests/tests/integration/hostile.rs"
        ),
    }
}

macro_rules! hostile_test {
    ($name:ident, $path:expr) => {
        #[test]
        fn $name() {
            check(stringify!($name), $path);
        }
    };
}

soma_capsules::foreach_hostile!(hostile_test);

#[test]
fn huge_input_is_refused_before_running() {
    let t = shared();
    let echo = t.load(soma_capsules::ECHO_COMPONENT);
    let options = CallOptions::for_capsule(&t.engine, &echo);
    let big = "x".repeat(options.limits.max_input_bytes + 1);
    let o = t.engine.call(&echo, &big, &options);
    assert!(
        matches!(o.result, Err(Failure::InputLimit { .. })),
        "{:?}",
        o.result
    );
}

#[test]
fn hostile_calls_in_parallel_do_not_disturb_good_ones() {
    let t = shared();
    std::thread::scope(|s| {
        let bad = s.spawn(|| {
            let c = t.load(soma_capsules::HOSTILE_LOOP_COMPONENT);
            let mut o = CallOptions::for_capsule(&t.engine, &c);
            o.limits.timeout_ms = 300;
            o.limits.fuel = 1 << 50;
            t.engine.call(&c, "", &o).result
        });
        let calc = t.load(soma_capsules::CALCULATOR_COMPONENT);
        let opts = CallOptions::for_capsule(&t.engine, &calc);
        for i in 0..200 {
            let out = t
                .engine
                .call(&calc, &format!(r#"{{"expr":"{i}+1"}}"#), &opts);
            assert_eq!(out.result, Ok(format!(r#"{{"value":{}}}"#, i + 1)));
        }
        assert!(matches!(
            bad.join().expect("join"),
            Err(Failure::DeadlineExceeded { .. })
        ));
    });
}
