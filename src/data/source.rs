//! Raw files → a stream of documents, read lazily so a corpus larger than memory passes through
//! in bounded space. Each file has a [`Format`] that says how it splits into documents, the way
//! `datasets.load_dataset` yields rows for it.

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// How one raw file yields documents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Format {
    /// The whole file is one document (invalid UTF-8 replaced).
    Whole,
    /// One document per line. `keep_newline` keeps the `\n` (the Hugging Face text loader's
    /// WikiText rows); otherwise `\n`/`\r\n` is stripped, and `trim` strips surrounding
    /// whitespace too (`ptb_text_only`).
    Lines { keep_newline: bool, trim: bool },
    /// One JSON object per non-blank line; the document is its string field `field`.
    Jsonl { field: String },
    /// AG News CSV records `label,title,description`; the document is `title description`, as
    /// the Hub's `text` column. Read whole (the file is small).
    AgNewsCsv,
    /// A string column of a Parquet file (the Hub's format), streamed one row group at a time.
    Parquet { column: String },
    /// Consecutive `size`-byte pieces of the byte range `start..end`, the short tail dropped
    /// (the reference's text8 chunking; text8 is ASCII, so bytes are characters).
    Chunks { start: u64, end: u64, size: u64 },
}

/// One input of a split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFile {
    pub path: PathBuf,
    pub format: Format,
}

impl RawFile {
    pub fn new(path: impl Into<PathBuf>, format: Format) -> RawFile {
        RawFile {
            path: path.into(),
            format,
        }
    }

    /// Its documents in order, read lazily.
    pub fn documents(&self) -> Result<Box<dyn Iterator<Item = Result<String>> + Send>> {
        let path = self.path.clone();
        let open = || File::open(&path).with_context(|| format!("opening {}", path.display()));
        Ok(match &self.format {
            Format::Whole => {
                let bytes =
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                Box::new(std::iter::once(Ok(
                    String::from_utf8_lossy(&bytes).into_owned()
                )))
            }
            Format::Lines { keep_newline, trim } => {
                let (keep, trim) = (*keep_newline, *trim);
                Box::new(lines(open()?, path).map(move |l| {
                    l.map(|(_, mut line)| {
                        if !keep {
                            strip_newline(&mut line);
                        }
                        if trim {
                            line = line.trim().to_string();
                        }
                        line
                    })
                }))
            }
            Format::Jsonl { field } => {
                let field = field.clone();
                Box::new(
                    lines(open()?, path.clone())
                        .filter(|l| !matches!(l, Ok((_, s)) if s.trim().is_empty()))
                        .map(move |l| {
                            let (no, line) = l?;
                            let v: serde_json::Value = serde_json::from_str(&line)
                                .with_context(|| format!("{}:{no}: not JSON", path.display()))?;
                            v[&field].as_str().map(str::to_string).ok_or_else(|| {
                                anyhow!("{}:{no}: no string field \"{field}\"", path.display())
                            })
                        }),
                )
            }
            Format::AgNewsCsv => {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let records =
                    parse_csv(&text).with_context(|| format!("parsing {}", path.display()))?;
                Box::new(
                    records
                        .into_iter()
                        .enumerate()
                        .map(move |(i, rec)| match &rec[..] {
                            [_, title, description, ..] => Ok(format!("{title} {description}")),
                            _ => bail!(
                                "{} record {}: expected label,title,description",
                                path.display(),
                                i + 1
                            ),
                        }),
                )
            }
            Format::Parquet { column } => {
                Box::new(super::parquet::read_text_column(&path, column)?)
            }
            Format::Chunks { start, end, size } => {
                let (start, end, size) = (*start, *end, *size);
                if size == 0 {
                    bail!("chunk size must be at least 1");
                }
                let mut f = open()?;
                f.seek(SeekFrom::Start(start))
                    .with_context(|| format!("seeking in {}", path.display()))?;
                let n = end.saturating_sub(start) / size;
                let mut reader = BufReader::with_capacity(1 << 20, f);
                Box::new((0..n).map(move |_| {
                    let mut buf = vec![0u8; size as usize];
                    reader
                        .read_exact(&mut buf)
                        .with_context(|| format!("reading {}", path.display()))?;
                    String::from_utf8(buf).map_err(|_| {
                        anyhow!(
                            "{}: not ASCII/UTF-8 text where a chunk starts or ends",
                            path.display()
                        )
                    })
                }))
            }
        })
    }

