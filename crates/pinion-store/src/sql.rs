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
}

/// A row of values, read by column index.
#[derive(Debug, Clone)]
pub(crate) struct Row(pub Vec<Value>);

impl Row {
    fn value(&self, index: usize) -> &Value {
        self.0.get(index).unwrap_or(&Value::Null)
    }

    pub fn text(&self, index: usize, column: &'static str) -> Result<String, StoreError> {
        self.opt_text(index)
            .ok_or_else(|| corrupt(column, "is null or not text"))
    }

    pub fn opt_text(&self, index: usize) -> Option<String> {
        match self.value(index) {
            Value::Text(text) => Some(text.clone()),
            _ => None,
        }
    }

    pub fn int(&self, index: usize, column: &'static str) -> Result<i64, StoreError> {
        self.opt_int(index)
            .ok_or_else(|| corrupt(column, "is null or not an integer"))
    }

    pub fn opt_int(&self, index: usize) -> Option<i64> {
        match self.value(index) {
            Value::Int(number) => Some(*number),
            _ => None,
        }
    }

    pub fn blob(&self, index: usize, column: &'static str) -> Result<Vec<u8>, StoreError> {
        match self.value(index) {
            Value::Blob(bytes) => Ok(bytes.clone()),
            _ => Err(corrupt(column, "is not bytes")),
        }
    }
}

fn corrupt(column: &'static str, reason: &str) -> StoreError {
    StoreError::Corrupt {
        table: "row",
        column,
        reason: reason.to_owned(),
    }
}
