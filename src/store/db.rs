//! db — one SQL interface over the two stores: an embedded SQLite file (the default) and a
//! PostgreSQL server shared by several hub nodes.
//!
//! The domains write their SQL once, in the dialect both engines speak (`?N` or `?`
//! placeholders, `ON CONFLICT … DO UPDATE/NOTHING`, `RETURNING`), against `Connection`,
//! `Statement` and `Row`, which mirror the parts of `rusqlite` they use. A PostgreSQL connection
//! turns placeholders into `$N` once per statement and keeps its prepared statements; values
//! cross as one small enum, which PostgreSQL's binary encoding receives as whatever type the
//! server inferred for the column (every integer column there is `BIGINT`).
//!
//! A PostgreSQL connection drives its own single-thread runtime, so the store's threads block on
//! it exactly as they block on SQLite; it must not be used from inside an async task.
//!
//! A round trip per statement would bound the writer at a few thousand statements a second, so a
//! write whose answer nobody reads (`Statement::write`) is sent at once and its answer collected
//! later, before the next statement that waits for one (at the latest the commit): a batch of
//! transitions goes out as one stream. A failed write then fails the batch where SQLite's would
//! have failed at that statement — the whole batch is rolled back either way.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::error::Error as StdError;
use std::pin::Pin;

use bytes::{BufMut, BytesMut};
use smallvec::SmallVec;
use tokio_postgres::types::{FromSql as PgFromSql, IsNull, ToSql as PgToSql, Type, to_sql_checked};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgres: {0}")]
    Postgres(String),
    #[error("query returned no rows")]
    NoRows,
    #[error("column {0}: {1}")]
    Column(usize, String),
    #[error("{0}")]
    Other(String),
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Error {
        // The server's own message (and where in the statement) says more than the driver's
        // "db error".
        match e.as_db_error() {
            Some(d) => Error::Postgres(format!("{}: {}", d.code().code(), d.message())),
            None => Error::Postgres(e.to_string()),
        }
    }
}

/// A value as it crosses to or from either engine.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// A borrowed `Value`: what parameters bind and what rows hand out, without copying.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(&'a str),
    Blob(&'a [u8]),
}

impl<'a> ValueRef<'a> {
    pub fn as_str(&self) -> Result<&'a str> {
        match *self {
            ValueRef::Text(s) => Ok(s),
            ref v => Err(Error::Other(format!("expected text, found {v:?}"))),
        }
    }

    pub fn into_value(self) -> Value {
        match self {
            ValueRef::Null => Value::Null,
            ValueRef::Int(i) => Value::Int(i),
            ValueRef::Real(f) => Value::Real(f),
            ValueRef::Text(s) => Value::Text(s.to_owned()),
            ValueRef::Blob(b) => Value::Blob(b.to_owned()),
        }
    }
}

impl Value {
    pub fn as_ref(&self) -> ValueRef<'_> {
        match self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Int(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(s) => ValueRef::Text(s),
            Value::Blob(b) => ValueRef::Blob(b),
        }
    }
}

macro_rules! value_from {
    ($($t:ty => |$v:ident| $e:expr),* $(,)?) => {$(
        impl From<$t> for Value {
            fn from($v: $t) -> Value { $e }
        }
    )*};
}
value_from! {
    i64 => |v| Value::Int(v),
    f64 => |v| Value::Real(v),
    String => |v| Value::Text(v),
    Vec<u8> => |v| Value::Blob(v),
}

/// What can be bound as a parameter.
pub trait ToSql {
    fn value(&self) -> ValueRef<'_>;
}

macro_rules! int_to_sql {
    ($($t:ty),*) => {$(
        impl ToSql for $t {
            fn value(&self) -> ValueRef<'_> {
                // Every integer the hub stores fits: ids, sequences and Unix milliseconds.
                ValueRef::Int(*self as i64)
            }
        }
    )*};
}
int_to_sql!(i64, i32, i16, u32, u16, u8, u64, usize);

