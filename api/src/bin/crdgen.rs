//! Writes `config/crd/*.yaml` and `docs/reference.md` from the Rust types.
//!
//! ```text
//! cargo run -p lifeboat-api --bin crdgen            # write the files
//! cargo run -p lifeboat-api --bin crdgen -- --check # exit 1 if they differ
//! cargo run -p lifeboat-api --bin crdgen -- --stdout
//! ```
//! `--root DIR` sets the repository root (default: this crate's parent).

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut check = false;
    let mut stdout = false;
    let mut root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--check" => check = true,
            "--stdout" => stdout = true,
            "--root" => match args.next() {
                Some(dir) => root = PathBuf::from(dir),
                None => {
                    eprintln!("crdgen: --root needs a directory");
                    return ExitCode::from(2);
                }
            },
            other => {
                eprintln!(
                    "crdgen: unknown argument {other:?}; use --check, --stdout or --root DIR"
                );
                return ExitCode::from(2);
            }
        }
    }

    let files = match lifeboat_api::crd::generated_files() {
        Ok(mut files) => {
            files.push(lifeboat_api::docs::reference_file());
            files
        }
        Err(e) => {
            eprintln!("crdgen: {e}");
            return ExitCode::FAILURE;
        }
    };

    if stdout {
        for (index, file) in files.iter().enumerate() {
            if index > 0 {
                println!("---");
            }
            print!("{}", file.contents);
        }
        return ExitCode::SUCCESS;
    }

    let mut drifted = false;
    for file in &files {
        let path = root.join(file.path);
        let current = std::fs::read_to_string(&path).ok();
        if current.as_deref() == Some(file.contents.as_str()) {
            continue;
        }
        if check {
            eprintln!("crdgen: {} is out of date", file.path);
            drifted = true;
            continue;
        }
        if let Some(dir) = path.parent()
            && let Err(e) = std::fs::create_dir_all(dir)
        {
            eprintln!("crdgen: cannot create {}: {e}", dir.display());
            return ExitCode::FAILURE;
        }
        if let Err(e) = std::fs::write(&path, &file.contents) {
            eprintln!("crdgen: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("wrote {}", file.path);
    }
    if drifted {
        eprintln!("crdgen: run `cargo run -p lifeboat-api --bin crdgen` and commit the result");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
