//! `data.streaming=true`: the training stream holds the same blocks a prepared split holds, is
//! shuffled by a seeded buffer, shards between ranks, and resumes mid-epoch exactly.

mod support;

use mdlm::data::{DataSpec, LoaderState, StreamLoader, TrainBatches, prepare};
use std::collections::BTreeMap;
use support::{TempDir, shakespeare_cache};

fn spec(root: &std::path::Path, block: usize, wrap: bool) -> DataSpec {
    DataSpec {
        name: "shakespeare".into(),
        valid_name: "shakespeare".into(),
        tokenizer: "char".into(),
        cache_dir: root.join("data"),
        wrap,
        block_size: block,
        insert_valid_eos: true,
    }
}

fn prepared_blocks(s: &DataSpec) -> Vec<(Vec<u32>, usize)> {
    let p = prepare(s).unwrap();
    (0..p.train.len())
        .map(|i| (p.train.block(i), p.train.valid_len(i)))
        .collect()
}

/// The next `n` batches' blocks, flattened.
fn draw(loader: &mut StreamLoader, n: usize) -> Vec<(Vec<u32>, usize)> {
    (0..n).flat_map(|_| loader.next_blocks().unwrap()).collect()
}

fn counts(blocks: &[(Vec<u32>, usize)]) -> BTreeMap<&(Vec<u32>, usize), usize> {
    let mut m = BTreeMap::new();
    for b in blocks {
        *m.entry(b).or_default() += 1;
    }
    m
}

#[test]
fn unshuffled_stream_equals_the_prepared_split_for_both_layouts() {
    let tmp = TempDir::new("stream-eq");
    shakespeare_cache(tmp.path());
    for wrap in [true, false] {
        let s = spec(tmp.path(), 64, wrap);
        let want = prepared_blocks(&s);
        let mut stream = StreamLoader::with_buffer(&s, "shakespeare", 1, 3, 0).unwrap();
        assert_eq!(draw(&mut stream, want.len()), want, "wrap={wrap}");
        assert_eq!(
            stream.state(),
            LoaderState {
                epoch: 0,
                cursor: want.len()
            }
        );
        // The next batch opens the second epoch, in the same (unshuffled) order.
        assert_eq!(draw(&mut stream, 1), want[..1]);
        assert_eq!(
            stream.state(),
            LoaderState {
                epoch: 1,
                cursor: 1
            }
        );
    }
}

#[test]
fn shuffled_epochs_are_permutations_that_differ_by_epoch_and_seed() {
    let tmp = TempDir::new("stream-shuffle");
    shakespeare_cache(tmp.path());
    let s = spec(tmp.path(), 64, true);
    let want = prepared_blocks(&s);
    let mut a = StreamLoader::with_buffer(&s, "shakespeare", 1, 3, 500).unwrap();
    let n = want.len();
    let e0 = draw(&mut a, n);
    let e1 = draw(&mut a, n);
    assert_eq!(
        a.state(),
        LoaderState {
            epoch: 1,
            cursor: n
        }
    );
    assert_eq!(counts(&e0), counts(&want));
    assert_eq!(counts(&e1), counts(&want));
    assert_ne!(e0, want, "the buffer shuffles");
    assert_ne!(e0, e1, "each epoch has its own order");
    let mut b = StreamLoader::with_buffer(&s, "shakespeare", 1, 4, 500).unwrap();
    assert_ne!(draw(&mut b, n), e0, "the seed changes the order");
    let mut c = StreamLoader::with_buffer(&s, "shakespeare", 1, 3, 500).unwrap();
    assert_eq!(draw(&mut c, n), e0, "same seed, same order");
}

#[test]
fn ranks_split_each_epoch_and_resumption_replays_exactly() {
    let tmp = TempDir::new("stream-shard");
    shakespeare_cache(tmp.path());
    let s = spec(tmp.path(), 256, true);
    let want = prepared_blocks(&s);
    let mut r0 = StreamLoader::with_buffer(&s, "shakespeare", 1, 9, 200)
        .unwrap()
        .shard(0, 2)
        .unwrap();
    let mut r1 = StreamLoader::with_buffer(&s, "shakespeare", 1, 9, 200)
        .unwrap()
        .shard(1, 2)
        .unwrap();
    let (a, b) = (
        draw(&mut r0, want.len().div_ceil(2)),
        draw(&mut r1, want.len() / 2),
    );
    // Each rank's epoch holds exactly its share: the next draw opens the second epoch.
    for (r, n) in [(&mut r0, want.len().div_ceil(2)), (&mut r1, want.len() / 2)] {
        assert_eq!(
            r.state(),
            LoaderState {
                epoch: 0,
                cursor: n
            }
        );
        draw(r, 1);
        assert_eq!(
            r.state(),
            LoaderState {
                epoch: 1,
                cursor: 1
            }
        );
    }
    let both: Vec<_> = a.iter().chain(&b).cloned().collect();
    assert_eq!(counts(&both), counts(&want));

    // A straight run across an epoch boundary, and one restored from the state after 5 batches.
    let batch = 16;
    let per_epoch = want.len() / batch;
    let draws = per_epoch + 5;
    let mut straight = StreamLoader::with_buffer(&s, "shakespeare", batch, 9, 200).unwrap();
    let mut seen = Vec::new();
    let mut state = None;
    for i in 0..draws {
        if i == 5 {
            state = Some(straight.state());
        }
        seen.push(straight.next_blocks().unwrap());
    }
    assert_eq!(
        straight.state(),
        LoaderState {
            epoch: 1,
            cursor: 5
        }
    );
    let mut resumed = StreamLoader::with_buffer(&s, "shakespeare", batch, 9, 200).unwrap();
    resumed.restore(state.unwrap()).unwrap();
    for want in &seen[5..] {
        assert_eq!(&resumed.next_blocks().unwrap(), want);
    }
    // A cursor past the end of an epoch is refused with the reason.
    let mut bad = StreamLoader::with_buffer(&s, "shakespeare", batch, 9, 200).unwrap();
    let e = format!(
        "{:#}",
        bad.restore(LoaderState {
            epoch: 0,
            cursor: per_epoch + 1
        })
        .unwrap_err()
    );
    assert!(e.contains("another batch size or dataset"), "{e}");
}

/// `mdlm train data.streaming=true`: trains without writing a prepared training file.
#[test]
fn streaming_training_runs_without_a_prepared_training_file() {
    let tmp = TempDir::new("stream-cli");
    shakespeare_cache(tmp.path());
    let run = tmp.path().join("run");
    let mut a = support::args(&["train"], support::tiny_overrides(&run));
    a.extend(
        [
            "data.streaming=true",
            "trainer.max_steps=4",
            "trainer.val_check_interval=4",
        ]
        .map(String::from),
    );
    let o = support::mdlm(tmp.path(), &a);
    let err = support::stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("streaming shakespeare"), "{err}");
    assert!(run.join("checkpoints/last.safetensors").is_file());
    let prepared: Vec<String> = std::fs::read_dir(tmp.path().join("data/shakespeare"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        prepared.iter().any(|n| n.ends_with("-validation.bin"))
            && !prepared.iter().any(|n| n.ends_with("-train.bin")),
        "{prepared:?}"
    );
    // A fraction-of-an-epoch validation interval needs an epoch length a stream lacks.
    let mut a = support::args(&["train"], support::tiny_overrides(&run));
    a.extend(["data.streaming=true", "trainer.val_check_interval=0.5"].map(String::from));
    let line = support::error_line(&support::mdlm(tmp.path(), &a));
    assert!(line.contains("give a number of batches"), "{line}");
}
