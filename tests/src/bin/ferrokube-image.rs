//! `ferrokube-image`: builds an OCI image from local files (busybox-static as the base when
//! asked) and pushes it to a registry reached over plain HTTP (the local cluster's).
//!
//! ```text
//! ferrokube-image --busybox --file ./index.html:/www/index.html \
//!     --push 127.0.0.1:5000/web:1 -- httpd -f -p 8080 -h /www
//! ```

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Parser;
use ferrokube_tests::images::ImageBuilder;

#[derive(Parser)]
#[command(
    name = "ferrokube-image",
    about = "Build an OCI image from local files and push it."
)]
struct Args {
    /// Where to push: `<registry host:port>/<repository>:<tag>`.
    #[arg(long)]
    push: String,
    /// Start from busybox-static (/bin/busybox and its applets).
    #[arg(long)]
    busybox: bool,
    /// `SOURCE:DEST[:MODE]` (octal mode, default 644; 755 for executables).
    #[arg(long = "file")]
    files: Vec<String>,
    /// `K=V` added to ENV.
    #[arg(long = "env")]
    env: Vec<String>,
    /// WORKDIR.
    #[arg(long)]
    workdir: Option<String>,
    /// ENTRYPOINT (one argument per flag).
    #[arg(long = "entrypoint")]
    entrypoint: Vec<String>,
    /// CMD.
    #[arg(last = true)]
    cmd: Vec<String>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mut b = if args.busybox {
        ImageBuilder::busybox()?
    } else {
        ImageBuilder::scratch()
    };
    for f in &args.files {
        let parts: Vec<&str> = f.split(':').collect();
        let (src, dest, mode) = match parts.as_slice() {
            [s, d] => (*s, *d, 0o644),
            [s, d, m] => (*s, *d, u32::from_str_radix(m, 8).context("--file mode")?),
            _ => bail!("--file wants SOURCE:DEST[:MODE], got {f:?}"),
        };
        b = b.copy(dest, &PathBuf::from(src), mode)?;
    }
    for e in &args.env {
        b = b.env(e);
    }
    if let Some(w) = &args.workdir {
        b = b.workdir(w);
    }
    if !args.entrypoint.is_empty() {
        let e: Vec<&str> = args.entrypoint.iter().map(String::as_str).collect();
        b = b.entrypoint(&e);
    }
    if !args.cmd.is_empty() {
        let c: Vec<&str> = args.cmd.iter().map(String::as_str).collect();
        b = b.cmd(&c);
    }
    let (registry, rest) = args
        .push
        .split_once('/')
        .context("--push needs registry/repository:tag")?;
    let (repo, tag) = rest.rsplit_once(':').unwrap_or((rest, "latest"));
    let url = b.push(registry, repo, tag).await?;
    println!("{url}");
    Ok(())
}
