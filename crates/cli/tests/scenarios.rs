//! Scenario tests: every `tests/scenarios/*.yaml` file (see the README there) is run through the
//! real `flowgate trace --batch` binary, and every probe's result is compared with the file's
//! expectation. All mismatches are reported together.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

fn scenario_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/scenarios")
}

struct Outcome {
    files: usize,
    probes: usize,
    failures: Vec<String>,
}

fn run_scenario(path: &Path, out: &mut Outcome) {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("?").to_string();
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{name}: {e}"));
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{name}: not YAML: {e}"));
    let manifests =
        doc.get("manifests").and_then(|m| m.as_sequence()).unwrap_or_else(|| panic!("{name}: no manifests"));
    let dir = std::env::temp_dir().join(format!("flowgate-scenario-{}-{}", std::process::id(), name));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("manifests.yaml");
    let mut yaml = String::new();
    for m in manifests {
        yaml.push_str("---\n");
        yaml.push_str(&serde_yaml::to_string(m).unwrap());
    }
    std::fs::write(&file, yaml).unwrap();

    let probes: Vec<serde_yaml::Value> = doc.get("probes").and_then(|p| p.as_sequence()).cloned().unwrap_or_default();
    let mut input = String::new();
    for (i, p) in probes.iter().enumerate() {
        let from = p.get("from").and_then(|v| v.as_str()).unwrap_or_else(|| panic!("{name}: probe {i}: no from"));
        let to = p.get("to").and_then(|v| v.as_str()).unwrap_or_else(|| panic!("{name}: probe {i}: no to"));
        input.push_str(&json!({"id": i, "from": from, "to": to}).to_string());
        input.push('\n');
    }
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowgate"));
    cmd.arg("trace").arg("-f").arg(&file).arg("--batch").arg("-");
    if let Some(node) = doc.get("node").and_then(|n| n.as_str()) {
        cmd.arg("--node").arg(node);
    }
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    out.files += 1;

    let stderr = String::from_utf8_lossy(&output.stderr);
    if doc.get("error").and_then(|e| e.as_bool()) == Some(true) {
        if output.status.code() != Some(2) {
            out.failures.push(format!("{name}: expected exit 2 for invalid manifests, got {:?}", output.status.code()));
        } else if !stderr.contains("document") {
            out.failures.push(format!("{name}: error message does not name the document: {stderr}"));
        }
        return;
    }
    if !output.status.success() {
        out.failures.push(format!("{name}: flowgate trace failed ({:?}): {stderr}", output.status.code()));
        return;
    }
    let results: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{name}: bad JSON line {l:?}: {e}")))
        .collect();
    if results.len() != probes.len() {
        out.failures.push(format!("{name}: {} probes but {} results", probes.len(), results.len()));
        return;
    }
    for (i, (p, r)) in probes.iter().zip(&results).enumerate() {
        out.probes += 1;
        let pname = p.get("name").and_then(|v| v.as_str()).unwrap_or("");
        assert_eq!(r["id"], json!(i), "{name}: results out of order");
        let verdict =
            p.get("verdict").and_then(|v| v.as_str()).unwrap_or_else(|| panic!("{name}: probe {i}: no verdict"));
        let mut dnat: Vec<String> = p
            .get("dnat")
            .and_then(|d| d.as_sequence())
            .map(|s| s.iter().filter_map(|x| x.as_str().map(String::from)).collect())
            .unwrap_or_default();
        dnat.sort();
        let masq = p.get("masquerade").and_then(|v| v.as_bool()).unwrap_or(false);
        let deliver = match p.get("deliver").and_then(|v| v.as_str()) {
            Some(d) => json!(d),
            None if verdict == "allow" => panic!("{name}: probe {i} ({pname}): allow needs deliver"),
            None => Value::Null,
        };
        let want = json!({"verdict": verdict, "dnat": dnat, "masquerade": masq, "deliver": deliver});
        let got =
            json!({"verdict": r["verdict"], "dnat": r["dnat"], "masquerade": r["masquerade"], "deliver": r["deliver"]});
        if want != got {
            out.failures.push(format!(
                "{name}: probe {i} \"{pname}\" ({} -> {}):\n    want {want}\n    got  {got}\n    steps {}",
                p.get("from").and_then(|v| v.as_str()).unwrap_or(""),
                p.get("to").and_then(|v| v.as_str()).unwrap_or(""),
                r["steps"]
            ));
        }
    }
}

#[test]
fn scenarios() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(scenario_dir())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("yaml"))
        .collect();
    files.sort();
    let only = std::env::var("SCENARIO").ok();
    let mut out = Outcome { files: 0, probes: 0, failures: Vec::new() };
    for f in &files {
        if let Some(o) = &only {
            if !f.to_string_lossy().contains(o.as_str()) {
                continue;
            }
        }
        run_scenario(f, &mut out);
    }
    eprintln!("{} scenario files, {} probes, {} failures", out.files, out.probes, out.failures.len());
    assert!(out.failures.is_empty(), "{} scenario failures:\n{}", out.failures.len(), out.failures.join("\n"));
    if only.is_none() {
        assert!(out.files >= 40, "only {} scenario files", out.files);
        assert!(out.probes >= 250, "only {} probes", out.probes);
    }
}
