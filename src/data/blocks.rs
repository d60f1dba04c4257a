//! The prepared token-block file: a fixed header, then the ids row-major, then (only for the
//! padded `wrap=false` layout) one u32 real-token count per block. Read through a memory map so
//! a corpus of any size costs no resident memory until batches touch it.
//!
//! Header, 64 bytes, little-endian:
//! `magic [8] = "MDLMTOKS" | version u32 | id_bytes u32 (2 or 4) | block_size u32 |
//!  vocab_size u32 | n_blocks u64 | flags u32 (bit 0: lengths follow) | 28 zero bytes`.

use anyhow::{Context, Result, bail};
use memmap2::Mmap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const MAGIC: [u8; 8] = *b"MDLMTOKS";
/// Bumped whenever the layout or the meaning of a field changes; old files are then rebuilt.
pub const FORMAT_VERSION: u32 = 1;
pub const HEADER_LEN: usize = 64;
const FLAG_LENGTHS: u32 = 1;

/// A memory-mapped prepared split: `len()` blocks of `block_size()` ids.
pub struct TokenBlocks {
    mmap: Mmap,
    path: PathBuf,
    id_bytes: usize,
    block_size: usize,
    vocab_size: usize,
    n_blocks: usize,
    has_lengths: bool,
}

impl std::fmt::Debug for TokenBlocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenBlocks")
            .field("path", &self.path)
            .field("n_blocks", &self.n_blocks)
            .field("block_size", &self.block_size)
            .field("vocab_size", &self.vocab_size)
            .field("id_bytes", &self.id_bytes)
            .field("has_lengths", &self.has_lengths)
            .finish()
    }
}

fn hint(path: &Path) -> String {
    format!(
        "HINT: delete it (rm '{}') and run the same command again; data preparation rebuilds it from the raw corpus",
        path.display()
    )
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

impl TokenBlocks {
    /// Opens and checks a token file; any inconsistency is an error that names the file and
    /// carries a `HINT:` saying how to rebuild it.
    pub fn open(path: &Path) -> Result<TokenBlocks> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: the file is only ever replaced by rename, never written in place, so the
        // mapping stays valid for as long as we hold it.
        let mmap =
            unsafe { Mmap::map(&file) }.with_context(|| format!("mapping {}", path.display()))?;
        let bad = |what: String| -> anyhow::Error {
            anyhow::anyhow!("{}: {what}\n{}", path.display(), hint(path))
        };
        if mmap.len() < HEADER_LEN {
            return Err(bad(format!(
                "{} bytes, shorter than the {HEADER_LEN}-byte header",
                mmap.len()
            )));
        }
        if mmap[..8] != MAGIC {
            return Err(bad("not an mdlm token-block file (bad magic number)".into()));
        }
        let version = u32_at(&mmap, 8);
        if version != FORMAT_VERSION {
            return Err(bad(format!(
                "format version {version}, this build reads version {FORMAT_VERSION}"
            )));
        }
        let id_bytes = u32_at(&mmap, 12) as usize;
        if id_bytes != 2 && id_bytes != 4 {
            return Err(bad(format!("id width {id_bytes} bytes (expected 2 or 4)")));
        }
        let block_size = u32_at(&mmap, 16) as usize;
        let vocab_size = u32_at(&mmap, 20) as usize;
        let n_blocks = u64::from_le_bytes(mmap[24..32].try_into().unwrap()) as usize;
        let flags = u32_at(&mmap, 32);
        if block_size == 0 || flags & !FLAG_LENGTHS != 0 {
            return Err(bad(format!(
                "corrupt header (block_size {block_size}, flags {flags:#x})"
            )));
        }
        let has_lengths = flags & FLAG_LENGTHS != 0;
        let expected = HEADER_LEN as u128
            + n_blocks as u128 * block_size as u128 * id_bytes as u128
            + if has_lengths { n_blocks as u128 * 4 } else { 0 };
        if mmap.len() as u128 != expected {
            return Err(bad(format!(
                "{} bytes, but the header ({n_blocks} blocks of {block_size}) implies {expected}: truncated or corrupt",
                mmap.len()
            )));
        }
        Ok(TokenBlocks {
            mmap,
            path: path.to_path_buf(),
            id_bytes,
            block_size,
            vocab_size,
            n_blocks,
            has_lengths,
        })
    }

    pub fn len(&self) -> usize {
        self.n_blocks
    }

    pub fn is_empty(&self) -> bool {
        self.n_blocks == 0
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True for the padded (`wrap=false`) layout, where blocks end in padding.
    pub fn has_padding(&self) -> bool {
        self.has_lengths
    }

    /// Block `i` as ids.
    pub fn block(&self, i: usize) -> Vec<u32> {
        let mut out = vec![0i64; self.block_size];
        self.read_block(i, &mut out);
        out.into_iter().map(|v| v as u32).collect()
    }

    /// Real (non-padding) tokens in block `i`; the whole block for the wrapped layout.
    pub fn valid_len(&self, i: usize) -> usize {
        assert!(
            i < self.n_blocks,
            "block {i} out of range ({} blocks)",
            self.n_blocks
        );
        if !self.has_lengths {
            return self.block_size;
        }
        let at = HEADER_LEN + self.n_blocks * self.block_size * self.id_bytes + 4 * i;
        u32_at(&self.mmap, at) as usize
    }

    /// Copies block `i` into `out` (`block_size` long) as int64, the dtype the model consumes.
    pub(crate) fn read_block(&self, i: usize, out: &mut [i64]) {
        assert!(
            i < self.n_blocks,
            "block {i} out of range ({} blocks)",
            self.n_blocks
        );
        let w = self.id_bytes;
        let start = HEADER_LEN + i * self.block_size * w;
        let bytes = &self.mmap[start..start + self.block_size * w];
        if w == 2 {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = u16::from_le_bytes([c[0], c[1]]) as i64;
            }
        } else {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64;
            }
        }
    }
}

