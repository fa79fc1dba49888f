//! Why a call stopped by an epoch interrupt (its deadline, or a caller
//! that went away) is charged its whole fuel budget: wasmtime 48 cannot
//! tell how much fuel it burned. Compiled code keeps the fuel counter in a
//! function-local variable and writes it back to the store only at calls,
//! returns and its own out-of-fuel checks; the epoch check at a loop
//! header calls into the runtime *without* writing it back. After the
//! interrupt, `Store::get_fuel` therefore shows the fuel as of the
//! innermost frame's last call or return — nothing at all for a loop that
//! calls nothing, the cheapest way to burn a deadline. Charging that
//! figure would let such a loop run its whole timeout for free.
//!
//! If a wasmtime upgrade makes the first test fail, fuel after an
//! interrupt has become exact: charge `budget - get_fuel()` in
//! `call.rs` (`fuel_consumed`) and update `docs/operating.md`.

use std::time::Duration;

use wasmtime::{Config, Engine, Instance, Module, Store, Trap};

const BUDGET: u64 = 1 << 50;

/// Run `export` of `wat` under fuel until an epoch interrupt ~200 ms in;
/// the fuel the store reports as consumed.
fn fuel_seen_after_interrupt(wat: &str, export: &str) -> u64 {
    let mut config = Config::new();
    config.consume_fuel(true).epoch_interruption(true);
    let engine = Engine::new(&config).expect("engine");
    let module = Module::new(&engine, wat::parse_str(wat).expect("wat")).expect("module");
    let mut store = Store::new(&engine, ());
    store.set_fuel(BUDGET).expect("fuel");
    store.set_epoch_deadline(1);
    let instance = Instance::new(&mut store, &module, &[]).expect("instance");
    let spin = instance
        .get_typed_func::<(), ()>(&mut store, export)
        .expect("export");
    let ticker = engine.clone();
    let tick = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        ticker.increment_epoch();
    });
    let error = spin.call(&mut store, ()).expect_err("interrupted");
    tick.join().expect("ticker");
    assert_eq!(
        error.downcast_ref::<Trap>(),
        Some(&Trap::Interrupt),
        "{error:?}"
    );
    BUDGET - store.get_fuel().expect("get_fuel")
}

#[test]
fn a_call_free_loop_interrupted_by_an_epoch_shows_no_fuel_burned() {
    // ~200 ms of a tight loop is hundreds of millions of instructions.
    let seen = fuel_seen_after_interrupt(
        r#"(module (func (export "spin") (loop $l (br $l))))"#,
        "spin",
    );
    assert!(
        seen < 1_000,
        "wasmtime now reports {seen} fuel burned before an epoch interrupt: \
         charge what it reports (see this file's header)"
    );
}

#[test]
fn a_loop_that_calls_shows_fuel_up_to_its_last_call() {
    // The same loop calling a function each turn: the counter is written
    // back at every call, so the store's figure is (nearly) exact.
    let seen = fuel_seen_after_interrupt(
        r#"(module
             (func $nop)
             (func (export "spin") (loop $l (call $nop) (br $l))))"#,
        "spin",
    );
    assert!(seen > 1_000_000, "only {seen} fuel seen");
}
