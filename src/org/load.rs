//! Reading and checking an org tree file.
//!
//! The file is CSV with a header `id,parent,tier,name,name_en,lat,lon`; `#` starts a comment
//! line. The root (the city) has an empty parent. Every problem found is reported with its line,
//! all at once, so a planner fixing a 9,852-line file sees the whole list in one run.

use std::collections::HashMap;
use std::fmt;

use super::{GeoPoint, Node, NodeId, NodeIdx, Org, RawNode, Tier};

/// One problem in an org file, with the 1-based line it is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgIssue {
    pub line: u64,
    pub message: String,
}

impl fmt::Display for OrgIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{} problem(s) in the org tree:\n{}", .0.len(), .0.iter().map(|i| format!("  {i}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<OrgIssue>),
}

impl Org {
    pub fn load(path: &std::path::Path) -> Result<Org, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
            path: path.display().to_string(),
            source,
        })?;
        parse_csv(&text)
    }
}

const HEADER: [&str; 7] = ["id", "parent", "tier", "name", "name_en", "lat", "lon"];

/// Parses and checks a whole tree; on success the nodes are indexed in preorder.
pub fn parse_csv(text: &str) -> Result<Org, LoadError> {
    let mut issues = Vec::new();
    let mut rows: Vec<(u64, RawNode)> = Vec::new();
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .comment(Some(b'#'))
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());

    match reader.headers() {
        Ok(h) if h.iter().eq(HEADER.iter().copied()) => {}
        Ok(h) => issues.push(OrgIssue {
            line: 1,
            message: format!(
                "header must be `{}`, found `{}`",
                HEADER.join(","),
                h.iter().collect::<Vec<_>>().join(",")
            ),
        }),
        Err(e) => issues.push(OrgIssue {
            line: 1,
            message: format!("unreadable header: {e}"),
        }),
    }
    if !issues.is_empty() {
        return Err(LoadError::Invalid(issues));
    }

    for record in reader.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                issues.push(OrgIssue {
                    line,
                    message: format!("unreadable row: {e}"),
                });
                continue;
            }
        };
        // `position` is always set for records read from a reader.
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        match parse_row(&record) {
            Ok(node) => rows.push((line, node)),
            Err(message) => issues.push(OrgIssue { line, message }),
        }
    }

    check_tree(&rows, &mut issues);
    if !issues.is_empty() {
        issues.sort_by_key(|i| i.line);
        return Err(LoadError::Invalid(issues));
    }
    Ok(build(rows.into_iter().map(|(_, n)| n).collect()))
}

fn parse_row(r: &csv::StringRecord) -> Result<RawNode, String> {
    if r.len() != HEADER.len() {
        return Err(format!(
            "expected {} fields ({}), found {}",
            HEADER.len(),
            HEADER.join(","),
            r.len()
        ));
    }
    let id = NodeId::parse(&r[0]).map_err(|e| format!("bad id: {e}"))?;
    let parent = if r[1].is_empty() {
        None
    } else {
        Some(NodeId::parse(&r[1]).map_err(|e| format!("bad parent id: {e}"))?)
    };
    let tier = Tier::parse(&r[2]).ok_or_else(|| {
        format!(
            "unknown tier {:?}; expected one of city, county, township, village, worker",
            &r[2]
        )
    })?;
    if r[3].is_empty() {
        return Err(format!("node {id} has no name"));
    }
    let location = match (&r[5], &r[6]) {
        ("", "") => None,
        (lat, lon) => {
            let p = GeoPoint {
                lat: lat
                    .parse()
                    .map_err(|_| format!("latitude {lat:?} is not a number"))?,
                lon: lon
                    .parse()
                    .map_err(|_| format!("longitude {lon:?} is not a number"))?,
            };
            if !p.is_valid() {
                return Err(format!(
                    "coordinates ({lat}, {lon}) are outside [-90, 90] × [-180, 180]"
                ));
            }
            Some(p)
        }
    };
    Ok(RawNode {
        id,
        parent,
        tier,
        name: r[3].to_owned(),
        name_en: r[4].to_owned(),
        location,
    })
}

