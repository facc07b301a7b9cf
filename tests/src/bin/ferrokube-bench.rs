//! `ferrokube-bench`: ferrokube's components against their upstream peers, one line per
//! figure with the ratio.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ferrokube_tests::bench;

#[derive(Parser)]
#[command(
    version,
    about = "Benchmarks ferrokube's components against upstream's"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Deployment scale-up and scale-down through the controller-manager.
    ControllerManager {
        /// Replicas of the Deployment.
        #[arg(long, default_value_t = 5000)]
        replicas: usize,
        /// Client limits to compare at, as `qps/burst` (repeatable).
        #[arg(long = "limits", default_values = ["20/30", "500/500"])]
        limits: Vec<String>,
        /// Our controller-manager binary (default: beside this program).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Give up on a phase after this many seconds.
        #[arg(long, default_value_t = 1800)]
        timeout_seconds: u64,
    },
    /// The scheduler (SchedulingBasic shape): time until M pending pods on N nodes are
    /// bound, pods/s, CPU and peak RSS, ours against kube-scheduler at equal client QPS.
    Scheduler {
        /// Nodes (plain Node objects).
        #[arg(long, default_value_t = 5000)]
        nodes: usize,
        /// Pending pods, created before the scheduler starts.
        #[arg(long, default_value_t = 10000)]
        pods: usize,
        /// Client limits to compare at, as `qps/burst` (repeatable).
        #[arg(long = "limits", default_values = ["50/100", "5000/5000"])]
        limits: Vec<String>,
        /// Pod shapes: `basic`, `spread` (repeatable).
        #[arg(long = "shape", default_values = ["basic"])]
        shapes: Vec<bench::scheduler::Shape>,
        /// Our scheduler binary (default: beside this program).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Give up on a run after this many seconds.
        #[arg(long, default_value_t = 1800)]
        timeout_seconds: u64,
        /// Clients posting raw `pods/binding` for the machine's binding ceiling (0 skips it).
        #[arg(long, default_value_t = 16)]
        ceiling_clients: usize,
        /// Requests each ceiling client keeps in flight.
        #[arg(long, default_value_t = 8)]
        ceiling_in_flight: usize,
        /// Runs of each peer (and of the ceiling) per shape and limit, alternating which
        /// peer goes first; the medians are reported.
        #[arg(long, default_value_t = 1)]
        rounds: usize,
    },
    /// The Ingress controller against nginx: wrk throughput and latency (HTTP and TLS),
    /// route propagation at growing Ingress counts, resident memory.
    Ingress {
        /// Seconds each wrk run measures.
        #[arg(long, default_value_t = 10)]
        duration_seconds: u64,
        /// wrk connections.
        #[arg(long, default_value_t = 50)]
        connections: u32,
        /// wrk threads.
        #[arg(long, default_value_t = 2)]
        threads: u32,
        /// wrk runs per proxy and protocol, alternating which proxy goes first; the
        /// medians are reported.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Ingress counts to measure route propagation at (repeatable; RSS at the last).
        #[arg(long = "routes", default_values_t = [1000usize, 5000])]
        routes: Vec<usize>,
        /// Propagation samples per count.
        #[arg(long, default_value_t = 5)]
        samples: usize,
        /// Our controller binary (default: beside this program).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// The nginx binary.
        #[arg(long, default_value = "/usr/sbin/nginx")]
        nginx: PathBuf,
    },
    /// The kubelet (as root): pod start-up latency, image cached, for sequential single
    /// pods and for a batch on one node; the kubelet's RSS idle and loaded.
    Kubelet {
        /// Sequential single pods.
        #[arg(long, default_value_t = 20)]
        singles: usize,
        /// Pods created at once.
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// Our kubelet binary (default: beside this program).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Give up on a phase after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout_seconds: u64,
    },
}

fn beside_this_program(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe.with_file_name(name))
}

fn parse_limit(s: &str) -> anyhow::Result<(f64, u32)> {
    let (q, b) = s
        .split_once('/')
        .ok_or_else(|| anyhow::anyhow!("--limits {s:?}: expected qps/burst, e.g. 20/30"))?;
    Ok((q.parse()?, b.parse()?))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::ControllerManager {
            replicas,
            limits,
            binary,
            timeout_seconds,
        } => {
            let cfg = bench::controller_manager::Config {
                replicas,
                limits: limits
                    .iter()
                    .map(|l| parse_limit(l))
                    .collect::<anyhow::Result<_>>()?,
                ferrokube_bin: match binary {
                    Some(b) => b,
                    None => beside_this_program("ferrokube-controller-manager")?,
                },
                timeout: Duration::from_secs(timeout_seconds),
            };
            bench::controller_manager::run(&cfg).await?;
        }
        Command::Scheduler {
            nodes,
            pods,
            limits,
            shapes,
            binary,
            timeout_seconds,
            ceiling_clients,
            ceiling_in_flight,
            rounds,
        } => {
            anyhow::ensure!(rounds > 0, "--rounds must be at least 1");
            let cfg = bench::scheduler::Config {
                nodes,
                pods,
                limits: limits
                    .iter()
                    .map(|l| parse_limit(l))
                    .collect::<anyhow::Result<_>>()?,
                shapes,
                ferrokube_bin: match binary {
                    Some(b) => b,
                    None => beside_this_program("ferrokube-scheduler")?,
                },
                timeout: Duration::from_secs(timeout_seconds),
                ceiling_clients,
                ceiling_in_flight,
                rounds,
            };
            bench::scheduler::run(&cfg).await?;
        }
        Command::Ingress {
            duration_seconds,
            connections,
            threads,
            rounds,
            mut routes,
            samples,
            binary,
            nginx,
        } => {
            routes.sort_unstable();
            routes.dedup();
            anyhow::ensure!(
                routes.first().is_some_and(|r| *r > 0) && samples > 0 && rounds > 0,
                "--routes must be positive, and --samples and --rounds at least 1"
            );
            let cfg = bench::ingress::Config {
                ferrokube_bin: match binary {
                    Some(b) => b,
                    None => beside_this_program("ferrokube-ingress-controller")?,
                },
                nginx_bin: nginx,
                duration: Duration::from_secs(duration_seconds),
                connections,
                threads,
                rounds,
                routes,
                samples,
            };
            bench::ingress::run(&cfg).await?;
        }
        Command::Kubelet {
            singles,
            batch,
            binary,
            timeout_seconds,
        } => {
            anyhow::ensure!(
                singles > 0 && batch > 0,
                "--singles and --batch must be at least 1"
            );
            let cfg = bench::kubelet::Config {
                ferrokube_bin: match binary {
                    Some(b) => b,
                    None => beside_this_program("ferrokube-kubelet")?,
                },
                singles,
                batch,
                timeout: Duration::from_secs(timeout_seconds),
            };
            bench::kubelet::run(&cfg).await?;
        }
    }
    Ok(())
}
