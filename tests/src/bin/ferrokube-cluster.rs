//! `ferrokube-cluster`: bring the local cluster up, look at it, take it down.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use ferrokube_tests::cluster::{self, UpOptions};

#[derive(Parser)]
#[command(
    version,
    about = "The ferrokube local cluster: etcd + kube-apiserver + an OCI registry + ferrokube's components"
)]
struct Cli {
    /// Where the cluster keeps its kubeconfig, PKI, data and logs.
    #[arg(long, env = "FERROKUBE_CLUSTER_DIR", global = true)]
    dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the cluster (a running one is left as it is) and print how to reach it.
    Up {
        /// The apiserver's port on 127.0.0.1.
        #[arg(long, default_value_t = 6443)]
        apiserver_port: u16,
        /// The OCI registry's port on 127.0.0.1.
        #[arg(long, default_value_t = 5000)]
        registry_port: u16,
        /// The node's name (its kubelet's `--hostname-override`).
        #[arg(long, default_value = cluster::DEFAULT_NODE_NAME)]
        node_name: String,
        /// The node's pod range.
        #[arg(long, default_value = cluster::DEFAULT_POD_CIDR)]
        pod_cidr: String,
    },
    /// Stop every process of the cluster and remove its data (logs are kept).
    Down,
    /// Show what is running.
    Status,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let dir = cli.dir.unwrap_or_else(cluster::default_dir);
    match cli.command {
        Command::Up {
            apiserver_port,
            registry_port,
            node_name,
            pod_cidr,
        } => {
            let state = cluster::up(&UpOptions {
                dir: dir.clone(),
                apiserver_port,
                registry_port,
                node_name,
                pod_cidr,
            })
            .await?;
            println!("ferrokube local cluster is up");
            println!("  apiserver:  {}", state.server);
            println!("  registry:   {}", state.registry);
            println!("  logs:       {}", dir.join("logs").display());
            println!("  kubeconfig: {}", state.kubeconfig.display());
            for note in &state.notes {
                println!("  note:       {note}");
            }
            println!();
            println!("  export KUBECONFIG={}", state.kubeconfig.display());
        }
        Command::Down => {
            let stopped = cluster::down(&dir)?;
            if stopped.is_empty() {
                println!("no ferrokube local cluster in {}", dir.display());
            } else {
                for c in &stopped {
                    println!("stopped {} (pid {})", c.name, c.pid);
                }
            }
        }
        Command::Status => match cluster::State::load(&dir)? {
            None => println!("no ferrokube local cluster in {}", dir.display()),
            Some(state) => {
                println!("kubeconfig: {}", state.kubeconfig.display());
                for c in &state.components {
                    let alive = ferrokube_tests::process::is_alive(c.pid);
                    println!(
                        "{:<20} pid {:<8} {:<8} {}{}",
                        c.name,
                        c.pid,
                        if alive { "running" } else { "stopped" },
                        c.log.display(),
                        c.health
                            .as_ref()
                            .map(|h| format!("  (health: http://{h}/readyz)"))
                            .unwrap_or_default()
                    );
                }
            }
        },
    }
    Ok(())
}
