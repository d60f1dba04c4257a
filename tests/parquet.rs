//! Reading text columns back from Parquet files written with the `parquet` crate's writer.

mod support;

use mdlm::data::parquet::{TextColumn, column_names, count_rows, read_text_column};
use parquet::basic::{Compression, GzipLevel, ZstdLevel};
use std::path::Path;
use support::TempDir;
use support::parquet::{sample_rows, write_text};

fn read_all(path: &Path, column: &str) -> Vec<String> {
    read_text_column(path, column)
        .unwrap()
        .collect::<anyhow::Result<Vec<_>>>()
        .unwrap()
}

/// Three row groups, the first larger than one read batch and spanning several pages.
fn groups() -> Vec<Vec<String>> {
    vec![
        sample_rows(0, 2500),
        sample_rows(2500, 7),
        sample_rows(2507, 1100),
    ]
}

fn some(rows: &[Vec<String>]) -> Vec<Vec<Option<String>>> {
    rows.iter()
        .map(|g| g.iter().cloned().map(Some).collect())
        .collect()
}

#[test]
fn every_codec_reads_back_the_strings_written() {
    let tmp = TempDir::new("pq-codecs");
    let rows = groups();
    let expected: Vec<String> = rows.concat();
    assert!(
        expected.iter().any(|s| s.len() > s.chars().count()),
        "no multi-byte text"
    );
    for (name, codec) in [
        ("snappy", Compression::SNAPPY),
        ("zstd", Compression::ZSTD(ZstdLevel::default())),
        ("gzip", Compression::GZIP(GzipLevel::default())),
        ("lz4raw", Compression::LZ4_RAW),
        ("none", Compression::UNCOMPRESSED),
    ] {
        let path = tmp.path().join(format!("{name}.parquet"));
        write_text(&path, "text", &some(&rows), codec);
        let got = read_all(&path, "text");
        assert_eq!(got.len(), expected.len(), "{name}");
        assert!(got == expected, "{name}: values differ");
        assert_eq!(count_rows(&path).unwrap(), expected.len(), "{name}");
    }
}

#[test]
fn schema_lists_top_level_columns_in_order() {
    let tmp = TempDir::new("pq-schema");
    let path = tmp.path().join("a.parquet");
    write_text(
        &path,
        "sentence",
        &some(&[sample_rows(0, 3)]),
        Compression::SNAPPY,
    );
    assert_eq!(column_names(&path).unwrap(), ["id", "sentence"]);
}

#[test]
fn nulls_read_as_empty_strings_keeping_row_positions() {
    let tmp = TempDir::new("pq-nulls");
    let path = tmp.path().join("n.parquet");
    let rows: Vec<Option<String>> = (0..1500)
        .map(|i| (i % 4 != 1).then(|| format!("v{i}")))
        .collect();
    write_text(
        &path,
        "text",
        std::slice::from_ref(&rows),
        Compression::SNAPPY,
    );
    let got = read_all(&path, "text");
    let expected: Vec<String> = rows.into_iter().map(Option::unwrap_or_default).collect();
    assert_eq!(got, expected);
    assert_eq!(got[1], "");
    assert_eq!(got[2], "v2");
}

#[test]
fn missing_column_names_the_existing_ones() {
    let tmp = TempDir::new("pq-missing");
    let path = tmp.path().join("a.parquet");
    write_text(
        &path,
        "text",
        &some(&[sample_rows(0, 3)]),
        Compression::SNAPPY,
    );
    let err = format!("{:#}", read_text_column(&path, "article").err().unwrap());
    assert!(err.contains("no column 'article'"), "{err}");
    assert!(err.contains("columns: id, text"), "{err}");
    assert!(err.contains("a.parquet"), "{err}");
}

#[test]
fn non_string_column_is_refused() {
    let tmp = TempDir::new("pq-int");
    let path = tmp.path().join("a.parquet");
    write_text(
        &path,
        "text",
        &some(&[sample_rows(0, 3)]),
        Compression::SNAPPY,
    );
    let err = format!("{:#}", read_text_column(&path, "id").err().unwrap());
    assert!(
        err.contains("INT64") && err.contains("not strings"),
        "{err}"
    );
}

#[test]
fn truncated_or_foreign_files_say_they_are_not_parquet() {
    let tmp = TempDir::new("pq-trunc");
    let path = tmp.path().join("a.parquet");
    write_text(&path, "text", &some(&groups()), Compression::SNAPPY);
    let bytes = std::fs::read(&path).unwrap();
    let cut = tmp.path().join("cut.parquet");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let text = tmp.path().join("text.parquet");
    std::fs::write(
        &text,
        "just some text, long enough to have a footer-sized tail",
    )
    .unwrap();
    for p in [&cut, &text] {
        for err in [
            format!("{:#}", count_rows(p).unwrap_err()),
            format!("{:#}", read_text_column(p, "text").err().unwrap()),
        ] {
            assert!(err.contains("is not a readable Parquet file"), "{err}");
            assert!(err.contains(&p.display().to_string()), "{err}");
        }
    }
}

#[test]
fn damaged_page_is_an_error_item_and_ends_the_stream() {
    let tmp = TempDir::new("pq-damaged");
    let path = tmp.path().join("a.parquet");
    let rows = groups();
    write_text(&path, "text", &some(&rows), Compression::SNAPPY);
    let mut bytes = std::fs::read(&path).unwrap();
    // The last row group's data sits just before the footer; overwrite its middle with garbage so
    // the footer stays valid and the damage shows only while decoding.
    let footer_len =
        u32::from_le_bytes(bytes[bytes.len() - 8..bytes.len() - 4].try_into().unwrap());
    let data_end = bytes.len() - 8 - footer_len as usize;
    for b in &mut bytes[data_end - 3000..data_end - 100] {
        *b = 0xAB;
    }
    std::fs::write(&path, &bytes).unwrap();
    let items: Vec<anyhow::Result<String>> = read_text_column(&path, "text").unwrap().collect();
    let first_err = items
        .iter()
        .position(Result::is_err)
        .expect("no error item");
    assert_eq!(
        first_err,
        items.len() - 1,
        "iteration went on after the error"
    );
    // Rows before the damaged group come through intact.
    let ok: Vec<&String> = items[..first_err]
        .iter()
        .map(|r| r.as_ref().unwrap())
        .collect();
    assert!(ok.len() >= 2507, "{}", ok.len());
    assert!(ok.iter().zip(rows.concat().iter()).all(|(a, b)| *a == b));
    let err = format!("{:#}", items[first_err].as_ref().unwrap_err());
    assert!(
        err.contains("a.parquet") && err.contains("column 'text'"),
        "{err}"
    );
}

#[test]
fn reader_is_send() {
    fn send<T: Send>() {}
    send::<TextColumn>();
}
