//! The realistic workloads both callgrind examples run with `SIZE` = `realistic` (see
//! `scripts/callgrind.sh`): the bench suite's JSON parse, map build and request handling, inside
//! `run_realistic` so callgrind can count only it.

#[path = "../../benches/common/workloads.rs"]
mod workloads;

#[inline(never)]
pub fn run_realistic(rounds: u64) {
    let document = workloads::json_document();
    let text = workloads::request_text();
    for _ in 0..rounds {
        workloads::json_workload(&document);
        workloads::map_workload();
        workloads::request_workload(&text);
    }
}
