//! Compile-time replay checks: every rule has a failing case under
//! `tests/ui/fail/` (with its reviewed `.stderr`), and `tests/ui/pass/` shows
//! what stays allowed.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