    /// How many documents [`RawFile::documents`] yields, by the cheapest full pass there is
    /// (Parquet: its footer).
    pub fn count(&self) -> Result<usize> {
        match &self.format {
            Format::Whole => Ok(1),
            Format::Chunks { start, end, size } => {
                Ok((end.saturating_sub(*start) / (*size).max(1)) as usize)
            }
            Format::Parquet { .. } => super::parquet::count_rows(&self.path),
            Format::Lines { .. } => {
                let mut n = 0;
                for l in lines(
                    File::open(&self.path)
                        .with_context(|| format!("opening {}", self.path.display()))?,
                    self.path.clone(),
                ) {
                    l?;
                    n += 1;
                }
                Ok(n)
            }
            _ => {
                let mut n = 0;
                for d in self.documents()? {
                    d?;
                    n += 1;
                }
                Ok(n)
            }
        }
    }
}

/// The documents of several files, in order.
pub fn documents(files: &[RawFile]) -> impl Iterator<Item = Result<String>> + Send + use<> {
    let files = files.to_vec();
    files.into_iter().flat_map(|f| match f.documents() {
        Ok(docs) => docs,
        Err(e) => Box::new(std::iter::once(Err(e))),
    })
}

/// Lines with their 1-based numbers, newline kept; invalid UTF-8 is an error naming the line.
fn lines(file: File, path: PathBuf) -> impl Iterator<Item = Result<(usize, String)>> + Send {
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut no = 0;
    std::iter::from_fn(move || {
        let mut buf = Vec::new();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => None,
            Ok(_) => {
                no += 1;
                Some(
                    String::from_utf8(buf)
                        .map(|s| (no, s))
                        .map_err(|_| anyhow!("{}:{no}: not valid UTF-8", path.display())),
                )
            }
            Err(e) => Some(Err(e).with_context(|| format!("reading {}", path.display()))),
        }
    })
}

fn strip_newline(line: &mut String) {
    if line.ends_with('\n') {
        line.pop();
        if line.ends_with('\r') {
            line.pop();
        }
    }
}

/// RFC 4180 records: comma separated, fields optionally double-quoted with `""` as a quote.
pub fn parse_csv(text: &str) -> Result<Vec<Vec<String>>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    let mut any = false;
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' => {
                quoted = true;
                any = true;
            }
            ',' => {
                record.push(std::mem::take(&mut field));
                any = true;
            }
            '\r' => {}
            '\n' => {
                if any || !field.is_empty() {
                    record.push(std::mem::take(&mut field));
                    records.push(std::mem::take(&mut record));
                }
                any = false;
            }
            _ => {
                field.push(c);
                any = true;
            }
        }
    }
    if quoted {
        bail!("unterminated quoted field");
    }
    if any || !field.is_empty() {
        record.push(field);
        records.push(record);
    }
    Ok(records)
}

/// What the prepared-data recipe records of one input: enough to notice a changed file without
/// reading a large one whole on every run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFile {
    pub name: String,
    pub bytes: u64,
    /// FNV-1a 64 of the contents (files up to [`FULL_HASH_LIMIT`]), or of the first and last
    /// [`SAMPLE_BYTES`] for larger ones (prefixed `ends:`): a change detector, not a security
    /// check.
    pub fnv1a64: String,
    pub format: Format,
}

pub const FULL_HASH_LIMIT: u64 = 64 << 20;
pub const SAMPLE_BYTES: u64 = 4 << 20;

pub fn fingerprint(file: &RawFile) -> Result<SourceFile> {
    let path = &file.path;
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let bytes = f
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    let fnv = if bytes <= FULL_HASH_LIMIT {
        let mut all = Vec::with_capacity(bytes as usize);
        f.read_to_end(&mut all)
            .with_context(|| format!("reading {}", path.display()))?;
        format!("{:016x}", fnv1a64(fnv1a64_init(), &all))
    } else {
        let mut head = vec![0u8; SAMPLE_BYTES as usize];
        f.read_exact(&mut head)
            .with_context(|| format!("reading {}", path.display()))?;
        let mut tail = vec![0u8; SAMPLE_BYTES as usize];
        f.seek(SeekFrom::End(-(SAMPLE_BYTES as i64)))
            .and_then(|_| f.read_exact(&mut tail))
            .with_context(|| format!("reading {}", path.display()))?;
        format!(
            "ends:{:016x}",
            fnv1a64(fnv1a64(fnv1a64_init(), &head), &tail)
        )
    };
    Ok(SourceFile {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        bytes,
        fnv1a64: fnv,
        format: file.format.clone(),
    })
}

fn fnv1a64_init() -> u64 {
    0xcbf2_9ce4_8422_2325
}

