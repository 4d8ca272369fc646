//! `flowgated`, the node agent. Not implemented yet (issue 3): it will watch the Kubernetes API or
//! a manifest directory and program the node's switch. Until then it says so and fails, rather
//! than pretending to run.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("flowgated: the node agent is not implemented yet; use `flowgate trace` to explore the switch model");
    ExitCode::from(1)
}
