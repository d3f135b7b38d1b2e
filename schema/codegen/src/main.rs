//! Regenerates the Rust code of the `.capnp` files under `schema/` into the
//! directory given as the only argument. Needs the `capnp` tool on PATH
//! (Debian package `capnproto`). Used by `scripts/gen-schema`.

use std::path::PathBuf;
use std::process::ExitCode;

const SCHEMAS: [&str; 3] = ["common.capnp", "control.capnp", "data.capnp"];

fn main() -> ExitCode {
    let Some(out_dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: ringfs-schema-codegen OUT_DIR");
        return ExitCode::from(2);
    };
    let schema_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cmd = capnpc::CompilerCommand::new();
    cmd.src_prefix(&schema_dir).output_path(&out_dir);
    for schema in SCHEMAS {
        cmd.file(schema_dir.join(schema));
    }
    match cmd.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringfs-schema-codegen: {e}");
            ExitCode::FAILURE
        }
    }
}
