//! Cross-field rules, checked once after composition. Every rule runs, so one error lists every
//! problem; each message names the key, its value, what is allowed and the fix.

use super::schema::{
    Backbone, Config, CountOrFraction, LrSchedulerKind, NoiseType, Parameterization,
};

/// The failed checks of one validation, in rule order.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn check(&mut self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            self.0.push(msg());
        }
    }
}

type Rule = fn(&Config, &mut Failures);

/// In message order: the objective, sampling, sizes, ranges, trainer intervals, then the
/// noise and learning-rate schedules.
const RULES: &[Rule] = &[
    ar_backbone_needs_ar_objective,
    ar_objective_needs_ar_backbone,
    sedd_needs_time_conditioning,
    one_of_change_of_variables_and_importance_sampling,
    sedd_has_no_importance_sampling,
    d3pm_needs_discrete_time,
    discrete_time_needs_d3pm_or_subs,
    subs_masking_needs_d3pm,
    sampling_steps_positive,
    strides_positive,
    stride_within_length,
    sizes_positive,
    computed_sizes_not_zero,
    heads_divide_hidden_size,
    dropout_in_range,
    ema_in_range,
    sampling_eps_in_range,
    lr_positive,
    batch_fractions_in_range,
    val_check_interval_positive,
    noise_has_sigmas,
    lr_scheduler_complete,
];

impl Config {
    /// Cross-field checks. Each error names the key, its value, what is allowed and the fix.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut failures = Failures::default();
        for rule in RULES {
            rule(self, &mut failures);
        }
        if failures.0.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("invalid config:\n  - {}", failures.0.join("\n  - "))
        }
    }
}

// The objective (the reference's Diffusion._validate_configuration and its constructor).

fn ar_backbone_needs_ar_objective(c: &Config, f: &mut Failures) {
    // noise=ar is not advised: the reference ships that file but implements no `ar` schedule,
    // and the AR objective ignores the schedule anyway, so the default noise is the one to keep.
    f.check(
        c.backbone != Backbone::Ar || c.parameterization == Parameterization::Ar,
        || {
            format!(
                "backbone=ar requires parameterization=ar, found parameterization={}; \
                 set parameterization=ar (and keep the default noise: noise=ar has no \
                 implementation)",
                c.parameterization
            )
        },
    );
}

fn ar_objective_needs_ar_backbone(c: &Config, f: &mut Failures) {
    f.check(
        c.parameterization != Parameterization::Ar || c.backbone == Backbone::Ar,
        || {
            format!(
                "parameterization=ar requires backbone=ar, found backbone={}; set backbone=ar",
                c.backbone
            )
        },
    );
}

fn sedd_needs_time_conditioning(c: &Config, f: &mut Failures) {
    f.check(
        c.parameterization != Parameterization::Sedd || c.time_conditioning,
        || {
            "parameterization=sedd requires time_conditioning=true, found false; \
             set time_conditioning=true"
                .to_string()
        },
    );
}

fn one_of_change_of_variables_and_importance_sampling(c: &Config, f: &mut Failures) {
    f.check(
        !(c.training.change_of_variables && c.training.importance_sampling),
        || {
            "training.change_of_variables=true and training.importance_sampling=true \
             cannot both be set; set one of them to false"
                .to_string()
        },
    );
}

fn sedd_has_no_importance_sampling(c: &Config, f: &mut Failures) {
    let t = &c.training;
    f.check(
        c.parameterization != Parameterization::Sedd
            || !(t.importance_sampling || t.change_of_variables),
        || {
            "parameterization=sedd does not support training.importance_sampling or \
             training.change_of_variables; set both to false"
                .to_string()
        },
    );
}

fn d3pm_needs_discrete_time(c: &Config, f: &mut Failures) {
    f.check(
        c.parameterization != Parameterization::D3pm || c.t > 0,
        || {
            "parameterization=d3pm requires discrete time, found T=0; set T=1000 (or any T >= 1)"
                .to_string()
        },
    );
}

fn discrete_time_needs_d3pm_or_subs(c: &Config, f: &mut Failures) {
    let p = c.parameterization;
    f.check(
        c.t == 0 || matches!(p, Parameterization::D3pm | Parameterization::Subs),
        || {
            format!(
                "T={} (discrete time) requires parameterization in [d3pm, subs], found {}; \
                 set T=0 or change parameterization",
                c.t, p
            )
        },
    );
}

fn subs_masking_needs_d3pm(c: &Config, f: &mut Failures) {
    let p = c.parameterization;
    f.check(!c.subs_masking || p == Parameterization::D3pm, || {
        format!(
            "subs_masking=true requires parameterization=d3pm, found {}; \
             set subs_masking=false",
            p
        )
    });
}

// Sampling.

fn sampling_steps_positive(c: &Config, f: &mut Failures) {
    f.check(c.sampling.steps >= 1, || {
        format!(
            "sampling.steps must be >= 1, found {}; set e.g. sampling.steps=128",
            c.sampling.steps
        )
    });
}

fn strides_positive(c: &Config, f: &mut Failures) {
    let s = &c.sampling;
    f.check(s.stride_length >= 1 && s.num_strides >= 1, || {
        format!(
            "sampling.stride_length and sampling.num_strides must be >= 1, found {} and {}",
            s.stride_length, s.num_strides
        )
    });
}

fn stride_within_length(c: &Config, f: &mut Failures) {
    let s = &c.sampling;
    f.check(!s.semi_ar || s.stride_length <= c.model.length, || {
        format!(
            "sampling.stride_length={} exceeds model.length={}; lower sampling.stride_length",
            s.stride_length, c.model.length
        )
    });
}

