//! Who this process is in a data-parallel run, read from the launcher's environment, and the
//! local launcher that starts one process per device on this machine.
//!
//! - torchrun style: `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT` (with
//!   `NODE_RANK` and `LOCAL_WORLD_SIZE`, checked against `RANK`);
//! - slurm (`srun`, one task per GPU as the reference's sbatch scripts run Lightning):
//!   `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`, and the first host of
//!   `SLURM_JOB_NODELIST` as the rendezvous host.

use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub rank: usize,
    pub world: usize,
    /// The device index on this node.
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// Which environment described the run (for messages).
    pub source: &'static str,
}

/// torchrun's default port.
const DEFAULT_PORT: u16 = 29500;

impl Launch {
    /// `None` for a single-process run (no launcher, or a one-task slurm job).
    pub fn from_env() -> Result<Option<Launch>> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// [`Launch::from_env`] over any variable lookup (tests pass a map).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Launch>> {
        let num = |k: &str| -> Result<Option<usize>> {
            var(k)
                .map(|v| {
                    v.trim()
                        .parse::<usize>()
                        .with_context(|| format!("environment variable {k}={v:?} is not a count"))
                })
                .transpose()
        };
        let port = |default: u16| -> Result<u16> {
            match var("MASTER_PORT") {
                Some(p) => p
                    .trim()
                    .parse()
                    .with_context(|| format!("MASTER_PORT={p:?} is not a port number")),
                None => Ok(default),
            }
        };
        let launch = if let Some(world) = num("WORLD_SIZE")? {
            let rank = num("RANK")?.context("WORLD_SIZE is set but RANK is not")?;
            let local_rank = num("LOCAL_RANK")?.unwrap_or(rank);
            // torchrun numbers ranks node by node; a hand-written launch that does not would
            // pair devices and data shards wrongly without failing.
            if let (Some(node), Some(per_node)) = (num("NODE_RANK")?, num("LOCAL_WORLD_SIZE")?)
                && rank != node * per_node + local_rank
            {
                bail!(
                    "RANK={rank} but NODE_RANK={node} x LOCAL_WORLD_SIZE={per_node} + LOCAL_RANK={local_rank} = {}; torchrun numbers ranks node by node",
                    node * per_node + local_rank
                );
            }
            Launch {
                rank,
                world,
                local_rank,
                master_addr: var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into()),
                master_port: port(DEFAULT_PORT)?,
                source: "RANK/WORLD_SIZE",
            }
        } else if let Some(world) = num("SLURM_NTASKS")? {
            if world <= 1 {
                return Ok(None);
            }
            let nodes = var("SLURM_JOB_NODELIST")
                .or_else(|| var("SLURM_NODELIST"))
                .context("SLURM_NTASKS is set but SLURM_JOB_NODELIST is not")?;
            // Two jobs sharing a node must not share a port: derive it from the job id.
            let default_port =
                num("SLURM_JOB_ID")?.map_or(DEFAULT_PORT, |j| 15000 + (j % 20000) as u16);
            Launch {
                rank: num("SLURM_PROCID")?
                    .context("SLURM_NTASKS is set but SLURM_PROCID is not")?,
                world,
                local_rank: num("SLURM_LOCALID")?.unwrap_or(0),
                master_addr: match var("MASTER_ADDR") {
                    Some(a) => a,
                    None => first_host(&nodes)?,
                },
                master_port: port(default_port)?,
                source: "slurm",
            }
        } else {
            return Ok(None);
        };
        if launch.world == 0 || launch.rank >= launch.world {
            bail!(
                "rank {} is outside a world of {} ({})",
                launch.rank,
                launch.world,
                launch.source
            );
        }
        Ok(Some(launch))
    }
}

/// The first host of a slurm node list: `gpu[03-05,9],cpu1` → `gpu03`, `node7` → `node7`,
/// `n[1-2]-ib` → `n1-ib`.
pub fn first_host(list: &str) -> Result<String> {
    let list = list.trim();
    let mut depth = 0;
    let end = list
        .char_indices()
        .find(|&(_, c)| {
            match c {
                '[' => depth += 1,
                ']' => depth -= 1,
                _ => {}
            }
            c == ',' && depth == 0
        })
        .map_or(list.len(), |(i, _)| i);
    let first = &list[..end];
    let host = match (first.find('['), first.find(']')) {
        (None, None) => first.to_string(),
        (Some(open), Some(close)) if open < close => {
            let inner = &first[open + 1..close];
            let item = inner.split(',').next().unwrap_or("");
            let start = item.split('-').next().unwrap_or("");
            format!("{}{}{}", &first[..open], start, &first[close + 1..])
        }
        _ => bail!("cannot read the slurm node list {list:?}"),
    };
    if host.is_empty() {
        bail!("the slurm node list {list:?} names no host");
    }
    Ok(host)
}

