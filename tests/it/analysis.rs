//! The analysis over REST on a generated year with planted truth, imported into the hub's store
//! before it starts: the planted hotspots, the −82 % and the cause counts come back through the
//! real routes, and bad requests get typed errors.

use serde_json::{Value, json};

use crate::auth::http_get;
use crate::support::*;
use gridhub::analysis::history;
use gridhub::analysis::synth::{self, DAY_MS, YearSpec};

const ORDERS: usize = 40_000;

async fn hub_with_a_year() -> (TestHub, YearSpec, synth::Year) {
    let spec = history::year_to(gridhub::clock::now_ms(), ORDERS, 7);
    let s2 = spec.clone();
    let hub = spawn_app(move |c| {
        let org = std::sync::Arc::new(gridhub::org::Org::load(&c.org.file).unwrap());
        let done = history::import(c, &org, &c.store_target(), &s2).unwrap();
        assert_eq!((done.orders, done.sites, done.first_id), (ORDERS, 252, 1));
    })
    .await;
    let config = gridhub::config::Config::default();
    let year = synth::generate(&hub.org, &spec, &history::taxonomy(&config));
    (hub, spec, year)
}

async fn get(hub: &TestHub, path: &str, token: &str) -> Value {
    let (status, body) = http_get(hub, path, Some(token)).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

async fn refused(hub: &TestHub, path: &str, token: &str, status: u16, code: &str) -> String {
    let (s, body) = http_get(hub, path, Some(token)).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (status, Some(code)),
        "{path}: {body}"
    );
    body["error"]["message"].as_str().unwrap().to_string()
}

