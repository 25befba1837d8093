//! demo — the hub with a simulated city around it, so a console is alive the moment it opens:
//! grid workers and village stations on real WebSocket connections (going on and off line,
//! walking, busy, working their orders), and a stream of citizen requests carried through the
//! eight steps. Its database is its own (`<data_dir>/demo/`, emptied at every start); a person
//! who signs in as a simulated terminal takes its place.

mod camera;
mod driver;
pub mod script;
mod terminal;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::auth::Role;
use crate::config::Config;
use crate::org::{NodeIdx, Tier};

#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Share of grid workers on line at a time (0–1).
    pub online: f64,
    /// Citizen requests taken in per minute.
    pub orders_per_minute: f64,
    pub seed: u64,
    /// Village stations on line too (every one of them).
    pub stations: bool,
    /// Simulated terminals answer calls with a test card and silence (a WebRTC peer each).
    pub camera: bool,
    pub pace: script::Pace,
    /// Requests in the year of history written before the hub starts (0: none).
    pub history: usize,
}

impl DemoOptions {
    pub fn new(online: f64, orders_per_minute: f64, seed: u64) -> DemoOptions {
        DemoOptions {
            online: online.clamp(0.0, 1.0),
            orders_per_minute,
            seed,
            stations: true,
            camera: true,
            pace: script::Pace::demo(),
            history: 0,
        }
    }
}

/// Raises this process's open-file limit to its hard limit: the demo's own terminals hold two
/// descriptors each (theirs and the hub's side), on top of what people connect.
fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we pass, nothing else.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    crate::telemetry::open_file_limit()
}

/// Starts the hub on `config` (its data in `<data_dir>/demo`) and the simulation; returns once
/// everything runs. `stop` ends the simulation; the caller shuts the hub down.
pub async fn start(
    mut config: Config,
    opts: &DemoOptions,
    stop: CancellationToken,
) -> Result<crate::app::Running, String> {
    let base = config.server.data_dir.clone();
    let dir = base.join("demo");
    // A fresh city every time; the key stays, so sign-in links keep working across restarts.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // The hub's own key, wherever the demo's data goes: `gridhub token` links keep working.
    let key = config.secret_file();
    config.auth.secret_file = if key.is_absolute() {
        key
    } else {
        std::env::current_dir()
            .map_err(|e| e.to_string())?
            .join(key)
    };
    config.server.data_dir = dir;
    // Emptied at every start, so always the embedded file: never a shared server's database.
    config.store.url = None;
    if opts.history > 0 {
        // A year of requests behind the live ones, so the analysis has something to read.
        let org = Arc::new(crate::org::Org::load(&config.org.file).map_err(|e| e.to_string())?);
        let spec =
            // The committed registry (config/sites/jiamusi.json) names the same sites.
            crate::analysis::history::year_to(
                crate::clock::now_ms(),
                opts.history,
                crate::analysis::history::SEED,
            );
        let done = crate::analysis::history::import(&config, &org, &config.store_target(), &spec)?;
        tracing::info!(
            "history: {} requests of the year before and {} sites written in {:.1} s",
            done.orders,
            done.sites,
            done.seconds
        );
    }
    let fd_limit = raise_fd_limit();
    let running = crate::app::start(config).await.map_err(|e| e.to_string())?;
    let hub = Arc::clone(&running.hub);
    let org = &hub.org;

    // Who is simulated: every village station, and a share of the grid workers, within the
    // descriptors left after room for people's consoles and pages.
    let budget = (fd_limit.saturating_sub(3_000) / 2) as usize;
    let mut rng = script::Rng::new(opts.seed);
    let mut who: Vec<NodeIdx> = Vec::new();
    for i in (0..org.len() as u32).map(NodeIdx) {
        match org.tier(i) {
            Tier::Village if opts.stations => who.push(i),
            Tier::Worker if rng.unit() < opts.online => who.push(i),
            _ => {}
        }
    }
    if who.len() > budget {
        tracing::warn!(
            "the open-file limit ({fd_limit}) allows {budget} simulated terminals of {}",
            who.len()
        );
        who.truncate(budget);
    }
    let camera = if opts.camera {
        match camera::Camera::new(crate::sessions::sfu::media_ip(running.addr.ip())) {
            Ok(c) => Some(Arc::new(c)),
            Err(e) => {
                tracing::warn!("the demo's terminals will decline calls: {e}");
                None
            }
        }
    } else {
        None
    };
    let sim = Arc::new(terminal::Sim {
        addr: running.addr,
        pace: opts.pace,
        stop: stop.clone(),
        camera,
    });
    let now = hub.clock.now_ms() / 1000;
    let spread = Duration::from_secs(20);
    for (k, &i) in who.iter().enumerate() {
        let n = org.node(i);
        let Some(at) = n.location else { continue };
        let tier = org.tier(i);
        let token = hub
            .authority
            .mint(
                org,
                org.id(i).as_str(),
                Role::default_for(tier),
                30 * 24 * 3600,
                now,
            )
            .map_err(|e| e.to_string())?;
        let w = terminal::Who {
            id: org.id(i).to_string(),
            token,
            worker: tier == Tier::Worker,
            lat: at.lat,
            lon: at.lon,
        };
        let start_after = spread.mul_f64(k as f64 / who.len() as f64);
        tokio::spawn(terminal::run(
            Arc::clone(&sim),
            w,
            opts.seed ^ (k as u64 + 1),
            start_after,
        ));
    }
    // Requests come from where simulated workers are, so each one can be worked end to end.
    let workers: Vec<NodeIdx> = who
        .iter()
        .copied()
        .filter(|&i| org.tier(i) == Tier::Worker)
        .collect();
    tokio::spawn(
        driver::Driver::new(
            Arc::clone(&hub),
            workers,
            opts.seed.rotate_left(17),
            opts.pace,
            opts.orders_per_minute,
        )
        .run(stop),
    );
    tracing::info!(terminals = who.len(), "demo city started");
    Ok(running)
}
