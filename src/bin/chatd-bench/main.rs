//! chatd-bench: load scenarios for chatd, with figures a person can read and `--json` for a
//! machine. Without `--url` each scenario starts chatd itself on a temporary data directory;
//! with `--url` it loads any server speaking the contract, and `--pid` names that server's
//! process so its CPU time and memory are reported too. Both repeat for the instances of a
//! cluster: the clients are spread over the urls, and the figures summed over the pids.

mod ceiling;
mod drain;
mod history;
mod idle;
mod load;
mod process_usage;
mod recovery;
mod report;
mod target;

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use load::Plan;
use report::Summary;
use target::{Server, Target};

#[derive(Parser)]
#[command(name = "chatd-bench", about = "Load scenarios for chatd")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Args, Clone)]
struct Common {
    /// A running server that speaks the contract (e.g. http://127.0.0.1:8080); without it,
    /// chatd is started here. Repeat it for the instances of a cluster (--url A --url B): of N
    /// urls, socket i opens on url i mod N and user j sends through url j mod N, so most
    /// messages cross instances.
    #[arg(long)]
    url: Vec<String>,
    /// The JWT secret of the server at --url (of every one, when repeated).
    #[arg(
        long,
        env = "JWT_SECRET",
        hide_env_values = true,
        default_value = "chatd-bench-secret"
    )]
    secret: String,
    /// The process id of the server at --url, whose CPU time and memory (from /proc/PID) to
    /// report; without --url the bench watches the chatd it starts. Repeat it, e.g. once per
    /// --url: the report sums over every pid and shows each one's part.
    #[arg(long, requires = "url")]
    pid: Vec<u32>,
    /// How long the load runs.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds at the start whose messages count but whose latencies are not measured.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Print a machine-readable summary.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Scenario {
    /// Users message each other one to one.
    OneToOne {
        #[command(flatten)]
        common: Common,
        /// At least 2: every message goes from one user to another.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(2..))]
        users: u32,
        /// Messages per second.
        #[arg(long, default_value_t = 5000.0)]
        rate: f64,
        /// Also run the same load against a bare chat server and compare.
        #[arg(long)]
        ceiling: bool,
    },
    /// One sender posts to one large group, every member listening.
    Fanout {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
        members: u32,
        /// Messages per second.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Also run the same load against a bare chat server and compare.
        #[arg(long)]
        ceiling: bool,
    },
    /// Open sockets that receive nothing, and measure the server's memory per socket.
    Idle {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
        sockets: u32,
    },
    /// Fill the outbox with a burst, then time the relay emptying it into the store.
    Drain {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 50_000)]
        messages: usize,
        /// Also measure MongoDB, against this server (start it fresh: it slows as it fills).
        #[arg(long)]
        mongo_uri: Option<String>,
    },
    /// Reconnects with an ancient `since` on a large embedded store, all at once, during a
    /// steady stream of sends: the sends' latency before and during, each replay's duration and
    /// the server's memory before, during and after.
    Recovery {
        /// Messages in the store, built before chatd starts.
        #[arg(long, default_value_t = 1_000_000)]
        messages: usize,
        /// Reconnects at once, each of its own user.
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
        reconnects: u32,
        /// Messages each reconnect is replayed (at most chatd's RECOVERY_LIMIT, 1,000).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1000))]
        replayed: u32,
        /// Sends per second throughout.
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        /// Seconds of sending measured before the burst.
        #[arg(long, default_value_t = 10.0)]
        baseline: f64,
        /// Where to build the store and keep it for the next run (it takes a while); a
        /// temporary directory without it.
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
        /// chatd's RECOVERY_CONCURRENCY, when not its default.
        #[arg(long)]
        concurrency: Option<u32>,
        /// Seconds between the last socket closing and reading the server's memory.
        #[arg(long, default_value_t = 5.0)]
        settle: f64,
        /// Bursts one after another: memory a burst leaves behind shows as a rise.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        bursts: u32,
        #[arg(long)]
        json: bool,
    },
    /// The bare chat server that `--ceiling` starts.
    #[command(hide = true)]
    CeilingServer {
        /// Where to write its address once listening, as chatd's `--ready-file` does.
        #[arg(long)]
        ready_file: std::path::PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (summary, json) = match cli.scenario {
            Scenario::CeilingServer { ready_file } => return ceiling::serve(&ready_file).await,
            Scenario::OneToOne {
                common,
                users,
                rate,
                ceiling,
            } => {
                let plan = || one_to_one(users as usize, rate, &common);
                (
                    with_ceiling(target(&common, &[])?, plan, ceiling, &common).await?,
                    common.json,
                )
            }
            Scenario::Fanout {
                common,
                members,
                rate,
                ceiling,
            } => {
                let max = (members + 1).to_string();
                let target = target(&common, &[("MAX_PARTICIPANTS", max)])?;
                let plan = || fanout(members as usize, rate, &common);
                (
                    with_ceiling(target, plan, ceiling, &common).await?,
                    common.json,
                )
            }
            Scenario::Idle { common, sockets } => {
                let target = target(&common, &[])?;
                (
                    idle::run(
                        &target,
                        sockets as usize,
                        Duration::from_secs_f64(common.duration),
                    )
                    .await?,
                    common.json,
                )
            }
            Scenario::Recovery {
                messages,
                reconnects,
                replayed,
                rate,
                baseline,
                data_dir,
                concurrency,
                settle,
                bursts,
                json,
            } => {
                let layout = history::Layout {
                    messages,
                    recovering: reconnects as usize,
                    replayed: replayed as usize,
                };
                anyhow::ensure!(
                    layout.recovering * layout.replayed < messages,
                    "the store must hold more messages than reconnects × replayed"
                );
                let options = recovery::Options {
                    layout,
                    rate,
                    baseline,
                    data_dir,
                    concurrency,
                    settle: Duration::from_secs_f64(settle),
                    bursts,
                };
                (recovery::run(options).await?, json)
            }
            Scenario::Drain {
                common,
                messages,
                mongo_uri,
            } => {
                anyhow::ensure!(
                    common.url.is_empty(),
                    "drain starts chatd itself: --url does not apply"
                );
                (
                    drain::run(messages, mongo_uri.as_deref()).await?,
                    common.json,
                )
            }
        };
        summary.print(json);
        Ok(())
    })
}