fn ids(list: &Value, key: &str) -> Vec<u64> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|x| x[key]["id"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn the_planted_year_comes_back_through_the_routes() {
    let (hub, spec, year) = hub_with_a_year().await;
    let city = hub.token(CITY);
    let (start, at, end) = (
        spec.start,
        spec.intervention_at(),
        spec.start + 365 * DAY_MS,
    );
    // Hotspots: the 33 hot squares before the intervention (site ids follow the year's order).
    let h = get(
        &hub,
        &format!("/api/v1/analysis/hotspots?category=noise&unit=sites&kind=square&from={start}&to={at}&fdr=0.01"),
        &city,
    )
    .await;
    assert_eq!(h["tested"], 132);
    let found = ids(&h["hotspots"], "site");
    let truth: Vec<u64> = year
        .truth
        .hot_squares
        .iter()
        .map(|&i| i as u64 + 1)
        .collect();
    let hits = found.iter().filter(|x| truth.contains(x)).count() as f64;
    assert!(
        hits / found.len() as f64 >= 0.95 && hits / 33.0 >= 0.95,
        "{found:?}"
    );
    let top = &h["hotspots"][0];
    assert_eq!(top["evidence"].as_array().unwrap().len(), 20);
    assert!(top["q_value"].as_f64().unwrap() <= 0.01);
    assert_eq!(h["baseline"]["kind"], "peers");

    // Before and after: the recorded intervention at the hot squares.
    let list = get(&hub, "/api/v1/analysis/interventions", &city).await;
    assert_eq!(
        list["interventions"][0]["sites"].as_array().unwrap().len(),
        33
    );
    let id = list["interventions"][0]["id"].as_u64().unwrap();
    let e = get(
        &hub,
        &format!("/api/v1/analysis/interventions/{id}/effect?before_days=120&after_days=120"),
        &city,
    )
    .await;
    let ci = e["ci"].as_array().unwrap();
    let (lo, hi) = (ci[0].as_f64().unwrap(), ci[1].as_f64().unwrap());
    assert!(lo <= -0.82 && -0.82 <= hi, "{e}");
    assert_eq!(e["level"], 0.95);
    assert!(e["series"].as_array().unwrap().len() >= 34);

    // Causes: exactly as planted.
    let c = get(
        &hub,
        &format!("/api/v1/analysis/causes?category=waterlogging&from={start}&to={end}&by=children"),
        &city,
    )
    .await;
    for x in c["causes"].as_array().unwrap() {
        let cause = x["cause"].as_str().unwrap();
        let want = year
            .truth
            .by_cause
            .iter()
            .find(|((cat, c), _)| *cat == "waterlogging" && *c == Some(cause))
            .map(|x| *x.1)
            .unwrap();
        assert_eq!(x["count"].as_u64().unwrap(), want, "{cause}");
    }
    assert_eq!(c["children"].as_array().unwrap().len(), 10);
    assert!(c["causes"][2]["name"].is_string());

    // Sites like a blocked drain: the other blocked drains.
    let blocked: Vec<u64> = year
        .truth
        .blocked_drains
        .iter()
        .map(|&i| i as u64 + 1)
        .collect();
    let s = get(
        &hub,
        &format!(
            "/api/v1/analysis/sites/{}/similar?category=waterlogging&from={start}&to={end}",
            blocked[0]
        ),
        &city,
    )
    .await;
    let found = ids(&s["similar"], "site");
    let hits = found.iter().filter(|x| blocked.contains(x)).count() as f64;
    assert!(
        hits / found.len() as f64 >= 0.95 && hits / 44.0 >= 0.95,
        "{found:?}"
    );

    // Who performs: every county, the year's totals, twelve months.
    let p = get(
        &hub,
        &format!("/api/v1/analysis/performance?from={start}&to={end}"),
        &city,
    )
    .await;
    assert_eq!(p["rows"].as_array().unwrap().len(), 10);
    assert_eq!(p["total"]["received"].as_u64().unwrap(), ORDERS as u64);
    assert_eq!(
        p["total"]["closed"].as_u64().unwrap(),
        (ORDERS - spec.in_progress) as u64
    );
    assert!(p["trend"].as_array().unwrap().len() >= 12);
    let by_cat = get(
        &hub,
        &format!("/api/v1/analysis/performance?from={start}&to={end}&group=category"),
        &city,
    )
    .await;
    assert_eq!(
        by_cat["rows"][0]["category"]["category"], "noise",
        "the most raised first"
    );

    // Places against their own history: every village tested.
    let n = get(
        &hub,
        &format!(
            "/api/v1/analysis/hotspots?unit=nodes&tier=village&from={}&to={end}",
            end - 30 * DAY_MS
        ),
        &city,
    )
    .await;
    assert_eq!(
        (n["tested"].as_u64(), n["baseline"]["windows"].as_u64()),
        (Some(1206), Some(6))
    );

    // A county sees its own.
    let county = hub.token(DONGFENG);
    let d = get(
        &hub,
        &format!("/api/v1/analysis/performance?from={start}&to={end}"),
        &county,
    )
    .await;
    assert_eq!(d["node"], DONGFENG);
    let hs = get(
        &hub,
        &format!("/api/v1/analysis/hotspots?category=noise&kind=square&from={start}&to={at}"),
        &county,
    )
    .await;
    assert!(hs["tested"].as_u64().unwrap() < 132);
}

#[tokio::test]
async fn bad_analysis_requests_get_typed_errors_and_empty_windows_say_why() {
    let (hub, spec, _) = hub_with_a_year().await;
    let city = hub.token(CITY);
    let base = "/api/v1/analysis";
    let m = refused(
        &hub,
        &format!("{base}/hotspots?from=10&to=10"),
        &city,
        400,
        "invalid_query",
    )
    .await;
    assert!(m.contains("empty"), "{m}");
    let m = refused(
        &hub,
        &format!("{base}/performance?from=0&to={}", 500 * DAY_MS),
        &city,
        400,
        "invalid_query",
    )
    .await;
    assert!(m.contains("at most 400"), "{m}");
    let m = refused(
        &hub,
        &format!("{base}/hotspots?category=dancing"),
        &city,
        422,
        "unknown_category",
    )
    .await;
    assert!(m.contains("noise"), "{m}");
    refused(
        &hub,
        &format!("{base}/hotspots?node=999999"),
        &city,
        404,
        "not_found",
    )
    .await;
    refused(
        &hub,
        &format!("{base}/hotspots?unit=grids"),
        &city,
        400,
        "invalid_query",
    )
    .await;
    refused(
        &hub,
        &format!("{base}/hotspots?baseline=yesterday"),
        &city,
        400,
        "invalid_query",
    )
    .await;
    refused(
        &hub,
        &format!("{base}/hotspots?fdr=2"),
        &city,
        400,
        "invalid_query",
    )
    .await;
    refused(
        &hub,
        &format!("{base}/hotspots?colour=red"),
        &city,
        400,
        "invalid_query",
    )
    .await;
    refused(&hub, &format!("{base}/causes"), &city, 400, "invalid_query").await;
    refused(
        &hub,
        &format!("{base}/interventions/99/effect"),
        &city,
        404,
        "not_found",
    )
    .await;
    refused(
        &hub,
        &format!("{base}/sites/9999/similar?category=noise"),
        &city,
        404,
        "not_found",
    )
    .await;
    let county = hub.token(DONGFENG);
    refused(
        &hub,
        &format!("{base}/hotspots?node={CITY}"),
        &county,
        403,
        "out_of_scope",
    )
    .await;
    let m = refused(
        &hub,
        &format!("{base}/hotspots?unit=nodes&tier=city"),
        &county,
        400,
        "invalid_query",
    )
    .await;
    assert!(m.contains("above"), "{m}");
    // A drain outside the county is not found for it, as an order would not be.
    refused(
        &hub,
        &format!("{base}/sites/133/similar?category=waterlogging"),
        &hub.token(HUANAN),
        404,
        "not_found",
    )
    .await;
    let worker = workers_under(&hub.org, DONGFENG, 1).remove(0);
    refused(
        &hub,
        &format!("{base}/performance"),
        &hub.token(&worker),
        403,
        "out_of_scope",
    )
    .await;
    // An empty window answers with nothing and says why.
    let future = spec.start + 400 * DAY_MS;
    let h = get(
        &hub,
        &format!(
            "{base}/hotspots?category=noise&from={future}&to={}",
            future + DAY_MS
        ),
        &city,
    )
    .await;
    assert_eq!(
        (
            h["hotspots"].as_array().unwrap().len(),
            h["requests"].as_u64()
        ),
        (0, Some(0))
    );
    assert!(h["empty"].as_str().unwrap().contains("no requests"), "{h}");
    let h = get(
        &hub,
        &format!(
            "{base}/hotspots?unit=nodes&baseline=history&from={}&to={}",
            spec.start - 30 * DAY_MS,
            spec.start
        ),
        &city,
    )
    .await;
    assert!(h["empty"].as_str().unwrap().contains("no history"), "{h}");

    // The registry: bad coordinates refuse the whole request, naming the site.
    let post = |body: Value| {
        let city = city.clone();
        let addr = hub.addr;
        async move {
            try_post(
                addr,
                "/api/v1/analysis/sites",
                &city,
                &body.to_string(),
                None,
            )
            .await
            .unwrap()
        }
    };
    let ok = json!({"kind": "market", "name": "佳木斯站前市场", "node": DONGFENG, "lat": 46.82, "lon": 130.40, "ref": "m-1"});
    let (s, b) = post(json!({"sites": [ok, {"kind": "market", "name": "x", "node": DONGFENG, "lat": 95.0, "lon": 130.4}]})).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("invalid_data")),
        "{b}"
    );
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("sites[1]")
    );
    // Valid numbers, wrong place: a digit dropped from the longitude puts it in Europe.
    let (s, b) = post(json!({"sites": [{"kind": "market", "name": "x", "node": DONGFENG, "lat": 46.82, "lon": 13.04}]})).await;
    assert_eq!(s, 400, "a site far from its node: {b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("wrong coordinates"),
        "{b}"
    );
    let (s, b) = post(json!({"sites": []})).await;
    assert_eq!(s, 400, "{b}");
    let listed = get(&hub, &format!("{base}/sites?kind=market"), &city).await;
    assert_eq!(
        listed["sites"].as_array().unwrap().len(),
        0,
        "nothing of a refused request is kept"
    );
    let (s, b) = post(json!({"sites": [ok]})).await;
    assert_eq!(
        (s, b["sites"][0]["created"].as_bool()),
        (201, Some(true)),
        "{b}"
    );
    let (s, b) = post(json!({"sites": [ok]})).await;
    assert_eq!(
        (s, b["sites"][0]["created"].as_bool()),
        (200, Some(false)),
        "the same ref again: {b}"
    );
    let wall = hub
        .auth
        .mint_seat(
            &hub.org,
            CITY,
            gridhub::auth::Role::Observer,
            "wall".parse().unwrap(),
            600,
            now_s(),
        )
        .unwrap();
    let (s, b) = try_post(
        hub.addr,
        "/api/v1/analysis/sites",
        &wall,
        &json!({"sites": [ok]}).to_string(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (403, Some("out_of_scope"))
    );
}

