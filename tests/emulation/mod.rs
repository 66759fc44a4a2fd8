//! What the kernel-emulation tests share (tests/dense_emulation.rs, tests/message_emulation.rs):
//! finding a C++ compiler and python3, reporting a failed command, and running jobs one per core.
#![allow(dead_code)]

use std::process::{Command, Output};
use std::sync::Mutex;

pub fn runs(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// $CXX, else the first of g++, c++, clang++ that runs.
pub fn cxx() -> Option<String> {
    let from_env = std::env::var("CXX").ok().filter(|c| !c.is_empty());
    from_env
        .into_iter()
        .chain(["g++", "c++", "clang++"].map(String::from))
        .find(|c| runs(c))
}

/// The C++ compiler, where it and python3 run; None, with a note, where they do not and
/// MDRUN_REQUIRE_EMULATION is unset (set, their absence fails the test: CI sets it).
pub fn compiler_or_skip(what: &str) -> Option<String> {
    let required = std::env::var_os("MDRUN_REQUIRE_EMULATION").is_some();
    match (cxx(), runs("python3")) {
        (Some(cxx), true) => Some(cxx),
        _ => {
            assert!(
                !required,
                "MDRUN_REQUIRE_EMULATION is set but no C++ compiler ($CXX, g++, c++, clang++) or no python3 runs"
            );
            eprintln!("no C++ compiler or python3: {what} skipped (set MDRUN_REQUIRE_EMULATION=1 to require it)");
            None
        }
    }
}

pub fn report(what: &str, output: &Output) -> String {
    format!(
        "{what}: {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `job` on every item, one thread per core (each job a compile and then a run of many OS
/// threads), the results in the items' order.
pub fn one_per_core<T: Sync, R: Send>(items: &[T], job: impl Fn(usize, &T) -> R + Sync) -> Vec<R> {
    let next = Mutex::new(0usize);
    let results = Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(items.len());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let index = {
                    let mut next = next.lock().unwrap();
                    *next += 1;
                    *next - 1
                };
                let Some(item) = items.get(index) else { break };
                let result = job(index, item);
                results.lock().unwrap().push((index, result));
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(index, _)| *index);
    results.into_iter().map(|(_, r)| r).collect()
}
