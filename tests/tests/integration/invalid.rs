//! Bad components: each is a clear invalid-component error saying what is
//! wrong, and the engine keeps serving.

use soma_runtime::{LoadError, validate::Invalid};
use soma_tests::shared;

fn load(bytes: &[u8]) -> LoadError {
    shared()
        .engine
        .load(bytes, "test")
        .expect_err("must be refused")
}

#[test]
fn random_bytes() {
    let bytes: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let err = load(&bytes);
    assert!(matches!(err, LoadError::Invalid(Invalid::NotWasm)), "{err}");
    assert!(err.to_string().contains("not a WebAssembly binary"));
    assert!(matches!(load(b""), LoadError::Invalid(Invalid::NotWasm)));
}

#[test]
fn truncated_component() {
    let bytes = std::fs::read(soma_capsules::CALCULATOR_COMPONENT).expect("read");
    for cut in [9, bytes.len() / 3, bytes.len() - 1] {
        let err = load(&bytes[..cut]);
        assert!(
            matches!(err, LoadError::Invalid(Invalid::Malformed { .. })),
            "cut at {cut}: {err}"
        );
        assert!(
            err.to_string()
                .contains("malformed component at byte offset"),
            "{err}"
        );
    }
}

#[test]
fn core_module() {
    let module = wat::parse_str(r#"(module (func (export "run")))"#).expect("wat");
    let err = load(&module);
    assert!(
        matches!(err, LoadError::Invalid(Invalid::CoreModule)),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("core WebAssembly module, not a component")
    );
}

#[test]
fn component_of_another_world() {
    let err = shared()
        .engine
        .load_file(soma_capsules::WRONG_WORLD_COMPONENT.as_ref())
        .expect_err("a wasi command is not a capsule");
    match &err {
        LoadError::WrongWorld { missing, exports } => {
            assert_eq!(missing, &["describe".to_owned(), "run".to_owned()]);
            assert!(
                exports.iter().any(|e| e.starts_with("wasi:cli/run")),
                "{exports:?}"
            );
        }
        other => panic!("expected wrong world, got {other}"),
    }
    assert!(
        err.to_string()
            .contains("does not implement the soma:capsule world")
    );
}

#[test]
fn exports_with_wrong_types() {
    let c = wat::parse_str(
        r#"(component
            (core module $m (func (export "f")))
            (core instance $i (instantiate $m))
            (func (export "describe") (canon lift (core func $i "f")))
            (func (export "run") (canon lift (core func $i "f"))))"#,
    )
    .expect("wat");
    let err = load(&c);
    assert!(matches!(err, LoadError::ExportMismatch(_)), "{err}");
}

#[test]
fn compile_bomb_is_refused_before_compiling() {
    let mut inner = "(component $c0)".to_owned();
    for level in 1..=3 {
        let insts: String = (0..200)
            .map(|_| format!("(instance (instantiate $c{}))", level - 1))
            .collect();
        inner = format!("(component $c{level} {inner} {insts})");
    }
    let bytes = wat::parse_str(&inner).expect("wat");
    let start = std::time::Instant::now();
    let err = load(&bytes);
    assert!(
        matches!(err, LoadError::Invalid(Invalid::TooManyInstances { .. })),
        "{err}"
    );
    assert!(
        start.elapsed() < std::time::Duration::from_millis(200),
        "refused before compiling"
    );
}

#[test]
fn engine_keeps_serving_after_bad_components() {
    let _ = load(b"\0asm\x0d\0\x01\0garbage");
    let t = shared();
    let echo = t.load(soma_capsules::ECHO_COMPONENT);
    let o = t.engine.call(
        &echo,
        "ok",
        &soma_runtime::CallOptions::for_capsule(&t.engine, &echo),
    );
    assert_eq!(o.result.as_deref(), Ok("ok"));
}
