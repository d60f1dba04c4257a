//! Text columns of Parquet files (the format of the Hugging Face Hub's dataset conversion), read
//! with the `parquet` crate's column readers rather than its Arrow layer, which would add the
//! arrow crates to the build for no gain here.
//!
//! Only a top-level, non-repeated `BYTE_ARRAY` column can be read as text (Arrow's `string` and
//! `large_string` are both stored that way). A null value comes out as an empty string, so the
//! number of values always equals [`count_rows`] and row `i` of the file is item `i` of the
//! iterator; Hub text columns hold no nulls in practice, and an empty string is what an empty
//! line of the raw corpus already becomes.

use anyhow::{Context, Result, anyhow, bail};
use parquet::basic::Type as PhysicalType;
use parquet::column::reader::{ColumnReader, ColumnReaderImpl};
use parquet::data_type::{ByteArray, ByteArrayType};
use parquet::file::reader::{FileReader, SerializedFileReader};
use std::fs::File;
use std::path::{Path, PathBuf};

/// Values decoded per `read_records` call: bounds memory below a row group (Hub row groups can
/// hold hundreds of MB of text) while keeping per-call overhead negligible.
const BATCH_ROWS: usize = 1024;

fn open(path: &Path) -> Result<SerializedFileReader<File>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // Only the footer is read here; a file without a valid one is not Parquet (or was cut short).
    SerializedFileReader::new(file)
        .with_context(|| format!("{} is not a readable Parquet file", path.display()))
}

/// Number of rows, from the footer metadata only.
pub fn count_rows(path: &Path) -> Result<usize> {
    let reader = open(path)?;
    let n = reader.metadata().file_metadata().num_rows();
    usize::try_from(n).map_err(|_| anyhow!("{}: negative row count {n} in footer", path.display()))
}

/// Column names of the file's schema (top-level).
pub fn column_names(path: &Path) -> Result<Vec<String>> {
    Ok(top_level_names(&open(path)?))
}

fn top_level_names(reader: &SerializedFileReader<File>) -> Vec<String> {
    reader
        .metadata()
        .file_metadata()
        .schema()
        .get_fields()
        .iter()
        .map(|f| f.name().to_string())
        .collect()
}

/// Streams the UTF-8 string values of `column` in row order; see [`TextColumn`].
pub fn read_text_column(path: &Path, column: &str) -> Result<TextColumn> {
    TextColumn::open(path, column)
}

/// The values of one text column, decoded a batch of rows at a time within one row group at a
/// time, so memory stays bounded by a row group's pages. The first error (a damaged page, a value
/// that is not UTF-8) is yielded once and ends the iteration.
pub struct TextColumn {
    path: PathBuf,
    column: String,
    reader: SerializedFileReader<File>,
    /// Index of the column among the schema's leaves.
    leaf: usize,
    /// 1 for an optional column (a level below 1 is a null), 0 for a required one.
    max_def: i16,
    next_row_group: usize,
    current: Option<ColumnReaderImpl<ByteArrayType>>,
    values: Vec<ByteArray>,
    def_levels: Vec<i16>,
    /// Decoded rows of the current batch, handed out front to back.
    batch: std::vec::IntoIter<String>,
    /// Rows handed out so far, for error messages.
    row: usize,
    done: bool,
}

