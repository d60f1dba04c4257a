//! AdamW against a textbook float64 computation, resume through a checkpoint, and gradient
//! clipping against a hand-computed norm.

use mdlm::checkpoint;
use mdlm::train::optim::{AdamW, AdamWConfig, clip_grad_norm};
use serde_json::json;
use tch::{Device, Kind, Tensor};

/// Deterministic pseudo-random numbers in [-1, 1), independent of libtorch.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f64) -> Vec<f64> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

/// Loshchilov & Hutter's AdamW as torch documents it, in float64 on plain vectors.
fn textbook_adamw(
    p: &mut [f64],
    m: &mut [f64],
    v: &mut [f64],
    g: &[f64],
    t: i32,
    lr: f64,
    c: &AdamWConfig,
) {
    for i in 0..p.len() {
        p[i] -= lr * c.weight_decay * p[i];
        m[i] = c.beta1 * m[i] + (1.0 - c.beta1) * g[i];
        v[i] = c.beta2 * v[i] + (1.0 - c.beta2) * g[i] * g[i];
        let m_hat = m[i] / (1.0 - c.beta1.powi(t));
        let v_hat = v[i] / (1.0 - c.beta2.powi(t));
        p[i] -= lr * m_hat / (v_hat.sqrt() + c.eps);
    }
}

/// Makes `grad` the gradient of `p` (accumulating, as backward does).
fn set_grad(p: &Tensor, grad: &[f64]) {
    let g = Tensor::from_slice(grad).to_kind(p.kind()).reshape(p.size());
    (p * g).sum(p.kind()).backward();
}

