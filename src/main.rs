//! The `gridhub` binary: `serve`, `token`, `org generate`, `org check`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use gridhub::auth::{Authority, Role};
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
    /// Mint a terminal's credential (signed with the hub's key) and print it.
    Token {
        /// The terminal's node id, e.g. 230805 (东风区) or 230805007001-01 (a grid worker).
        #[arg(long)]
        endpoint: String,
        /// Default: operator at a center, worker at a worker node.
        #[arg(long, value_enum)]
        role: Option<Role>,
        /// Lifetime in seconds (default: auth.default_ttl_secs).
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Generate or check org trees.
    Org {
        #[command(subcommand)]
        command: OrgCommand,
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
        Command::Token {
            endpoint,
            role,
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
                .mint(&org, &endpoint, role, ttl, gridhub::clock::now_ms() / 1000)
                .map_err(|e| e.to_string())?;
            println!("{token}");
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
