//! Parquet files written with the `parquet` crate's own writer, shaped like the Hub's converted
//! files: a text column next to other columns, several row groups, a chosen codec.

use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use std::path::Path;
use std::sync::Arc;

/// Writes `row_groups` as the string column `column` (optional when any value is `None`), after
/// an `id` INT64 column numbering the rows, so the text is not the first leaf. Values go in
/// chunks of 300 with a 500-row page limit, so a row group spans several data pages.
pub fn write_text(
    path: &Path,
    column: &str,
    row_groups: &[Vec<Option<String>>],
    compression: Compression,
) {
    let nullable = row_groups.iter().flatten().any(Option::is_none);
    let repetition = if nullable { "OPTIONAL" } else { "REQUIRED" };
    let schema = parse_message_type(&format!(
        "message m {{ REQUIRED INT64 id; {repetition} BYTE_ARRAY {column} (UTF8); }}"
    ))
    .unwrap();
    let props = WriterProperties::builder()
        .set_compression(compression)
        .set_data_page_row_count_limit(500)
        .build();
    let file = std::fs::File::create(path).unwrap();
    let mut w = SerializedFileWriter::new(file, Arc::new(schema), Arc::new(props)).unwrap();
    let mut next_id = 0i64;
    for rows in row_groups {
        let mut rg = w.next_row_group().unwrap();
        let mut col = rg.next_column().unwrap().unwrap();
        let ids: Vec<i64> = (next_id..next_id + rows.len() as i64).collect();
        next_id += rows.len() as i64;
        col.typed::<Int64Type>()
            .write_batch(&ids, None, None)
            .unwrap();
        col.close().unwrap();
        let mut col = rg.next_column().unwrap().unwrap();
        for chunk in rows.chunks(300) {
            let values: Vec<ByteArray> = chunk
                .iter()
                .flatten()
                .map(|s| ByteArray::from(s.as_str()))
                .collect();
            let defs: Vec<i16> = chunk.iter().map(|v| v.is_some() as i16).collect();
            col.typed::<ByteArrayType>()
                .write_batch(&values, nullable.then_some(&defs[..]), None)
                .unwrap();
        }
        col.close().unwrap();
        rg.close().unwrap();
    }
    w.close().unwrap();
}

/// `n` distinct rows starting at `first`, with multi-byte UTF-8 (2-, 3- and 4-byte characters)
/// and some empty rows, as WikiText has.
pub fn sample_rows(first: usize, n: usize) -> Vec<String> {
    (first..first + n)
        .map(|i| match i % 7 {
            0 => String::new(),
            1 => format!(" = Section {i} = \n"),
            2 => format!("naïve café № {i} — “quoted”"),
            3 => format!("日本語の文 {i} 🎉"),
            _ => format!("row {i}: {}", "word ".repeat(i % 13)),
        })
        .collect()
}
