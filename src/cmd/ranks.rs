//! How a command takes part in a data-parallel run — alone, as one rank started by a launcher
//! (`srun`, torchrun-style variables), or as the local launcher that starts one rank per device
//! on this machine — and what every rank does on joining: the process group, a check that all
//! ranks run the same thing, and rank 0 preparing shared files first.

use crate::config::{self, Config};
use crate::dist::{self, Backend, Launch, ProcessGroup};
use anyhow::{Context, Result, bail};
use std::time::Duration;

/// What this process is in the run.
pub enum Role {
    /// One process, no process group (`trainer.devices=1`, no launcher).
    Alone,
    /// One rank of a launched run.
    Rank(Launch),
    /// This process was the local launcher: its ranks have run and succeeded.
    Launched,
}

/// This process's [`Role`]. With `trainer.devices=N > 1` and no launcher, starts the N ranks
/// here (each re-running this command line) and waits for them; the batch arithmetic is checked
/// first, so a config that cannot split fails before any process starts.
pub fn role(cfg: &Config) -> Result<Role> {
    if let Some(l) = Launch::from_env()? {
        return Ok(Role::Rank(l));
    }
    let devices = cfg.trainer.devices.unwrap_or(1);
    let nodes = cfg.trainer.num_nodes.max(1);
    if devices * nodes <= 1 {
        return Ok(Role::Alone);
    }
    if nodes > 1 {
        bail!(
            "trainer.num_nodes={nodes}: a multi-node run needs a launcher on every node (srun, see scripts/train_owt_mdlm.sh, or RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT per process)"
        );
    }
    let mut resolved = cfg.clone();
    resolved.resolve_devices(devices);
    resolved.validate()?;
    resolved.check_data_parallel(devices)?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let exe = std::env::current_exe().context("locating the mdlm executable")?;
    // The ranks resolve `${now:}` (the default run directory) with this process's clock.
    let mut env = vec![(config::NOW_VAR, config::now_epoch().to_string())];
    // As torchrun does: ranks sharing the machine's cores each get their share of the CPU
    // threads instead of all of them (N ranks x all cores oversubscribes a CPU run N-fold).
    if std::env::var_os("OMP_NUM_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        env.push(("OMP_NUM_THREADS", (cores / devices).max(1).to_string()));
    }
    eprintln!(
        "starting {devices} ranks on this machine (one per device{}); run dir {}",
        env.iter()
            .find(|(k, _)| *k == "OMP_NUM_THREADS")
            .map_or(String::new(), |(_, n)| format!(
                ", OMP_NUM_THREADS={n} per rank"
            )),
        cfg.run_dir().display()
    );
    let grace = Duration::from_secs_f64(cfg.trainer.dist_timeout_s + 30.0);
    dist::launch::spawn_local(&exe, &args, &env, devices, grace)?;
    Ok(Role::Launched)
}

/// Joins `launch`'s process group (none without a launcher) and checks that every rank runs
/// the same job.
pub fn join(
    cfg: &Config,
    launch: Option<&Launch>,
    device: tch::Device,
) -> Result<Option<ProcessGroup>> {
    let Some(l) = launch else {
        return Ok(None);
    };
    let timeout = Duration::from_secs_f64(cfg.trainer.dist_timeout_s);
    let pg = ProcessGroup::init(l, Backend::for_device(device), timeout)?;
    same_run(&pg, cfg, "run")?;
    Ok(Some(pg))
}

/// Every rank must run the same job: rank 0 publishes what decides where results go and which
/// checkpoint is read, and the others compare (a `${now:}` run directory resolved per process
/// would otherwise split the run silently). `key` tells apart the jobs of one process group
/// (the zero-shot table's data groups).
pub fn same_run(pg: &ProcessGroup, cfg: &Config, key: &str) -> Result<()> {
    let mine = format!(
        "hydra.run.dir={}\ncheckpointing.save_dir={:?}\ncheckpointing.resume_ckpt_path={:?}\neval.checkpoint_path={:?}\ndata={}\nseed={}",
        cfg.hydra.run.dir,
        cfg.checkpointing.save_dir,
        cfg.checkpointing.resume_ckpt_path,
        cfg.eval.checkpoint_path,
        cfg.data.valid,
        cfg.seed
    );
    let key = format!("mdlm/same/{key}");
    if pg.is_main() {
        pg.store()
            .set(&key, mine.as_bytes())
            .map_err(|e| anyhow::anyhow!("rank 0: publishing the run settings: {e}"))?;
        return Ok(());
    }
    let theirs = pg
        .store()
        .get(&key)
        .map_err(|e| anyhow::anyhow!("rank {}: reading rank 0's run settings: {e}", pg.rank()))?;
    let theirs = String::from_utf8_lossy(&theirs);
    if let Some((a, b)) = theirs.lines().zip(mine.lines()).find(|(a, b)| a != b) {
        bail!(
            "rank {} resolved {b} but rank 0 resolved {a}; give every rank the same settings (hydra.run.dir or checkpointing.save_dir explicitly)",
            pg.rank()
        );
    }
    Ok(())
}

/// `f` on rank 0 first, then on the others (which open what rank 0 prepared or downloaded);
/// alone, just `f`.
pub fn rank_zero_first<T>(
    pg: Option<&ProcessGroup>,
    what: &str,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let Some(pg) = pg else {
        return f();
    };
    if pg.is_main() {
        let out = f()?;
        pg.barrier()
            .with_context(|| format!("waiting for the other ranks after {what}"))?;
        Ok(out)
    } else {
        pg.barrier()
            .with_context(|| format!("waiting for rank 0's {what}"))?;
        f()
    }
}
