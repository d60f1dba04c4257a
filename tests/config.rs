//! Composition of the embedded Hydra tree: defaults, overrides, presets, errors, resolution.

use std::path::{Path, PathBuf};

use mdlm::config::{
    self, Accelerator, Backbone, Config, CountOrFraction, LrSchedulerKind, Mode, NoiseType,
    Parameterization, Precision, Predictor, StrategyKind,
};

fn ov(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn compose(items: &[&str]) -> Config {
    config::compose(&ov(items)).unwrap_or_else(|e| panic!("compose {items:?}: {e:#}"))
}

fn compose_err(items: &[&str]) -> String {
    match config::compose(&ov(items)) {
        Ok(_) => panic!("compose {items:?} should fail"),
        Err(e) => format!("{e:#}"),
    }
}

/// A temp copy of configs/ that the test may alter.
fn temp_configs(tag: &str) -> PathBuf {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let p = e.unwrap().path();
            let dst = to.join(p.file_name().unwrap());
            if p.is_dir() {
                copy(&p, &dst);
            } else {
                std::fs::copy(&p, &dst).unwrap();
            }
        }
    }
    let dir = std::env::temp_dir().join(format!("mdlm-config-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    copy(&Path::new(env!("CARGO_MANIFEST_DIR")).join("configs"), &dir);
    dir
}

#[test]
fn default_matches_the_reference() {
    let c = compose(&[]);
    assert_eq!(c.mode, Mode::Train);
    assert_eq!(c.backbone, Backbone::Dit);
    assert_eq!(c.parameterization, Parameterization::Subs);
    assert!(!c.time_conditioning);
    assert_eq!(c.t, 0);
    assert!(!c.subs_masking);
    assert_eq!(c.seed, 1);
    // loader
    assert_eq!(c.loader.global_batch_size, 512);
    assert_eq!(c.loader.eval_global_batch_size, 512); // ${.global_batch_size}
    assert_eq!(c.loader.batch_size, None);
    assert_eq!(c.loader.eval_batch_size, None);
    assert_eq!(c.loader.num_workers, None);
    assert!(c.loader.pin_memory);
    // sampling
    assert_eq!(c.sampling.predictor, Predictor::DdpmCache);
    assert_eq!(c.sampling.steps, 128);
    assert!(c.sampling.noise_removal);
    assert_eq!(c.sampling.num_sample_batches, 2);
    assert_eq!(c.sampling.num_sample_log, 2);
    assert!(!c.sampling.semi_ar);
    assert_eq!((c.sampling.stride_length, c.sampling.num_strides), (1, 1));
    assert!(c.sampling.float64_gumbel);
    // training / optim
    assert_eq!(c.training.ema, 0.9999);
    assert!(c.training.antithetic_sampling);
    assert!(!c.training.importance_sampling);
    assert_eq!(c.training.sampling_eps, 1e-3);
    assert!(!c.training.change_of_variables);
    assert_eq!(c.optim.lr, 3e-4);
    assert_eq!(c.optim.weight_decay, 0.0);
    assert_eq!(
        (c.optim.beta1, c.optim.beta2, c.optim.eps),
        (0.9, 0.999, 1e-8)
    );
    // eval
    assert_eq!(c.eval.checkpoint_path, "");
    assert!(!c.eval.disable_ema);
    assert_eq!(c.eval.perplexity_batch_size, 8);
    assert_eq!(c.eval.gen_ppl_eval_model_name_or_path, "gpt2-large");
    assert!(c.eval.generate_samples);
    // trainer
    assert_eq!(c.trainer.accelerator, Accelerator::Auto);
    assert_eq!(c.trainer.num_nodes, 1);
    assert_eq!(c.trainer.devices, None);
    assert_eq!(c.trainer.accumulate_grad_batches, None);
    assert_eq!(c.trainer.gradient_clip_val, Some(1.0));
    assert_eq!(c.trainer.precision, Precision::Bf16Mixed);
    assert_eq!(c.trainer.num_sanity_val_steps, 2);
    assert_eq!(c.trainer.max_steps, 1_000_000);
    assert_eq!(c.trainer.log_every_n_steps, 10);
    assert_eq!(
        c.trainer.limit_train_batches,
        CountOrFraction::Fraction(1.0)
    );
    assert_eq!(c.trainer.val_check_interval, CountOrFraction::Count(10000));
    // groups
    assert_eq!(c.data.train, "openwebtext");
    assert_eq!(c.data.valid, "wikitext103");
    assert_eq!(c.data.tokenizer_name_or_path, "gpt2");
    assert!(c.data.wrap && !c.data.streaming);
    let m = &c.model;
    assert_eq!(m.name, "small");
    assert_eq!(
        (m.hidden_size, m.cond_dim, m.n_blocks, m.n_heads, m.length),
        (768, 128, 12, 12, 1024)
    );
    assert_eq!(m.dropout, 0.1);
    assert!(m.scale_by_sigma && !m.tie_word_embeddings);
    assert_eq!(c.noise.kind, NoiseType::Loglinear);
    assert_eq!(
        (c.noise.sigma_min, c.noise.sigma_max),
        (Some(1e-4), Some(20.0))
    );
    assert_eq!(c.lr_scheduler.target, LrSchedulerKind::ConstantWarmup);
    assert_eq!(c.lr_scheduler.num_warmup_steps, Some(2500));
    assert_eq!(c.strategy.target, StrategyKind::Ddp);
    assert_eq!(c.strategy.find_unused_parameters, Some(false));
    let every = c.callbacks.checkpoint_every_n_steps.as_ref().unwrap();
    assert_eq!(every.every_n_train_steps, 500);
    assert_eq!(every.save_top_k, -1);
    let best = c.callbacks.checkpoint_monitor.as_ref().unwrap();
    assert_eq!(
        (best.monitor.as_str(), best.filename.as_str()),
        ("val/nll", "best")
    );
    assert!(c.callbacks.learning_rate_monitor.is_some());
    // wandb, hydra, checkpointing: interpolations
    assert_eq!(c.wandb.id.as_deref(), Some("None_1"));
    assert_eq!(
        c.wandb.tags,
        vec!["loglinear", "openwebtext", "wikitext103"]
    );
    let run = c.hydra.run.dir.clone();
    assert!(run.starts_with("./outputs/openwebtext/"), "{run}");
    assert!(!run.contains("${"), "{run}");
    assert_eq!(c.run_dir(), PathBuf::from(&run));
    assert_eq!(c.checkpointing.save_dir.as_deref(), Some(run.as_str()));
    assert_eq!(
        c.checkpointing.resume_ckpt_path,
        Some(format!("{run}/checkpoints/last.safetensors"))
    );
    assert_eq!(every.dirpath, format!("{run}/checkpoints"));
    c.validate().unwrap();
}

#[test]
fn every_override_form() {
    let c = compose(&[
        "loader.global_batch_size=64",
        "optim.lr=1e-3",
        "training.antithetic_sampling=false",
        "wandb.name=run7",
        "wandb.tags=[a,b]",
        "trainer.limit_val_batches=20",
        "trainer.gradient_clip_val=null",
        "trainer.max_steps=1_000",
        "+model.causal=true",
        "++model.dropout=0.0",
        "~callbacks.learning_rate_monitor",
    ]);
    assert_eq!(c.loader.global_batch_size, 64);
    assert_eq!(
        c.loader.eval_global_batch_size, 64,
        "interpolation follows the override"
    );
    assert_eq!(c.optim.lr, 1e-3);
    assert!(!c.training.antithetic_sampling);
    assert_eq!(c.wandb.id.as_deref(), Some("run7_1"));
    assert_eq!(c.wandb.tags, vec!["a", "b"]);
    assert_eq!(c.trainer.limit_val_batches, CountOrFraction::Count(20));
    assert_eq!(c.trainer.gradient_clip_val, None);
    assert_eq!(c.trainer.max_steps, 1000);
    assert_eq!(c.model.causal, Some(true));
    assert_eq!(c.model.dropout, 0.0);
    assert!(c.callbacks.learning_rate_monitor.is_none());
    assert!(c.callbacks.checkpoint_monitor.is_some());
}

#[test]
fn the_readme_command_line_composes() {
    let c = compose(&[
        "model=small",
        "data=openwebtext-split",
        "loader.batch_size=16",
    ]);
    assert_eq!(c.data.train, "openwebtext-train");
    assert_eq!(c.data.valid, "openwebtext-valid");
    assert_eq!(c.loader.batch_size, Some(16));
    assert!(c.hydra.run.dir.starts_with("./outputs/openwebtext-train/"));
}

#[test]
fn group_selection() {
    let c = compose(&[
        "model=tiny-dimamba",
        "noise=linear",
        "lr_scheduler=cosine_decay_warmup",
        "strategy=fsdp",
        "data=text8",
        "callbacks=[learning_rate_monitor]",
    ]);
    assert_eq!(c.model.n_blocks, 14);
    assert_eq!(c.model.temb_strategy.as_deref(), Some("adaln"));
    assert_eq!(c.noise.kind, NoiseType::Linear);
    assert_eq!(
        (c.noise.sigma_min, c.noise.sigma_max),
        (Some(1e-3), Some(7.0))
    );
    let lr = &c.lr_scheduler;
    assert_eq!(lr.target, LrSchedulerKind::CosineDecayWarmup);
    assert_eq!(lr.warmup_t, Some(100_000)); // 0.1 * max_steps
    assert_eq!(lr.t_initial, Some(900_000)); // max_steps - warmup_t
    assert_eq!((lr.warmup_lr_init, lr.lr_min), (Some(1e-6), Some(1e-6)));
    assert_eq!(c.strategy.target, StrategyKind::Fsdp);
    assert_eq!(
        c.strategy.sharding_strategy.as_deref(),
        Some("SHARD_GRAD_OP")
    );
    assert_eq!(c.data.tokenizer_name_or_path, "text8");
    assert!(c.callbacks.checkpoint_every_n_steps.is_none());
    assert!(c.callbacks.learning_rate_monitor.is_some());

    let medium = compose(&["model=medium"]).model;
    assert_eq!(
        (medium.hidden_size, medium.n_blocks, medium.n_heads),
        (1024, 24, 16)
    );
    let tiny = compose(&["model=tiny"]).model;
    assert_eq!((tiny.hidden_size, tiny.n_blocks, tiny.n_heads), (512, 8, 8));

    let ar = compose(&[
        "model=small-ar",
        "backbone=ar",
        "parameterization=ar",
        "noise=ar",
    ]);
    assert_eq!(ar.model.causal, Some(true));
    assert_eq!(ar.noise.scale, Some(6.0));

    // Every option of every group composes on its own.
    for group in [
        "data",
        "model",
        "noise",
        "lr_scheduler",
        "strategy",
        "callbacks",
    ] {
        for opt in config::group_options(group) {
            let mut o = vec![format!("{group}={opt}")];
            if opt.ends_with("-ar") || (group == "noise" && opt == "ar") {
                o.extend(ov(&["backbone=ar", "parameterization=ar"]));
            }
            config::compose(&o).unwrap_or_else(|e| panic!("{o:?}: {e:#}"));
        }
    }
}

#[test]
fn experiment_preset() {
    for sel in ["experiment=shakespeare", "+experiment=shakespeare"] {
        let c = compose(&[sel]);
        assert_eq!(c.data.train, "shakespeare");
        assert_eq!(c.data.tokenizer_name_or_path, "char");
        assert_eq!(c.data.cache_dir, None);
        assert_eq!(c.model.name, "tiny-char");
        assert_eq!(
            (c.model.hidden_size, c.model.cond_dim, c.model.length),
            (128, 64, 128)
        );
        assert_eq!((c.model.n_blocks, c.model.n_heads), (4, 4));
        assert_eq!(c.loader.global_batch_size, 32);
        assert_eq!(c.loader.eval_global_batch_size, 32);
        assert_eq!(c.trainer.max_steps, 1500);
        assert_eq!(c.trainer.val_check_interval, CountOrFraction::Count(500));
        assert_eq!(c.trainer.limit_val_batches, CountOrFraction::Count(20));
        assert_eq!(c.trainer.accelerator, Accelerator::Auto);
        assert_eq!(c.lr_scheduler.num_warmup_steps, Some(50));
        assert_eq!(c.sampling.num_sample_batches, 1);
        let every = c.callbacks.checkpoint_every_n_steps.as_ref().unwrap();
        assert_eq!(every.every_n_train_steps, 500);
        assert_eq!(c.optim.lr, 1e-3);
        // Untouched keys keep the primary config's values.
        assert_eq!(c.optim.beta2, 0.999);
        assert!(c.hydra.run.dir.starts_with("./outputs/shakespeare/"));
    }
    // The command line wins over the experiment, for groups and keys alike.
    let c = compose(&[
        "experiment=shakespeare",
        "model=tiny",
        "trainer.max_steps=5",
    ]);
    assert_eq!(c.model.name, "tiny");
    assert_eq!(c.trainer.max_steps, 5);
    assert_eq!(c.data.train, "shakespeare");
}

#[test]
fn unknown_override_key_suggests() {
    let e = compose_err(&["loader.batchsize=16"]);
    assert!(
        e.contains("unknown config key 'loader.batchsize' (did you mean 'loader.batch_size'"),
        "{e}"
    );
    let e = compose_err(&["batch_size=16"]);
    assert!(e.contains("'loader.batch_size'"), "{e}");
    let e = compose_err(&["~loader.nope"]);
    assert!(e.contains("unknown config key 'loader.nope'"), "{e}");
}

#[test]
fn unknown_group_option_lists_the_choices() {
    let e = compose_err(&["model=smal"]);
    assert!(e.contains("unknown option 'smal' for group 'model'"), "{e}");
    assert!(e.ends_with("; did you mean 'small'?"), "{e}");
    assert!(
        e.contains("available: medium, small, small-ar, tiny, tiny-ar, tiny-char, tiny-dimamba"),
        "{e}"
    );
    let e = compose_err(&["experiment=shakespear"]);
    assert!(
        e.contains("unknown option 'shakespear' for group 'experiment'"),
        "{e}"
    );
}

#[test]
fn misspelled_key_in_a_group_file_names_file_and_key() {
    for (file, from, to, key, fix) in [
        (
            "model/small.yaml",
            "hidden_size:",
            "hiden_size:",
            "model.hiden_size",
            "model.hidden_size",
        ),
        (
            "data/openwebtext.yaml",
            "wrap:",
            "wrapp:",
            "data.wrapp",
            "data.wrap",
        ),
        (
            "noise/loglinear.yaml",
            "sigma_min:",
            "sigma_mn:",
            "noise.sigma_mn",
            "noise.sigma_min",
        ),
        (
            "lr_scheduler/constant_warmup.yaml",
            "num_warmup_steps:",
            "num_warmup_step:",
            "lr_scheduler.num_warmup_step",
            "lr_scheduler.num_warmup_steps",
        ),
        (
            "strategy/ddp.yaml",
            "find_unused_parameters:",
            "find_unused_params:",
            "strategy.find_unused_params",
            "strategy.find_unused_parameters",
        ),
        (
            "callbacks/checkpoint_monitor.yaml",
            "monitor: val",
            "monitr: val",
            "callbacks.checkpoint_monitor.monitr",
            "callbacks.checkpoint_monitor.monitor",
        ),
        (
            "config.yaml",
            "  lr: 3e-4",
            "  lrr: 3e-4",
            "optim.lrr",
            "optim.lr",
        ),
    ] {
        let dir = temp_configs(&file.replace(['/', '.'], "-"));
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{file}");
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
        let e = format!("{:#}", config::compose_from_dir(&dir, &[]).unwrap_err());
        assert!(
            e.contains(&format!("unknown config key '{key}' in {file}")),
            "{file}: {e}"
        );
        assert!(e.contains(&format!("did you mean '{fix}'")), "{file}: {e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn compose_from_dir_reads_the_folder() {
    let dir = temp_configs("dir");
    std::fs::write(
        dir.join("model/wide.yaml"),
        std::fs::read_to_string(dir.join("model/small.yaml"))
            .unwrap()
            .replace("hidden_size: 768", "hidden_size: 1536"),
    )
    .unwrap();
    let c = config::compose_from_dir(&dir, &ov(&["model=wide"])).unwrap();
    assert_eq!(c.model.hidden_size, 1536);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(config::compose_from_dir(Path::new("/nonexistent"), &[]).is_err());
}

#[test]
fn adding_an_existing_key_errors() {
    let e = compose_err(&["+loader.batch_size=4"]);
    assert!(
        e.contains("cannot add config key 'loader.batch_size'"),
        "{e}"
    );
    let e = compose_err(&["+model=tiny"]);
    assert!(e.contains("already in the defaults list"), "{e}");
}

#[test]
fn bad_values_name_the_key() {
    let e = compose_err(&["loader.global_batch_size=abc"]);
    assert!(e.contains("loader.global_batch_size"), "{e}");
    assert!(e.contains("the command line"), "{e}");
    let e = compose_err(&["sampling.predictor=ddim"]);
    assert!(e.contains("sampling.predictor"), "{e}");
    let e = compose_err(&["+wandb.entity=me"]);
    assert!(e.contains("unknown config key 'wandb.entity'"), "{e}");
}

#[test]
fn resolve_devices_arithmetic() {
    // CPU: 0 CUDA devices counts as one device.
    let mut c = compose(&[]);
    c.resolve_devices(0);
    assert_eq!(c.trainer.devices, Some(1));
    assert_eq!(c.loader.batch_size, Some(512));
    assert_eq!(c.loader.eval_batch_size, Some(512));
    assert_eq!(c.trainer.accumulate_grad_batches, Some(1));
    assert!(c.loader.num_workers.unwrap() >= 1);
    c.validate().unwrap();

    // 3 GPUs x 2 nodes: ceil(512 / 6) = 86 per device, one step.
    let mut c = compose(&["trainer.num_nodes=2"]);
    c.resolve_devices(3);
    assert_eq!(c.loader.batch_size, Some(86));
    assert_eq!(c.trainer.accumulate_grad_batches, Some(1));

    // An explicit batch size is kept; accumulation makes up the global batch.
    let mut c = compose(&["loader.batch_size=16", "loader.eval_global_batch_size=100"]);
    c.resolve_devices(4);
    assert_eq!(c.loader.batch_size, Some(16));
    assert_eq!(c.trainer.accumulate_grad_batches, Some(8)); // 512 / (4 * 16)
    assert_eq!(c.loader.eval_batch_size, Some(25));

    let mut c = compose(&["loader.batch_size=24"]);
    c.resolve_devices(1);
    assert_eq!(c.trainer.accumulate_grad_batches, Some(22)); // ceil(512 / 24)
}

#[test]
fn yaml_round_trip() {
    for o in [
        vec![],
        ov(&["experiment=shakespeare"]),
        ov(&[
            "lr_scheduler=cosine_decay_warmup",
            "model=tiny-dimamba",
            "noise=polynomial",
        ]),
    ] {
        let mut c = config::compose(&o).unwrap();
        let text = c.to_yaml();
        assert_eq!(Config::from_yaml(&text).unwrap(), c, "{text}");
        c.resolve_devices(2);
        assert_eq!(Config::from_yaml(&c.to_yaml()).unwrap(), c);
    }
    assert!(Config::from_yaml("mode: train\n").is_err());
}

#[test]
fn tree_prints_every_section() {
    let c = compose(&[]);
    let t = c.tree();
    assert!(t.starts_with("CONFIG\n"));
    for section in [
        "loader",
        "sampling",
        "trainer",
        "model",
        "noise",
        "callbacks",
        "hydra",
    ] {
        assert!(t.contains(&format!("── {section}\n")), "{section}\n{t}");
    }
    assert!(t.contains("hidden_size: 768"), "{t}");
    assert!(
        t.contains("tags: [loglinear, openwebtext, wikitext103]"),
        "{t}"
    );
}

#[test]
fn interpolation_resolves_after_overrides() {
    let c = compose(&["data=wikitext2", "seed=7", "wandb.name=x", "noise=cosine"]);
    assert_eq!(c.wandb.id.as_deref(), Some("x_7"));
    assert_eq!(c.wandb.tags, vec!["cosine", "wikitext2", "wikitext2"]);
    assert!(c.hydra.run.dir.starts_with("./outputs/wikitext2/"));
    let c = compose(&["checkpointing.save_dir=/tmp/ck"]);
    assert_eq!(
        c.checkpointing.resume_ckpt_path.as_deref(),
        Some("/tmp/ck/checkpoints/last.safetensors")
    );
    let dirpath = &c.callbacks.checkpoint_monitor.as_ref().unwrap().dirpath;
    assert_eq!(dirpath, "/tmp/ck/checkpoints");
    let c = compose(&["hydra.run.dir=runs/${data.train}-${seed}"]);
    assert_eq!(c.run_dir(), PathBuf::from("runs/openwebtext-1"));
    let e = compose_err(&["wandb.notes=${nope.key}"]);
    assert!(e.contains("nope.key"), "{e}");
}

#[test]
fn validation_messages_name_key_and_fix() {
    let e = compose_err(&["backbone=ar"]);
    assert!(
        e.contains("backbone=ar requires parameterization=ar"),
        "{e}"
    );
    let e = compose_err(&["parameterization=sedd"]);
    assert!(e.contains("time_conditioning=true"), "{e}");
    compose(&["parameterization=sedd", "time_conditioning=true"]);
    let e = compose_err(&["sampling.steps=0"]);
    assert!(e.contains("sampling.steps must be >= 1"), "{e}");
    let e = compose_err(&["loader.global_batch_size=0"]);
    assert!(e.contains("loader.global_batch_size must be >= 1"), "{e}");
    let e = compose_err(&["parameterization=d3pm"]);
    assert!(e.contains("T=1000"), "{e}");
    compose(&["parameterization=d3pm", "T=1000"]);
    let e = compose_err(&["trainer.precision=8"]);
    assert!(e.contains("unknown precision '8'"), "{e}");
    assert_eq!(
        compose(&["trainer.precision=32"]).trainer.precision,
        Precision::Fp32
    );
    assert_eq!(
        compose(&["trainer.accelerator=cpu"]).trainer.accelerator,
        Accelerator::Cpu
    );
}

/// The reference's `_validate_configuration` rules, each rejected before anything runs with a
/// message naming the keys involved; the legal neighbour of each composes.
#[test]
fn reference_configuration_rules_each_name_their_keys() {
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["parameterization=d3pm"],
            &["parameterization=d3pm", "T=0"],
        ),
        (
            &[
                "parameterization=sedd",
                "time_conditioning=true",
                "training.importance_sampling=true",
            ],
            &["parameterization=sedd", "training.importance_sampling"],
        ),
        (
            &[
                "parameterization=sedd",
                "time_conditioning=true",
                "training.change_of_variables=true",
            ],
            &["parameterization=sedd", "training.change_of_variables"],
        ),
        (
            &["parameterization=sedd", "time_conditioning=true", "T=1000"],
            &["T=1000", "sedd"],
        ),
        (
            &["subs_masking=true"],
            &["subs_masking=true", "parameterization=d3pm"],
        ),
        (
            &[
                "training.change_of_variables=true",
                "training.importance_sampling=true",
            ],
            &[
                "training.change_of_variables",
                "training.importance_sampling",
            ],
        ),
        (
            &["parameterization=sedd"],
            &["parameterization=sedd", "time_conditioning=true"],
        ),
    ];
    for (overrides, words) in cases {
        let e = compose_err(overrides);
        for w in *words {
            assert!(e.contains(w), "{overrides:?}: error does not name {w}: {e}");
        }
    }
    compose(&["parameterization=d3pm", "T=1000", "subs_masking=true"]);
    compose(&["parameterization=subs", "T=1000"]);
    compose(&["training.change_of_variables=true"]);
    compose(&["training.importance_sampling=true"]);
}