impl ToSql for bool {
    fn value(&self) -> ValueRef<'_> {
        ValueRef::Int(*self as i64)
    }
}
impl ToSql for f64 {
    fn value(&self) -> ValueRef<'_> {
        ValueRef::Real(*self)
    }
}
impl ToSql for str {
    fn value(&self) -> ValueRef<'_> {
        ValueRef::Text(self)
    }
}
impl ToSql for String {
    fn value(&self) -> ValueRef<'_> {
        ValueRef::Text(self)
    }
}
impl ToSql for [u8] {
    fn value(&self) -> ValueRef<'_> {
        ValueRef::Blob(self)
    }
}
impl ToSql for Vec<u8> {
    fn value(&self) -> ValueRef<'_> {
        ValueRef::Blob(self)
    }
}
impl ToSql for Value {
    fn value(&self) -> ValueRef<'_> {
        self.as_ref()
    }
}
impl ToSql for ValueRef<'_> {
    fn value(&self) -> ValueRef<'_> {
        *self
    }
}
impl<T: ToSql + ?Sized> ToSql for &T {
    fn value(&self) -> ValueRef<'_> {
        (**self).value()
    }
}
impl<T: ToSql> ToSql for Option<T> {
    fn value(&self) -> ValueRef<'_> {
        match self {
            Some(v) => v.value(),
            None => ValueRef::Null,
        }
    }
}

/// Parameters of one statement, in placeholder order.
type Bound<'a> = SmallVec<[ValueRef<'a>; 12]>;

pub trait Params {
    fn bind(&self) -> Bound<'_>;
}

impl Params for &[&dyn ToSql] {
    fn bind(&self) -> Bound<'_> {
        self.iter().map(|p| p.value()).collect()
    }
}
impl Params for [&dyn ToSql; 0] {
    fn bind(&self) -> Bound<'_> {
        Bound::new()
    }
}
macro_rules! array_params {
    ($($n:literal),*) => {$(
        impl<T: ToSql> Params for [T; $n] {
            fn bind(&self) -> Bound<'_> {
                self.iter().map(|p| p.value()).collect()
            }
        }
    )*};
}
array_params!(1, 2, 3, 4, 5, 6, 7, 8);

/// Parameters from a list built at run time (filters that depend on the request).
pub struct ParamsFromIter<I>(I);

pub fn params_from_iter<I>(iter: I) -> ParamsFromIter<I> {
    ParamsFromIter(iter)
}

impl<I, T> Params for ParamsFromIter<I>
where
    for<'a> &'a I: IntoIterator<Item = &'a T>,
    T: ToSql,
{
    fn bind(&self) -> Bound<'_> {
        (&self.0).into_iter().map(|p| p.value()).collect()
    }
}

#[macro_export]
macro_rules! sql_params {
    () => { &[] as &[&dyn $crate::store::db::ToSql] };
    ($($p:expr),+ $(,)?) => { &[$(&$p as &dyn $crate::store::db::ToSql),+] as &[&dyn $crate::store::db::ToSql] };
}
pub use crate::sql_params as params;

