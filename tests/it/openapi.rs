//! The OpenAPI document (`src/api/openapi.json`) against the real hub: every route is called with
//! a success and with each error status it documents (wherever one can be caused), and every
//! answer is checked against the schema the document gives for its route and status. A field the
//! hub adds, drops or retypes, a status or error code it starts answering, a query parameter it
//! takes without saying so — each fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::Ordering::Relaxed;

use gridhub::auth::{Authority, Role};
use serde_json::{Value, json};

use crate::auth::raw_exchange;
use crate::support::*;

// ---- A JSON-schema checker, for the subset the document uses -----------------------------------

/// The keywords the checker understands. The document may use no others, so none is silently
/// ignored.
const KEYWORDS: &[&str] = &[
    "$ref",
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "const",
    "allOf",
    "anyOf",
    "oneOf",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "description",
    "examples",
    "default",
];

fn resolve<'a>(doc: &'a Value, r: &str) -> &'a Value {
    let pointer = r
        .strip_prefix('#')
        .unwrap_or_else(|| panic!("only references inside the document: {r}"));
    doc.pointer(pointer)
        .unwrap_or_else(|| panic!("dangling reference {r}"))
}

fn is_type(v: &Value, t: &str) -> bool {
    match t {
        "null" => v.is_null(),
        "boolean" => v.is_boolean(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "number" => v.is_number(),
        // Strict: 1.0 is a number, not an integer (the hub's floats and integers are typed).
        "integer" => v.is_i64() || v.is_u64(),
        other => panic!("unknown type {other}"),
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 80 {
        format!("{}…", s.chars().take(80).collect::<String>())
    } else {
        s
    }
}

/// Where `v` breaks `schema`, each with its JSON path; empty when it conforms.
fn violations(doc: &Value, schema: &Value, v: &Value) -> Vec<String> {
    let mut errs = Vec::new();
    check(doc, schema, v, "$", &mut errs);
    errs
}

fn check(doc: &Value, schema: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
    let s = match schema {
        Value::Bool(true) => return,
        Value::Bool(false) => return errs.push(format!("{at}: nothing is allowed here")),
        Value::Object(m) => m,
        other => panic!("not a schema at {at}: {other}"),
    };
    for k in s.keys() {
        assert!(
            KEYWORDS.contains(&k.as_str()),
            "the checker does not know `{k}` (at {at})"
        );
    }
    if let Some(r) = s.get("$ref") {
        check(doc, resolve(doc, r.as_str().unwrap()), v, at, errs);
    }
    if let Some(t) = s.get("type") {
        let types: Vec<&str> = match t {
            Value::String(x) => vec![x.as_str()],
            Value::Array(a) => a.iter().map(|x| x.as_str().unwrap()).collect(),
            other => panic!("bad type {other}"),
        };
        if !types.iter().any(|t| is_type(v, t)) {
            // The other keywords would only repeat it.
            return errs.push(format!("{at}: {} is not {}", short(v), types.join(" or ")));
        }
    }
    if let Some(e) = s.get("enum")
        && !e.as_array().unwrap().contains(v)
    {
        errs.push(format!("{at}: {} is not one of {e}", short(v)));
    }
    if let Some(c) = s.get("const")
        && c != v
    {
        errs.push(format!("{at}: {} is not {c}", short(v)));
    }
    if let Some(n) = v.as_f64() {
        if let Some(min) = s.get("minimum").and_then(Value::as_f64)
            && n < min
        {
            errs.push(format!("{at}: {n} is below {min}"));
        }
        if let Some(max) = s.get("maximum").and_then(Value::as_f64)
            && n > max
        {
            errs.push(format!("{at}: {n} is above {max}"));
        }
    }
    if let Some(text) = v.as_str() {
        let n = text.chars().count() as u64;
        if s.get("minLength")
            .and_then(Value::as_u64)
            .is_some_and(|m| n < m)
        {
            errs.push(format!("{at}: {n} characters is too short"));
        }
        if s.get("maxLength")
            .and_then(Value::as_u64)
            .is_some_and(|m| n > m)
        {
            errs.push(format!("{at}: {n} characters is too long"));
        }
    }
    if let Value::Array(items) = v {
        let n = items.len() as u64;
        if s.get("minItems")
            .and_then(Value::as_u64)
            .is_some_and(|m| n < m)
        {
            errs.push(format!("{at}: {n} items is too few"));
        }
        if s.get("maxItems")
            .and_then(Value::as_u64)
            .is_some_and(|m| n > m)
        {
            errs.push(format!("{at}: {n} items is too many"));
        }
        if let Some(is) = s.get("items") {
            for (i, x) in items.iter().enumerate() {
                check(doc, is, x, &format!("{at}[{i}]"), errs);
            }
        }
    }
    if let Value::Object(m) = v {
        if let Some(req) = s.get("required") {
            for r in req.as_array().unwrap() {
                let r = r.as_str().unwrap();
                if !m.contains_key(r) {
                    errs.push(format!("{at}: lacks required `{r}`"));
                }
            }
        }
        let props = s.get("properties").and_then(Value::as_object);
        for (k, x) in m {
            let here = format!("{at}.{k}");
            match (props.and_then(|p| p.get(k)), s.get("additionalProperties")) {
                (Some(p), _) => check(doc, p, x, &here, errs),
                (None, Some(Value::Bool(false))) => {
                    errs.push(format!("{here}: not in the schema ({})", short(x)))
                }
                (None, Some(extra)) => check(doc, extra, x, &here, errs),
                (None, None) => {}
            }
        }
    }
    if let Some(all) = s.get("allOf") {
        for sub in all.as_array().unwrap() {
            check(doc, sub, v, at, errs);
        }
    }
    if let Some(any) = s.get("anyOf") {
        let each: Vec<Vec<String>> = any
            .as_array()
            .unwrap()
            .iter()
            .map(|sub| {
                let mut e = Vec::new();
                check(doc, sub, v, at, &mut e);
                e
            })
            .collect();
        if !each.iter().any(Vec::is_empty) {
            errs.push(format!("{at}: matches none of anyOf: {each:?}"));
        }
    }
    if let Some(one) = s.get("oneOf") {
        let each: Vec<Vec<String>> = one
            .as_array()
            .unwrap()
            .iter()
            .map(|sub| {
                let mut e = Vec::new();
                check(doc, sub, v, at, &mut e);
                e
            })
            .collect();
        let matching = each.iter().filter(|e| e.is_empty()).count();
        if matching != 1 {
            errs.push(format!(
                "{at}: matches {matching} of oneOf, not exactly one: {each:?}"
            ));
        }
    }
}

/// Every keyword of every schema in the document is one the checker knows.
fn walk_schema(schema: &Value, at: &str) {
    let Some(s) = schema.as_object() else { return };
    for k in s.keys() {
        assert!(
            KEYWORDS.contains(&k.as_str()),
            "`{k}` at {at} is not checked"
        );
    }
    if let Some(p) = s.get("properties").and_then(Value::as_object) {
        for (k, sub) in p {
            walk_schema(sub, &format!("{at}/properties/{k}"));
        }
    }
    for k in ["items", "additionalProperties"] {
        if let Some(sub) = s.get(k) {
            walk_schema(sub, &format!("{at}/{k}"));
        }
    }
    for k in ["allOf", "anyOf", "oneOf"] {
        for (i, sub) in s
            .get(k)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            walk_schema(sub, &format!("{at}/{k}/{i}"));
        }
    }
}

// ---- The document, the requests, and what was seen -------------------------------------------

const METHODS: [&str; 2] = ["get", "post"];

/// A response as it came: status, head (lower-cased) and body.
struct Answer {
    status: u16,
    head: String,
    body: Value,
}

impl Answer {
    /// Asserts the status; returns the body.
    #[track_caller]
    fn ok(self, want: u16) -> Value {
        assert_eq!(self.status, want, "{}", self.body);
        self.body
    }

    /// Asserts the status and the error code.
    #[track_caller]
    fn refused(&self, want: u16, code: &str) {
        assert_eq!(
            (self.status, self.body["error"]["code"].as_str()),
            (want, Some(code)),
            "{}",
            self.body
        );
    }

    fn header(&self, name: &str) -> Option<&str> {
        header(&self.head, name)
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == name).then(|| v.trim())
    })
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
}

