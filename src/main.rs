//! The `gridhub` binary: `serve`, `demo`, `token`, `org generate`, `org check`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use gridhub::auth::{Authority, Role, Seat};
use gridhub::config::Config;
use gridhub::org::{Org, Preset};

// glibc's malloc spent a fifth of the hub's CPU under load (buffers allocated on one thread and
// freed on another); mimalloc handles that pattern with per-thread free lists.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "gridhub",
    version,
    about = "Real-time command-and-dispatch hub for a city grid-management command center"
)]
struct Cli {
    /// Settings file (default: config/gridhub.toml if present, else built-in defaults).
    #[arg(long, global = true, env = "GRIDHUB_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub until SIGTERM or Ctrl-C, then drain and exit.
    Serve,
    /// Run the hub with a simulated city around it (grid workers, stations, a stream of citizen
    /// requests), its data in <data_dir>/demo; prints sign-in links for the console and a field
    /// page.
    Demo {
        /// Share of grid workers on line (0–1).
        #[arg(long, default_value_t = 0.8)]
        online: f64,
        /// Citizen requests taken in per minute.
        #[arg(long, default_value_t = 6.0)]
        orders_per_minute: f64,
        #[arg(long, default_value_t = 2308)]
        seed: u64,
        /// Requests in the year of history written before the demo starts (its analysis view
        /// reads them); 0 for none. The plant (132 squares, 33 hot, an intervention at 82 %)
        /// is the same at any size.
        #[arg(long, default_value_t = 32_000)]
        history: usize,
    },
    /// Write a generated year of requests ending today into the hub's store (before `serve`):
    /// the seed's 320,944 by default, with planted hotspots, causes and an intervention, for
    /// the analysis and its benchmark.
    History {
        #[arg(long, default_value_t = 320_944)]
        orders: usize,
        #[arg(long, default_value_t = gridhub::analysis::history::SEED)]
        seed: u64,
        /// Write only the year's site registry here (the body of POST /api/v1/analysis/sites),
        /// touching no store: how config/sites/jiamusi.json is made.
        #[arg(long)]
        sites_json: Option<PathBuf>,
    },
    /// Mint a terminal's credential (signed with the hub's key) and print it.
    Token {
        /// The terminal's node id, e.g. 230805 (东风区) or 230805007001-01 (a grid worker).
        #[arg(long)]
        endpoint: String,
        /// Default: operator at a center, worker at a worker node. `observer` for a video wall.
        #[arg(long, value_enum)]
        role: Option<Role>,
        /// Which of the terminals at the node this is (a center's wall, desks and station PC
        /// each have one): 1 to 15 of a-z, 0-9, - and _.
        #[arg(long, default_value = "main")]
        seat: Seat,
        /// Lifetime in seconds (default: auth.default_ttl_secs).
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Generate or check org trees.
    Org {
        #[command(subcommand)]
        command: OrgCommand,
    },
    /// Move the hub's data between stores.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Copy the SQLite file (store.path) into an empty PostgreSQL database, for a hub that grows
    /// to several nodes; stop the hub first. Then set store.url to the same URL.
    Copy {
        /// The PostgreSQL database: postgres://user:password@host:port/database
        #[arg(long)]
        to: String,
        /// The SQLite file (default: the configured store.path).
        #[arg(long)]
        from: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum OrgCommand {
    /// Write a deterministic tree for a preset.
    Generate {
        #[arg(long, value_enum)]
        preset: Preset,
        /// Multiply townships, villages and workers (10 = the 10× load-test city).
        #[arg(long, default_value_t = 1)]
        scale: usize,
        /// Output file (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Validate a tree file; every problem is reported with its line.
    Check { file: PathBuf },
}

fn redact(url: &str) -> String {
    gridhub::store::postgres::redact(url)
}

fn load_config(path: Option<&std::path::Path>) -> Result<Config, String> {
    Config::load(path, std::env::vars()).map_err(|e| e.to_string())
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Serve => {
            let config = load_config(cli.config.as_deref())?;
            gridhub::telemetry::init_logging(&config.log.filter, config.log.format == "json");
            let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
            rt.block_on(serve(config))
        }
        Command::Demo {
            online,
            orders_per_minute,
            seed,
            history,
        } => {
            let config = load_config(cli.config.as_deref())?;
            gridhub::telemetry::init_logging(&config.log.filter, config.log.format == "json");
            let mut opts = gridhub::demo::DemoOptions::new(online, orders_per_minute, seed);
            opts.history = history;
            let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
            rt.block_on(demo(config, opts))
        }
        Command::Token {
            endpoint,
            role,
            seat,
            ttl,
        } => {
            let config = load_config(cli.config.as_deref())?;
            let org = Org::load(&config.org.file).map_err(|e| e.to_string())?;
            let idx = org.lookup(&endpoint).ok_or_else(|| {
                format!(
                    "endpoint {endpoint:?} is not in {}",
                    config.org.file.display()
                )
            })?;
            let role = role.unwrap_or_else(|| Role::default_for(org.tier(idx)));
            let secret = config.signing_secret().map_err(|e| e.to_string())?;
            let auth = Authority::new(&secret)?;
            let ttl = ttl.unwrap_or(config.auth.default_ttl_secs);
            let token = auth
                .mint_seat(
                    &org,
                    &endpoint,
                    role,
                    seat,
                    ttl,
                    gridhub::clock::now_ms() / 1000,
                )
                .map_err(|e| e.to_string())?;
            println!("{token}");
            Ok(())
        }
        Command::History {
            orders,
            seed,
            sites_json,
        } => {
            let config = load_config(cli.config.as_deref())?;
            let org = std::sync::Arc::new(Org::load(&config.org.file).map_err(|e| e.to_string())?);
            if let Some(out) = sites_json {
                let text = gridhub::analysis::history::sites_json(&org, seed);
                return std::fs::write(&out, text).map_err(|e| format!("{}: {e}", out.display()));
            }
            let spec = gridhub::analysis::history::year_to(gridhub::clock::now_ms(), orders, seed);
            let target = config.store_target();
            let done = gridhub::analysis::history::import(&config, &org, &target, &spec)?;
            println!(
                "{target}: {} requests (ids {}…, {} still open) and {} sites written in {:.1} s",
                done.orders, done.first_id, done.open, done.sites, done.seconds
            );
            Ok(())
        }
        Command::Store {
            command: StoreCommand::Copy { to, from },
        } => {
            let config = load_config(cli.config.as_deref())?;
            let from = from.unwrap_or_else(|| config.store_path());
            let started = std::time::Instant::now();
            let copied = gridhub::store::copy::sqlite_to_postgres(&from, &to)
                .map_err(|e| format!("{} → {}: {e}", from.display(), redact(&to)))?;
            for (table, rows) in &copied {
                println!("{table:>20} {rows:>10}");
            }
            println!(
                "{} → {}: {} rows in {:.1} s; set store.url to it",
                from.display(),
                redact(&to),
                copied.iter().map(|(_, n)| n).sum::<u64>(),
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::Org { command } => match command {
            OrgCommand::Generate { preset, scale, out } => {
                let text = gridhub::org::generate_csv(preset, scale);
                match out {
                    None => print!("{text}"),
                    Some(p) => {
                        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
                        }
                        std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
                        eprintln!("wrote {}", p.display());
                    }
                }
                Ok(())
            }
            OrgCommand::Check { file } => {
                let org = Org::load(&file).map_err(|e| format!("{}: {e}", file.display()))?;
                let t = org.tier_counts();
                println!(
                    "{}: ok — {} nodes: {} city, {} county, {} township, {} village, {} worker; {} dispatchable terminals",
                    file.display(),
                    org.len(),
                    t[0],
                    t[1],
                    t[2],
                    t[3],
                    t[4],
                    org.dispatchable()
                );
                Ok(())
            }
        },
    }
}

async fn serve(config: Config) -> Result<(), String> {
    let running = gridhub::app::start(config)
        .await
        .map_err(|e| e.to_string())?;
    println!("gridhub listening on http://{}", running.addr);
    wait_for_signal().await;
    tracing::info!("shutdown requested; draining");
    running.shutdown().await;
    Ok(())
}

async fn demo(config: Config, opts: gridhub::demo::DemoOptions) -> Result<(), String> {
    let stop = tokio_util::sync::CancellationToken::new();
    let running = gridhub::demo::start(config, &opts, stop.clone()).await?;
    let hub = &running.hub;
    let base = format!("http://{}", running.addr);
    let seat = |path: &str, id: &str, role: Option<Role>, seat: &str| -> Result<String, String> {
        let idx = hub
            .org
            .lookup(id)
            .ok_or_else(|| format!("{id} is not in the tree"))?;
        let role = role.unwrap_or_else(|| Role::default_for(hub.org.tier(idx)));
        let token = hub
            .authority
            .mint_seat(
                &hub.org,
                id,
                role,
                Seat::parse(seat)?,
                hub.config.auth.default_ttl_secs,
                gridhub::clock::now_ms() / 1000,
            )
            .map_err(|e| e.to_string())?;
        Ok(format!("{base}{path}#credential={token}"))
    };
    let link = |path: &str, id: &str| seat(path, id, None, "main");
    let worker = (0..hub.org.len() as u32)
        .map(gridhub::org::NodeIdx)
        .find(|&i| hub.org.tier(i) == gridhub::org::Tier::Worker)
        .map(|i| hub.org.id(i).to_string())
        .unwrap_or_default();
    println!("gridhub demo listening on {base}");
    println!("  city console (佳木斯市):     {}", link("/", "230800")?);
    println!(
        "  city video wall (observer):  {}",
        seat("/", "230800", Some(Role::Observer), "wall")?
    );
    println!("  county console (东风区):     {}", link("/", "230805")?);
    println!("  field page ({worker}): {}", link("/field", &worker)?);
    println!(
        "Open a link in a browser; the credential is taken from the link and kept by the page."
    );
    wait_for_signal().await;
    stop.cancel();
    running.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    // Installing a handler fails only if the signal machinery is unavailable; then Ctrl-C alone
    // still works.
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gridhub: {e}");
            ExitCode::FAILURE
        }
    }
}