/// What a column can be read as.
pub trait FromSql: Sized {
    fn column(v: ValueRef<'_>) -> std::result::Result<Self, String>;
}

fn mismatch<T>(want: &str, v: ValueRef<'_>) -> std::result::Result<T, String> {
    Err(format!("expected {want}, found {v:?}"))
}

macro_rules! int_from_sql {
    ($($t:ty),*) => {$(
        impl FromSql for $t {
            fn column(v: ValueRef<'_>) -> std::result::Result<$t, String> {
                match v {
                    ValueRef::Int(i) => <$t>::try_from(i).map_err(|_| format!("{i} out of range")),
                    v => mismatch("an integer", v),
                }
            }
        }
    )*};
}
int_from_sql!(i64, i32, u32, u16, u8, u64, usize);

impl FromSql for bool {
    fn column(v: ValueRef<'_>) -> std::result::Result<bool, String> {
        match v {
            ValueRef::Int(i) => Ok(i != 0),
            v => mismatch("a boolean", v),
        }
    }
}
impl FromSql for f64 {
    fn column(v: ValueRef<'_>) -> std::result::Result<f64, String> {
        match v {
            ValueRef::Real(f) => Ok(f),
            ValueRef::Int(i) => Ok(i as f64),
            v => mismatch("a number", v),
        }
    }
}
impl FromSql for String {
    fn column(v: ValueRef<'_>) -> std::result::Result<String, String> {
        match v {
            ValueRef::Text(s) => Ok(s.to_owned()),
            v => mismatch("text", v),
        }
    }
}
impl FromSql for Vec<u8> {
    fn column(v: ValueRef<'_>) -> std::result::Result<Vec<u8>, String> {
        match v {
            ValueRef::Blob(b) => Ok(b.to_owned()),
            ValueRef::Text(s) => Ok(s.as_bytes().to_owned()),
            v => mismatch("bytes", v),
        }
    }
}
impl FromSql for Value {
    fn column(v: ValueRef<'_>) -> std::result::Result<Value, String> {
        Ok(v.into_value())
    }
}
impl<T: FromSql> FromSql for Option<T> {
    fn column(v: ValueRef<'_>) -> std::result::Result<Option<T>, String> {
        match v {
            ValueRef::Null => Ok(None),
            v => T::column(v).map(Some),
        }
    }
}

/// A column position (rusqlite's `get::<_, T>(i)` shape, so call sites read the same).
pub trait RowIndex {
    fn idx(self) -> usize;
}
impl RowIndex for usize {
    fn idx(self) -> usize {
        self
    }
}

/// One row of a result.
pub enum Row<'a> {
    Lite(&'a rusqlite::Row<'a>),
    Pg(&'a tokio_postgres::Row),
}

impl Row<'_> {
    pub fn get_ref<I: RowIndex>(&self, i: I) -> Result<ValueRef<'_>> {
        let i = i.idx();
        match self {
            Row::Lite(r) => Ok(lite_ref(r.get_ref(i)?)),
            Row::Pg(r) => r
                .try_get::<_, ValueRef<'_>>(i)
                .map_err(|e| Error::Column(i, e.to_string())),
        }
    }

    pub fn get<I: RowIndex, T: FromSql>(&self, i: I) -> Result<T> {
        let i = i.idx();
        T::column(self.get_ref(i)?).map_err(|e| Error::Column(i, e))
    }
}

fn lite_ref(v: rusqlite::types::ValueRef<'_>) -> ValueRef<'_> {
    use rusqlite::types::ValueRef as L;
    match v {
        L::Null => ValueRef::Null,
        L::Integer(i) => ValueRef::Int(i),
        L::Real(f) => ValueRef::Real(f),
        // SQLite hands back what was stored; the hub stores only UTF-8 text.
        L::Text(t) => std::str::from_utf8(t).map_or(ValueRef::Blob(t), ValueRef::Text),
        L::Blob(b) => ValueRef::Blob(b),
    }
}

impl rusqlite::ToSql for ValueRef<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef as L};
        Ok(ToSqlOutput::Borrowed(match *self {
            ValueRef::Null => L::Null,
            ValueRef::Int(i) => L::Integer(i),
            ValueRef::Real(f) => L::Real(f),
            ValueRef::Text(s) => L::Text(s.as_bytes()),
            ValueRef::Blob(b) => L::Blob(b),
        }))
    }
}

type BoxError = Box<dyn StdError + Sync + Send>;

