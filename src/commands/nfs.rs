//! `tarn nfs serve`: export a pool over NFSv3 (MOUNT and portmapper on the same port).

use crate::cli::NfsServeArgs;
use crate::error::{CliError, Result};
use crate::registry::{open_entry_with, Registry};
use ::pool::PoolConfig;
use std::sync::Arc;

/// Raises this process's open-file limit to its hard limit, so that `--max-connections`
/// connections fit (the usual soft limit, 1024, is reached first: accept then fails with
/// EMFILE); says so where the hard limit is still short of them.
fn raise_file_limit(connections: u32) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on this process, with a struct of ours.
    let raised = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0
        }
    };
    // The pool, the listener and the runtime take some descriptors of their own.
    let needed = u64::from(connections) + 64;
    if !raised || lim.rlim_cur < needed {
        tracing::warn!(
            limit = lim.rlim_cur,
            needed,
            "the open-file limit is below what --max-connections needs; raise it (ulimit -n)"
        );
    }
}

/// Serves `POOL` until SIGINT or SIGTERM, then commits and closes the pool.
pub fn serve(reg: &Registry, a: &NfsServeArgs) -> Result<()> {
    raise_file_limit(a.max_connections);
    let entry = reg.require(&a.pool)?;
    let pool = open_entry_with(
        &entry,
        PoolConfig {
            sync_interval: Some(std::time::Duration::from_secs(1)),
            ..PoolConfig::default()
        },
    )?;
    let pool = Arc::new(pool);
    let view = Arc::new(::nfs::FileView::new(
        pool.clone(),
        ::nfs::ViewOptions {
            read_only: a.read_only,
            ..::nfs::ViewOptions::default()
        },
    ));
    let config = ::nfs::ServeConfig {
        listen: a.listen.to_string(),
        allow: a.allow.clone(),
        sync_writes: a.sync,
        limits: ::nfs::ConnectionLimits {
            max_connections: a.max_connections as usize,
            max_per_peer: a.max_per_client as usize,
            idle_timeout: std::time::Duration::from_secs(a.idle_timeout),
            ..Default::default()
        },
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tarn-nfs")
        .build()
        .map_err(|e| CliError::io("starting the NFS server's runtime", e))?;
    let served = rt.block_on(async {
        let server = ::nfs::Server::bind(view, &config)
            .await
            .map_err(|e| CliError::io(format!("listening on {}", config.listen), e))?;
        let addr = server.local_addr();
        // Scripts (and tests) wait for this line; a server whose stdout is gone (a closed
        // pipe, a full device) serves all the same.
        let line = format!(
            "serving pool {} on {addr} (NFSv3, MOUNT and portmapper; export /{}){}\n",
            a.pool,
            a.pool,
            if a.read_only { ", read-only" } else { "" }
        );
        if let Err(e) = crate::output::print_str(&line) {
            tracing::warn!("{e}");
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| CliError::io("installing a SIGTERM handler", e))?;
        tokio::select! {
            r = server.run() => r.map_err(|e| CliError::io(format!("serving on {addr}"), e)),
            _ = tokio::signal::ctrl_c() => Ok(()),
            _ = term.recv() => Ok(()),
        }
    });
    // Requests still in flight hold the view; give them a moment, then close.
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    served?;
    match Arc::try_unwrap(pool) {
        Ok(p) => p.close()?,
        Err(p) => {
            p.sync()?;
        }
    }
    Ok(())
}
