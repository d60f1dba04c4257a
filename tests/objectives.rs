//! The reference's baseline commands, end to end on the built-in corpus at tiny size: each trains,
//! writes a checkpoint, gets a ppl-eval figure and produces samples.

mod support;

use support::*;

fn run_objective(tag: &str, objective: &[&str], sampling: &[&str]) {
    train_eval_sample(tag, objective, 4, sampling);
}

#[test]
fn ar_baseline() {
    run_objective(
        "obj-ar",
        &["parameterization=ar", "backbone=ar", "model=tiny-ar"],
        &[],
    );
}

#[test]
fn sedd_with_the_analytic_sampler() {
    run_objective(
        "obj-sedd",
        &["parameterization=sedd", "time_conditioning=True"],
        &["sampling.predictor=analytic", "sampling.steps=8"],
    );
}

#[test]
fn d3pm_discrete_time() {
    run_objective(
        "obj-d3pm",
        &["parameterization=d3pm", "T=1000"],
        &["sampling.predictor=ddpm", "sampling.steps=8"],
    );
}

#[test]
fn subs_discrete_time() {
    run_objective(
        "obj-subs-t",
        &["parameterization=subs", "T=1000"],
        &["sampling.steps=8"],
    );
}

#[test]
fn subs_semi_autoregressive_sampling() {
    run_objective(
        "obj-semi-ar",
        &[],
        &[
            "sampling.semi_ar=true",
            "sampling.stride_length=8",
            "sampling.num_strides=2",
            "sampling.steps=4",
        ],
    );
}