impl TextColumn {
    /// Opens `path` and checks `column` is a top-level string column.
    pub fn open(path: &Path, column: &str) -> Result<TextColumn> {
        let reader = open(path)?;
        let names = top_level_names(&reader);
        let schema = reader.metadata().file_metadata().schema_descr_ptr();
        let Some(top) = schema
            .root_schema()
            .get_fields()
            .iter()
            .find(|f| f.name() == column)
        else {
            bail!(
                "{}: no column '{column}' (columns: {})",
                path.display(),
                names.join(", ")
            );
        };
        if top.is_group() {
            bail!(
                "{}: column '{column}' is nested (a group), not a text column",
                path.display()
            );
        }
        let leaf = (0..schema.num_columns())
            .find(|&i| schema.column(i).path().parts() == [column])
            .ok_or_else(|| anyhow!("{}: column '{column}' has no leaf", path.display()))?;
        let descr = schema.column(leaf);
        if descr.physical_type() != PhysicalType::BYTE_ARRAY {
            bail!(
                "{}: column '{column}' holds {:?} values, not strings (BYTE_ARRAY)",
                path.display(),
                descr.physical_type()
            );
        }
        if descr.max_rep_level() > 0 {
            bail!(
                "{}: column '{column}' is repeated (a list), not a text column",
                path.display()
            );
        }
        let max_def = descr.max_def_level();
        Ok(TextColumn {
            path: path.to_path_buf(),
            column: column.to_string(),
            reader,
            leaf,
            max_def,
            next_row_group: 0,
            current: None,
            values: Vec::with_capacity(BATCH_ROWS),
            def_levels: Vec::with_capacity(BATCH_ROWS),
            batch: Vec::new().into_iter(),
            row: 0,
            done: false,
        })
    }

    /// Decodes the next batch into `self.batch`; `Ok(false)` at the end of the file.
    fn fill(&mut self) -> Result<bool> {
        loop {
            if self.current.is_none() {
                if self.next_row_group == self.reader.num_row_groups() {
                    return Ok(false);
                }
                let rg = self.next_row_group;
                self.next_row_group += 1;
                let group = self
                    .reader
                    .get_row_group(rg)
                    .with_context(|| format!("{}: opening row group {rg}", self.path.display()))?;
                match group.get_column_reader(self.leaf).with_context(|| {
                    format!(
                        "{}: opening column '{}' in row group {rg}",
                        self.path.display(),
                        self.column
                    )
                })? {
                    ColumnReader::ByteArrayColumnReader(r) => self.current = Some(r),
                    _ => bail!(
                        "{}: column '{}' did not open as a byte-array column",
                        self.path.display(),
                        self.column
                    ),
                }
            }
            let reader = self.current.as_mut().expect("set above");
            self.values.clear();
            self.def_levels.clear();
            let (records, _, _) = reader
                .read_records(
                    BATCH_ROWS,
                    Some(&mut self.def_levels),
                    None,
                    &mut self.values,
                )
                .with_context(|| {
                    format!(
                        "{}: decoding column '{}' in row group {} after row {}",
                        self.path.display(),
                        self.column,
                        self.next_row_group - 1,
                        self.row
                    )
                })?;
            if records == 0 {
                self.current = None;
                continue;
            }
            let mut out = Vec::with_capacity(records);
            let mut values = self.values.iter();
            for i in 0..records {
                // A required column records no levels: every row has a value.
                let present = self.max_def == 0 || self.def_levels[i] == self.max_def;
                if !present {
                    out.push(String::new());
                    continue;
                }
                let v = values.next().ok_or_else(|| {
                    anyhow!(
                        "{}: column '{}' has fewer values than its levels say (row {})",
                        self.path.display(),
                        self.column,
                        self.row + i
                    )
                })?;
                let s = std::str::from_utf8(v.data()).with_context(|| {
                    format!(
                        "{}: column '{}' row {} is not UTF-8",
                        self.path.display(),
                        self.column,
                        self.row + i
                    )
                })?;
                out.push(s.to_string());
            }
            self.batch = out.into_iter();
            return Ok(true);
        }
    }
}

impl Iterator for TextColumn {
    type Item = Result<String>;

    fn next(&mut self) -> Option<Result<String>> {
        if self.done {
            return None;
        }
        if let Some(s) = self.batch.next() {
            self.row += 1;
            return Some(Ok(s));
        }
        match self.fill() {
            Ok(true) => {
                let s = self.batch.next().expect("fill yields at least one row");
                self.row += 1;
                Some(Ok(s))
            }
            Ok(false) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}