struct Api {
    doc: Value,
    /// (path template, method, status) of every answer checked.
    seen: Mutex<BTreeSet<(String, String, u16)>>,
}

impl Api {
    fn new() -> Api {
        Api {
            doc: serde_json::from_str(gridhub::api::OPENAPI).expect("the document is JSON"),
            seen: Mutex::default(),
        }
    }

    /// The documented path a concrete one is served by: literal segments before parameters.
    fn template(&self, path: &str) -> String {
        let path = path.split('?').next().unwrap();
        let segs: Vec<&str> = path.split('/').collect();
        self.doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .filter_map(|t| {
                let ts: Vec<&str> = t.split('/').collect();
                let fits = ts.len() == segs.len()
                    && ts
                        .iter()
                        .zip(&segs)
                        .all(|(t, s)| t.starts_with('{') || t == s);
                fits.then(|| (ts.iter().filter(|t| !t.starts_with('{')).count(), t))
            })
            .max()
            .map(|(_, t)| t.clone())
            .unwrap_or_else(|| panic!("{path} is not documented"))
    }

    fn operation(&self, template: &str, method: &str) -> &Value {
        let op = &self.doc["paths"][template][method];
        assert!(op.is_object(), "{method} {template} is not documented");
        op
    }

    fn deref<'a>(&'a self, v: &'a Value) -> &'a Value {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => resolve(&self.doc, r),
            None => v,
        }
    }

    /// Checks an answer against the document and records it.
    fn verify(&self, method: &str, path: &str, status: u16, head: &str, raw: &[u8]) -> Value {
        let template = self.template(path);
        let op = self.operation(&template, method);
        let what = format!("{} {path} → {status}", method.to_uppercase());
        let response = op["responses"]
            .get(status.to_string())
            .map(|r| self.deref(r))
            .unwrap_or_else(|| {
                panic!(
                    "{what}: status not documented: {}",
                    String::from_utf8_lossy(raw)
                )
            });
        let request_id = header(head, "x-request-id");
        assert!(request_id.is_some(), "{what}: no X-Request-Id\n{head}");
        for (name, h) in response["headers"].as_object().into_iter().flatten() {
            if self.deref(h)["required"] == true {
                assert!(
                    header(head, &name.to_ascii_lowercase()).is_some(),
                    "{what}: no {name} header\n{head}"
                );
            }
        }
        let body = match response["content"].as_object() {
            None => {
                assert!(raw.is_empty(), "{what}: a body where none is documented");
                Value::Null
            }
            Some(content) => {
                let ctype = header(head, "content-type").unwrap_or_default();
                let (_, media) = content
                    .iter()
                    .find(|(k, _)| ctype.starts_with(k.as_str()))
                    .unwrap_or_else(|| panic!("{what}: content-type {ctype:?} not documented"));
                if ctype.starts_with("application/json") {
                    let body: Value = serde_json::from_slice(raw)
                        .unwrap_or_else(|e| panic!("{what}: not JSON ({e})"));
                    let errs = violations(&self.doc, &media["schema"], &body);
                    assert!(
                        errs.is_empty(),
                        "{what} breaks its schema:\n{}\n{}",
                        errs.join("\n"),
                        short(&body)
                    );
                    if let Some(id) = body["error"]["request_id"].as_str() {
                        assert_eq!(Some(id), request_id, "{what}: request ids differ");
                    }
                    body
                } else if ctype.starts_with("image/") {
                    assert!(!raw.is_empty(), "{what}: an empty image");
                    Value::Null
                } else {
                    let text = String::from_utf8(raw.to_vec()).expect("text");
                    let errs = violations(&self.doc, &media["schema"], &json!(text));
                    assert!(errs.is_empty(), "{what}: {errs:?}");
                    Value::String(text)
                }
            }
        };
        if (200..300).contains(&status) {
            self.check_query(op, path);
        }
        self.seen
            .lock()
            .unwrap()
            .insert((template, method.to_owned(), status));
        body
    }

    /// Every query parameter a request answered 2xx had is documented, with a value its schema
    /// takes, and every required one was there.
    fn check_query(&self, op: &Value, path: &str) {
        let params: Vec<&Value> = op["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["in"] == "query")
            .collect();
        let given: BTreeMap<&str, &str> = path
            .split_once('?')
            .map(|(_, q)| {
                q.split('&')
                    .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
                    .collect()
            })
            .unwrap_or_default();
        for (k, v) in &given {
            let p = params
                .iter()
                .find(|p| p["name"] == *k)
                .unwrap_or_else(|| panic!("{path}: `{k}` was taken but is not documented"));
            let schema = &p["schema"];
            let typed = match self.deref(schema)["type"].as_str() {
                Some("integer") => v.parse::<i64>().map_or(json!(v), |n| json!(n)),
                Some("boolean") => v.parse::<bool>().map_or(json!(v), |b| json!(b)),
                _ => json!(v),
            };
            let errs = violations(&self.doc, schema, &typed);
            assert!(
                errs.is_empty(),
                "{path}: `{k}` was taken but breaks {errs:?}"
            );
        }
        for p in params {
            if p["required"] == true {
                let name = p["name"].as_str().unwrap();
                assert!(
                    given.contains_key(name),
                    "{path}: required `{name}` missing"
                );
            }
        }
    }

    /// The documented request body schema of an operation.
    fn request_schema(&self, path: &str) -> &Value {
        let op = self.operation(&self.template(path), "post");
        &op["requestBody"]["content"]["application/json"]["schema"]
    }

    /// A body the hub refused as malformed breaks the documented request schema too.
    #[track_caller]
    fn assert_request_invalid(&self, path: &str, body: &Value) {
        let errs = violations(&self.doc, self.request_schema(path), body);
        assert!(
            !errs.is_empty(),
            "{path}: the schema takes {body}, the hub does not"
        );
    }

    /// The REST API of the hub node at `addr`.
    fn at(&self, addr: SocketAddr) -> Node<'_> {
        Node { api: self, addr }
    }

    /// Every (path, method, status) the document gives.
    fn documented(&self) -> BTreeSet<(String, String, u16)> {
        let mut all = BTreeSet::new();
        for (path, item) in self.doc["paths"].as_object().unwrap() {
            for m in METHODS {
                for status in item[m]["responses"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(s, _)| s)
                {
                    all.insert((path.clone(), m.to_owned(), status.parse().unwrap()));
                }
            }
        }
        all
    }

    /// Operations that need a credential, with a concrete path for each.
    fn guarded(&self) -> Vec<(String, &'static str)> {
        let mut out = Vec::new();
        for (path, item) in self.doc["paths"].as_object().unwrap() {
            for m in METHODS {
                let op = &item[m];
                let public = op["security"] == json!([]);
                if !op.is_object() || public || path == "/ws" {
                    continue;
                }
                let concrete = path
                    .replace("/org/nodes/{id}", &format!("/org/nodes/{DONGFENG}"))
                    .replace("{id}", "1")
                    .replace(
                        "{action}",
                        if path.contains("campaigns") {
                            "done"
                        } else {
                            "acknowledge"
                        },
                    );
                out.push((concrete, m));
            }
        }
        out
    }
}

/// One hub node's API; every answer is checked against the document. A token "" sends none.
struct Node<'a> {
    api: &'a Api,
    addr: SocketAddr,
}

/// A request that must be refused: method, path, token, body, status, error code.
type Refusal<'a> = (&'a str, &'a str, &'a str, Option<&'a Value>, u16, &'a str);