impl PgToSql for ValueRef<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> std::result::Result<IsNull, BoxError> {
        let wrong = || -> BoxError { format!("cannot store {self:?} as {ty}").into() };
        match *self {
            ValueRef::Null => return Ok(IsNull::Yes),
            ValueRef::Int(i) => match *ty {
                Type::INT8 => out.put_i64(i),
                Type::INT4 => out.put_i32(i32::try_from(i).map_err(|_| wrong())?),
                Type::INT2 => out.put_i16(i16::try_from(i).map_err(|_| wrong())?),
                Type::FLOAT8 => out.put_f64(i as f64),
                Type::FLOAT4 => out.put_f32(i as f32),
                Type::BOOL => out.put_u8((i != 0) as u8),
                Type::TEXT | Type::VARCHAR | Type::UNKNOWN => {
                    out.put_slice(i.to_string().as_bytes())
                }
                _ => return Err(wrong()),
            },
            ValueRef::Real(f) => match *ty {
                Type::FLOAT8 => out.put_f64(f),
                Type::FLOAT4 => out.put_f32(f as f32),
                _ => return Err(wrong()),
            },
            ValueRef::Text(s) => match *ty {
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                    out.put_slice(s.as_bytes())
                }
                Type::JSON => out.put_slice(s.as_bytes()),
                Type::JSONB => {
                    out.put_u8(1);
                    out.put_slice(s.as_bytes())
                }
                Type::BYTEA => out.put_slice(s.as_bytes()),
                _ => return Err(wrong()),
            },
            ValueRef::Blob(b) => match *ty {
                Type::BYTEA => out.put_slice(b),
                _ => return Err(wrong()),
            },
        }
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        // Decided per value in `to_sql`, which names the value and the column type it missed.
        true
    }

    to_sql_checked!();
}

impl PgToSql for Value {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> std::result::Result<IsNull, BoxError> {
        self.as_ref().to_sql(ty, out)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

impl<'a> PgFromSql<'a> for ValueRef<'a> {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> std::result::Result<ValueRef<'a>, BoxError> {
        let int = |n: usize| -> std::result::Result<[u8; 8], BoxError> {
            let mut b = [0u8; 8];
            if raw.len() != n {
                return Err(format!("{ty}: {} bytes", raw.len()).into());
            }
            b[8 - n..].copy_from_slice(raw);
            Ok(b)
        };
        Ok(match *ty {
            Type::INT8 => ValueRef::Int(i64::from_be_bytes(int(8)?)),
            Type::INT4 => ValueRef::Int(i32::from_be_bytes(int(4)?[4..].try_into()?) as i64),
            Type::INT2 => ValueRef::Int(i16::from_be_bytes(int(2)?[6..].try_into()?) as i64),
            Type::OID => ValueRef::Int(u32::from_be_bytes(int(4)?[4..].try_into()?) as i64),
            Type::BOOL => ValueRef::Int((raw.first() == Some(&1)) as i64),
            Type::FLOAT8 => ValueRef::Real(f64::from_be_bytes(int(8)?)),
            Type::FLOAT4 => ValueRef::Real(f32::from_be_bytes(int(4)?[4..].try_into()?) as f64),
            Type::NUMERIC => numeric(raw)?,
            Type::BYTEA => ValueRef::Blob(raw),
            Type::JSONB => ValueRef::Text(std::str::from_utf8(raw.get(1..).unwrap_or(&[]))?),
            _ => ValueRef::Text(std::str::from_utf8(raw)?),
        })
    }

    fn from_sql_null(_: &Type) -> std::result::Result<ValueRef<'a>, BoxError> {
        Ok(ValueRef::Null)
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// PostgreSQL's binary NUMERIC (what `SUM` and `AVG` of integers return): an integer when it is
/// one, else the nearest double. SQLite answers the same queries with an integer or a real.
fn numeric(raw: &[u8]) -> std::result::Result<ValueRef<'static>, BoxError> {
    let word = |i: usize| -> std::result::Result<u16, BoxError> {
        Ok(u16::from_be_bytes(
            raw.get(i * 2..i * 2 + 2)
                .ok_or("short numeric")?
                .try_into()?,
        ))
    };
    let (n, weight, sign, scale) = (word(0)?, word(1)? as i16, word(2)?, word(3)?);
    if sign == 0xC000 {
        return Ok(ValueRef::Real(f64::NAN));
    }
    let mut f = 0f64;
    let mut int: Option<i64> = Some(0);
    for k in 0..n as usize {
        let d = word(4 + k)? as i64;
        let power = weight as i32 - k as i32;
        f += d as f64 * 10_000f64.powi(power);
        int = match (int, power >= 0) {
            (Some(acc), true) => 10_000i64
                .checked_pow(power as u32)
                .and_then(|p| d.checked_mul(p))
                .and_then(|x| acc.checked_add(x)),
            (acc, false) if d == 0 => acc,
            _ => None,
        };
    }
    let negative = sign == 0x4000;
    Ok(match int {
        Some(i) if scale == 0 || f.fract() == 0.0 => ValueRef::Int(if negative { -i } else { i }),
        _ => ValueRef::Real(if negative { -f } else { f }),
    })
}

/// A connection to either engine.
pub enum Connection {
    Lite(rusqlite::Connection),
    Pg(PgConn),
}

impl Connection {
    /// A SQLite file, opened as it is (the store's own connections add their pragmas).
    pub fn open(path: &std::path::Path) -> Result<Connection> {
        Ok(Connection::Lite(rusqlite::Connection::open(path)?))
    }

