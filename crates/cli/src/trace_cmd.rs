//! `flowgate trace`: load manifests, compile them for the node, walk the switch model.

use std::io::{self, BufRead, BufWriter, Write};
use std::process::ExitCode;
use std::time::Instant;

use flowgate_switch::{trace, FlowKey, SwitchPolicy, Trace};
use serde_json::{json, Value};

use crate::probe::parse_probe;
use crate::{Output, TraceArgs};

/// Exit status for invalid input.
const INVALID: u8 = 2;
/// Exit status for an internal error.
const INTERNAL: u8 = 1;

pub(crate) fn run(args: TraceArgs) -> ExitCode {
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
    if std::env::var_os("FLOWGATE_TRACE_TIMING").is_some() {
        eprintln!("loaded and compiled in {:?}", started.elapsed());
    }
    let policy = &compiled.policy;
    match (&args.batch, &args.from, &args.to) {
        (Some(batch), _, _) => run_batch(policy, batch),
        (None, Some(from), Some(to)) => {
            let key = match parse_probe(from, to) {
                Ok(k) => k,
                Err(e) => {
                    eprintln!("flowgate trace: {e}");
                    return ExitCode::from(INVALID);
                }
            };
            let t = trace(policy, &key);
            let out = match args.output {
                Output::Json => to_json(&t, None).to_string(),
                Output::Text => to_text(&key, &t),
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

fn run_batch(policy: &SwitchPolicy, path: &std::path::Path) -> ExitCode {
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
    let mut out = BufWriter::new(io::stdout().lock());
    let mut invalid = false;
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
        let result = match batch_probe(&line) {
            Ok((id, key)) => to_json(&trace(policy, &key), Some(id)),
            Err((id, e)) => {
                eprintln!("flowgate trace: --batch line {}: {e}", n + 1);
                invalid = true;
                json!({"id": id, "error": e})
            }
        };
        if writeln!(out, "{result}").is_err() {
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

fn to_json(t: &Trace, id: Option<Value>) -> Value {
    let mut v = json!({
        "verdict": t.verdict,
        "dnat": t.dnat,
        "masquerade": t.masquerade,
        "deliver": t.deliver,
        "steps": t.steps,
    });
    if let Some(reason) = t.reason {
        v["reason"] = json!(reason);
    }
    if let Some(id) = id {
        v["id"] = id;
    }
    v
}

fn to_text(key: &FlowKey, t: &Trace) -> String {
    let verdict = serde_json::to_value(t.verdict).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
    let mut s = format!("packet:     {key}\nverdict:    {verdict}");
    if let Some(r) = t.reason {
        s.push_str(&format!(
            " ({})",
            serde_json::to_value(r).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
        ));
    }
    s.push_str(&format!(
        "\ndnat:       {}\nmasquerade: {}\n",
        if t.dnat.is_empty() { "-".to_string() } else { t.dnat.join(", ") },
        if t.masquerade { "yes" } else { "no" }
    ));
    if let Some(d) = t.deliver {
        let d = serde_json::to_value(d).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
        s.push_str(&format!("deliver:    {d}\n"));
    }
    s.push_str("steps:\n");
    for step in &t.steps {
        s.push_str(&format!("  - {step}\n"));
    }
    s.trim_end().to_string()
}
