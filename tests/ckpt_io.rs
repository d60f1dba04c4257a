//! Reading and writing checkpoints of other tools: the HF MDLM folder round trip, and the
//! Lightning reader on damaged archives (each must be an error, never a panic). Uses the parity
//! fixtures in `../shared/parity`.

use mdlm::checkpoint::{hf, lightning};
use std::path::{Path, PathBuf};

fn parity_dir() -> PathBuf {
    match std::env::var_os("MDLM_PARITY_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/parity"),
    }
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mdlm-ckpt-io-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn hf_export_round_trip() {
    let src = hf::load(parity_dir().join("hf_mdlm_tiny").to_str().unwrap()).unwrap();
    let out = scratch("hf");
    let list: Vec<_> = src
        .tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.shallow_clone()))
        .collect();
    hf::export_hf(&out, &src.config, &list).unwrap();
    let back = hf::load(out.to_str().unwrap()).unwrap();
    assert_eq!(back.config, src.config);
    assert_eq!(
        back.tensors.keys().collect::<Vec<_>>(),
        src.tensors.keys().collect::<Vec<_>>()
    );
    for (k, t) in &src.tensors {
        assert!(
            t.equal(&back.tensors[k]),
            "{k} differs after the round trip"
        );
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(json["model_type"], "mdlm");
    assert_eq!(json["architectures"], serde_json::json!(["MDLM"]));
    // No temp files left behind.
    let names: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn hf_missing_pieces_are_errors() {
    let out = scratch("hf-missing");
    let e = hf::load_dir(&out).err().unwrap();
    assert!(format!("{e:#}").contains("config.json"), "{e:#}");
    std::fs::copy(
        parity_dir().join("hf_mdlm_tiny/config.json"),
        out.join("config.json"),
    )
    .unwrap();
    let e = hf::load_dir(&out).err().unwrap();
    assert!(format!("{e:#}").contains("model.safetensors"), "{e:#}");
    let e = hf::resolve_in(&out, "owner/absent").err().unwrap();
    assert!(format!("{e:#}").contains("owner/absent"), "{e:#}");
    std::fs::remove_dir_all(&out).unwrap();
}

fn ckpt_bytes() -> Vec<u8> {
    std::fs::read(parity_dir().join("lightning_ckpt/model.ckpt")).unwrap()
}

fn find(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    hay.windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

/// Offset of the central-directory record (`PK\1\2`) of entry `name`.
fn central_record(bytes: &[u8], name: &[u8]) -> usize {
    find(bytes, name)
        .into_iter()
        .filter_map(|at| at.checked_sub(46))
        .find(|&rec| bytes[rec..rec + 4] == [0x50, 0x4b, 0x01, 0x02])
        .expect("central record")
}

fn expect_error(bytes: &[u8], what: &str) -> String {
    match std::panic::catch_unwind(|| lightning::read_bytes(bytes).err()) {
        Ok(Some(e)) => format!("{e:#}"),
        Ok(None) => panic!("{what}: accepted"),
        Err(_) => panic!("{what}: panicked"),
    }
}

#[test]
fn lightning_reads_the_fixture() {
    let ckpt = lightning::read_bytes(&ckpt_bytes()).unwrap();
    let ema = ckpt.ema.as_ref().unwrap();
    let order = lightning::dit_parameter_order(2);
    assert_eq!(ema.shadow_params.len(), order.len());
    let ema_sd = ckpt.ema_state_dict(&order).unwrap();
    assert_eq!(ema_sd.len(), ckpt.state_dict.len());
    // A model of another depth is told apart.
    let e = ckpt
        .ema_state_dict(&lightning::dit_parameter_order(3))
        .err()
        .unwrap();
    assert!(e.to_string().contains("shadow parameters"), "{e}");
}

#[test]
fn lightning_damaged_archives_are_errors() {
    let good = ckpt_bytes();

    let truncated =
        std::fs::read(parity_dir().join("lightning_ckpt/model_truncated.ckpt")).unwrap();
    let e = expect_error(&truncated, "truncated");
    assert!(e.contains("zip"), "{e}");
    let e = expect_error(&good[..good.len() - 10], "cut end record");
    assert!(e.contains("zip"), "{e}");
    expect_error(b"PK\x05\x06 not really a zip archive at all", "bad zip");

    // Central directory pointing past the end of the file.
    let mut bad = good.clone();
    let eocd = *find(&bad, &[0x50, 0x4b, 0x05, 0x06]).last().unwrap();
    // (0xffffffff would defer to the zip64 record torch also writes, so use a plain offset.)
    let past = (good.len() - 30) as u32;
    bad[eocd + 16..eocd + 20].copy_from_slice(&past.to_le_bytes());
    expect_error(&bad, "central directory offset");

    // No data.pkl: rename the entry (same length) everywhere.
    let mut bad = good.clone();
    for at in find(&good, b"archive/data.pkl") {
        bad[at..at + 16].copy_from_slice(b"archive/data.pkx");
    }
    let e = expect_error(&bad, "missing data.pkl");
    assert!(e.contains("data.pkl"), "{e}");

    // A storage shorter than its tensors need.
    let mut bad = good.clone();
    let rec = central_record(&good, b"archive/data/0");
    bad[rec + 20..rec + 28].copy_from_slice(&[4, 0, 0, 0, 4, 0, 0, 0]);
    let e = expect_error(&bad, "short storage");
    assert!(e.contains("storage 0"), "{e}");

    // A missing storage.
    let mut bad = good.clone();
    for at in find(&good, b"archive/data/0") {
        if good.get(at + 14).is_none_or(|c| !c.is_ascii_digit()) {
            bad[at..at + 14].copy_from_slice(b"archive/data/x");
        }
    }
    let e = expect_error(&bad, "missing storage");
    assert!(e.contains("storage 0"), "{e}");

    // An opcode the reader does not know, right after PROTO.
    let mut bad = good.clone();
    let rec = central_record(&good, b"archive/data.pkl");
    let local = u32::from_le_bytes(good[rec + 42..rec + 46].try_into().unwrap()) as usize;
    let n = u16::from_le_bytes([good[local + 26], good[local + 27]]) as usize;
    let m = u16::from_le_bytes([good[local + 28], good[local + 29]]) as usize;
    let data = local + 30 + n + m;
    assert_eq!(good[data], 0x80, "data.pkl starts with PROTO");
    bad[data + 2] = 0xff;
    let e = expect_error(&bad, "unknown opcode");
    assert!(e.contains("opcode 0xff"), "{e}");

    // Pickle cut short: every prefix of data.pkl's first kilobyte fails cleanly.
    let size = u32::from_le_bytes(good[rec + 20..rec + 24].try_into().unwrap()) as usize;
    for cut in [1usize, 3, 17, 100, 1000, size / 2, size - 1] {
        let mut bad = good.clone();
        bad[rec + 20..rec + 24].copy_from_slice(&(cut as u32).to_le_bytes());
        bad[rec + 24..rec + 28].copy_from_slice(&(cut as u32).to_le_bytes());
        expect_error(&bad, &format!("pickle cut at {cut}"));
    }

    // Compressed entries are refused rather than misread.
    let mut bad = good.clone();
    bad[rec + 10] = 8;
    let e = expect_error(&bad, "compressed");
    assert!(e.contains("compressed"), "{e}");
}
