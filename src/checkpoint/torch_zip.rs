//! The `torch.save` container: a zip archive whose entries share one prefix, `<prefix>data.pkl`
//! (the pickle) and `<prefix>data/<key>` (raw little-endian storages), stored uncompressed.
//! Entries are found through `zip::ZipArchive` and handed out as slices of the caller's bytes
//! (the memory-mapped file), never copied.

use super::pickle::StorageBytes;
use anyhow::{Context, Result, anyhow, bail};
use std::io::Cursor;
use zip::ZipArchive;
use zip::result::ZipError;

const NOT_ZIP: &str = "not a complete zip archive (no end-of-central-directory record): truncated, or not a torch.save checkpoint";

pub(super) struct TorchZip<'a> {
    bytes: &'a [u8],
    archive: ZipArchive<Cursor<&'a [u8]>>,
    /// What precedes `data.pkl` in its entry name (`archive/`, or nothing).
    prefix: String,
}

impl<'a> TorchZip<'a> {
    /// Reads the central directory, finds `data.pkl` and checks the byte order.
    pub(super) fn open(bytes: &'a [u8]) -> Result<TorchZip<'a>> {
        check_end_record(bytes)?;
        let archive = ZipArchive::new(Cursor::new(bytes)).map_err(|e| match e {
            ZipError::InvalidArchive("Could not find central directory end")
            | ZipError::InvalidArchive("Invalid zip header") => anyhow!(NOT_ZIP),
            e => anyhow!(e).context("zip central directory is corrupt"),
        })?;
        // `file_names` comes from a hash map: `min` keeps the choice deterministic should an
        // archive hold more than one.
        let prefix = archive
            .file_names()
            .filter(|n| n.ends_with("/data.pkl") || *n == "data.pkl")
            .min()
            .and_then(|n| n.strip_suffix("data.pkl"))
            .ok_or_else(|| anyhow!("the archive has no data.pkl: not a torch.save checkpoint"))?
            .to_string();
        let mut zip = TorchZip {
            bytes,
            archive,
            prefix,
        };
        if let Some(order) = zip.entry("byteorder")?
            && order != b"little"
        {
            bail!("the checkpoint's storages are not little-endian");
        }
        Ok(zip)
    }

    /// The bytes of `data.pkl`.
    pub(super) fn pickle(&mut self) -> Result<&'a [u8]> {
        Ok(self.entry("data.pkl")?.expect("found by open"))
    }

    /// The bytes of entry `<prefix><name>`, or `None` when the archive has no such entry.
    fn entry(&mut self, name: &str) -> Result<Option<&'a [u8]>> {
        let name = format!("{}{name}", self.prefix);
        let file = match self.archive.by_name(&name) {
            Ok(file) => file,
            Err(ZipError::FileNotFound) => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading zip entry {name}")),
        };
        if file.compression() != zip::CompressionMethod::Stored {
            #[allow(deprecated)] // the number is what the zip specification and tools show
            let method = file.compression().to_u16();
            bail!(
                "zip entry {name} is compressed (method {method}); torch.save stores entries uncompressed"
            );
        }
        let start = usize::try_from(file.data_start())?;
        let end = start
            .checked_add(usize::try_from(file.compressed_size())?)
            .ok_or_else(|| anyhow!("zip entry {name}: size overflows"))?;
        let bytes = self.bytes;
        bytes
            .get(start..end)
            .map(Some)
            .ok_or_else(|| anyhow!("zip entry {name} extends past the end of the file"))
    }
}

impl StorageBytes for TorchZip<'_> {
    fn storage_bytes(&mut self, key: &str) -> Result<&[u8]> {
        let entry = format!("data/{key}");
        self.entry(&entry)?.ok_or_else(|| {
            anyhow!(
                "storage {key} is missing from the archive ({}{entry})",
                self.prefix
            )
        })
    }
}

/// torch's own reader (miniz) takes the central directory's size and offset from the classic
/// end record unless they hold the zip64 marker, and refuses them when they point past the end
/// of the file; `zip` prefers the zip64 record whenever there is one and never looks. Checking
/// them here keeps refusing an archive torch would refuse. A missing record is left to `zip`.
fn check_end_record(bytes: &[u8]) -> Result<()> {
    // The record is 22 bytes plus a comment of at most 64 KiB, at the very end.
    let lowest = bytes.len().saturating_sub(22 + 0xffff);
    let Some(at) = bytes[lowest..]
        .windows(4)
        .rposition(|w| w == b"PK\x05\x06")
        .map(|i| lowest + i)
    else {
        return Ok(());
    };
    let Some(record) = bytes.get(at..at + 22) else {
        return Ok(());
    };
    let le32 = |i: usize| u32::from_le_bytes(record[i..i + 4].try_into().unwrap());
    let (size, offset) = (le32(12), le32(16));
    let zip64 = size == u32::MAX || offset == u32::MAX || record[10..12] == [0xff, 0xff];
    if !zip64 && u64::from(offset) + u64::from(size) > bytes.len() as u64 {
        bail!("zip central directory lies outside the file");
    }
    Ok(())
}
