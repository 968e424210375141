//! The little each engine must provide: run a statement with parameters and
//! return rows of plain values. Every query in `ops` is written once against
//! this, with `?N` placeholders (the PostgreSQL engine rewrites them to `$N`).

use crate::StoreError;

/// A parameter or a column value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

impl From<&str> for Value {
    fn from(text: &str) -> Value {
        Value::Text(text.to_owned())
    }
}

impl From<String> for Value {
    fn from(text: String) -> Value {
        Value::Text(text)
    }
}

impl From<i64> for Value {
    fn from(number: i64) -> Value {
        Value::Int(number)
    }
}

impl From<bool> for Value {
    fn from(flag: bool) -> Value {
        Value::Int(i64::from(flag))
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(value: Option<T>) -> Value {
        value.map_or(Value::Null, Into::into)
    }
}

/// One open transaction (or connection) of either engine.
pub(crate) trait Sql {
    /// Runs a statement; returns the number of rows it changed. A unique or
    /// check constraint violation is `StoreError::Constraint`.
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError>;
    /// Runs a query and returns every row.
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError>;
    /// The clause that locks the rows a `SELECT` returns and skips rows
    /// other transactions hold (PostgreSQL's `FOR UPDATE OF … SKIP
    /// LOCKED`), for work several replicas claim; empty where one writer
    /// at a time is all there is (SQLite).
    fn skip_locked(&self, table: &str) -> String;
    /// The function giving the 1-based position of a substring in a string,
    /// 0 when absent, called as `f(haystack, needle)`: `instr` (SQLite),
    /// `strpos` (PostgreSQL).
    fn position_function(&self) -> &'static str;
}

/// A row of values, read by column index.
#[derive(Debug, Clone)]
pub(crate) struct Row(pub Vec<Value>);

impl Row {
    /// Column `index`, decoded; an error names `table.column` and why.
    pub fn get<T: Decode>(
        &self,
        index: usize,
        table: &'static str,
        column: &'static str,
    ) -> Result<T, StoreError> {
        T::decode(self.0.get(index).unwrap_or(&Value::Null)).map_err(|reason| StoreError::Corrupt {
            table,
            column,
            reason,
        })
    }
}

/// The columns of one table that a query selects, in order: each is named
/// once, here, for both the SQL text and the errors of decoding it.
pub(crate) struct Columns {
    pub table: &'static str,
    pub names: &'static [&'static str],
}

impl Columns {
    /// `a, b, c`, for a `SELECT` or `INSERT` list.
    pub fn list(&self) -> String {
        self.names.join(", ")
    }

    /// Reads a row whose columns, from `offset` on, are these.
    pub fn reader<'r>(&'static self, row: &'r Row, offset: usize) -> Reader<'r> {
        Reader {
            row,
            columns: self,
            index: offset,
            offset,
        }
    }
}

/// Decodes a row's columns one after the other, in [`Columns`] order.
pub(crate) struct Reader<'r> {
    row: &'r Row,
    columns: &'static Columns,
    offset: usize,
    index: usize,
}

impl Reader<'_> {
    /// The next column, decoded.
    pub fn next<T: Decode>(&mut self) -> Result<T, StoreError> {
        let name = self
            .columns
            .names
            .get(self.index - self.offset)
            .copied()
            .unwrap_or("(beyond the column list)");
        let value = self.row.get(self.index, self.columns.table, name);
        self.index += 1;
        value
    }
}

/// A column value as a Rust value; the error says why it is not one.
pub(crate) trait Decode: Sized {
    fn decode(value: &Value) -> Result<Self, String>;
}

impl<T: Decode> Decode for Option<T> {
    fn decode(value: &Value) -> Result<Self, String> {
        match value {
            Value::Null => Ok(None),
            value => T::decode(value).map(Some),
        }
    }
}

impl Decode for i64 {
    fn decode(value: &Value) -> Result<Self, String> {
        match value {
            Value::Int(number) => Ok(*number),
            other => Err(unexpected("an integer", other)),
        }
    }
}

impl Decode for u16 {
    fn decode(value: &Value) -> Result<Self, String> {
        let number = i64::decode(value)?;
        u16::try_from(number).map_err(|_| format!("{number} is out of range"))
    }
}

impl Decode for bool {
    fn decode(value: &Value) -> Result<Self, String> {
        match i64::decode(value)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(format!("{other} is not 0 or 1")),
        }
    }
}

impl Decode for String {
    fn decode(value: &Value) -> Result<Self, String> {
        match value {
            Value::Text(text) => Ok(text.clone()),
            other => Err(unexpected("text", other)),
        }
    }
}

impl Decode for [u8; 32] {
    fn decode(value: &Value) -> Result<Self, String> {
        match value {
            Value::Blob(bytes) => bytes
                .as_slice()
                .try_into()
                .map_err(|_| format!("{} bytes, not 32", bytes.len())),
            other => Err(unexpected("bytes", other)),
        }
    }
}

impl Decode for time::OffsetDateTime {
    fn decode(value: &Value) -> Result<Self, String> {
        let text = String::decode(value)?;
        time::OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339)
            .map_err(|err| err.to_string())
    }
}

/// Domain values are stored as their text and parsed back on the way out.
macro_rules! decode_parsed {
    ($($ty:ty),*) => {$(
        impl Decode for $ty {
            fn decode(value: &Value) -> Result<Self, String> {
                <$ty>::parse(&String::decode(value)?).map_err(|err| err.to_string())
            }
        }
    )*};
}

decode_parsed!(
    pinion_core::TemplateName,
    pinion_core::Region,
    pinion_core::TokenName,
    pinion_core::Digest,
    pinion_core::Repository,
    pinion_core::GitSha,
    pinion_core::Notes,
    pinion_core::RunUrl,
    pinion_core::Label,
    pinion_core::Scope,
    pinion_core::WebhookName,
    pinion_core::WebhookUrl,
    pinion_core::EventType,
    pinion_core::InstanceId,
    pinion_core::HoldReason
);

impl Decode for Vec<u8> {
    fn decode(value: &Value) -> Result<Self, String> {
        match value {
            Value::Blob(bytes) => Ok(bytes.clone()),
            other => Err(unexpected("bytes", other)),
        }
    }
}

/// A webhook's event filter, stored as a comma-separated list.
impl Decode for Vec<pinion_core::EventType> {
    fn decode(value: &Value) -> Result<Self, String> {
        String::decode(value)?
            .split(',')
            .map(|name| pinion_core::EventType::parse(name).map_err(|err| err.to_string()))
            .collect()
    }
}

/// A token's template restriction, stored as a comma-separated list.
impl Decode for Vec<pinion_core::TemplateName> {
    fn decode(value: &Value) -> Result<Self, String> {
        String::decode(value)?
            .split(',')
            .map(|name| pinion_core::TemplateName::parse(name).map_err(|err| err.to_string()))
            .collect()
    }
}

fn unexpected(wanted: &str, found: &Value) -> String {
    let found = match found {
        Value::Null => "null",
        Value::Int(_) => "an integer",
        Value::Text(_) => "text",
        Value::Blob(_) => "bytes",
    };
    format!("is {found}, not {wanted}")
}
