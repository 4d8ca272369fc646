//! `flowgate trace`: load manifests, compile them for the node, walk the switch model — or ask the
//! running agent to walk its live data plane (`--live`). Both print the same output.

use std::io::{self, BufRead, BufWriter, Write};
use std::process::ExitCode;
use std::time::Instant;

use flowgate_switch::{trace, FlowKey, SwitchPolicy};
use serde_json::{json, Value};

use crate::probe::parse_probe;
use crate::{Output, TraceArgs};

/// Exit status for invalid input.
const INVALID: u8 = 2;
/// Exit status for an internal error.
const INTERNAL: u8 = 1;

/// Where traces come from.
enum Tracer {
    /// A policy compiled here from manifests.
    Local(Box<SwitchPolicy>),
    /// The agent behind this socket.
    Live(std::path::PathBuf),
}

impl Tracer {
    /// Traces every probe; results in order, each a trace JSON object.
    fn trace(&self, probes: &[(Value, FlowKey)]) -> Result<Vec<Value>, String> {
        match self {
            Tracer::Local(policy) => {
                Ok(probes.iter().map(|(_, k)| serde_json::to_value(trace(policy, k)).unwrap_or(Value::Null)).collect())
            }
            Tracer::Live(socket) => {
                let body =
                    json!({"probes": probes.iter().map(|(id, k)| json!({"id": id, "key": k})).collect::<Vec<_>>()});
                let answer = flowgate_hostnet::client::request(socket, "POST", "/v1/trace", Some(body))
                    .map_err(|e| e.to_string())?;
                let results = answer.get("results").and_then(|r| r.as_array()).cloned().unwrap_or_default();
                if results.len() != probes.len() {
                    return Err(format!("agent answered {} results for {} probes", results.len(), probes.len()));
                }
                Ok(results)
            }
        }
    }
}

pub(crate) fn run(args: TraceArgs) -> ExitCode {
    let tracer = if args.live {
        Tracer::Live(args.socket.clone())
    } else {
        let started = Instant::now();
        let loaded = match flowgate_cluster::load_paths(&args.files) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("flowgate trace: {e}");
                return ExitCode::from(INVALID);
            }
        };
        for w in &loaded.warnings {
            eprintln!("warning: {w}");
        }
        let compiled = match flowgate_compiler::compile(&loaded.state, args.node.as_deref()) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("flowgate trace: {e}");
                return ExitCode::from(INVALID);
            }
        };
        for p in &compiled.problems {
            eprintln!("warning: {}: {}", p.object, p.message);
        }
        if std::env::var_os("FLOWGATE_TRACE_TIMING").is_some() {
            eprintln!("loaded and compiled in {:?}", started.elapsed());
        }
        Tracer::Local(Box::new(compiled.policy))
    };
    match (&args.batch, &args.from, &args.to) {
        (Some(batch), _, _) => run_batch(&tracer, batch),
        (None, Some(from), Some(to)) => {
            let key = match parse_probe(from, to) {
                Ok(k) => k,
                Err(e) => {
                    eprintln!("flowgate trace: {e}");
                    return ExitCode::from(INVALID);
                }
            };
            let result = match tracer.trace(&[(Value::Null, key)]) {
                Ok(mut r) => r.remove(0),
                Err(e) => {
                    eprintln!("flowgate trace: {e}");
                    return ExitCode::from(INTERNAL);
                }
            };
            let out = match args.output {
                Output::Json => to_json(&result, None).to_string(),
                Output::Text => to_text(&key, &result),
            };
            println!("{out}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("flowgate trace: give --from and --to, or --batch");
            ExitCode::from(INVALID)
        }
    }
}

