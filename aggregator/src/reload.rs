//! Configuration reload on SIGHUP: the file is re-read and validated first (a bad file is
//! logged and the running configuration stays), then what can change live is swapped in —
//! tokens, rate and request limits, body timeouts, retention — and every key that needs a
//! restart (listen address, store, capacities fixed at start) is named in a warning and
//! keeps its running value.

use std::sync::Weak;

use crate::config::{ConfigError, Settings};
use crate::App;

/// Reloads on every SIGHUP while the app lives.
pub fn on_sighup(
    app: Weak<App>,
    load: impl Fn() -> Result<Settings, ConfigError> + Send + 'static,
) {
    logship_common::on_sighup(move || {
        let Some(app) = app.upgrade() else { return };
        match load() {
            Ok(new) => apply(&app, new),
            Err(e) => {
                app.metrics.reload.reload_failures.inc();
                tracing::error!(error = %e, "config reload failed; the running configuration stays");
            }
        }
    });
}

/// Swaps in `new`, keeping (and naming) what only a restart can change.
pub fn apply(app: &App, new: Settings) {
    let old = app.settings();
    let mut next = new;
    macro_rules! restart_only {
        ($($field:ident => $key:literal),* $(,)?) => {$(
            if next.$field != old.$field {
                tracing::warn!(key = $key, "changed in the config file; takes effect after a restart");
                next.$field = old.$field.clone();
            }
        )*};
    }
    restart_only!(
        listen => "listen",
        role => "role",
        backend => "store.type (and the redis store's keys)",
        data_dir => "data_dir",
        worker_threads => "worker_threads",
        cache_capacity => "store.cache_capacity",
        max_connections => "max_connections",
        max_followers => "max_followers",
        max_downloads => "max_downloads",
        max_searches => "search.max_searches",
        ingest_memory => "limits.ingest_memory",
        header_read_timeout => "header_read_timeout",
        shutdown_timeout => "shutdown_timeout",
        sweep_interval => "store.sweep_interval",
        seal_after => "store.seal_after",
        log_format => "log_format",
        log_level => "log_level",
    );
    // Switching between HTTP and HTTPS would strand every client; new certificates (same
    // files rewritten, or other files) apply to every connection accepted from now on.
    if next.tls.is_some() != old.tls.is_some() {
        tracing::warn!(
            key = "tls",
            "turning TLS on or off takes effect after a restart"
        );
        next.tls = old.tls.clone();
    } else if next.tls != old.tls {
        tracing::info!("TLS certificates reloaded; new connections use them");
    }
    if next.per_host_lines_per_sec != old.per_host_lines_per_sec {
        app.set_rate_limit(next.per_host_lines_per_sec);
    }
    let tokens_changed =
        next.write_tokens != old.write_tokens || next.read_tokens != old.read_tokens;
    let changed = old.fingerprint.changed(&next.fingerprint);
    let next_hash = next.fingerprint.hash();
    app.set_settings(next);
    app.metrics.reload.reloads.inc();
    let hash = next_hash;
    app.metrics
        .reload
        .config_info
        .in_force(Some(&old.fingerprint.hash()), &hash);
    tracing::info!(
        tokens_changed,
        changed = %changed.join(", "),
        config_hash = %hash,
        "configuration reloaded"
    );
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::Config;

    fn settings(toml: &str) -> Settings {
        let c: Config = toml::from_str(toml).expect("toml");
        c.validate().expect("valid")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn live_keys_change_and_restart_keys_stay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::store::SledStore::open(dir.path(), &Default::default()).expect("open");
        let app = App::new(
            settings("listen = \"127.0.0.1:1\"\n[auth]\nwrite_tokens = [\"a\"]\n"),
            Arc::new(store),
        );
        apply(
            &app,
            settings(
                "listen = \"127.0.0.1:2\"\nmax_connections = 7\n[auth]\nwrite_tokens = [\"b\"]\n[limits]\nper_host_lines_per_sec = 10\n[store]\nretention = \"1d\"\n",
            ),
        );
        let s = app.settings();
        assert_eq!(
            s.write_tokens,
            vec![logship_common::config::Secret::new("b")]
        );
        assert_eq!(s.per_host_lines_per_sec, 10);
        assert!(s.retention.retention.is_some());
        assert_eq!(s.listen.port(), 1, "listen needs a restart");
        assert_eq!(s.max_connections, 1024, "max_connections needs a restart");
        // The store and the role are the process's own: a reload keeps them.
        apply(
            &app,
            settings(
                "listen = \"127.0.0.1:1\"\nrole = \"ingest\"\ndata_dir = \"/elsewhere\"\n[store]\ntype = \"redis\"\nnodes = [\"redis://127.0.0.1:1\"]\n",
            ),
        );
        let s = app.settings();
        assert!(
            matches!(s.role, crate::config::Role::All),
            "role needs a restart"
        );
        assert!(
            matches!(s.backend, crate::config::Backend::Sled),
            "store.type needs a restart"
        );
        assert_ne!(s.data_dir, std::path::PathBuf::from("/elsewhere"));
    }
}