    /// A SQLite database in memory, for tests of one domain's SQL.
    pub fn open_in_memory() -> Result<Connection> {
        Ok(Connection::Lite(rusqlite::Connection::open_in_memory()?))
    }

    /// Whether the server went away (a SQLite file never does).
    pub fn is_closed(&self) -> bool {
        match self {
            Connection::Lite(_) => false,
            Connection::Pg(c) => c.is_closed(),
        }
    }

    /// Whether the server still answers on this connection: one round trip, so that one held
    /// idle across a server restart is replaced before it fails a request.
    pub fn alive(&self) -> bool {
        match self {
            Connection::Lite(_) => true,
            Connection::Pg(c) => !c.is_closed() && c.block(c.client.simple_query("")).is_ok(),
        }
    }

    /// The SQLite connection, for what only SQLite has (pragmas, checkpoints).
    pub fn sqlite(&self) -> Option<&rusqlite::Connection> {
        match self {
            Connection::Lite(c) => Some(c),
            Connection::Pg(_) => None,
        }
    }

    pub fn execute_batch(&self, sql: &str) -> Result<()> {
        match self {
            Connection::Lite(c) => Ok(c.execute_batch(sql)?),
            Connection::Pg(c) => c.block(c.client.batch_execute(sql)),
        }
    }

    /// `f` in one transaction: committed if it succeeds, rolled back whole if anything fails.
    pub fn transaction<T, E: From<Error>>(
        &self,
        f: impl FnOnce(&Connection) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        self.begin()?;
        match f(self).and_then(|v| self.commit().map(|()| v).map_err(E::from)) {
            Ok(v) => Ok(v),
            Err(e) => {
                // Already failed: the rollback's own error would say nothing more.
                let _ = self.rollback();
                Err(e)
            }
        }
    }

    /// Opens a transaction. SQLite's takes the write lock now rather than at the first write,
    /// so a reader's lock never makes a batch fail half-way.
    pub fn begin(&self) -> Result<()> {
        match self {
            Connection::Lite(c) => Ok(c.execute_batch("BEGIN IMMEDIATE")?),
            Connection::Pg(c) => {
                c.failed.set(false);
                c.block(c.client.batch_execute("BEGIN"))
            }
        }
    }

    /// Commits the transaction; on PostgreSQL refused outright if a statement of it failed
    /// (the server would answer the `COMMIT` with a rollback).
    pub fn commit(&self) -> Result<()> {
        match self {
            Connection::Lite(c) => Ok(c.execute_batch("COMMIT")?),
            Connection::Pg(c) => {
                let done = c.block(c.client.batch_execute("COMMIT"));
                match done {
                    Ok(()) if c.failed.get() => Err(Error::Other(
                        "a statement of the transaction failed: it was rolled back".into(),
                    )),
                    other => other,
                }
            }
        }
    }

    /// Ends the transaction without keeping anything, whatever failed in it. On PostgreSQL the
    /// answers of writes still unread are read first (and their errors dropped: the transaction
    /// is going anyway), so the rollback is never skipped for one of them.
    pub fn rollback(&self) -> Result<()> {
        match self {
            Connection::Lite(c) => Ok(c.execute_batch("ROLLBACK")?),
            Connection::Pg(c) => {
                let pending = std::mem::take(&mut *c.pending.borrow_mut());
                c.rt.block_on(async move {
                    for answer in pending {
                        let _ = answer.await;
                    }
                    c.client.batch_execute("ROLLBACK").await
                })?;
                Ok(())
            }
        }
    }