fn fnv1a64(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Files in `dir` (not recursive) whose names end in one of `extensions`, sorted by name. A
/// folder that does not exist holds none; one that cannot be read (permissions) is an error, not
/// an empty folder that would later read as "no data".
pub fn list_files(dir: &Path, extensions: &[&str]) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut files = Vec::new();
    for e in entries {
        let p = e
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        if p.is_file()
            && p.extension()
                .is_some_and(|e| extensions.iter().any(|x| e == *x))
        {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, contents: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mdlm-source-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, contents).unwrap();
        p
    }

    fn all(f: &RawFile) -> Vec<String> {
        f.documents().unwrap().collect::<Result<_>>().unwrap()
    }

    #[test]
    fn listing_reports_an_unreadable_folder_instead_of_an_empty_one() {
        let f = temp("listed.txt", b"x");
        let dir = f.parent().unwrap();
        assert_eq!(list_files(dir, &["txt"]).unwrap(), vec![f.clone()]);
        // A folder that is not there holds nothing; one that cannot be read (here: a file in
        // its place) is an error naming it.
        assert!(
            list_files(&dir.join("absent"), &["txt"])
                .unwrap()
                .is_empty()
        );
        let e = format!("{:#}", list_files(&f, &["txt"]).unwrap_err());
        assert!(e.contains("listing") && e.contains("listed.txt"), "{e}");
    }

    #[test]
    fn csv_quotes_and_commas() {
        let r = parse_csv("\"3\",\"a, b\",\"say \"\"hi\"\"\"\n\"1\",x,y\n").unwrap();
        assert_eq!(
            r,
            vec![vec!["3", "a, b", "say \"hi\""], vec!["1", "x", "y"]]
        );
    }

    #[test]
    fn lines_match_str_methods() {
        let text = " a b \r\n\n c\n \nlast";
        let p = temp("lines.txt", text.as_bytes());
        let keep = RawFile::new(
            &p,
            Format::Lines {
                keep_newline: true,
                trim: false,
            },
        );
        assert_eq!(all(&keep), text.split_inclusive('\n').collect::<Vec<_>>());
        let plain = RawFile::new(
            &p,
            Format::Lines {
                keep_newline: false,
                trim: false,
            },
        );
        assert_eq!(all(&plain), text.lines().collect::<Vec<_>>());
        let trimmed = RawFile::new(
            &p,
            Format::Lines {
                keep_newline: false,
                trim: true,
            },
        );
        assert_eq!(
            all(&trimmed),
            text.lines().map(str::trim).collect::<Vec<_>>()
        );
        assert_eq!(keep.count().unwrap(), 5);
    }

    #[test]
    fn chunks_drop_the_tail_and_respect_the_range() {
        let text: String = (0..103).map(|i| (b'a' + (i % 26) as u8) as char).collect();
        let p = temp("chunks.txt", text.as_bytes());
        let f = RawFile::new(
            &p,
            Format::Chunks {
                start: 10,
                end: 103,
                size: 20,
            },
        );
        let got = all(&f);
        let want: Vec<String> = (0..4)
            .map(|k| text[10 + 20 * k..30 + 20 * k].to_string())
            .collect();
        assert_eq!(got, want);
        assert_eq!(f.count().unwrap(), 4);
    }

    #[test]
    fn jsonl_field_and_errors_name_the_line() {
        let p = temp(
            "docs.jsonl",
            b"{\"article\": \"x\"}\n\n{\"article\": \"y\"}\n{\"a\": 1}\n",
        );
        let f = RawFile::new(
            &p,
            Format::Jsonl {
                field: "article".into(),
            },
        );
        let got: Vec<Result<String>> = f.documents().unwrap().collect();
        assert_eq!(got[0].as_ref().unwrap(), "x");
        assert_eq!(got[1].as_ref().unwrap(), "y");
        let err = format!("{:#}", got[2].as_ref().unwrap_err());
        assert!(
            err.contains("docs.jsonl:4") && err.contains("article"),
            "{err}"
        );
    }

    #[test]
    fn fingerprint_sees_changes_at_either_end_of_a_large_file() {
        let n = (FULL_HASH_LIMIT + 1) as usize;
        let mut bytes = vec![b'x'; n];
        let base = fingerprint(&RawFile::new(temp("big.txt", &bytes), Format::Whole)).unwrap();
        assert!(base.fnv1a64.starts_with("ends:"));
        bytes[n - 1] = b'y';
        let tail = fingerprint(&RawFile::new(temp("big.txt", &bytes), Format::Whole)).unwrap();
        bytes[n - 1] = b'x';
        bytes[0] = b'y';
        let head = fingerprint(&RawFile::new(temp("big.txt", &bytes), Format::Whole)).unwrap();
        assert_ne!(base.fnv1a64, tail.fnv1a64);
        assert_ne!(base.fnv1a64, head.fnv1a64);
        assert_ne!(tail.fnv1a64, head.fnv1a64);
    }
}