fn shallow(v: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    v.iter()
        .map(|(k, t)| (k.clone(), t.shallow_clone()))
        .collect()
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

fn run_against_textbook(kind: Kind, cfg: AdamWConfig, grad_scale: f64, rtol: f64, atol: f64) {
    let shapes: [&[i64]; 2] = [&[3, 4], &[5]];
    let mut rng = Lcg(42);
    let init: Vec<Vec<f64>> = shapes
        .iter()
        .map(|s| rng.vec(s.iter().product::<i64>() as usize, 1.0))
        .collect();
    let params: Vec<(String, Tensor)> = shapes
        .iter()
        .zip(&init)
        .enumerate()
        .map(|(i, (s, x))| {
            let t = Tensor::from_slice(x)
                .to_kind(kind)
                .reshape(*s)
                .set_requires_grad(true);
            (format!("backbone.p{i}"), t)
        })
        .collect();
    // A parameter that never gets a gradient must not move (torch skips it).
    let idle = Tensor::ones([2], (kind, Device::Cpu)).set_requires_grad(true);
    let mut all = shallow(&params);
    all.push(("backbone.idle".into(), idle.shallow_clone()));

    let mut opt = AdamW::new(&all, cfg);
    let mut expected = init.clone();
    let mut m: Vec<Vec<f64>> = init.iter().map(|x| vec![0.0; x.len()]).collect();
    let mut v = m.clone();
    let lrs = [1e-2, 3e-3, 5e-2, 1e-3, 2e-2];
    for (t, &lr) in lrs.iter().enumerate() {
        opt.zero_grad().unwrap();
        for (i, (_, p)) in params.iter().enumerate() {
            let g = rng.vec(init[i].len(), grad_scale);
            set_grad(p, &g);
            textbook_adamw(
                &mut expected[i],
                &mut m[i],
                &mut v[i],
                &g,
                t as i32 + 1,
                lr,
                &cfg,
            );
        }
        opt.set_lr(lr);
        opt.step().unwrap();
        for (i, (name, p)) in params.iter().enumerate() {
            for (j, (got, want)) in values(p).iter().zip(&expected[i]).enumerate() {
                assert!(
                    (got - want).abs() <= atol + rtol * want.abs(),
                    "{kind:?} step {t} {name}[{j}]: got {got}, textbook {want}"
                );
            }
        }
    }
    assert_eq!(values(&idle), vec![1.0, 1.0]);
    let steps = opt
        .state_tensors()
        .into_iter()
        .find(|(k, _)| k == "optim.step")
        .unwrap()
        .1;
    assert_eq!(Vec::<i64>::try_from(&steps).unwrap(), vec![5, 5, 0]);
}

#[test]
fn adamw_matches_textbook_in_float64() {
    let cfg = AdamWConfig {
        lr: 0.0,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    run_against_textbook(Kind::Double, cfg, 1.0, 1e-12, 1e-14);
}

#[test]
fn adamw_eps_is_added_after_the_bias_corrected_sqrt() {
    // Gradients of the size of eps make its placement visible.
    let cfg = AdamWConfig {
        lr: 0.0,
        beta1: 0.8,
        beta2: 0.95,
        eps: 1e-3,
        weight_decay: 0.5,
    };
    run_against_textbook(Kind::Double, cfg, 1e-3, 1e-12, 1e-14);
}

#[test]
fn adamw_float32_tracks_textbook() {
    let cfg = AdamWConfig {
        lr: 0.0,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    };
    run_against_textbook(Kind::Float, cfg, 1.0, 1e-5, 1e-6);
}

fn fresh_params(seed: i64) -> Vec<(String, Tensor)> {
    vec![
        (
            "backbone.blocks.0.attn_qkv.weight".into(),
            det(&[6, 4], seed, 1).set_requires_grad(true),
        ),
        (
            "backbone.output_layer.linear.bias".into(),
            det(&[6], seed, 2).set_requires_grad(true),
        ),
    ]
}

fn train_steps(params: &[(String, Tensor)], opt: &mut AdamW, range: std::ops::Range<u64>) {
    for s in range {
        opt.zero_grad().unwrap();
        let mut rng = Lcg(1000 + s);
        for (_, p) in params {
            set_grad(p, &rng.vec(p.numel(), 1.0));
        }
        opt.set_lr(1e-2 / (1 + s) as f64);
        opt.step().unwrap();
    }
}

#[test]
fn resume_from_saved_state_is_bit_identical() {
    let cfg = AdamWConfig {
        lr: 1e-2,
        weight_decay: 0.05,
        ..AdamWConfig::default()
    };
    let straight = fresh_params(7);
    let mut opt = AdamW::new(&straight, cfg);
    train_steps(&straight, &mut opt, 0..6);

    let first = fresh_params(7);
    let mut opt1 = AdamW::new(&first, cfg);
    train_steps(&first, &mut opt1, 0..3);
    let dir = std::env::temp_dir().join(format!("mdlm-optim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("step3.safetensors");
    let mut tensors = shallow(&first);
    tensors.extend(opt1.state_tensors());
    checkpoint::save(&path, &tensors, &json!({"global_step": 3}), "").unwrap();
    drop((first, opt1));

    // A new process: different initial weights, empty optimizer, everything from the file.
    let ckpt = checkpoint::load(&path).unwrap();
    let resumed = fresh_params(99);
    checkpoint::load_into(&resumed, "", &ckpt).unwrap();
    let mut opt2 = AdamW::new(&resumed, cfg);
    opt2.load_state(&ckpt.tensor_list()).unwrap();
    assert_eq!(opt2.step_count(), 3);
    train_steps(&resumed, &mut opt2, 3..6);

    for ((name, a), (_, b)) in straight.iter().zip(&resumed) {
        assert!(a.equal(b), "{name} differs after resume");
    }
    for ((name, a), (_, b)) in opt.state_tensors().iter().zip(&opt2.state_tensors()) {
        assert!(a.equal(b), "{name} differs after resume");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn load_state_names_missing_and_misshaped_keys() {
    let params = fresh_params(1);
    let mut opt = AdamW::new(&params, AdamWConfig::default());
    let mut state = opt.state_tensors();
    state.retain(|(k, _)| k != "optim.exp_avg_sq.backbone.output_layer.linear.bias");
    let msg = opt.load_state(&state).unwrap_err().to_string();
    assert!(
        msg.contains("missing key optim.exp_avg_sq.backbone.output_layer.linear.bias"),
        "{msg}"
    );

    let mut state = opt.state_tensors();
    state[0].1 = Tensor::zeros([4, 6], (Kind::Float, Device::Cpu));
    let msg = opt.load_state(&state).unwrap_err().to_string();
    assert!(
        msg.contains("optim.exp_avg.backbone.blocks.0.attn_qkv.weight")
            && msg.contains("[4, 6]")
            && msg.contains("[6, 4]"),
        "{msg}"
    );

    let mut state = opt.state_tensors();
    state.push((
        "optim.exp_avg.backbone.gone".into(),
        Tensor::zeros([1], (Kind::Float, Device::Cpu)),
    ));
    let msg = opt.load_state(&state).unwrap_err().to_string();
    assert!(
        msg.contains("unexpected key optim.exp_avg.backbone.gone"),
        "{msg}"
    );
}

#[test]
fn clip_grad_norm_matches_hand_computed_norm() {
    let opts = (Kind::Float, Device::Cpu);
    let a = Tensor::zeros([2], opts).set_requires_grad(true);
    let b = Tensor::zeros([1, 1], opts).set_requires_grad(true);
    let no_grad = Tensor::zeros([3], opts).set_requires_grad(true);
    let params = vec![
        ("a".to_string(), a.shallow_clone()),
        ("b".to_string(), b.shallow_clone()),
        ("c".to_string(), no_grad),
    ];
    set_grad(&a, &[3.0, 4.0]);
    set_grad(&b, &[12.0]);
    // sqrt(3^2 + 4^2 + 12^2) = 13.
    let norm = |max: f64| -> f64 {
        let t = clip_grad_norm(&params, max)
            .unwrap()
            .expect("gradients present");
        f64::try_from(t).unwrap()
    };
    let total = norm(6.5);
    assert_eq!(total, 13.0);
    let coef = 6.5 / (13.0 + 1e-6);
    let got: Vec<f64> = values(&a.grad())
        .into_iter()
        .chain(values(&b.grad()))
        .collect();
    for (g, want) in got.iter().zip([3.0 * coef, 4.0 * coef, 12.0 * coef]) {
        assert!((g - want).abs() < 1e-6, "clipped {g}, expected {want}");
    }

    // Below the threshold the gradients are left as they are.
    let total = norm(100.0);
    assert!((total - 6.5).abs() < 1e-5, "{total}");
    let again: Vec<f64> = values(&a.grad())
        .into_iter()
        .chain(values(&b.grad()))
        .collect();
    assert_eq!(again, got);

    let none = vec![(
        "x".to_string(),
        Tensor::zeros([2], opts).set_requires_grad(true),
    )];
    assert!(clip_grad_norm(&none, 1.0).unwrap().is_none());
}

/// Deterministic "random-looking" values: libtorch's global generator is shared by the tests of
/// this binary, which run in parallel, so reseeding it cannot make a tensor reproducible.
fn det(shape: &[i64], seed: i64, salt: i64) -> Tensor {
    let n: i64 = shape.iter().product();
    let phase = (seed * 31 + salt) as f64;
    (Tensor::arange(n, (Kind::Float, Device::Cpu)) * 0.7311 + phase)
        .sin()
        .reshape(shape)
        * 1.7
}