    pub fn prepare_cached(&self, sql: &str) -> Result<Statement<'_>> {
        match self {
            Connection::Lite(c) => Ok(Statement::Lite(c.prepare_cached(sql)?)),
            Connection::Pg(c) => Ok(Statement::Pg(c, c.statement(sql)?)),
        }
    }

    /// Statements are cached either way: the SQL is fixed text, a handful per domain.
    pub fn prepare(&self, sql: &str) -> Result<Statement<'_>> {
        self.prepare_cached(sql)
    }

    pub fn execute<P: Params>(&self, sql: &str, params: P) -> Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    /// `Statement::write` of `sql`.
    pub fn write<P: Params>(&self, sql: &str, params: P) -> Result<()> {
        self.prepare_cached(sql)?.write(params)
    }

    pub fn query_row<T, P: Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<T> {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}

pub enum Statement<'c> {
    Lite(rusqlite::CachedStatement<'c>),
    Pg(&'c PgConn, tokio_postgres::Statement),
}

fn pg_args<'a, 'b: 'a>(b: &'a Bound<'b>) -> SmallVec<[&'a (dyn PgToSql + Sync + 'a); 12]> {
    b.iter().map(|v| v as &(dyn PgToSql + Sync)).collect()
}

impl<'c> Statement<'c> {
    pub fn execute<P: Params>(&mut self, params: P) -> Result<usize> {
        let bound = params.bind();
        match self {
            Statement::Lite(s) => Ok(s.execute(rusqlite::params_from_iter(bound.iter()))?),
            Statement::Pg(c, s) => {
                c.free()?;
                let args = pg_args(&bound);
                Ok(c.block(c.client.execute(&*s, &args))? as usize)
            }
        }
    }

    /// A write whose count nobody reads: on PostgreSQL sent without waiting for its answer
    /// (module notes); its error, if any, fails the batch no later than the commit.
    pub fn write<P: Params>(&mut self, params: P) -> Result<()> {
        match self {
            Statement::Lite(_) => self.execute(params).map(drop),
            Statement::Pg(c, s) => c.send(s, params.bind()),
        }
    }

    pub fn query<P: Params>(&mut self, params: P) -> Result<Rows<'_>> {
        let bound = params.bind();
        match self {
            Statement::Lite(s) => Ok(Rows::Lite(
                s.query(rusqlite::params_from_iter(bound.iter()))?,
            )),
            Statement::Pg(c, s) => {
                c.free()?;
                let args = pg_args(&bound);
                let stream = c.block(c.client.query_raw(&*s, args.iter().copied()))?;
                c.reading.set(true);
                Ok(Rows::Pg {
                    conn: c,
                    stream: Box::pin(stream),
                    current: None,
                    open: true,
                })
            }
        }
    }

    /// Every row through `f`, read whole (as `rusqlite` does lazily: an iterator of results).
    pub fn query_map<T, P: Params>(
        &mut self,
        params: P,
        mut f: impl FnMut(&Row<'_>) -> Result<T>,
    ) -> Result<std::vec::IntoIter<Result<T>>> {
        let mut rows = self.query(params)?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(f(&r));
        }
        Ok(out.into_iter())
    }

    pub fn query_row<T, P: Params>(
        &mut self,
        params: P,
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut rows = self.query(params)?;
        match rows.next()? {
            Some(r) => f(&r),
            None => Err(Error::NoRows),
        }
    }
}

pub enum Rows<'s> {
    Lite(rusqlite::Rows<'s>),
    Pg {
        conn: &'s PgConn,
        stream: Pin<Box<tokio_postgres::RowStream>>,
        current: Option<tokio_postgres::Row>,
        /// Rows still to come: until the last is read (or this is dropped) nothing else may go
        /// out on the connection.
        open: bool,
    },
}

