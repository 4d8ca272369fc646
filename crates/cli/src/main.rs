//! `flowgate`, the command-line tool. `flowgate trace` explains what a node's switch does with the
//! first packet of a connection (see docs/trace.md).

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]
// The arguments' doc comments are `--help` text, where `SRC[:SPORT]` is the usual notation, not a
// link.
#![allow(rustdoc::broken_intra_doc_links)]

mod probe;
mod trace_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "flowgate",
    version,
    about = "flowgate: Kubernetes node networking on a VFP-style switch in the kernel"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Explain what the node's switch does with a packet (no kernel involved).
    Trace(TraceArgs),
    /// Show the running agent's status (sync counts, readiness, last error, object counts).
    Status {
        /// The agent's API socket.
        #[arg(long, default_value = "/run/flowgate/flowgate.sock")]
        socket: PathBuf,
    },
    /// List the pods' endpoints the agent made (one line each: id, pod, addresses, host interface).
    Endpoints {
        /// The agent's API socket.
        #[arg(long, default_value = "/run/flowgate/flowgate.sock")]
        socket: PathBuf,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

/// Output format.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Output {
    /// For people.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(clap::Args, Debug)]
struct TraceArgs {
    /// Manifest file or directory (repeatable).
    #[arg(short = 'f', long = "filename", required_unless_present = "live", conflicts_with = "live")]
    files: Vec<PathBuf>,
    /// Trace against the running agent's live data plane instead of manifests.
    #[arg(long)]
    live: bool,
    /// The agent's API socket (with --live).
    #[arg(long, default_value = "/run/flowgate/flowgate.sock")]
    socket: PathBuf,
    /// The node whose data plane is traced.
    #[arg(long)]
    node: Option<String>,
    /// Source address, SRC[:SPORT] (IPv6 with a port: [ADDR]:PORT).
    #[arg(long, required_unless_present = "batch", conflicts_with = "batch")]
    from: Option<String>,
    /// Destination, DST:DPORT[/PROTO] with PROTO tcp (default), udp or sctp.
    #[arg(long, required_unless_present = "batch", conflicts_with = "batch")]
    to: Option<String>,
    /// Read probes, one JSON object per line ({"id":..,"from":..,"to":..}), from FILE or '-'.
    #[arg(long, value_name = "FILE")]
    batch: Option<PathBuf>,
    /// Output format (batch mode always writes JSON).
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Trace(args) => trace_cmd::run(args),
        Command::Endpoints { socket, output } => {
            match flowgate_hostnet::client::request(&socket, "GET", "/v1/endpoints", None) {
                Ok(v) => {
                    let eps: Vec<flowgate_hostnet::Endpoint> = serde_json::from_value(v).unwrap_or_default();
                    for ep in &eps {
                        match output {
                            Output::Json => println!("{}", serde_json::to_string(ep).unwrap_or_default()),
                            Output::Text => println!("{}", endpoint_line(ep)),
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("flowgate endpoints: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Status { socket } => match flowgate_hostnet::client::request(&socket, "GET", "/v1/status", None) {
            Ok(v) => {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("flowgate status: {e}");
                ExitCode::from(1)
            }
        },
    }
}

/// One endpoint for people: `id  pod  addresses  host-interface  state`.
fn endpoint_line(ep: &flowgate_hostnet::Endpoint) -> String {
    let pod = ep.pod.as_ref().map(|p| format!("{}/{}", p.namespace, p.name)).unwrap_or_else(|| "-".into());
    let ips: Vec<String> = ep.ips.iter().map(|i| i.address.addr().to_string()).collect();
    let state = format!("{:?}", ep.state).to_lowercase();
    format!("{}  {}  {}  {}  {state}", ep.id, pod, ips.join(","), ep.host_interface)
}
