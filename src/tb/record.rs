//! TFRecord framing, the container of TensorBoard's event files: per record, the length (u64
//! little-endian), the masked CRC32C of those 8 bytes, the data, and the masked CRC32C of the data
//! (tensorflow/core/lib/io/record_writer.cc; the format note in tensorflow/python/lib/io).

use std::io::{self, Write};

/// TensorFlow's mask (crc32c.h): checksumming data that embeds its own CRC is weak, so the stored
/// value is rotated right by 15 bits and offset by a constant.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
        .rotate_right(15)
        .wrapping_add(0xa282_ead8)
}

/// Appends one framed record holding `data`.
pub fn write_record(out: &mut impl Write, data: &[u8]) -> io::Result<()> {
    let len = (data.len() as u64).to_le_bytes();
    out.write_all(&len)?;
    out.write_all(&masked_crc32c(&len).to_le_bytes())?;
    out.write_all(data)?;
    out.write_all(&masked_crc32c(data).to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_rfc_3720_vectors() {
        // The crate is trusted for the CRC itself; these pin that it is the Castagnoli one.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c::crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c::crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
    }

    #[test]
    fn mask_rotates_then_offsets() {
        // The empty input's CRC is 0, which masks to the bare offset; 0xE3069283 rotated right
        // by 15 is 0x2507_c60d, plus 0xa282ead8 (mod 2^32) is 0xc78a_b0e5 (worked by hand).
        assert_eq!(masked_crc32c(b""), 0xa282_ead8);
        assert_eq!(masked_crc32c(b"123456789"), 0xc78a_b0e5);
    }

    #[test]
    fn a_24_byte_record_starts_as_every_tensorflow_event_file_does() {
        // Every TF / tensorboardX event file opens with the 24-byte `file_version` event, so its
        // first 12 bytes are `18 00 00 00 00 00 00 00 a3 7f 4b 22` (seen in any hexdump).
        let mut out = Vec::new();
        write_record(&mut out, &[7u8; 24]).unwrap();
        assert_eq!(
            out[..12],
            [0x18, 0, 0, 0, 0, 0, 0, 0, 0xa3, 0x7f, 0x4b, 0x22]
        );
        assert_eq!(out[12..36], [7u8; 24]);
        assert_eq!(out[36..], masked_crc32c(&[7u8; 24]).to_le_bytes());
        assert_eq!(out.len(), 8 + 4 + 24 + 4);
    }

    #[test]
    fn records_follow_each_other_with_their_own_lengths() {
        let mut out = Vec::new();
        write_record(&mut out, b"").unwrap();
        write_record(&mut out, b"abc").unwrap();
        assert_eq!(out.len(), 16 + 19);
        assert_eq!(out[..8], 0u64.to_le_bytes());
        assert_eq!(out[12..16], masked_crc32c(b"").to_le_bytes());
        assert_eq!(out[16..24], 3u64.to_le_bytes());
        assert_eq!(&out[28..31], b"abc");
    }
}
