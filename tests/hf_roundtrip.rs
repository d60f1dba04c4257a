//! Checkpoints out and back in: an own checkpoint exported as a Hugging Face MDLM folder evaluates
//! to the same numbers through `backbone=hf_dit`: from the folder, from a hub-layout cache, and
//! downloaded from a (loopback) Hub that serves it as a repo.

mod support;

use support::hub::{HubServer, Repo, folder_files, proxied};
use support::*;

fn nll(dir: &std::path::Path) -> f64 {
    let m = metrics_of(dir);
    m["val/nll"].as_f64().unwrap()
}

#[test]
fn export_hf_then_evaluate_as_hf_dit() {
    let tmp = TempDir::new("hfrt");
    shakespeare_cache(tmp.path());
    let ckpt = format!(
        "eval.checkpoint_path={}",
        train_tiny(tmp.path(), &tmp.path().join("run"), 3).display()
    );

    let out = tmp.path().join("hf");
    let mut e = args(
        &["export-hf", "--out", out.to_str().unwrap()],
        tiny_overrides(&tmp.path().join("x")),
    );
    e.push(ckpt.clone());
    let o = mdlm(tmp.path(), &e);
    assert!(o.status.success(), "{}", stderr(&o));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["model_type"], "mdlm");
    assert_eq!(cfg["hidden_dim"], 32);
    assert_eq!(cfg["vocab_size"], 105);

    // Reference numbers: ppl-eval of the own checkpoint (EMA weights).
    let mut p = args(&["ppl-eval"], tiny_overrides(&tmp.path().join("own")));
    p.push(ckpt);
    assert!(mdlm(tmp.path(), &p).status.success());
    let own = nll(&tmp.path().join("own"));

    // The same folder as a hub repo in an offline cache.
    let hub = tmp.path().join("hub");
    hub_repo(
        &hub,
        "someone/tiny-mdlm",
        "0123abc",
        &[out.join("config.json"), out.join("model.safetensors")],
    );
    let hf_eval = |cmd: &str, source: &str, dir: &str| {
        let mut a = args(
            &[cmd, "backbone=hf_dit"],
            tiny_overrides(&tmp.path().join(dir)),
        );
        a.push(format!("eval.checkpoint_path={source}"));
        mdlm_env(tmp.path(), &[("HF_HUB_CACHE", &hub)], &a)
    };

    // By folder, by repo id, and by the commit the snapshot is named after: identical numbers.
    for (source, dir) in [
        (out.to_str().unwrap(), "hfdir"),
        ("someone/tiny-mdlm", "hfrepo"),
        ("someone/tiny-mdlm@0123abc", "hfrev"),
    ] {
        let o = hf_eval("ppl-eval", source, dir);
        assert!(o.status.success(), "{source}: {}", stderr(&o));
        assert_eq!(nll(&tmp.path().join(dir)), own, "{source}");
    }
    // The export served as a Hub repo: downloaded into an empty cache byte for byte, and
    // evaluated to the same numbers.
    if !proxied() {
        let sha = "c0ffee0123456789abcdef0123456789abcdef01";
        let server = HubServer::start(vec![
            Repo::model("someone/tiny-mdlm", sha, folder_files(&out)).lfs(),
        ]);
        let fresh = tmp.path().join("hub-fresh");
        let mut a = args(
            &["ppl-eval", "backbone=hf_dit"],
            tiny_overrides(&tmp.path().join("hfhub")),
        );
        a.push("eval.checkpoint_path=someone/tiny-mdlm".to_string());
        let env = [
            ("HF_HUB_CACHE", fresh.display().to_string()),
            ("HF_ENDPOINT", server.endpoint.clone()),
            ("HF_HUB_OFFLINE", "0".to_string()),
        ];
        let o = mdlm_env(tmp.path(), &env, &a);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(nll(&tmp.path().join("hfhub")), own);
        let snap = fresh.join(format!("models--someone--tiny-mdlm/snapshots/{sha}"));
        for (name, bytes) in folder_files(&out) {
            assert_eq!(std::fs::read(snap.join(&name)).unwrap(), bytes, "{name}");
        }
    }

    // An unknown revision, and a repo that is not in the cache: one line naming them.
    assert!(
        error_line(&hf_eval("ppl-eval", "someone/tiny-mdlm@v9", "hfbadrev"))
            .contains("someone/tiny-mdlm@v9")
    );
    let line = error_line(&hf_eval("sample-eval", "someone/absent", "m"));
    assert!(line.contains("someone/absent"), "{line}");
}