/// Writes a token-block file atomically (see [`BlockWriter`]). `lengths`, when given, has one
/// entry per block and marks the padded layout.
pub fn write_blocks(
    path: &Path,
    ids: &[u32],
    block_size: usize,
    vocab_size: usize,
    lengths: Option<&[u32]>,
) -> Result<()> {
    let mut w = BlockWriter::create(path, block_size, vocab_size, lengths.is_some())?;
    w.push(ids, lengths)?;
    w.finish()?;
    Ok(())
}

/// Streams blocks into a token file: ids go to a temporary file in the target's folder as they
/// come, the header (whose block count is only known at the end) is written last, and the file
/// is renamed into place only by [`BlockWriter::finish`]. Dropping an unfinished writer removes
/// the temporary file, so an interrupted preparation never leaves a file under the final name.
/// Memory holds one write buffer plus, for the padded layout, 4 bytes per block.
pub struct BlockWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<std::io::BufWriter<File>>,
    id_bytes: usize,
    block_size: usize,
    vocab_size: usize,
    n_blocks: usize,
    lengths: Option<Vec<u32>>,
}

impl BlockWriter {
    pub fn create(
        path: &Path,
        block_size: usize,
        vocab_size: usize,
        padded: bool,
    ) -> Result<BlockWriter> {
        if block_size == 0 {
            bail!("block size must be at least 1");
        }
        u32::try_from(block_size).context("block size")?;
        u32::try_from(vocab_size).context("vocabulary size")?;
        let tmp = temp_sibling(path)?;
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        out.write_all(&[0u8; HEADER_LEN])
            .with_context(|| format!("writing {}", tmp.display()))?;
        Ok(BlockWriter {
            path: path.to_path_buf(),
            tmp,
            out: Some(out),
            id_bytes: if vocab_size <= 1 << 16 { 2 } else { 4 },
            block_size,
            vocab_size,
            n_blocks: 0,
            lengths: padded.then(Vec::new),
        })
    }