impl Rows<'_> {
    #[allow(clippy::should_implement_trait)] // a lending iterator: each row borrows the cursor
    pub fn next(&mut self) -> Result<Option<Row<'_>>> {
        match self {
            Rows::Lite(r) => Ok(r.next()?.map(Row::Lite)),
            Rows::Pg {
                conn,
                stream,
                current,
                open,
            } => {
                use futures_util::StreamExt;
                if !*open {
                    return Ok(None);
                }
                *current = conn.block(async { stream.as_mut().next().await.transpose() })?;
                if current.is_none() {
                    *open = false;
                    conn.reading.set(false);
                }
                Ok(current.as_ref().map(Row::Pg))
            }
        }
    }
}

impl Drop for Rows<'_> {
    fn drop(&mut self) {
        if let Rows::Pg {
            conn, open: true, ..
        } = self
        {
            conn.reading.set(false);
        }
    }
}

/// `.optional()` on a single-row result, as with `rusqlite`.
pub trait OptionalExtension<T> {
    fn optional(self) -> Result<Option<T>>;
}

impl<T> OptionalExtension<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(Error::NoRows) | Err(Error::Sqlite(rusqlite::Error::QueryReturnedNoRows)) => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

type Answer = Pin<Box<dyn Future<Output = std::result::Result<u64, tokio_postgres::Error>> + Send>>;

/// A PostgreSQL connection with its own runtime, its prepared statements, and the answers of
/// writes sent but not yet read.
pub struct PgConn {
    rt: tokio::runtime::Runtime,
    client: std::sync::Arc<tokio_postgres::Client>,
    statements: RefCell<HashMap<String, tokio_postgres::Statement>>,
    pending: RefCell<Vec<Answer>>,
    /// A result is being read: its rows hold up every answer behind them, so no other statement
    /// may go out meanwhile (and so no second result either).
    reading: Cell<bool>,
    /// A statement of the open transaction failed: the server will only roll it back, and a
    /// `COMMIT` it answers as a rollback must not count as one.
    failed: Cell<bool>,
}