impl Node<'_> {
    /// One HTTP/1.1 request over a real socket.
    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Answer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut req = format!("{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(b) = body {
            req.push_str(&format!("content-length: {}\r\n", b.len()));
        }
        req.push_str("\r\n");
        let mut req = req.into_bytes();
        req.extend_from_slice(body.unwrap_or_default());
        let mut s = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        s.write_all(&req).await.unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(PATIENCE, s.read_to_end(&mut buf))
            .await
            .expect("an answer within PATIENCE")
            .unwrap();
        let split = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a whole head");
        let head = String::from_utf8_lossy(&buf[..split]).to_ascii_lowercase();
        let status = head[9..12].parse().unwrap();
        let mut raw = buf[split + 4..].to_vec();
        if header(&head, "transfer-encoding") == Some("chunked") {
            raw = dechunk(&raw);
        }
        let method = method.to_ascii_lowercase();
        let body = self.api.verify(&method, path, status, &head, &raw);
        Answer { status, head, body }
    }

    async fn get(&self, path: &str, token: &str) -> Answer {
        self.request("GET", path, token, None, &[]).await
    }

    /// A body the hub took must be one the document takes.
    async fn post(&self, path: &str, token: &str, body: Option<&Value>) -> Answer {
        self.request("POST", path, token, body, &[]).await
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<&Value>,
        extra: &[(&str, &str)],
    ) -> Answer {
        let auth = format!("Bearer {token}");
        let mut headers = extra.to_vec();
        if !token.is_empty() {
            headers.push(("authorization", &auth));
        }
        if body.is_some() {
            headers.push(("content-type", "application/json"));
        }
        let text = body.map(Value::to_string);
        let a = self
            .send(method, path, &headers, text.as_deref().map(str::as_bytes))
            .await;
        if let (Some(b), true) = (body, (200..300).contains(&a.status)) {
            let errs = violations(&self.api.doc, self.api.request_schema(path), b);
            assert!(
                errs.is_empty(),
                "{path}: the hub took {b}, the schema does not: {errs:?}"
            );
        }
        a
    }

    /// Each request is refused with its status and code.
    async fn refusals(&self, cases: &[Refusal<'_>]) {
        for &(method, path, token, body, status, code) in cases {
            let a = self.request(method, path, token, body, &[]).await;
            assert_eq!(
                (a.status, a.body["error"]["code"].as_str()),
                (status, Some(code)),
                "{method} {path}: {}",
                a.body
            );
        }
    }

    /// A WebSocket handshake: the usual headers, then `extra` ones (which may replace the key
    /// or the version).
    async fn upgrade(&self, path: &str, extra: &str) -> Answer {
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nhost: {}\r\nconnection: Upgrade\r\nupgrade: websocket\r\n",
            self.addr
        );
        if !extra.contains("sec-websocket-key") {
            req.push_str("sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n");
        }
        if !extra.contains("sec-websocket-version") {
            req.push_str("sec-websocket-version: 13\r\n");
        }
        req.push_str(extra);
        req.push_str("\r\n");
        let text = raw_exchange(self.addr, &req).await;
        let (head, rest) = text.split_once("\r\n\r\n").expect("a whole head");
        let head = head.to_ascii_lowercase();
        let status = head[9..12].parse().unwrap();
        // After a 101 come WebSocket frames (`hello`), not an HTTP body.
        let raw = if status == 101 { "" } else { rest };
        let body = self.api.verify("get", path, status, &head, raw.as_bytes());
        Answer { status, head, body }
    }
}

/// A table of requests that must each be refused with a status and an error code, one a line:
/// `METHOD path, token, body => status "code";` (rustfmt leaves such a table as written).
macro_rules! refuse {
    ($node:expr, [$($method:ident $path:expr, $token:expr, $body:expr => $status:literal $code:literal;)*]) => {
        $node.refusals(&[$(($method, $path, $token, $body, $status, $code)),*]).await
    };
}

/// The document's own shape: the routes that exist, references that resolve, schemas the checker
/// reads whole, a success for every operation, and error codes from the Error schema's list.
#[test]
fn the_document_is_whole() {
    let api = Api::new();
    let doc = &api.doc;
    let mut documented: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    documented.sort();
    let mut routes = gridhub::api::ROUTES.to_vec();
    routes.sort();
    assert_eq!(documented, routes);
    fn refs(v: &Value, doc: &Value) {
        match v {
            Value::Object(m) => {
                if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                    resolve(doc, r);
                }
                m.values().for_each(|x| refs(x, doc));
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, doc)),
            _ => {}
        }
    }
    refs(doc, doc);
    for (name, s) in doc["components"]["schemas"].as_object().unwrap() {
        walk_schema(s, &format!("#/components/schemas/{name}"));
    }
    let codes = doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]
        ["enum"]
        .as_array()
        .unwrap();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in METHODS {
            let op = &item[m];
            if !op.is_object() {
                continue;
            }
            for p in op["parameters"].as_array().into_iter().flatten() {
                walk_schema(&p["schema"], &format!("{m} {path} {}", p["name"]));
            }
            walk_schema(
                &op["requestBody"]["content"]["application/json"]["schema"],
                path,
            );
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|s| s.starts_with('2') || s == "101"),
                "{m} {path}: no success documented"
            );
            for (status, r) in responses {
                let schema = &api.deref(r)["content"]["application/json"]["schema"];
                walk_schema(schema, &format!("{m} {path} {status}"));
                if status.starts_with('4') || status.starts_with('5') {
                    let s = api.deref(schema);
                    let listed = s["allOf"][1]["properties"]["error"]["properties"]["code"]["enum"]
                        .as_array()
                        .unwrap_or_else(|| panic!("{m} {path} {status}: the codes are not listed"));
                    assert!(
                        listed.iter().all(|c| codes.contains(c)),
                        "{m} {path} {status}"
                    );
                }
            }
        }
    }
}

