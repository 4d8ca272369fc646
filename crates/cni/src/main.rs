//! `flowgate-cni`, the CNI plugin. Not implemented yet (issue 5). It answers every command with a
//! CNI error object (code 7, "invalid network config"), so a runtime that calls it gets a clear
//! refusal instead of silence.

use std::process::ExitCode;

fn main() -> ExitCode {
    let err = serde_json::json!({
        "cniVersion": "1.1.0",
        "code": 7,
        "msg": "flowgate-cni is not implemented yet",
        "details": "the flowgate CNI plugin arrives with the host networking service; see README.md"
    });
    println!("{err}");
    ExitCode::from(1)
}
