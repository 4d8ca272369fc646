//! `flowgate-cni`, the CNI plugin (spec 1.1; 1.0.0 results for 1.0.0 configurations). It checks
//! what the runtime gives it and asks the node agent for the endpoint; see `flowgate_cni`.

fn main() -> std::process::ExitCode {
    flowgate_cni::plugin::main()
}
