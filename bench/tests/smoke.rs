//! The benchmarks as smoke runs: tiny sizes, no figures checked; they must
//! run to the end without error.

#[test]
fn benchmarks_run_in_smoke_mode() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_durafn-bench"))
        .args(["all", "--smoke"])
        .output()
        .expect("run the benchmark binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for row in [
        "macro expansion",
        "replay, per journaled step",
        "| seq100 |",
        "| fanout |",
        "| loop1000 |",
        "| long |",
        "| replay |",
        "## PostgreSQL",
        "## compile cost",
        "## load",
    ] {
        assert!(stdout.contains(row), "missing `{row}` in:\n{stdout}");
    }
}
