//! Imported history: a generated year written into a hub's store before it starts, for the demo
//! and for benchmarks (`gridhub history`).

use std::sync::Arc;

use super::synth::{self, DAY_MS, YearSpec};
use crate::config::Config;
use crate::org::Org;

/// What an import wrote.
#[derive(Debug, Clone)]
pub struct Imported {
    pub orders: usize,
    pub open: usize,
    pub sites: usize,
    pub first_id: u64,
    pub start: u64,
    pub end: u64,
    pub seconds: f64,
}

/// The year ending at the last midnight (China Standard Time) before `now`.
pub fn year_to(now: u64, orders: usize, seed: u64) -> YearSpec {
    const CST: u64 = 8 * 3_600_000;
    let midnight = (now + CST) / DAY_MS * DAY_MS - CST;
    let mut spec = if orders == YearSpec::jiamusi(0).orders {
        YearSpec::jiamusi(midnight - 365 * DAY_MS)
    } else {
        YearSpec::scaled(midnight - 365 * DAY_MS, orders)
    };
    spec.seed = seed;
    spec
}

/// The causes `config`'s taxonomy names for a category (their ids leaked: a handful, once per
/// import, since a generated request names its cause as a static string).
pub fn taxonomy(config: &Config) -> impl Fn(&str) -> Vec<&'static str> + use<> {
    let table: Vec<(String, Vec<&'static str>)> = config
        .orders
        .categories
        .iter()
        .map(|c| {
            let causes = c
                .causes
                .iter()
                .map(|x| &*Box::leak(x.id.clone().into_boxed_str()))
                .collect();
            (c.id.clone(), causes)
        })
        .collect();
    move |cat: &str| {
        table
            .iter()
            .find(|(id, _)| id == cat)
            .map(|(_, c)| c.clone())
            .unwrap_or_default()
    }
}

/// Generates the year of `spec` and writes it into the store at `target` (created and migrated
/// if new), in one transaction. The plant needs noise's `square_dance` cause and waterlogging's
/// four in the taxonomy.
pub fn import(
    config: &Config,
    org: &Arc<Org>,
    target: &crate::store::Target,
    spec: &YearSpec,
) -> Result<Imported, String> {
    for (cat, cause) in [
        ("noise", "square_dance"),
        ("waterlogging", "blocked_drain"),
        ("waterlogging", "manhole_backflow"),
        ("waterlogging", "urban_waterlogging"),
        ("waterlogging", "levee_collapse"),
    ] {
        let known = config
            .orders
            .categories
            .iter()
            .any(|c| c.id == cat && c.causes.iter().any(|x| x.id == cause));
        if !known {
            return Err(format!(
                "the generated year needs cause {cause} of category {cat} in orders.categories"
            ));
        }
    }
    let started = std::time::Instant::now();
    let year = synth::generate(org, spec, &taxonomy(config));
    // Created and migrated by the store itself, then written in one transaction of our own.
    let store = crate::store::Store::open_target(target.clone(), Arc::default())
        .map_err(|e| format!("{target}: {e}"))?;
    let first_id = store
        .read_sync(|c| c.transaction(|c| super::store::import_year(c, org, &year, org.root())))
        .map_err(|e| format!("{target}: {e}"))?;
    store.close();
    Ok(Imported {
        orders: year.requests.len(),
        open: year.requests.iter().filter(|r| r.closed.is_none()).count(),
        sites: year.sites.len(),
        first_id,
        start: spec.start,
        end: spec.start + u64::from(spec.days) * DAY_MS,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The seed used for the demo's history and the committed site registry
/// (`config/sites/jiamusi.json`), so the two name the same sites.
pub const SEED: u64 = 2024;

/// The generated year's site registry for `seed`, as the body of `POST /api/v1/analysis/sites`
/// (one site a line; `ref`s as the import writes them, so loading both changes nothing).
pub fn sites_json(org: &Org, seed: u64) -> String {
    // Sites are placed first from the seed, whatever the year's size or start.
    let spec = YearSpec {
        seed,
        ..YearSpec::scaled(0, 0)
    };
    let year = synth::generate(org, &spec, &|_| Vec::new());
    let lines: Vec<String> = year
        .sites
        .iter()
        .enumerate()
        .map(|(i, s)| {
            serde_json::json!({
                "kind": s.kind,
                "name": s.name,
                "node": org.id(s.node).as_str(),
                "lat": s.point.lat,
                "lon": s.point.lon,
                "radius_m": s.radius_m,
                "ref": site_ref(seed, i),
            })
            .to_string()
        })
        .collect();
    format!("{{\"sites\": [\n{}\n]}}\n", lines.join(",\n"))
}

/// A generated site's `ref`: its seed and place in the year's list.
pub fn site_ref(seed: u64, i: usize) -> String {
    format!("synth-{seed}-{i}")
}