fn run_batch(tracer: &Tracer, path: &std::path::Path) -> ExitCode {
    let input: Box<dyn BufRead> = if path.as_os_str() == "-" {
        Box::new(io::stdin().lock())
    } else {
        match std::fs::File::open(path) {
            Ok(f) => Box::new(io::BufReader::new(f)),
            Err(e) => {
                eprintln!("flowgate trace: --batch {}: {e}", path.display());
                return ExitCode::from(INVALID);
            }
        }
    };
    // Parse everything first: the probes are traced in one go (one request for --live).
    let mut lines: Vec<Result<(Value, FlowKey), (Value, String)>> = Vec::new();
    for (n, line) in input.lines().enumerate() {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                eprintln!("flowgate trace: --batch {}: {e}", path.display());
                return ExitCode::from(INVALID);
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let probe = batch_probe(&line);
        if let Err((_, e)) = &probe {
            eprintln!("flowgate trace: --batch line {}: {e}", n + 1);
        }
        lines.push(probe);
    }
    let valid: Vec<(Value, FlowKey)> = lines.iter().filter_map(|l| l.as_ref().ok().cloned()).collect();
    let mut results = match tracer.trace(&valid) {
        Ok(r) => r.into_iter(),
        Err(e) => {
            eprintln!("flowgate trace: {e}");
            return ExitCode::from(INTERNAL);
        }
    };
    let mut out = BufWriter::new(io::stdout().lock());
    let mut invalid = false;
    for line in lines {
        let v = match line {
            Ok((id, _)) => to_json(&results.next().unwrap_or(Value::Null), Some(id)),
            Err((id, e)) => {
                invalid = true;
                json!({"id": id, "error": e})
            }
        };
        if writeln!(out, "{v}").is_err() {
            return ExitCode::from(INTERNAL);
        }
    }
    if out.flush().is_err() {
        return ExitCode::from(INTERNAL);
    }
    if invalid {
        ExitCode::from(INVALID)
    } else {
        ExitCode::SUCCESS
    }
}

fn batch_probe(line: &str) -> Result<(Value, FlowKey), (Value, String)> {
    let v: Value = serde_json::from_str(line).map_err(|e| (Value::Null, format!("not a JSON object: {e}")))?;
    let id = v.get("id").cloned().unwrap_or(Value::Null);
    let field = |name: &str| match v.get(name) {
        Some(Value::String(s)) => Ok(s.as_str()),
        _ => Err((id.clone(), format!("\"{name}\" is required (a string)"))),
    };
    let from = field("from")?;
    let to = field("to")?;
    let key = parse_probe(from, to).map_err(|e| (id.clone(), e))?;
    Ok((id, key))
}

/// The contract's JSON for one result (docs/trace.md), with `id` in batch mode.
fn to_json(t: &Value, id: Option<Value>) -> Value {
    let mut v = json!({
        "verdict": t["verdict"],
        "dnat": t.get("dnat").cloned().unwrap_or(json!([])),
        "masquerade": t["masquerade"],
        "deliver": t["deliver"],
        "steps": t.get("steps").cloned().unwrap_or(json!([])),
    });
    if let Some(reason) = t.get("reason").filter(|r| !r.is_null()) {
        v["reason"] = reason.clone();
    }
    if let Some(id) = id {
        v["id"] = id;
    }
    v
}

fn to_text(key: &FlowKey, t: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or("-").to_string();
    let mut out = format!("packet:     {key}\nverdict:    {}", s(&t["verdict"]));
    if let Some(r) = t.get("reason").and_then(|r| r.as_str()) {
        out.push_str(&format!(" ({r})"));
    }
    let dnat: Vec<String> = t["dnat"].as_array().into_iter().flatten().map(s).collect();
    out.push_str(&format!(
        "\ndnat:       {}\nmasquerade: {}\n",
        if dnat.is_empty() { "-".to_string() } else { dnat.join(", ") },
        if t["masquerade"].as_bool() == Some(true) { "yes" } else { "no" }
    ));
    if !t["deliver"].is_null() {
        out.push_str(&format!("deliver:    {}\n", s(&t["deliver"])));
    }
    out.push_str("steps:\n");
    for step in t["steps"].as_array().into_iter().flatten() {
        out.push_str(&format!("  - {}\n", s(step)));
    }
    out.trim_end().to_string()
}