fn target(common: &Common, env: &[(&str, String)]) -> anyhow::Result<Target> {
    if common.url.is_empty() {
        let mut env = env.to_vec();
        env.push(("JWT_SECRET", common.secret.clone()));
        Target::local(Server::chatd(None, &env)?, &common.secret)
    } else {
        Target::remote(&common.url, &common.secret, &common.pid)
    }
}

/// Runs `plan` against `target` and, with `ceiling`, then against the bare chat server, and
/// reports chatd's figures beside the ceiling's.
async fn with_ceiling(
    target: Target,
    plan: impl Fn() -> Plan,
    ceiling: bool,
    common: &Common,
) -> anyhow::Result<Summary> {
    let mut summary = load::run(&target, plan()).await?;
    if ceiling {
        drop(target);
        let bare = Target::local(Server::ceiling()?, &common.secret)?;
        let measured = load::run(&bare, plan()).await?;
        compare(&mut summary, &measured);
    }
    Ok(summary)
}

fn one_to_one(users: usize, rate: f64, common: &Common) -> Plan {
    Plan {
        scenario: "one-to-one",
        users: (0..users).map(|i| format!("user{i}")).collect(),
        listeners: users,
        rate,
        duration: Duration::from_secs_f64(common.duration),
        warmup: Duration::from_secs_f64(common.warmup.min(common.duration / 2.0)),
        // Message n goes from user n to user n + 1 + (n / users) (mod users): every pair in
        // turn, never to oneself.
        pick: Box::new(move |n| {
            let n = n as usize;
            let from = n % users;
            let to = (from + 1 + (n / users) % (users - 1).max(1)) % users;
            (from, vec![from, to])
        }),
        deliveries_per_message: 1,
    }
}

fn fanout(members: usize, rate: f64, common: &Common) -> Plan {
    // The sender is one more user without a socket, so every message reaches every member.
    let mut users: Vec<String> = (0..members).map(|i| format!("member{i}")).collect();
    users.push("announcer".into());
    let everyone: Vec<usize> = (0..=members).collect();
    Plan {
        scenario: "fanout",
        users,
        listeners: members,
        rate,
        duration: Duration::from_secs_f64(common.duration),
        warmup: Duration::from_secs_f64(common.warmup.min(common.duration / 2.0)),
        pick: Box::new(move |_| (members, everyone.clone())),
        deliveries_per_message: members as u64,
    }
}

fn compare(chatd: &mut Summary, ceiling: &Summary) {
    let fraction = if ceiling.deliveries_per_sec > 0.0 {
        chatd.deliveries_per_sec / ceiling.deliveries_per_sec
    } else {
        0.0
    };
    chatd
        .extra
        .insert("ceiling_delivered".into(), ceiling.delivered.into());
    chatd.extra.insert(
        "ceiling_expected_deliveries".into(),
        ceiling.expected_deliveries.into(),
    );
    chatd.extra.insert(
        "ceiling_deliveries_per_sec".into(),
        ceiling.deliveries_per_sec.round().into(),
    );
    chatd.extra.insert(
        "ceiling_latency_p50_ms".into(),
        ceiling.latency_p50_ms.into(),
    );
    chatd.extra.insert(
        "ceiling_latency_p99_ms".into(),
        ceiling.latency_p99_ms.into(),
    );
    chatd.extra.insert(
        "ceiling_latency_p999_ms".into(),
        ceiling.latency_p999_ms.into(),
    );
    chatd.extra.insert(
        "ceiling_server_cpu_us_per_delivery".into(),
        ceiling.server_cpu_us_per_delivery.into(),
    );
    chatd.extra.insert(
        "fraction_of_ceiling".into(),
        ((fraction * 100.0).round() / 100.0).into(),
    );
}
