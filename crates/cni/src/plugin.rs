//! The plugin process: reads the runtime's environment and network configuration, asks the node
//! agent (`flowgated`) over its unix socket, and prints the CNI result or a CNI error object.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::{code, result, CniError, Command, Env, NetConf, DEFAULT_SOCKET, LATEST, SUPPORTED_VERSIONS};
use flowgate_hostnet::client::{request, ClientError};
use flowgate_hostnet::Endpoint;
use serde_json::{json, Value};

/// Runs one CNI command: the whole of `flowgate-cni`.
pub fn main() -> ExitCode {
    // The configuration is read whatever else is wrong: the runtime writing it never meets a
    // closed pipe.
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        return fail(&CniError::new(code::IO, format!("cannot read stdin: {e}"), ""), LATEST);
    }
    let env = match Env::read(|k| std::env::var(k).ok()) {
        Ok(e) => e,
        Err(e) => return fail(&e, LATEST),
    };
    if env.command == Command::Version {
        // Whatever version the runtime asks about, the answer lists every one spoken.
        println!("{}", json!({"cniVersion": LATEST, "supportedVersions": SUPPORTED_VERSIONS}));
        return ExitCode::SUCCESS;
    }
    let conf = match NetConf::parse(&stdin) {
        Ok(c) => c,
        Err(e) => return fail(&e, LATEST),
    };
    let version = conf.cni_version.clone();
    match run(&env, &conf) {
        Ok(Some(out)) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => fail(&e, &version),
    }
}

fn fail(e: &CniError, version: &str) -> ExitCode {
    println!("{}", e.to_json(version));
    ExitCode::from(1)
}

fn socket(conf: &NetConf) -> PathBuf {
    conf.socket
        .clone()
        .or_else(|| std::env::var("FLOWGATE_SOCKET").ok())
        .unwrap_or_else(|| DEFAULT_SOCKET.to_owned())
        .into()
}

/// The agent's answer turned into a CNI error: its own code and message when it gave them.
fn agent_error(e: ClientError, what: &str) -> CniError {
    match e {
        ClientError::Unreachable { .. } => CniError::new(
            code::TRY_AGAIN,
            format!("{what}: the flowgate agent is not reachable"),
            format!("{e}; start flowgated (or fix `socket` in the .conflist), then retry"),
        ),
        ClientError::Status { status, body } => {
            let err = &body["error"];
            let c = err["code"].as_u64().and_then(|c| u32::try_from(c).ok()).unwrap_or(code::IO);
            let msg = err["message"].as_str().map(str::to_owned).unwrap_or_else(|| body.to_string());
            let field = err["field"].as_str().map(|f| format!(" (field {f})")).unwrap_or_default();
            CniError::new(c, format!("{what}: {msg}"), format!("the agent answered HTTP {status}{field}"))
        }
        ClientError::Protocol(m) => CniError::new(code::IO, format!("{what}: {m}"), "talking to flowgated"),
    }
}

fn endpoint_path(conf: &NetConf, env: &Env) -> String {
    format!("/v1/endpoints/{}/{}/{}", conf.name, env.container_id, env.ifname)
}

fn run(env: &Env, conf: &NetConf) -> Result<Option<Value>, CniError> {
    let sock = socket(conf);
    match env.command {
        Command::Add => {
            let network = conf.network()?;
            let req = conf.endpoint_request(env)?;
            let body = serde_json::to_value(&network).map_err(|e| CniError::new(code::IO, e.to_string(), ""))?;
            request(&sock, "PUT", &format!("/v1/networks/{}", conf.name), Some(body))
                .map_err(|e| agent_error(e, "network"))?;
            let body = serde_json::to_value(&req).map_err(|e| CniError::new(code::IO, e.to_string(), ""))?;
            let answer = request(&sock, "POST", "/v1/endpoints", Some(body)).map_err(|e| agent_error(e, "ADD"))?;
            let ep: Endpoint = serde_json::from_value(answer)
                .map_err(|e| CniError::new(code::IO, format!("the agent's endpoint is unreadable: {e}"), ""))?;
            Ok(Some(result(&ep, &conf.cni_version)))
        }
        Command::Del => {
            request(&sock, "DELETE", &endpoint_path(conf, env), None).map_err(|e| agent_error(e, "DEL"))?;
            Ok(None)
        }
        Command::Check => {
            let Some(prev) = &conf.prev_result else {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    "CHECK needs prevResult",
                    "the runtime passes ADD's result",
                ));
            };
            let answer = request(&sock, "GET", &format!("{}/check", endpoint_path(conf, env)), None).map_err(|e| {
                let mut err = agent_error(e, "CHECK");
                if err.code == code::IO {
                    err.code = code::CHECK_FAILED;
                }
                err
            })?;
            let ep: Endpoint = serde_json::from_value(answer)
                .map_err(|e| CniError::new(code::IO, format!("the agent's endpoint is unreadable: {e}"), ""))?;
            crate::check_prev_result(prev, &ep)?;
            Ok(None)
        }
        Command::Gc => {
            let valid = conf.valid_attachments()?;
            request(&sock, "POST", &format!("/v1/networks/{}/gc", conf.name), Some(json!({"validAttachments": valid})))
                .map(|_| None)
                .or_else(|e| match e {
                    // No network yet: nothing was ever added, nothing to collect.
                    ClientError::Status { status: 404, .. } => Ok(None),
                    e => Err(agent_error(e, "GC")),
                })
        }
        Command::Status => {
            let network = conf.network()?;
            let unavailable = |e: ClientError| {
                let mut err = agent_error(e, "STATUS");
                err.code = code::NOT_AVAILABLE;
                err
            };
            let body = serde_json::to_value(&network).map_err(|e| CniError::new(code::IO, e.to_string(), ""))?;
            request(&sock, "PUT", &format!("/v1/networks/{}", conf.name), Some(body)).map_err(unavailable)?;
            request(&sock, "GET", &format!("/v1/networks/{}/status", conf.name), None).map_err(unavailable)?;
            Ok(None)
        }
        Command::Version => Ok(None),
    }
}