// Sizes.

fn sizes_positive(c: &Config, f: &mut Failures) {
    for (key, v) in [
        ("loader.global_batch_size", c.loader.global_batch_size),
        (
            "loader.eval_global_batch_size",
            c.loader.eval_global_batch_size,
        ),
        ("trainer.num_nodes", c.trainer.num_nodes),
        ("model.length", c.model.length),
        ("model.n_heads", c.model.n_heads),
        ("model.hidden_size", c.model.hidden_size),
    ] {
        f.check(v >= 1, || {
            format!("{key} must be >= 1, found {v}; set {key}=<positive integer>")
        });
    }
}

/// Null means "computed by [`Config::resolve_devices`]"; an explicit 0 is a mistake.
fn computed_sizes_not_zero(c: &Config, f: &mut Failures) {
    for (key, v) in [
        ("loader.batch_size", c.loader.batch_size),
        ("loader.eval_batch_size", c.loader.eval_batch_size),
        ("trainer.devices", c.trainer.devices),
        (
            "trainer.accumulate_grad_batches",
            c.trainer.accumulate_grad_batches,
        ),
    ] {
        f.check(v != Some(0), || {
            format!("{key} must be >= 1 or null (computed), found 0; remove the override")
        });
    }
}

fn heads_divide_hidden_size(c: &Config, f: &mut Failures) {
    let m = &c.model;
    f.check(
        m.n_heads == 0 || m.hidden_size.is_multiple_of(m.n_heads),
        || {
            format!(
                "model.hidden_size={} is not divisible by model.n_heads={}; \
                 pick n_heads dividing hidden_size",
                m.hidden_size, m.n_heads
            )
        },
    );
}

// Ranges.

fn dropout_in_range(c: &Config, f: &mut Failures) {
    f.check((0.0..=1.0).contains(&c.model.dropout), || {
        format!("model.dropout must be in [0, 1], found {}", c.model.dropout)
    });
}

fn ema_in_range(c: &Config, f: &mut Failures) {
    f.check((0.0..1.0).contains(&c.training.ema), || {
        format!(
            "training.ema must be in [0, 1) (0 disables EMA), found {}",
            c.training.ema
        )
    });
}

fn sampling_eps_in_range(c: &Config, f: &mut Failures) {
    let eps = c.training.sampling_eps;
    f.check(eps > 0.0 && eps < 1.0, || {
        format!("training.sampling_eps must be in (0, 1), found {eps}; the reference uses 1e-3")
    });
}

fn lr_positive(c: &Config, f: &mut Failures) {
    f.check(c.optim.lr > 0.0, || {
        format!("optim.lr must be > 0, found {}", c.optim.lr)
    });
}

// Trainer intervals (Lightning: an int counts batches, a float is a fraction of the epoch).

fn batch_fractions_in_range(c: &Config, f: &mut Failures) {
    let t = &c.trainer;
    for (key, v) in [
        ("trainer.limit_train_batches", t.limit_train_batches),
        ("trainer.limit_val_batches", t.limit_val_batches),
        ("trainer.val_check_interval", t.val_check_interval),
    ] {
        if let CountOrFraction::Fraction(x) = v {
            f.check((0.0..=1.0).contains(&x), || {
                format!(
                    "{key}={x}: a float is a fraction and must be in [0, 1]; \
                     use an int for a number of batches"
                )
            });
        }
    }
}

fn val_check_interval_positive(c: &Config, f: &mut Failures) {
    f.check(
        c.trainer.val_check_interval != CountOrFraction::Count(0),
        || "trainer.val_check_interval must be >= 1 (steps) or a fraction in (0, 1]".to_string(),
    );
}

// Schedules: one flat struct each, so the fields a schedule needs are checked here.

fn noise_has_sigmas(c: &Config, f: &mut Failures) {
    let noise = &c.noise;
    if matches!(noise.kind, NoiseType::Linear | NoiseType::Geometric) {
        f.check(
            noise.sigma_min.is_some() && noise.sigma_max.is_some(),
            || {
                format!(
                    "noise.type={} needs noise.sigma_min and noise.sigma_max; \
                 add them with +noise.sigma_min=... +noise.sigma_max=...",
                    noise.kind
                )
            },
        );
    }
}

fn lr_scheduler_complete(c: &Config, f: &mut Failures) {
    let lr = &c.lr_scheduler;
    match lr.target {
        LrSchedulerKind::ConstantWarmup => f.check(lr.num_warmup_steps.is_some(), || {
            "lr_scheduler=constant_warmup needs lr_scheduler.num_warmup_steps; \
             add +lr_scheduler.num_warmup_steps=2500"
                .to_string()
        }),
        LrSchedulerKind::CosineDecayWarmup => {
            let missing: Vec<&str> = [
                ("t_in_epochs", lr.t_in_epochs.is_none()),
                ("t_initial", lr.t_initial.is_none()),
                ("warmup_prefix", lr.warmup_prefix.is_none()),
                ("warmup_lr_init", lr.warmup_lr_init.is_none()),
                ("warmup_t", lr.warmup_t.is_none()),
                ("lr_min", lr.lr_min.is_none()),
            ]
            .into_iter()
            .filter(|(_, m)| *m)
            .map(|(k, _)| k)
            .collect();
            f.check(missing.is_empty(), || {
                format!(
                    "lr_scheduler=cosine_decay_warmup is missing lr_scheduler.{}; \
                     use the file configs/lr_scheduler/cosine_decay_warmup.yaml",
                    missing.join(", lr_scheduler.")
                )
            });
        }
    }
}
