//! `loadtest compare A.json B.json`: two runs' summaries side by side — every number both hold,
//! with B's ratio to A — so a change or another machine is read as ratios, not absolutes.

use serde_json::Value;

/// One figure both summaries hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Where it is, dotted (`presence.latency.p99_ms`; array items by index).
    pub path: String,
    pub a: f64,
    pub b: f64,
}

impl Row {
    /// B / A; `None` when A is 0 (no ratio to speak of).
    pub fn ratio(&self) -> Option<f64> {
        (self.a != 0.0).then(|| self.b / self.a)
    }
}

fn flatten(v: &Value, at: &str, out: &mut Vec<(String, f64)>) {
    let join = |k: &str| {
        if at.is_empty() {
            k.to_string()
        } else {
            format!("{at}.{k}")
        }
    };
    match v {
        Value::Number(n) => {
            if let Some(x) = n.as_f64() {
                out.push((at.to_string(), x));
            }
        }
        Value::Object(m) => {
            for (k, x) in m {
                flatten(x, &join(k), out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                flatten(x, &join(&i.to_string()), out);
            }
        }
        _ => {}
    }
}

/// The numbers both hold, in A's order; and the paths only one of them has.
pub fn compare(a: &Value, b: &Value) -> (Vec<Row>, Vec<String>) {
    let (mut fa, mut fb) = (Vec::new(), Vec::new());
    flatten(a, "", &mut fa);
    flatten(b, "", &mut fb);
    let in_b: std::collections::HashMap<&str, f64> =
        fb.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let in_a: std::collections::HashSet<&str> = fa.iter().map(|(k, _)| k.as_str()).collect();
    let rows = fa
        .iter()
        .filter_map(|(k, x)| {
            in_b.get(k.as_str()).map(|y| Row {
                path: k.clone(),
                a: *x,
                b: *y,
            })
        })
        .collect();
    let mut only: Vec<String> = fa
        .iter()
        .filter(|(k, _)| !in_b.contains_key(k.as_str()))
        .map(|(k, _)| format!("only in A: {k}"))
        .chain(
            fb.iter()
                .filter(|(k, _)| !in_a.contains(k.as_str()))
                .map(|(k, _)| format!("only in B: {k}")),
        )
        .collect();
    only.sort();
    (rows, only)
}

/// A table a person reads: the figure, A, B, B/A.
pub fn render(rows: &[Row], only: &[String]) -> String {
    let width = rows.iter().map(|r| r.path.len()).max().unwrap_or(6).max(6);
    let mut s = format!(
        "{:<width$}  {:>14}  {:>14}  {:>8}\n",
        "figure", "A", "B", "B/A"
    );
    for r in rows {
        let ratio = r.ratio().map_or("—".to_string(), |x| format!("{x:.3}"));
        s.push_str(&format!(
            "{:<width$}  {:>14}  {:>14}  {:>8}\n",
            r.path,
            number(r.a),
            number(r.b),
            ratio
        ));
    }
    for o in only {
        s.push_str(o);
        s.push('\n');
    }
    s
}

fn number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{x:.0}")
    } else {
        format!("{x:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn two_runs_side_by_side_with_ratios() {
        let a = json!({"scenario": "connect", "connect_wall_s": 0.8, "presence": {"latency": {"p99_ms": 20.0}}, "lost": 0, "list": [1, 2], "only_a": 3});
        let b = json!({"scenario": "connect", "connect_wall_s": 0.6, "presence": {"latency": {"p99_ms": 25.0}}, "lost": 0, "list": [1, 4], "only_b": true, "new": 5});
        let (rows, only) = compare(&a, &b);
        let get = |p: &str| rows.iter().find(|r| r.path == p).unwrap().clone();
        assert_eq!(get("presence.latency.p99_ms").ratio(), Some(1.25));
        assert!((get("connect_wall_s").ratio().unwrap() - 0.75).abs() < 1e-12);
        assert_eq!(get("lost").ratio(), None, "nothing to divide by");
        assert_eq!(get("list.1").b, 4.0);
        assert_eq!(only, ["only in A: only_a", "only in B: new"]);
        let text = render(&rows, &only);
        assert!(
            text.contains("presence.latency.p99_ms") && text.contains("1.250"),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("lost") && l.ends_with('—')),
            "{text}"
        );
    }
}