/// A port free on 127.0.0.1 at the time of asking.
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// Starts `devices` copies of this executable with `args` and the variables `env`, ranks
/// 0..devices on 127.0.0.1, and waits for all of them. A rank that fails makes the others fail
/// within the process-group timeout; any still running `grace` after the first failure are
/// killed so the launcher never hangs.
pub fn spawn_local(
    exe: &Path,
    args: &[String],
    env: &[(&str, String)],
    devices: usize,
    grace: Duration,
) -> Result<()> {
    let port = free_port()?;
    let mut children: Vec<(usize, Child)> = Vec::new();
    for rank in 0..devices {
        let child = Command::new(exe)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", devices.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .spawn()
            .with_context(|| format!("starting rank {rank} ({})", exe.display()))?;
        children.push((rank, child));
    }
    let mut failed: Vec<String> = Vec::new();
    let mut first_failure: Option<std::time::Instant> = None;
    while !children.is_empty() {
        let mut i = 0;
        while i < children.len() {
            match children[i].1.try_wait()? {
                Some(status) => {
                    let (rank, _) = children.remove(i);
                    if !status.success() {
                        failed.push(format!("rank {rank} ({status})"));
                        first_failure.get_or_insert_with(std::time::Instant::now);
                    }
                }
                None => i += 1,
            }
        }
        if first_failure.is_some_and(|t| t.elapsed() > grace) {
            for (rank, c) in &mut children {
                let _ = c.kill();
                let _ = c.wait();
                failed.push(format!("rank {rank} (killed by the launcher)"));
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if !failed.is_empty() {
        bail!(
            "{} of {devices} ranks failed: {}",
            failed.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(pairs: &[(&str, &str)]) -> Result<Option<Launch>> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Launch::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn node_lists() {
        assert_eq!(first_host("gpu[03-05,9],cpu1").unwrap(), "gpu03");
        assert_eq!(first_host("node7").unwrap(), "node7");
        assert_eq!(first_host("a,b[1-2]").unwrap(), "a");
        assert_eq!(first_host("n[12-13]-ib,x").unwrap(), "n12-ib");
        assert!(first_host("").is_err());
        assert!(first_host("n]1[").is_err());
    }

    #[test]
    fn environments() {
        assert_eq!(from(&[]).unwrap(), None);
        assert_eq!(from(&[("SLURM_NTASKS", "1")]).unwrap(), None);
        let l = from(&[
            ("SLURM_NTASKS", "8"),
            ("SLURM_PROCID", "5"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_JOB_NODELIST", "gpu[03-04]"),
            ("SLURM_JOB_ID", "123456"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((l.rank, l.world, l.local_rank), (5, 8, 1));
        assert_eq!(l.master_addr, "gpu03");
        assert_eq!(l.master_port, 15000 + (123456 % 20000) as u16);
        // torchrun's variables win over slurm's.
        let t = from(&[
            ("WORLD_SIZE", "2"),
            ("RANK", "1"),
            ("MASTER_PORT", "4000"),
            ("SLURM_NTASKS", "8"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (t.rank, t.world, t.local_rank, t.master_port),
            (1, 2, 1, 4000)
        );
        assert_eq!(t.master_addr, "127.0.0.1");
        assert!(from(&[("WORLD_SIZE", "2"), ("RANK", "2")]).is_err());
        // Node 1 of 2 nodes x 2: ranks 2 and 3.
        let node = |rank: &str, local: &str| {
            from(&[
                ("WORLD_SIZE", "4"),
                ("RANK", rank),
                ("LOCAL_RANK", local),
                ("NODE_RANK", "1"),
                ("LOCAL_WORLD_SIZE", "2"),
            ])
        };
        assert_eq!(node("3", "1").unwrap().unwrap().local_rank, 1);
        let e = node("1", "1").unwrap_err().to_string();
        assert!(
            e.contains("NODE_RANK=1 x LOCAL_WORLD_SIZE=2 + LOCAL_RANK=1 = 3"),
            "{e}"
        );
        assert!(from(&[("WORLD_SIZE", "2")]).is_err());
        assert!(from(&[("WORLD_SIZE", "two"), ("RANK", "0")]).is_err());
    }
}