/// The checker is what catches drift: shown on a real answer, a field too many, a required one
/// missing, a wrong type — deep down as at the top — each fails.
#[tokio::test]
async fn the_checker_refuses_what_the_document_does_not_say() {
    let hub = spawn_app(|_| {}).await;
    let api = Api::new();
    let body = api
        .at(hub.addr)
        .get("/api/v1/org", &hub.token(DONGFENG))
        .await
        .ok(200);
    let op = api.operation("/api/v1/org", "get");
    let schema = &op["responses"]["200"]["content"]["application/json"]["schema"];
    assert!(violations(&api.doc, schema, &body).is_empty());
    type Mutation = (&'static str, fn(&mut Value));
    let mutations: [Mutation; 6] = [
        ("an extra field", |b| b["extra"] = json!(1)),
        ("an extra nested field", |b| {
            b["root"]["population"] = json!(215_000)
        }),
        ("a required field missing", |b| {
            b.as_object_mut().unwrap().remove("nodes");
        }),
        ("a nested required field missing", |b| {
            b["you"].as_object_mut().unwrap().remove("tier");
        }),
        ("a wrong type", |b| b["nodes"] = json!("9852")),
        ("a value outside the enum", |b| {
            b["you"]["tier"] = json!("province")
        }),
    ];
    for (what, mutate) in mutations {
        let mut b = body.clone();
        mutate(&mut b);
        assert!(
            !violations(&api.doc, schema, &b).is_empty(),
            "{what} passed"
        );
    }
    // Nullable types, oneOf, and the codes an error response lists.
    let record = &json!({"$ref": "#/components/schemas/CallRecord"});
    let mut call = json!({"id": 1, "caller": "a", "callee": "b", "media": "audio",
        "created_at": 5, "ringing_at": null, "answered_at": null, "ended_at": null,
        "duration_ms": null, "outcome": null, "reason": null});
    assert!(violations(&api.doc, record, &call).is_empty());
    call["outcome"] = json!(3);
    assert!(!violations(&api.doc, record, &call).is_empty());
    let tree = &json!({"$ref": "#/components/schemas/OrgTree"});
    let node = json!({"id": "a", "name": "n", "name_en": "n", "tier": "city"});
    assert!(
        !violations(&api.doc, tree, &node).is_empty(),
        "children or children_count"
    );
    let op = api.operation("/api/v1/orders/{id}", "get");
    let not_found = &op["responses"]["404"]["content"]["application/json"]["schema"];
    let e = json!({"error": {"code": "out_of_scope", "message": "m", "request_id": "r"}});
    assert!(
        !violations(&api.doc, not_found, &e).is_empty(),
        "a code the route does not list"
    );
}

// ---- Every route, with its successes and errors ----------------------------------------------

const GET: &str = "GET";
const POST: &str = "POST";

/// An offer-shaped SDP: the hub only relays it.
const SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";

/// (path, method, status) the document gives that no test can cause on a live hub, and why.
const INFEASIBLE: [(&str, &str, u16, &str); 3] = [
    (
        "/api/v1/recordings/{id}",
        "get",
        200,
        "needs a published track recorded: tests/it/sessions.rs records one and plays it back",
    ),
    (
        "/api/v1/presence",
        "get",
        503,
        "presence stops only after the listener has closed",
    ),
    (
        "/api/v1/tickets",
        "post",
        500,
        "signing with a loaded key does not fail",
    ),
];

#[tokio::test]
async fn every_route_answers_as_the_document_says() {
    let hub = spawn_app(|_| {}).await;
    let api = Api::new();
    let h = api.at(hub.addr);
    let (city, county, huanan) = (hub.token(CITY), hub.token(DONGFENG), hub.token(HUANAN));
    let (city, county, huanan) = (city.as_str(), county.as_str(), huanan.as_str());
    let ws = workers_under(&hub.org, DONGFENG, 3);
    let (w0, offline) = (ws[0].as_str(), ws[2].as_str());
    let worker = hub.token(w0);
    let worker = worker.as_str();
    let chain = chain_to(&hub.org, w0);
    let township = chain[2].as_str();
    let far = workers_under(&hub.org, HUANAN, 1).remove(0);
    let far_worker = hub.token(&far);
    let far_worker = far_worker.as_str();
    let huge = json!({ "description": "长".repeat(70_000) });
    let huge = Some(&huge);

    // Operations and the public documents.
    assert_eq!(h.get("/healthz", "").await.ok(200)["status"], "ok");
    h.get("/readyz", "").await.ok(200);
    let metrics = h.get("/metrics", "").await.ok(200);
    assert!(metrics.as_str().unwrap().contains("gridhub_connections "));
    let served = h.get("/api/v1/openapi.json", "").await.ok(200);
    assert_eq!(served, api.doc, "the hub serves this document");
    let taxonomy = h.get("/api/v1/categories", "").await.ok(200);
    assert_eq!(taxonomy["categories"].as_array().unwrap().len(), 12);

    // Every operation the document guards wants a credential...
    for (path, method) in api.guarded() {
        let a = h
            .request(&method.to_uppercase(), &path, "", None, &[])
            .await;
        a.refused(401, "missing_credential");
        assert_eq!(a.header("www-authenticate"), Some("bearer"));
    }
    // ...and each way a credential can be wrong has its code.
    let other = Authority::new(b"another key that is long enough!!").unwrap();
    let now = now_s();
    let ticket = h.post("/api/v1/tickets", huanan, None).await.ok(201)["ticket"]
        .as_str()
        .unwrap()
        .to_owned();
    let forged = other
        .mint(&hub.org, DONGFENG, Role::Operator, 60, now)
        .unwrap();
    let mint = |ep: &str, from: u64, to: u64| hub.auth.mint_unchecked(ep, Role::Operator, from, to);
    let expired = mint(DONGFENG, now - 100, now - 10).unwrap();
    let ghost = mint("999999", now, now + 60).unwrap();
    let wrong_role = mint(w0, now, now + 60).unwrap();
    let in_url = format!("/api/v1/org?token={county}");
    refuse!(h, [
        GET "/api/v1/org", "garbage", None => 401 "malformed_credential";
        GET "/api/v1/org", &forged, None => 401 "bad_signature";
        GET "/api/v1/org", &expired, None => 401 "expired_credential";
        GET "/api/v1/org", &ghost, None => 401 "unknown_endpoint";
        GET "/api/v1/org", &wrong_role, None => 401 "role_not_allowed";
        GET "/api/v1/org", &ticket, None => 401 "ticket_not_credential";
        GET &in_url, "", None => 401 "credential_in_url";
    ]);
    let id_header = [("x-request-id", "it-openapi-1")];
    let a = h
        .request(GET, "/api/v1/org", county, None, &id_header)
        .await;
    assert_eq!(
        (a.status, a.header("x-request-id")),
        (200, Some("it-openapi-1"))
    );

    // The WebSocket handshake.
    let bearer = |t: &str| format!("authorization: Bearer {t}\r\n");
    let with = |extra: &str| format!("{}{extra}\r\n", bearer(huanan));
    assert_eq!(h.upgrade("/ws", &bearer(huanan)).await.status, 101);
    let by_ticket = format!("/ws?ticket={ticket}");
    assert_eq!(h.upgrade(&by_ticket, "").await.status, 101);
    h.upgrade(&by_ticket, "").await.refused(401, "ticket_used");
    let not_a_ticket = format!("/ws?ticket={huanan}");
    h.upgrade(&not_a_ticket, "")
        .await
        .refused(401, "not_a_ticket");
    let in_url = format!("/ws?token={huanan}");
    h.upgrade(&in_url, "")
        .await
        .refused(401, "credential_in_url");
    h.upgrade("/ws", "")
        .await
        .refused(401, "missing_credential");
    let short_key = with("sec-websocket-key: short");
    h.upgrade("/ws", &short_key)
        .await
        .refused(400, "bad_handshake");
    let evil = with("origin: https://evil.example");
    h.upgrade("/ws", &evil)
        .await
        .refused(403, "origin_not_allowed");
    let v8 = with("sec-websocket-version: 8");
    h.upgrade("/ws", &v8)
        .await
        .refused(426, "unsupported_websocket_version");
    h.get("/ws", huanan).await.refused(426, "upgrade_required");

    // The org tree.
    h.get("/api/v1/org", county).await.ok(200);
    let node = |id: &str| format!("/api/v1/org/nodes/{id}");
    let n = h.get(&node(DONGFENG), county).await.ok(200);
    assert_eq!(n["children"].as_array().unwrap().len(), 6);
    let n = h.get(&node(CITY), county).await.ok(200);
    assert!(n["children"].is_null() && n["node"]["parent"].is_null());
    h.get(&node(w0), worker).await.ok(200);
    let sub = |id: &str, q: &str| format!("/api/v1/org/nodes/{id}/subtree{q}");
    h.get(&sub(township, ""), county).await.ok(200);
    h.get(&sub(DONGFENG, "?depth=1"), county).await.ok(200);
    let t = h.get(&sub(DONGFENG, "?depth=0"), county).await.ok(200);
    assert_eq!(t["tree"]["children_count"], 6);
    refuse!(h, [
        GET &node(HUANAN), county, None => 403 "out_of_scope";
        GET &node("nowhere"), county, None => 404 "not_found";
        GET &sub(DONGFENG, "?depth=5"), county, None => 400 "invalid_query";
        GET &sub(DONGFENG, "?colour=red"), county, None => 400 "invalid_query";
        GET &sub(CITY, ""), county, None => 403 "out_of_scope";
        GET &sub("nowhere", ""), county, None => 404 "not_found";
    ]);

    // Presence, with a worker that set every optional field.
    let mut field = hub.connect(w0).await;
    field.resume(0).await;
    let set = json!({"status": "busy", "text": "入户走访",
        "location": {"lat": 46.82, "lon": 130.41, "accuracy_m": 12}});
    assert_eq!(field.call("presence.set", set).await["type"], "reply");
    let presence = |q: &str| format!("/api/v1/presence{q}");
    let snap = h
        .get(&presence(&format!("?node={DONGFENG}")), county)
        .await
        .ok(200);
    let endpoints = snap["endpoints"].as_array().unwrap();
    let me = endpoints.iter().find(|e| e["id"] == w0).unwrap();
    assert!(
        me["text"].is_string() && me["location"]["accuracy_m"].is_number(),
        "{me}"
    );
    // A center with two seats lists them.
    let wall = hub
        .auth
        .mint_seat(
            &hub.org,
            township,
            Role::Observer,
            gridhub::auth::Seat::parse("wall").unwrap(),
            60,
            now_s(),
        )
        .unwrap();
    let mut wall = hub.connect_with(&wall).await;
    let mut desk = hub.connect(township).await;
    desk.ping_ok().await;
    wall.ping_ok().await;
    let snap = h
        .get(&presence(&format!("?node={DONGFENG}")), county)
        .await
        .ok(200);
    let center = snap["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == township)
        .unwrap();
    assert_eq!(center["seats"], json!(["main", "wall"]), "{center}");
    let overview = presence(&format!("?node={DONGFENG}&endpoints=false"));
    h.get(&overview, county).await.ok(200);
    h.get(&presence(&format!("?node={w0}")), worker)
        .await
        .ok(200);
    refuse!(h, [
        GET &presence(""), county, None => 400 "invalid_query";
        GET &presence(&format!("?node={DONGFENG}&depth=2")), county, None => 400 "invalid_query";
        GET &presence(&format!("?node={CITY}")), county, None => 403 "out_of_scope";
        GET &presence("?node=nowhere"), county, None => 404 "not_found";
    ]);

    // 受理 over REST: retried with its key, the same order (200); another body, a conflict.
    let orders = "/api/v1/orders";
    let body = new_order(w0, "广场舞音响太吵");
    let key = [("idempotency-key", "openapi-1")];
    let o = h
        .request(POST, orders, city, Some(&body), &key)
        .await
        .ok(201);
    let id = o["order"]["id"].as_u64().unwrap();
    let again = h
        .request(POST, orders, city, Some(&body), &key)
        .await
        .ok(200);
    assert_eq!(again["order"]["id"], id);
    let other_body = new_order(w0, "另一件事");
    let a = h.request(POST, orders, city, Some(&other_body), &key).await;
    a.refused(409, "idempotency_conflict");
    let mut urgent = new_order(&far, "积水");
    urgent["priority"] = json!("urgent");
    urgent["category"] = json!("waterlogging");
    urgent.as_object_mut().unwrap().remove("reporter");
    h.post(orders, city, Some(&urgent)).await.ok(201);
    let mut ufo = new_order(w0, "x");
    ufo["category"] = json!("ufo");
    let elsewhere = new_order(&far, "x");
    let mut colour = new_order(w0, "x");
    colour["colour"] = json!("red");
    api.assert_request_invalid(orders, &colour);
    refuse!(h, [
        POST orders, city, Some(&ufo) => 422 "unknown_category";
        POST orders, county, Some(&elsewhere) => 403 "out_of_scope";
        POST orders, city, Some(&colour) => 400 "invalid_data";
        POST orders, city, huge => 413 "message_too_large";
    ]);
    // A JSON body without its Content-Type.
    let (auth, text) = (format!("Bearer {city}"), body.to_string());
    let untyped = [("authorization", auth.as_str())];
    let a = h.send(POST, orders, &untyped, Some(text.as_bytes())).await;
    a.refused(400, "invalid_data");

    // Reading it: whole for the intake city, the reporter masked for the county.
    let order = format!("/api/v1/orders/{id}");
    let o = h.get(&order, city).await.ok(200);
    assert!(o["order"]["delivery"].is_object(), "{o}");
    let o = h.get(&order, county).await.ok(200);
    assert_eq!(o["order"]["reporter"]["phone"], "138****5678");
    refuse!(h, [
        GET &order, huanan, None => 404 "not_found";
        GET "/api/v1/orders/999999", city, None => 404 "not_found";
        GET "/api/v1/orders/abc", city, None => 400 "invalid_data";
    ]);

    // The eight steps over REST, with the refusals on the way.
    let act = |action: &str| format!("/api/v1/orders/{id}/{action}");
    let dispatch = json!({"to": DONGFENG, "note": "请核实", "version": 1});
    let o = h
        .post(&act("dispatch"), city, Some(&dispatch))
        .await
        .ok(200);
    assert_eq!(o["order"]["version"], 2);
    let colour = json!({"to": township, "colour": "red"});
    api.assert_request_invalid(&act("dispatch"), &colour);
    refuse!(h, [
        POST &act("acknowledge"), city, None => 403 "out_of_scope";
        POST &act("report"), county, Some(&json!({"result": "已处理"})) => 409 "illegal_transition";
        POST &act("acknowledge"), county, Some(&json!({"version": 1})) => 409 "version_conflict";
        POST &act("dispatch"), county, Some(&json!({"to": far})) => 422 "invalid_target";
        POST &act("dispatch"), county, Some(&json!({})) => 400 "invalid_data";
        POST &act("dispatch"), county, Some(&colour) => 400 "invalid_data";
        POST &act("teleport"), county, None => 404 "not_found";
        POST "/api/v1/orders/999999/acknowledge", county, None => 404 "not_found";
        POST "/api/v1/orders/abc/acknowledge", county, None => 400 "invalid_data";
        POST &act("report"), county, huge => 413 "message_too_large";
    ]);
    let o = h.post(&act("acknowledge"), county, None).await.ok(200);
    assert_eq!(o["order"]["state"], "in_progress");
    let photos = format!("/api/v1/orders/{id}/attachments");
    let attach = |token: &str, ctype: &str, bytes: Vec<u8>| {
        let (auth, ctype) = (format!("Bearer {token}"), ctype.to_owned());
        let (h, photos) = (&h, photos.clone());
        async move {
            h.send(
                POST,
                &photos,
                &[("authorization", &auth), ("content-type", &ctype)],
                Some(&bytes),
            )
            .await
        }
    };
    let png = |n: u8| [b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".as_slice(), &[n]].concat();
    let a = attach(county, "image/png", png(0)).await.ok(201);
    assert_eq!(a["attachment"]["content_type"], "image/png");
    let again = attach(county, "image/png", png(0)).await.ok(200);
    assert_eq!(
        again["attachment"]["id"], a["attachment"]["id"],
        "a retried upload"
    );
    let listed = h.get(&photos, city).await.ok(200);
    assert_eq!(listed["attachments"].as_array().unwrap().len(), 1);
    let url = a["url"].as_str().unwrap().to_owned();
    h.get(&url, city).await.ok(200);
    let observer = hub
        .auth
        .mint_seat(
            &hub.org,
            DONGFENG,
            Role::Observer,
            gridhub::auth::Seat::parse("wall").unwrap(),
            60,
            now_s(),
        )
        .unwrap();
    attach(&observer, "image/png", png(1))
        .await
        .refused(403, "out_of_scope");
    attach(huanan, "image/png", png(1))
        .await
        .refused(404, "not_found");
    let e = attach(city, "image/png", png(1)).await;
    e.refused(403, "out_of_scope");
    assert!(
        e.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("holder")
    );
    attach(county, "image/png", Vec::new())
        .await
        .refused(400, "invalid_data");
    attach(county, "text/plain", b"hello".to_vec())
        .await
        .refused(415, "unsupported_media_type");
    attach(county, "image/jpeg", png(1))
        .await
        .refused(400, "invalid_data");
    let too_big = [png(1), vec![0; 4 * 1024 * 1024]].concat();
    let e = attach(county, "image/png", too_big).await;
    e.refused(413, "message_too_large");
    assert!(
        e.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_attachment_bytes"),
        "{}",
        e.body
    );
    // A photo as a phone sends one, far larger than any other request.
    let large = [png(1), vec![7; 1024 * 1024]].concat();
    assert_eq!(
        attach(county, "image/png", large).await.ok(201)["attachment"]["bytes"],
        1024 * 1024 + 17
    );
    for n in 2..8 {
        attach(county, "image/png", png(n)).await.ok(201);
    }
    attach(county, "image/png", png(9))
        .await
        .refused(409, "too_many_attachments");
    refuse!(h, [
        GET "/api/v1/orders/999999/attachments", county, None => 404 "not_found";
        GET "/api/v1/orders/abc/attachments", county, None => 400 "invalid_data";
        GET &photos, huanan, None => 404 "not_found";
        GET &url, huanan, None => 404 "not_found";
        GET "/api/v1/attachments/999999", county, None => 404 "not_found";
        GET "/api/v1/attachments/abc", county, None => 400 "invalid_data";
    ]);
    let report = json!({"result": "已协调，音量降至规定以下"});
    let o = h.post(&act("report"), county, Some(&report)).await.ok(200);
    assert_eq!(o["order"]["holder"], CITY);
    let review = json!({"approve": true, "comment": "属实"});
    h.post(&act("review"), city, Some(&review)).await.ok(200);
    let public = format!("/api/v1/public/orders/{id}");
    h.get(&public, "").await.refused(404, "not_found");
    let rate = json!({"score": 5, "satisfied": true, "comment": "满意"});
    h.post(&act("rate"), city, Some(&rate)).await.ok(200);
    let summary = json!({"summary": "已处理。居民来电 13812345678 反映的噪音问题已解决"});
    h.post(&act("publish"), city, Some(&summary)).await.ok(200);
    let p = h.get(&public, "").await.ok(200);
    assert_eq!(p["reporter"]["phone"], "138****5678");
    let o = h.post(&act("archive"), city, None).await.ok(200);
    assert!(o["order"]["closed_at"].is_u64(), "{o}");
    h.get(&public, "").await.ok(200);
    let o = h.get(&order, city).await.ok(200);
    assert_eq!(o["order"]["state"], "archived");
    let late = h
        .send(
            POST,
            &photos,
            &[
                ("authorization", &format!("Bearer {city}")),
                ("content-type", "image/png"),
            ],
            Some(&png(20)),
        )
        .await;
    late.refused(409, "illegal_transition");
    refuse!(h, [
        POST &act("archive"), city, None => 409 "illegal_transition";
        GET "/api/v1/public/orders/999999", "", None => 404 "not_found";
        GET "/api/v1/public/orders/abc", "", None => 400 "invalid_data";
    ]);

    // Its history: the creation and each step.
    let history = format!("/api/v1/orders/{id}/history");
    let events = h.get(&history, city).await.ok(200)["events"].clone();
    let actions: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "create",
            "dispatch",
            "acknowledge",
            "report",
            "review",
            "rate",
            "publish",
            "archive"
        ]
    );
    h.get(&history, county).await.ok(200);
    refuse!(h, [
        GET &history, huanan, None => 404 "not_found";
        GET "/api/v1/orders/999999/history", city, None => 404 "not_found";
        GET "/api/v1/orders/x/history", city, None => 400 "invalid_data";
    ]);

    // Lists and statistics.
    let filtered = format!(
        "{orders}?node={DONGFENG}&state=archived&category=noise&priority=routine&holder={CITY}\
         &late=false&from=0&to=99999999999999&after=999999&limit=10"
    );
    let page = h.get(&filtered, city).await.ok(200);
    assert_eq!(page["orders"][0]["id"], id, "{page}");
    let page = h.get("/api/v1/orders?limit=1", city).await.ok(200);
    assert!(page["next"].is_u64(), "{page}");
    h.get("/api/v1/orders?late=true", city).await.ok(200);
    let stats = "/api/v1/orders/stats";
    let s = h.get(&format!("{stats}?node={CITY}"), city).await.ok(200);
    assert_eq!(
        (s["received"].as_u64(), s["mean_score"].as_f64()),
        (Some(2), Some(5.0)),
        "{s}"
    );
    h.get(stats, county).await.ok(200);
    refuse!(h, [
        GET "/api/v1/orders?limit=0", city, None => 400 "invalid_query";
        GET "/api/v1/orders?state=sleeping", city, None => 400 "invalid_query";
        GET "/api/v1/orders?node=nowhere", city, None => 404 "not_found";
        GET &format!("{orders}?node={HUANAN}"), county, None => 403 "out_of_scope";
        GET stats, worker, None => 403 "out_of_scope";
        GET "/api/v1/orders/stats?node=nowhere", city, None => 404 "not_found";
        GET "/api/v1/orders/stats?colour=red", city, None => 400 "invalid_query";
    ]);

    // Notices: the city to Huanan's workers; one of them reads it.
    let notices = "/api/v1/notices";
    let notice = json!({"node": HUANAN, "tiers": ["worker"], "title": "防汛通知",
        "body": "今晚有暴雨，请各网格员巡查低洼地带。"});
    let n = h.post(notices, city, Some(&notice)).await.ok(201);
    let nid = n["notice"]["id"].as_u64().unwrap();
    assert!(n["notice"]["recipients"].as_u64().unwrap() > 100, "{n}");
    let (one, read) = (format!("{notices}/{nid}"), format!("{notices}/{nid}/read"));
    h.post(&read, far_worker, None).await.ok(200);
    assert_eq!(h.get(&one, city).await.ok(200)["notice"]["read"], 1);
    let notice_to = |node: &str| json!({"node": node, "title": "t", "body": "b"});
    let blank = json!({"node": DONGFENG, "title": "", "body": "b"});
    api.assert_request_invalid(notices, &blank);
    refuse!(h, [
        GET &one, county, None => 404 "not_found";
        GET "/api/v1/notices/999", city, None => 404 "not_found";
        GET "/api/v1/notices/x", city, None => 400 "invalid_data";
        POST &read, county, None => 404 "not_found";
        POST "/api/v1/notices/x/read", county, None => 400 "invalid_data";
        POST notices, worker, Some(&notice_to(w0)) => 403 "out_of_scope";
        POST notices, county, Some(&notice_to(HUANAN)) => 403 "out_of_scope";
        POST notices, county, Some(&notice_to("230805999")) => 404 "not_found";
        POST notices, county, Some(&blank) => 400 "invalid_data";
        POST notices, county, huge => 413 "message_too_large";
    ]);

    // Campaigns: a township's workers check households.
    let campaigns = "/api/v1/campaigns";
    let due = gridhub::clock::now_ms() + 3_600_000;
    let start = json!({"node": township, "title": "人口核查",
        "instructions": "逐户核对常住人口信息", "due_at": due});
    let c = h.post(campaigns, county, Some(&start)).await.ok(201);
    let cid = c["campaign"]["id"].as_u64().unwrap();
    let camp = |action: &str| format!("{campaigns}/{cid}/{action}");
    let records = json!({"records": [
        {"key": "hh-0042", "outcome": "verified", "data": {"persons": 3}},
        {"key": "hh-0043", "outcome": "not_found"}]});
    let r = h
        .post(&camp("records"), worker, Some(&records))
        .await
        .ok(200);
    assert_eq!(r["accepted"], 2);
    h.post(&camp("done"), worker, None).await.ok(200);
    h.post(&camp("read"), worker, None).await.ok(200);
    let campaign = format!("{campaigns}/{cid}");
    let c = h.get(&campaign, county).await.ok(200)["campaign"].clone();
    assert_eq!(
        (c["records"].as_u64(), c["totals"]["workers_done"].as_u64()),
        (Some(2), Some(1))
    );
    h.get(&campaign, worker).await.ok(200);
    let empty = json!({"records": []});
    let not_object = json!({"records": [{"key": "hh-1", "outcome": "verified", "data": "three"}]});
    api.assert_request_invalid(&camp("records"), &empty);
    api.assert_request_invalid(&camp("records"), &not_object);
    refuse!(h, [
        GET &campaign, huanan, None => 404 "not_found";
        GET "/api/v1/campaigns/999", county, None => 404 "not_found";
        GET "/api/v1/campaigns/-1", county, None => 400 "invalid_data";
        POST &camp("records"), worker, Some(&empty) => 400 "invalid_data";
        POST &camp("records"), worker, Some(&not_object) => 400 "invalid_data";
        POST &camp("records"), worker, huge => 413 "message_too_large";
        POST &camp("records"), far_worker, Some(&records) => 404 "not_found";
        POST &camp("done"), county, None => 403 "out_of_scope";
        POST &camp("close"), worker, None => 403 "out_of_scope";
        POST &camp("read"), county, None => 404 "not_found";
        POST &camp("teleport"), county, None => 404 "not_found";
        POST "/api/v1/campaigns/999/done", worker, None => 404 "not_found";
        POST "/api/v1/campaigns/x/done", worker, None => 400 "invalid_data";
    ]);
    let c = h.post(&camp("close"), county, None).await.ok(200);
    assert!(c["campaign"]["closed_at"].is_u64(), "{c}");
    let campaign_to = |node: &str| json!({"node": node, "title": "t", "instructions": "i"});
    let past = json!({"node": township, "title": "t", "instructions": "i", "due_at": 1});
    let no_tiers = json!({"node": township, "title": "t", "instructions": "i", "tiers": []});
    api.assert_request_invalid(campaigns, &no_tiers);
    refuse!(h, [
        POST &camp("close"), county, None => 409 "illegal_transition";
        POST &camp("records"), worker, Some(&records) => 409 "illegal_transition";
        POST campaigns, worker, Some(&campaign_to(w0)) => 403 "out_of_scope";
        POST campaigns, county, Some(&campaign_to(HUANAN)) => 403 "out_of_scope";
        POST campaigns, county, Some(&campaign_to("230805999")) => 404 "not_found";
        POST campaigns, county, Some(&past) => 400 "invalid_data";
        POST campaigns, county, Some(&no_tiers) => 400 "invalid_data";
        POST campaigns, county, huge => 413 "message_too_large";
    ]);

    // Calls: one answered and hung up, one to a terminal that is not connected.
    let mut console = hub.connect(DONGFENG).await;
    let invite = json!({"to": w0, "media": "video", "offer": SDP});
    let r = console.call("call.invite", invite).await;
    let call = r["data"]["call"].as_u64().unwrap_or_else(|| panic!("{r}"));
    field.next_where(|m| m["type"] == "call.incoming").await;
    assert_eq!(
        field.call("call.accept", json!({"call": call})).await["type"],
        "reply"
    );
    console.next_where(|m| m["type"] == "call.accepted").await;
    assert_eq!(
        console.call("call.hangup", json!({"call": call})).await["type"],
        "reply"
    );
    field.next_where(|m| m["type"] == "call.ended").await;
    let r = console
        .call("call.invite", json!({"to": offline, "media": "audio"}))
        .await;
    assert_eq!(r["data"]["code"], "offline", "{r}");
    let calls = |q: &str| format!("/api/v1/calls{q}");
    let page = h
        .get(&calls(&format!("?node={DONGFENG}")), county)
        .await
        .ok(200);
    let outcomes: Vec<&str> = page["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["offline", "completed"]);
    let filtered = calls(&format!(
        "?node={DONGFENG}&party={w0}&outcome=completed&media=video&from=0&to=99999999999999\
         &after=999999&limit=1"
    ));
    let page = h.get(&filtered, county).await.ok(200);
    assert_eq!(
        (page["calls"][0]["id"].as_u64(), page["next"].as_u64()),
        (Some(call), Some(call))
    );
    h.get(&calls("?outcome=live"), county).await.ok(200);
    let one = calls(&format!("/{call}"));
    assert_eq!(
        h.get(&one, county).await.ok(200)["call"]["outcome"],
        "completed"
    );
    let stats = |q: &str| calls(&format!("/stats{q}"));
    let s = h
        .get(&stats(&format!("?node={DONGFENG}")), county)
        .await
        .ok(200);
    // One answered call, and one invite refused at once (it never reached its callee).
    assert_eq!(
        (
            s["received"].as_u64(),
            s["refused"].as_u64(),
            s["answered"].as_u64(),
            s["answered_rate"].as_f64()
        ),
        (Some(1), Some(1), Some(1), Some(1.0)),
        "{s}"
    );
    let window = s["to"].as_u64().unwrap() - s["from"].as_u64().unwrap();
    assert_eq!(window, 24 * 3600 * 1000, "the last 24 hours");
    h.get(&stats(""), worker).await.ok(200);
    let until = gridhub::clock::now_ms() + 60_000;
    h.get(&stats(&format!("?from=0&to={until}")), county)
        .await
        .ok(200);
    refuse!(h, [
        GET &calls("?outcome=exploded"), county, None => 400 "invalid_query";
        GET &calls("?limit=0"), county, None => 400 "invalid_query";
        GET &calls("?from=5&to=5"), county, None => 400 "invalid_query";
        GET &calls("?party=nowhere"), county, None => 400 "invalid_query";
        GET &calls(&format!("?node={HUANAN}")), county, None => 403 "out_of_scope";
        GET &calls("?node=nowhere"), county, None => 404 "not_found";
        GET &one, huanan, None => 404 "not_found";
        GET &calls("/999999"), county, None => 404 "not_found";
        GET &calls("/1.5"), county, None => 400 "invalid_data";
        GET &stats("?from=10&to=5"), county, None => 400 "invalid_query";
        GET &stats("?colour=red"), county, None => 400 "invalid_query";
        GET &stats(&format!("?node={HUANAN}")), county, None => 403 "out_of_scope";
        GET &stats("?node=nowhere"), county, None => 404 "not_found";
    ]);

    // A command session on record: opened at a desk of the county, the worker in and out.
    let desk = hub.seat_token(DONGFENG, Role::Operator, "desk-9");
    let mut desk = hub.connect_with(&desk).await;
    let r = desk
        .call("session.create", json!({"title": "会商", "invite": [w0]}))
        .await;
    let sid = r["data"]["session"]["session"].as_u64().expect("opened");
    let r = field.call("session.join", json!({"session": sid})).await;
    assert_eq!(r["type"], "reply", "{r}");
    desk.call("session.control", json!({"session": sid, "action": "end"}))
        .await;
    let sessions = |q: &str| format!("/api/v1/sessions{q}");
    let page = h.get(&sessions(""), county).await.ok(200);
    assert_eq!(page["sessions"][0]["id"], sid, "{page}");
    assert_eq!(page["sessions"][0]["end_reason"], "ended by its commander");
    let one = h.get(&sessions(&format!("/{sid}")), county).await.ok(200);
    let spans = one["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 2, "{one}");
    assert!(spans.iter().all(|s| s["left_at"].is_u64()), "{one}");
    h.get(&sessions(&format!("/{sid}")), worker).await.ok(200);
    assert_eq!(
        h.get(&sessions(""), worker).await.ok(200)["sessions"][0]["id"],
        sid
    );
    let other_session = sessions(&format!("/{sid}"));
    refuse!(h, [
        GET &sessions("?limit=0"), county, None => 400 "invalid_query";
        GET &sessions(&format!("?node={HUANAN}")), county, None => 403 "out_of_scope";
        GET &sessions("?node=nowhere"), county, None => 404 "not_found";
        GET &other_session, huanan, None => 404 "not_found";
        GET &sessions("/999999"), county, None => 404 "not_found";
        GET &sessions("/abc"), county, None => 400 "invalid_data";
        GET "/api/v1/recordings/999999", county, None => 404 "not_found";
        GET "/api/v1/recordings/abc", county, None => 400 "invalid_data";
    ]);

    // The analysis: on a store with few orders it answers with little and says why; a site and
    // a recorded intervention make the rest answer.
    let a = h
        .get("/api/v1/analysis/hotspots?category=noise", city)
        .await
        .ok(200);
    assert_eq!(a["tested"], 0);
    assert!(a["empty"].is_string());
    h.get("/api/v1/analysis/hotspots?unit=nodes&tier=village", county)
        .await
        .ok(200);
    h.get(
        "/api/v1/analysis/causes?category=waterlogging&by=children",
        city,
    )
    .await
    .ok(200);
    h.get("/api/v1/analysis/performance?group=category", city)
        .await
        .ok(200);
    h.get(
        "/api/v1/analysis/performance?tier=village&period=week",
        county,
    )
    .await
    .ok(200);
    let site = json!({"sites": [{"kind": "square", "name": "站前广场", "node": DONGFENG, "lat": 46.82, "lon": 130.40, "ref": "oa-1"}]});
    let added = h
        .post("/api/v1/analysis/sites", county, Some(&site))
        .await
        .ok(201);
    let sid = added["sites"][0]["id"].as_u64().unwrap();
    h.post("/api/v1/analysis/sites", county, Some(&site))
        .await
        .ok(200);
    h.get("/api/v1/analysis/sites?kind=square", county)
        .await
        .ok(200);
    h.get(
        &format!("/api/v1/analysis/sites/{sid}/similar?category=noise"),
        county,
    )
    .await
    .ok(200);
    let recorded = json!({"title": "定时段、限音量", "category": "noise", "sites": [sid], "at": 1_700_000_000_000u64});
    let i = h
        .post("/api/v1/analysis/interventions", county, Some(&recorded))
        .await
        .ok(201);
    let iid = i["intervention"]["id"].as_u64().unwrap();
    let task = json!({"title": "广场舞噪音治理", "category": "noise", "sites": [sid], "task": {}});
    let pushed = h
        .post("/api/v1/analysis/interventions", county, Some(&task))
        .await
        .ok(201);
    let again = h
        .post("/api/v1/analysis/interventions", county, Some(&task))
        .await
        .ok(200);
    assert_eq!(
        again["order"]["id"], pushed["order"]["id"],
        "a retried push takes in one order"
    );
    h.get("/api/v1/analysis/interventions", county)
        .await
        .ok(200);
    h.get(
        &format!("/api/v1/analysis/interventions/{iid}/effect"),
        county,
    )
    .await
    .ok(200);
    let effect_of = |q: &str| format!("/api/v1/analysis/interventions/{iid}/effect{q}");
    let no_sites = json!({"sites": []});
    let no_title = json!({"category": "noise"});
    let gone_site = json!({"title": "t", "category": "noise", "sites": [999_999]});
    let odd_category = json!({"title": "t", "category": "dancing"});
    refuse!(h, [
        GET "/api/v1/analysis/hotspots?from=5&to=5", county, None => 400 "invalid_query";
        GET "/api/v1/analysis/hotspots", worker, None => 403 "out_of_scope";
        GET "/api/v1/analysis/hotspots?node=999999", county, None => 404 "not_found";
        GET "/api/v1/analysis/hotspots?category=dancing", county, None => 422 "unknown_category";
        GET "/api/v1/analysis/causes", county, None => 400 "invalid_query";
        GET "/api/v1/analysis/causes?category=noise", worker, None => 403 "out_of_scope";
        GET "/api/v1/analysis/causes?category=noise&node=999999", county, None => 404 "not_found";
        GET "/api/v1/analysis/causes?category=dancing", county, None => 422 "unknown_category";
        GET "/api/v1/analysis/sites?colour=red", county, None => 400 "invalid_query";
        GET "/api/v1/analysis/sites", worker, None => 403 "out_of_scope";
        GET "/api/v1/analysis/sites?node=999999", county, None => 404 "not_found";
        POST "/api/v1/analysis/sites", county, Some(&no_sites) => 400 "invalid_data";
        POST "/api/v1/analysis/sites", huanan, Some(&site) => 403 "out_of_scope";
        GET "/api/v1/analysis/sites/1/similar", county, None => 400 "invalid_query";
        GET "/api/v1/analysis/sites/1/similar?category=noise", worker, None => 403 "out_of_scope";
        GET "/api/v1/analysis/sites/999999/similar?category=noise", county, None => 404 "not_found";
        GET "/api/v1/analysis/sites/1/similar?category=dancing", county, None => 422 "unknown_category";
        GET "/api/v1/analysis/interventions?colour=red", county, None => 400 "invalid_query";
        GET "/api/v1/analysis/interventions", worker, None => 403 "out_of_scope";
        GET "/api/v1/analysis/interventions?node=999999", county, None => 404 "not_found";
        POST "/api/v1/analysis/interventions", county, Some(&no_title) => 400 "invalid_data";
        POST "/api/v1/analysis/interventions", worker, Some(&recorded) => 403 "out_of_scope";
        POST "/api/v1/analysis/interventions", county, Some(&gone_site) => 404 "not_found";
        POST "/api/v1/analysis/interventions", county, Some(&odd_category) => 422 "unknown_category";
        GET &effect_of("?bucket=year"), county, None => 400 "invalid_query";
        GET &effect_of(""), worker, None => 403 "out_of_scope";
        GET &effect_of(""), huanan, None => 404 "not_found";
        GET "/api/v1/analysis/performance?group=colour", county, None => 400 "invalid_query";
        GET "/api/v1/analysis/performance", worker, None => 403 "out_of_scope";
        GET "/api/v1/analysis/performance?node=999999", county, None => 404 "not_found";
        GET "/api/v1/analysis/performance?category=dancing", county, None => 422 "unknown_category";
    ]);

    // A node of a cluster that does not run the services sends REST for them to the one that does.
    let net = Net::memory();
    let _runs = spawn_node(&net, 1, true).await;
    let forwards = spawn_node(&net, 2, false).await;
    let b = api.at(forwards.addr);
    let city_b = forwards.token(CITY);
    let city_b = city_b.as_str();
    let (new, notice, campaign) = (new_order(w0, "x"), notice_to(HUANAN), campaign_to(HUANAN));
    refuse!(b, [
        GET orders, city_b, None => 503 "not_served_here";
        GET "/api/v1/orders/stats", city_b, None => 503 "not_served_here";
        GET "/api/v1/orders/1", city_b, None => 503 "not_served_here";
        GET "/api/v1/orders/1/history", city_b, None => 503 "not_served_here";
        GET "/api/v1/orders/1/attachments", city_b, None => 503 "not_served_here";
        GET "/api/v1/attachments/1", city_b, None => 503 "not_served_here";
        GET "/api/v1/public/orders/1", "", None => 503 "not_served_here";
        GET "/api/v1/notices/1", city_b, None => 503 "not_served_here";
        GET "/api/v1/campaigns/1", city_b, None => 503 "not_served_here";
        GET "/api/v1/calls", city_b, None => 503 "not_served_here";
        GET "/api/v1/calls/stats", city_b, None => 503 "not_served_here";
        GET "/api/v1/calls/1", city_b, None => 503 "not_served_here";
        GET "/api/v1/sessions", city_b, None => 503 "not_served_here";
        GET "/api/v1/sessions/1", city_b, None => 503 "not_served_here";
        GET "/api/v1/recordings/1", city_b, None => 503 "not_served_here";
        POST orders, city_b, Some(&new) => 503 "not_served_here";
        POST "/api/v1/orders/1/acknowledge", city_b, None => 503 "not_served_here";
        POST notices, city_b, Some(&notice) => 503 "not_served_here";
        POST "/api/v1/notices/1/read", city_b, None => 503 "not_served_here";
        POST campaigns, city_b, Some(&campaign) => 503 "not_served_here";
        POST "/api/v1/campaigns/1/done", city_b, None => 503 "not_served_here";
        GET "/api/v1/analysis/hotspots", city_b, None => 503 "not_served_here";
        GET "/api/v1/analysis/causes?category=noise", city_b, None => 503 "not_served_here";
        GET "/api/v1/analysis/sites", city_b, None => 503 "not_served_here";
        POST "/api/v1/analysis/sites", city_b, Some(&site) => 503 "not_served_here";
        GET "/api/v1/analysis/sites/1/similar?category=noise", city_b, None => 503 "not_served_here";
        GET "/api/v1/analysis/interventions", city_b, None => 503 "not_served_here";
        POST "/api/v1/analysis/interventions", city_b, Some(&recorded) => 503 "not_served_here";
        GET "/api/v1/analysis/interventions/1/effect", city_b, None => 503 "not_served_here";
        GET "/api/v1/analysis/performance", city_b, None => 503 "not_served_here";
    ]);
    let photo = b"\x89PNG\r\n\x1a\n".to_vec();
    b.send(
        POST,
        "/api/v1/orders/1/attachments",
        &[
            ("authorization", &format!("Bearer {city_b}")),
            ("content-type", "image/png"),
        ],
        Some(&photo),
    )
    .await
    .refused(503, "not_served_here");

    // A node at its terminal cap, then draining for shutdown.
    let small = spawn_app(|c| c.transport.max_connections = 1).await;
    let s = api.at(small.addr);
    let _only = small.connect(HUANAN).await;
    let a = s.upgrade("/ws", &bearer(&small.token(DONGFENG))).await;
    a.refused(503, "at_capacity");
    assert_eq!(a.header("retry-after"), Some("5"));
    // The first thing a graceful shutdown does (a whole drain: tests/it/shutdown.rs).
    small.hub().transport.accepting.store(false, Relaxed);
    s.get("/readyz", "").await.refused(503, "shutting_down");
    let a = s.upgrade("/ws", &bearer(&small.token(DONGFENG))).await;
    a.refused(503, "shutting_down");

    // Every route answered with a success, and every status the document gives was seen (where
    // it can be caused).
    let seen = api.seen.lock().unwrap().clone();
    for route in gridhub::api::ROUTES {
        let ok = |s: &u16| (200..300).contains(s) || *s == 101;
        // A success no test here can cause is said so, with where it is tested instead.
        let elsewhere = INFEASIBLE.iter().any(|(p, _, s, _)| *p == route && ok(s));
        assert!(
            elsewhere || seen.iter().any(|(p, _, s)| p == route && ok(s)),
            "{route}: no success seen"
        );
    }
    let infeasible: BTreeSet<(String, String, u16)> = INFEASIBLE
        .iter()
        .map(|(p, m, s, _)| (p.to_string(), m.to_string(), *s))
        .collect();
    let documented = api.documented();
    assert!(
        infeasible.is_subset(&documented),
        "stale INFEASIBLE entries"
    );
    let missing: Vec<_> = documented
        .difference(&seen)
        .filter(|x| !infeasible.contains(x))
        .collect();
    assert!(missing.is_empty(), "documented but never seen: {missing:?}");
}