/// Finds duplicate ids, orphans, root problems, tier-order errors and cycles.
fn check_tree(rows: &[(u64, RawNode)], issues: &mut Vec<OrgIssue>) {
    let mut first_line: HashMap<&NodeId, (usize, u64)> = HashMap::with_capacity(rows.len());
    for (i, (line, n)) in rows.iter().enumerate() {
        if let Some((_, first)) = first_line.get(&n.id) {
            issues.push(OrgIssue {
                line: *line,
                message: format!("duplicate id {} (first defined on line {first})", n.id),
            });
        } else {
            first_line.insert(&n.id, (i, *line));
        }
    }

    let mut roots = Vec::new();
    // Index of each row's parent row, when it resolves.
    let mut parent_of: Vec<Option<usize>> = vec![None; rows.len()];
    for (i, (line, n)) in rows.iter().enumerate() {
        match &n.parent {
            None => roots.push(i),
            Some(p) => match first_line.get(p) {
                None => issues.push(OrgIssue {
                    line: *line,
                    message: format!("orphan: parent {p} of {} is not defined", n.id),
                }),
                Some(&(pi, pline)) => {
                    parent_of[i] = Some(pi);
                    let pt = rows[pi].1.tier;
                    if pt.below() != Some(n.tier) {
                        issues.push(OrgIssue {
                            line: *line,
                            message: format!(
                                "wrong tier order: {} is a {} under {} (line {pline}), which is a {}; \
                                 a {pt} may only have {} children",
                                n.id,
                                n.tier,
                                p,
                                pt,
                                pt.below().map_or("no", |t| t.as_str())
                            ),
                        });
                    }
                }
            },
        }
    }

    match roots.as_slice() {
        [] if !rows.is_empty() => issues.push(OrgIssue {
            line: rows[0].0,
            message: "no root: exactly one node (the city) must have an empty parent".into(),
        }),
        [] => issues.push(OrgIssue {
            line: 1,
            message: "the tree is empty".into(),
        }),
        [r] => {
            let (line, n) = &rows[*r];
            if n.tier != Tier::City {
                issues.push(OrgIssue {
                    line: *line,
                    message: format!("the root {} must be a city, not a {}", n.id, n.tier),
                });
            }
        }
        many => {
            for r in &many[1..] {
                let (line, n) = &rows[*r];
                issues.push(OrgIssue {
                    line: *line,
                    message: format!(
                        "second root {}: only one node may have an empty parent (the first is on line {})",
                        n.id, rows[many[0]].0
                    ),
                });
            }
        }
    }

    // Cycles: follow parent links with three colours; a row whose walk meets a row on the
    // current path closes a cycle. Each cycle is reported once, on its first line.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut mark = vec![Mark::New; rows.len()];
    let mut path: Vec<usize> = Vec::new();
    for start in 0..rows.len() {
        let mut cur = Some(start);
        path.clear();
        while let Some(i) = cur {
            match mark[i] {
                Mark::Done => break,
                Mark::OnPath => {
                    let at = path.iter().position(|&p| p == i).unwrap_or(0);
                    let cycle: &[usize] = &path[at..];
                    let line = cycle.iter().map(|&c| rows[c].0).min().unwrap_or(0);
                    let names: Vec<String> = cycle
                        .iter()
                        .chain(std::iter::once(&i))
                        .map(|&c| rows[c].1.id.to_string())
                        .collect();
                    issues.push(OrgIssue {
                        line,
                        message: format!("cycle: {}", names.join(" → ")),
                    });
                    break;
                }
                Mark::New => {
                    mark[i] = Mark::OnPath;
                    path.push(i);
                    cur = parent_of[i];
                }
            }
        }
        for &p in &path {
            mark[p] = Mark::Done;
        }
    }
}

