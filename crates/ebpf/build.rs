//! Compiles the eBPF programs in C and embeds the objects.
//!
//! Every `*.c` directly under `<workspace>/bpf/` (one file per attach point) and under
//! `<workspace>/bpf/test/` (programs for this crate's own tests) is compiled with Debian's clang:
//!
//! ```text
//! clang -target bpf -O2 -g -Wall -Werror -I<workspace>/bpf/lib -I/usr/include/x86_64-linux-gnu -c
//! ```
//!
//! into `OUT_DIR/<name>.o`, and `OUT_DIR/objects.rs` gets one 8-byte aligned
//! `pub static NAME: &[u8]` per object: `bpf/endpoint.c` becomes `ENDPOINT`, `bpf/test/echo.c`
//! becomes `TEST_ECHO`. `-g` is what emits the BTF that BTF-defined maps (`SEC(".maps")`) need.
//!
//! `FLOWGATE_BPF_SKIP` (comma-separated file stems, e.g. `endpoint,uplink`; test programs as
//! `test/echo` or `echo`) leaves programs out while they do not compile yet: their static is
//! then empty and loading it fails with a message naming the variable. By default every program
//! must compile, so CI never runs with a program silently missing.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Debian packages the build needs: the compiler, and the kernel and libbpf headers.
const PACKAGES: &str = "clang llvm libbpf-dev linux-libc-dev";

/// Where Debian keeps `asm/types.h`; `-target bpf` does not look there by itself.
const MULTIARCH_INCLUDE: &str = "/usr/include/x86_64-linux-gnu";

struct Program {
    /// The C file.
    source: PathBuf,
    /// `endpoint` or `test/echo`: what `FLOWGATE_BPF_SKIP` names.
    qualified: String,
    /// The stem alone (`echo`), also accepted by `FLOWGATE_BPF_SKIP`.
    stem: String,
    /// `ENDPOINT`, `TEST_ECHO`.
    static_name: String,
    /// `endpoint.o`, `test_echo.o`.
    object: PathBuf,
}