    /// Appends whole blocks (`ids.len()` a multiple of the block size); `lengths` exactly when
    /// the writer was made for the padded layout, one per block.
    pub fn push(&mut self, ids: &[u32], lengths: Option<&[u32]>) -> Result<()> {
        if !ids.len().is_multiple_of(self.block_size) {
            bail!(
                "{} ids do not form blocks of {}",
                ids.len(),
                self.block_size
            );
        }
        let n = ids.len() / self.block_size;
        match (&mut self.lengths, lengths) {
            (Some(all), Some(l)) if l.len() == n => all.extend_from_slice(l),
            (Some(_), Some(l)) => bail!("{} lengths for {n} blocks", l.len()),
            (None, None) => {}
            (Some(_), None) => bail!("the padded layout needs a length per block"),
            (None, Some(_)) => bail!("lengths given for the wrapped layout"),
        }
        if let Some(&max) = ids.iter().max()
            && max as usize >= self.vocab_size
        {
            bail!("id {max} is outside the vocabulary of {}", self.vocab_size);
        }
        let mut buf = Vec::with_capacity(ids.len() * self.id_bytes);
        if self.id_bytes == 2 {
            ids.iter()
                .for_each(|&v| buf.extend_from_slice(&(v as u16).to_le_bytes()));
        } else {
            ids.iter()
                .for_each(|&v| buf.extend_from_slice(&v.to_le_bytes()));
        }
        let out = self.out.as_mut().expect("writer used after finish");
        out.write_all(&buf)
            .with_context(|| format!("writing {}", self.tmp.display()))?;
        self.n_blocks += n;
        Ok(())
    }

    pub fn blocks(&self) -> usize {
        self.n_blocks
    }

    /// Lengths, header, fsync, rename; returns the number of blocks written.
    pub fn finish(mut self) -> Result<usize> {
        use std::io::{Seek, SeekFrom};
        let mut out = self.out.take().expect("finish called once");
        let result = (|| -> Result<()> {
            for &l in self.lengths.as_deref().unwrap_or(&[]) {
                out.write_all(&l.to_le_bytes())?;
            }
            let mut file = out.into_inner().map_err(|e| e.into_error())?;
            file.seek(SeekFrom::Start(0))?;
            file.write_all(&header(
                self.id_bytes as u32,
                self.block_size as u32,
                self.vocab_size as u32,
                self.n_blocks as u64,
                self.lengths.is_some(),
            ))?;
            file.sync_all()?;
            std::fs::rename(&self.tmp, &self.path)?;
            crate::atomic_file::sync_parent(&self.path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&self.tmp);
        }
        result.with_context(|| format!("writing {}", self.path.display()))?;
        Ok(self.n_blocks)
    }
}

impl Drop for BlockWriter {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn header(
    id_bytes: u32,
    block_size: u32,
    vocab_size: u32,
    n_blocks: u64,
    lengths: bool,
) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN);
    h.extend_from_slice(&MAGIC);
    h.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    h.extend_from_slice(&id_bytes.to_le_bytes());
    h.extend_from_slice(&block_size.to_le_bytes());
    h.extend_from_slice(&vocab_size.to_le_bytes());
    h.extend_from_slice(&n_blocks.to_le_bytes());
    h.extend_from_slice(&(if lengths { FLAG_LENGTHS } else { 0 }).to_le_bytes());
    h.resize(HEADER_LEN, 0);
    h
}

/// A fresh hidden name next to `path` (same folder, so the final rename is atomic).
fn temp_sibling(path: &Path) -> Result<PathBuf> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    Ok(dir.join(format!(".{file_name}.tmp-{}-{nanos}", std::process::id())))
}

/// `bytes` as `path`, atomically and durably (see [`crate::atomic_file::write_atomically`]);
/// the folder is created when missing.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    crate::atomic_file::write_atomically(path, None, |out| Ok(out.write_all(bytes)?))
        .with_context(|| format!("writing {}", path.display()))
}