/// How long a connection attempt may take before the store says the server is unreachable.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl PgConn {
    pub fn connect(url: &str) -> Result<PgConn> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Other(format!("cannot start a runtime for postgres: {e}")))?;
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| Error::Postgres(format!("bad url: {e}")))?;
        config.connect_timeout(CONNECT_TIMEOUT);
        // A server behind a silent partition is given up on within seconds, not the kernel's
        // quarter of an hour: unacknowledged data and idle probes both time out.
        config
            .keepalives(true)
            .keepalives_idle(std::time::Duration::from_secs(5))
            .keepalives_interval(std::time::Duration::from_secs(1))
            .keepalives_retries(5)
            .tcp_user_timeout(std::time::Duration::from_secs(10));
        config.application_name("gridhub");
        let (client, connection) = rt.block_on(config.connect(tokio_postgres::NoTls))?;
        rt.spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "postgres connection ended");
            }
        });
        Ok(PgConn {
            rt,
            client: std::sync::Arc::new(client),
            statements: RefCell::default(),
            pending: RefCell::default(),
            reading: Cell::new(false),
            failed: Cell::new(false),
        })
    }

    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Runs `f` to its end, after reading the answers of every write sent before it (their
    /// requests went first, so theirs come first; and an unread answer would hold up the rest).
    fn block<T, E: Into<Error>>(
        &self,
        f: impl Future<Output = std::result::Result<T, E>>,
    ) -> Result<T> {
        let pending = std::mem::take(&mut *self.pending.borrow_mut());
        self.rt
            .block_on(async move {
                let mut failed = None;
                for answer in pending {
                    if let Err(e) = answer.await {
                        failed.get_or_insert(e);
                    }
                }
                match failed {
                    // `f` was never polled: nothing of it was sent.
                    Some(e) => Err(e.into()),
                    None => f.await.map_err(Into::into),
                }
            })
            .inspect_err(|_| self.failed.set(true))
    }

    /// Refuses a statement while another's rows are still being read (it would wait forever
    /// behind them).
    fn free(&self) -> Result<()> {
        if self.reading.get() {
            return Err(Error::Other(
                "a statement while another query's rows are still being read: read them first"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Sends a write now and keeps its answer for later.
    fn send(&self, statement: &tokio_postgres::Statement, bound: Bound<'_>) -> Result<()> {
        self.free()?;
        let values: SmallVec<[Value; 12]> = bound.iter().map(|v| v.into_value()).collect();
        let (client, statement) = (std::sync::Arc::clone(&self.client), statement.clone());
        let mut answer: Answer = Box::pin(async move {
            let args: SmallVec<[&(dyn PgToSql + Sync); 12]> =
                values.iter().map(|v| v as &(dyn PgToSql + Sync)).collect();
            client.execute(&statement, &args).await
        });
        // The first poll encodes the parameters and queues the request for the connection,
        // which writes it out the next time the runtime runs.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match answer.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(r) => r.map(drop).map_err(|e| {
                self.failed.set(true);
                e.into()
            }),
            std::task::Poll::Pending => {
                self.pending.borrow_mut().push(answer);
                Ok(())
            }
        }
    }

    fn statement(&self, sql: &str) -> Result<tokio_postgres::Statement> {
        if let Some(s) = self.statements.borrow().get(sql) {
            return Ok(s.clone());
        }
        self.free()?;
        let s = self.block(self.client.prepare(&dollar_placeholders(sql)))?;
        self.statements
            .borrow_mut()
            .insert(sql.to_owned(), s.clone());
        Ok(s)
    }
}

/// `?N` and `?` as PostgreSQL's `$N`, outside quoted text.
fn dollar_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut next = 1;
    let mut quoted = false;
    let mut chars = sql.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '\'' => {
                quoted = !quoted;
                out.push(ch);
            }
            '?' if !quoted => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                out.push('$');
                if digits.is_empty() {
                    out.push_str(&next.to_string());
                    next += 1;
                } else {
                    out.push_str(&digits);
                }
            }
            _ => out.push(ch),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_dollars_outside_quotes() {
        assert_eq!(
            dollar_placeholders("SELECT ?1, ?2 FROM t WHERE a = '?' AND b = ?12"),
            "SELECT $1, $2 FROM t WHERE a = '?' AND b = $12"
        );
        assert_eq!(
            dollar_placeholders("x >= ? AND x < ? AND s = ?"),
            "x >= $1 AND x < $2 AND s = $3"
        );
    }

    #[test]
    fn numerics_read_as_integers_when_they_are() {
        // 123456789 = 1·10000² + 2345·10000 + 6789
        let raw: Vec<u8> = [3u16, 2, 0, 0, 1, 2345, 6789]
            .iter()
            .flat_map(|w| w.to_be_bytes())
            .collect();
        assert_eq!(numeric(&raw).unwrap(), ValueRef::Int(123_456_789));
        // -2.5 = -(2 + 5000/10000), scale 1
        let raw: Vec<u8> = [2u16, 0, 0x4000, 1, 2, 5000]
            .iter()
            .flat_map(|w| w.to_be_bytes())
            .collect();
        assert_eq!(numeric(&raw).unwrap(), ValueRef::Real(-2.5));
    }

    #[test]
    fn sqlite_reads_through_the_same_rows() {
        let c = Connection::Lite(rusqlite::Connection::open_in_memory().unwrap());
        c.execute_batch("CREATE TABLE t (a INTEGER, b TEXT, c REAL, d BLOB)")
            .unwrap();
        c.execute(
            "INSERT INTO t VALUES (?1, ?2, ?3, ?4)",
            params![7i64, "x", 1.5, vec![1u8, 2]],
        )
        .unwrap();
        let (a, b, cc, d, none): (u32, String, f64, Vec<u8>, Option<i64>) = c
            .query_row("SELECT a, b, c, d, NULL FROM t", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap();
        assert_eq!(
            (a, b.as_str(), cc, d, none),
            (7, "x", 1.5, vec![1, 2], None)
        );
        let missing = c
            .query_row("SELECT a FROM t WHERE a = ?", [8i64], |r| {
                r.get::<_, i64>(0)
            })
            .optional()
            .unwrap();
        assert_eq!(missing, None);
        let e = c.query_row("SELECT b FROM t", [], |r| r.get::<_, i64>(0));
        assert!(matches!(e, Err(Error::Column(0, _))), "{e:?}");
    }
}