#[tokio::test]
async fn a_hotspot_becomes_a_governance_task_tracked_to_closure() {
    let (hub, spec, year) = hub_with_a_year().await;
    let city = hub.token(CITY);
    let hot = year.truth.hot_squares[0] as u64 + 1;
    let (start, at) = (spec.start, spec.intervention_at());
    let h = get(
        &hub,
        &format!(
            "/api/v1/analysis/hotspots?category=noise&kind=square&from={start}&to={at}&evidence=5"
        ),
        &city,
    )
    .await;
    let spot = h["hotspots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["site"]["id"] == hot)
        .unwrap()
        .clone();
    let body = json!({
        "title": "广场舞噪音专项治理",
        "category": "noise",
        "sites": [hot],
        "evidence": spot["evidence"],
        "task": {"priority": "urgent"},
    });
    let (s, b) = try_post(
        hub.addr,
        "/api/v1/analysis/interventions",
        &city,
        &body.to_string(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(s, 201, "{b}");
    let order = &b["order"];
    assert_eq!(order["category"], "noise");
    assert!(
        order["description"]
            .as_str()
            .unwrap()
            .contains("依据 5 件诉求")
    );
    // Sent a tier toward the site's node: its county holds it now.
    let node = b["intervention"]["node"].as_str().unwrap();
    let county = hub
        .org
        .child_toward(hub.org.root(), hub.org.lookup(node).unwrap())
        .unwrap();
    assert_eq!(order["holder"], hub.org.id(county).as_str());
    assert_eq!(order["state"], "dispatched");
    let i = &b["intervention"];
    assert_eq!(i["order_state"], "dispatched");
    // Pushed again (a retry after a lost answer): the same order and intervention, no second.
    let (s2, again) = try_post(
        hub.addr,
        "/api/v1/analysis/interventions",
        &city,
        &body.to_string(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        (s2, &again["order"]["id"], &again["intervention"]["id"]),
        (200, &order["id"], &i["id"]),
        "{again}"
    );
    assert!(i.get("at").is_none(), "in effect only once its loop closes");
    let id = i["id"].as_u64().unwrap();
    let e = get(
        &hub,
        &format!("/api/v1/analysis/interventions/{id}/effect"),
        &city,
    )
    .await;
    assert!(e["note"].as_str().unwrap().contains("not in effect yet"));
    assert_eq!(
        order["source"], "analysis",
        "a task, not a citizen's request"
    );
    // Nobody else takes an order in as the analysis.
    let mut forged = new_order(node, "x");
    forged["source"] = json!("analysis");
    let (s3, b3) = try_post(hub.addr, "/api/v1/orders", &city, &forged.to_string(), None)
        .await
        .unwrap();
    assert_eq!(
        (s3, b3["error"]["code"].as_str()),
        (400, Some("invalid_data")),
        "{b3}"
    );
    // Evidence from outside the caller's subtree, or a task with a date, is refused.
    let huanan = hub.token(HUANAN);
    let (s, b) = try_post(
        hub.addr,
        "/api/v1/analysis/interventions",
        &huanan,
        &json!({"title": "x", "category": "noise", "evidence": spot["evidence"]}).to_string(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{b}"
    );
    let (s, _) = try_post(
        hub.addr,
        "/api/v1/analysis/interventions",
        &city,
        &json!({"title": "x", "category": "noise", "at": 1, "task": {}}).to_string(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(s, 400);
}

#[tokio::test]
async fn the_committed_site_registry_is_the_demos_and_loads_once() {
    let hub = spawn_app(|_| {}).await;
    let want = history::sites_json(&hub.org, history::SEED);
    let file = std::fs::read_to_string(repo().join("config/sites/jiamusi.json")).unwrap();
    assert!(
        file == want,
        "config/sites/jiamusi.json differs from `gridhub history --sites-json`; regenerate it"
    );
    let city = hub.token(CITY);
    let (s, b) = try_post(hub.addr, "/api/v1/analysis/sites", &city, &file, None)
        .await
        .unwrap();
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["sites"].as_array().unwrap().len(), 252);
    let (s, b) = try_post(hub.addr, "/api/v1/analysis/sites", &city, &file, None)
        .await
        .unwrap();
    assert_eq!(s, 200, "loaded again: {b}");
    assert!(
        b["sites"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["created"] == false)
    );
    let listed = get(&hub, "/api/v1/analysis/sites?kind=square", &city).await;
    assert_eq!(listed["sites"].as_array().unwrap().len(), 132);
}