/// Indexes a checked tree in preorder, children in file order.
fn build(rows: Vec<RawNode>) -> Org {
    let n = rows.len();
    let parent_row: Vec<Option<usize>> = {
        let index: HashMap<&NodeId, usize> =
            rows.iter().enumerate().map(|(i, r)| (&r.id, i)).collect();
        rows.iter()
            .map(|r| r.parent.as_ref().map(|p| index[p]))
            .collect()
    };
    let mut kids: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut root = 0;
    for (i, p) in parent_row.iter().enumerate() {
        match p {
            Some(p) => kids[*p].push(i),
            None => root = i,
        }
    }

    // Iterative DFS: order[k] is the row placed at preorder position k.
    let mut order = Vec::with_capacity(n);
    let mut stack = vec![root];
    while let Some(i) = stack.pop() {
        order.push(i);
        stack.extend(kids[i].iter().rev());
    }
    let mut pos = vec![0u32; n];
    for (k, &i) in order.iter().enumerate() {
        pos[i] = k as u32;
    }

    let mut slots: Vec<Option<RawNode>> = rows.into_iter().map(Some).collect();
    let mut nodes = Vec::with_capacity(n);
    let mut child_list = Vec::with_capacity(n);
    for &i in &order {
        // Each row is placed exactly once: `order` is a permutation of the rows.
        let raw = slots[i].take().expect("row placed twice");
        let start = child_list.len() as u32;
        child_list.extend(kids[i].iter().map(|&c| NodeIdx(pos[c])));
        nodes.push(Node {
            parent: parent_row[i].map(|p| NodeIdx(pos[p])),
            id: raw.id,
            tier: raw.tier,
            name: raw.name.into(),
            name_en: raw.name_en.into(),
            location: raw.location,
            end: 0,
            children: start..child_list.len() as u32,
        });
    }
    // Subtree sizes, bottom-up: reverse preorder visits children before their parents.
    let mut size = vec![1u32; n];
    for k in (0..n).rev() {
        if let Some(p) = nodes[k].parent {
            size[p.get()] += size[k];
        }
    }
    let mut tier_counts = [0; 5];
    for (k, node) in nodes.iter_mut().enumerate() {
        node.end = k as u32 + size[k];
        tier_counts[node.tier as usize] += 1;
    }
    let by_id = nodes
        .iter()
        .enumerate()
        .map(|(k, node)| (Box::from(node.id.as_str()), NodeIdx(k as u32)))
        .collect();
    Org {
        nodes,
        by_id,
        child_list,
        tier_counts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "id,parent,tier,name,name_en,lat,lon\n";

    fn issues(body: &str) -> Vec<OrgIssue> {
        match parse_csv(&format!("{HEAD}{body}")) {
            Err(LoadError::Invalid(v)) => v,
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("tree was accepted"),
        }
    }

    fn small() -> Org {
        parse_csv(&format!(
            "{HEAD}c,,city,City,City,46.8,130.3\n\
             a,c,county,A,A,,\n\
             a1,a,township,A1,A1,,\n\
             b,c,county,B,B,,\n\
             a1v,a1,village,A1V,A1V,,\n\
             a1vw,a1v,worker,W,W,,\n"
        ))
        .expect("valid")
    }

    #[test]
    fn preorder_subtrees_and_ancestors() {
        let org = small();
        let id = |s| org.lookup(s).unwrap();
        assert_eq!(org.root(), id("c"));
        // Preorder: c, a, a1, a1v, a1vw, b — children keep file order.
        let order: Vec<&str> = org.nodes().map(|(_, n)| n.id.as_str()).collect();
        assert_eq!(order, ["c", "a", "a1", "a1v", "a1vw", "b"]);
        assert!(org.contains(id("a"), id("a1vw")));
        assert!(org.contains(id("a"), id("a")));
        assert!(!org.contains(id("a"), id("b")));
        assert!(!org.contains(id("a1"), id("a")));
        assert_eq!(org.descendants(id("a")), 3);
        assert_eq!(org.descendants(id("c")), 5);
        let anc: Vec<&str> = org
            .ancestors(id("a1vw"))
            .map(|i| org.id(i).as_str())
            .collect();
        assert_eq!(anc, ["a1v", "a1", "a", "c"]);
        assert_eq!(org.children(id("c")), &[id("a"), id("b")]);
        assert_eq!(org.parent(id("b")), Some(id("c")));
        assert_eq!(org.child_toward(id("c"), id("a1vw")), Some(id("a")));
        assert_eq!(org.child_toward(id("a"), id("a1vw")), Some(id("a1")));
        assert_eq!(org.child_toward(id("c"), id("b")), Some(id("b")));
        assert_eq!(org.child_toward(id("c"), id("c")), None, "not below itself");
        assert_eq!(org.child_toward(id("b"), id("a1")), None, "outside");
        assert_eq!(org.child_toward(id("a1vw"), id("a1vw")), None, "a leaf");
        assert_eq!(org.lookup("nope"), None);
        assert_eq!(org.lookup("bad id!"), None);
    }

    #[test]
    fn duplicate_ids_name_both_lines() {
        let v = issues("c,,city,C,C,,\na,c,county,A,A,,\na,c,county,A2,A2,,\n");
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].line, 4);
        assert!(
            v[0].message
                .contains("duplicate id a (first defined on line 3)"),
            "{}",
            v[0]
        );
    }

    #[test]
    fn orphans_are_reported() {
        let v = issues("c,,city,C,C,,\na,ghost,county,A,A,,\n");
        assert_eq!(v[0].line, 3);
        assert!(v[0].message.contains("orphan: parent ghost"));
    }

    #[test]
    fn wrong_tier_order_is_reported() {
        let v = issues("c,,city,C,C,,\nt,c,township,T,T,,\n");
        assert_eq!(v[0].line, 3);
        assert!(v[0].message.contains("wrong tier order"), "{}", v[0]);
    }

    #[test]
    fn cycles_are_reported_once_with_their_members() {
        let v = issues("c,,city,C,C,,\nx,y,county,X,X,,\ny,x,county,Y,Y,,\n");
        let cycles: Vec<_> = v
            .iter()
            .filter(|i| i.message.starts_with("cycle"))
            .collect();
        assert_eq!(cycles.len(), 1, "{v:?}");
        assert_eq!(cycles[0].line, 3);
        assert!(cycles[0].message.contains('x') && cycles[0].message.contains('y'));
    }

    #[test]
    fn root_problems() {
        let v = issues("a,,county,A,A,,\n");
        assert!(v[0].message.contains("must be a city"));
        let v = issues("c,,city,C,C,,\nd,,city,D,D,,\n");
        assert_eq!(v[0].line, 3);
        assert!(v[0].message.contains("second root d"));
        let v = issues("a,b,county,A,A,,\nb,a,county,B,B,,\n");
        assert!(v.iter().any(|i| i.message.starts_with("no root")));
    }

    #[test]
    fn bad_rows_report_every_line() {
        let v = issues(
            "c,,city,C,C,,\n\
             a,c,region,A,A,,\n\
             b,c,county,B,B,95,130\n\
             d,c,county,D,D,north,130\n\
             e e,c,county,E,E,,\n\
             f,c,county\n",
        );
        let lines: Vec<u64> = v.iter().map(|i| i.line).collect();
        assert_eq!(lines, [3, 4, 5, 6, 7], "{v:?}");
        assert!(v[0].message.contains("unknown tier \"region\""));
        assert!(v[1].message.contains("outside"));
        assert!(v[2].message.contains("not a number"));
        assert!(v[3].message.contains("bad id"));
        assert!(v[4].message.contains("expected 7 fields"));
    }

    #[test]
    fn bad_header_is_refused() {
        match parse_csv("id,parent\nc,\n") {
            Err(LoadError::Invalid(v)) => assert!(v[0].message.contains("header must be")),
            other => panic!("{other:?}"),
        }
    }
}