fn main() {
    if let Err(message) = run() {
        eprintln!("\nerror: building the eBPF programs failed\n\n{message}\n");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let out_dir = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let bpf_dir = manifest_dir.join("../../bpf");
    let bpf_dir = bpf_dir.canonicalize().map_err(|e| format!("{}: {e}", bpf_dir.display()))?;
    let lib_dir = bpf_dir.join("lib");
    let test_dir = bpf_dir.join("test");

    println!("cargo:rerun-if-env-changed=FLOWGATE_BPF_SKIP");
    // Cargo scans a directory given here recursively, so headers and new files are covered too.
    println!("cargo:rerun-if-changed={}", bpf_dir.display());

    let skip: Vec<String> = env::var("FLOWGATE_BPF_SKIP")
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().trim_end_matches(".c").to_owned())
        .filter(|s| !s.is_empty())
        .collect();

    let mut programs = Vec::new();
    collect(&bpf_dir, "", &out_dir, &mut programs)?;
    if test_dir.is_dir() {
        collect(&test_dir, "test", &out_dir, &mut programs)?;
    }
    for dir in [&bpf_dir, &lib_dir, &test_dir] {
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                println!("cargo:rerun-if-changed={}", entry.path().display());
            }
        }
    }

    for name in &skip {
        if !programs.iter().any(|p| &p.qualified == name || &p.stem == name) {
            println!("cargo:warning=FLOWGATE_BPF_SKIP names {name:?}, which is no program under bpf/");
        }
    }

    // Start every compiler at once; there are only a few programs and clang is single-threaded.
    let mut running: Vec<(&Program, Child)> = Vec::new();
    let mut skipped: Vec<&Program> = Vec::new();
    for program in &programs {
        if skip.iter().any(|s| s == &program.qualified || s == &program.stem) {
            println!("cargo:warning=FLOWGATE_BPF_SKIP: not building {}", program.source.display());
            skipped.push(program);
            continue;
        }
        let child = Command::new("clang")
            .args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror"])
            .arg(format!("-I{}", lib_dir.display()))
            .arg(format!("-I{MULTIARCH_INCLUDE}"))
            .arg("-c")
            .arg(&program.source)
            .arg("-o")
            .arg(&program.object)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => {
                    format!("clang is not installed. Install the Debian packages: apt-get install {PACKAGES}")
                }
                _ => format!("cannot run clang: {e}"),
            })?;
        running.push((program, child));
    }

    let mut failures = String::new();
    for (program, child) in running {
        let output = child.wait_with_output().map_err(|e| format!("waiting for clang: {e}"))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let _ = write!(failures, "clang failed on {} ({}):\n{stderr}\n", program.source.display(), output.status);
            if stderr.contains("file not found") {
                let _ =
                    writeln!(failures, "A header is missing. Install the Debian packages: apt-get install {PACKAGES}");
            }
        }
    }
    if !failures.is_empty() {
        let _ = write!(
            failures,
            "To build without programs that do not compile yet, list their stems in \
             FLOWGATE_BPF_SKIP (e.g. FLOWGATE_BPF_SKIP=endpoint,uplink)."
        );
        return Err(failures);
    }

    let mut objects = String::from(
        "// @generated by crates/ebpf/build.rs: the compiled eBPF objects.\n\n\
         /// aya parses the ELF in place and needs it aligned; `include_bytes!` alone guarantees 1.\n\
         #[repr(C, align(8))]\n\
         struct Aligned<B: ?Sized>(B);\n\n",
    );
    for program in &programs {
        let source = program.source.display();
        if skipped.iter().any(|s| s.qualified == program.qualified) {
            let _ = write!(
                objects,
                "/// Not built: `{source}` was listed in `FLOWGATE_BPF_SKIP`.\n\
                 pub static {name}: &[u8] = &[];\n\n",
                name = program.static_name,
            );
        } else {
            let _ = write!(
                objects,
                "/// The object compiled from `{source}`.\n\
                 pub static {name}: &[u8] = {{\n    \
                     const ALIGNED: &Aligned<[u8]> = &Aligned(*include_bytes!({object:?}));\n    \
                     &ALIGNED.0\n\
                 }};\n\n",
                name = program.static_name,
                object = program.object.display().to_string(),
            );
        }
    }
    objects.push_str("/// Every object by name (`ENDPOINT`, `TEST_ECHO`, ...); skipped ones are empty.\npub static ALL: &[(&str, &[u8])] = &[\n");
    for program in &programs {
        let _ = writeln!(objects, "    ({:?}, {}),", program.static_name, program.static_name);
    }
    objects.push_str("];\n");
    fs::write(out_dir.join("objects.rs"), objects).map_err(|e| format!("writing objects.rs: {e}"))?;
    Ok(())
}

/// Adds every `*.c` directly in `dir`, sorted so the generated file is stable.
fn collect(dir: &Path, prefix: &str, out_dir: &Path, programs: &mut Vec<Program>) -> Result<(), String> {
    let entries = fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut sources: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.is_file() && path.extension().is_some_and(|ext| ext == "c"))
        .collect();
    sources.sort();
    for source in sources {
        let stem = source
            .file_stem()
            .and_then(|s| s.to_str())
            .ok_or_else(|| format!("{}: file name is not UTF-8", source.display()))?
            .to_owned();
        let (qualified, flat) = if prefix.is_empty() {
            (stem.clone(), stem.clone())
        } else {
            (format!("{prefix}/{stem}"), format!("{prefix}_{stem}"))
        };
        let static_name: String =
            flat.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
        if static_name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(format!("{}: a program's file name must not start with a digit", source.display()));
        }
        let object = out_dir.join(format!("{}.o", static_name.to_ascii_lowercase()));
        programs.push(Program { source, qualified, stem, static_name, object });
    }
    Ok(())
}
