//! Reloading the configuration of a running shield in-process: new limits take effect for open
//! connections, and changes that need a restart say so. (The SIGHUP path through the binary is
//! tested in `crates/qalqan/tests/cli.rs`.)

use crate::common::*;

fn config(origin: &Origin, extra: &str) -> qalqan_shield::Config {
    qalqan_shield::RawConfig::from_toml(&config_toml_apart(origin, extra)).expect("valid config")
}

fn default_route(rate_per_address: u32) -> String {
    format!(
        "[[route]]\nname = \"default\"\nrate_per_address = {rate_per_address}\nrate_per_prefix = 1000\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_changes_limits_without_dropping_open_connections() {
    let origin = Origin::simple(None).await;
    let shield = shield_apart(&origin, &default_route(100)).await;
    let addr = shield.listen[0];
    let admin = shield.admin.unwrap();

    let mut conn = KeepAlive::open(lo(1), addr).await;
    for _ in 0..6 {
        assert_eq!(conn.get("/", &[]).await.status, 200, "well under 100/s");
    }

    let warnings = shield.reload(config(&origin, &default_route(2)));
    assert!(
        warnings.is_empty(),
        "nothing here needs a restart: {warnings:?}"
    );
    assert!(!conn.is_closed(), "the reload kept the connection open");

    // The same TCP connection now meets the new limit of 2/s.
    let mut after = Vec::new();
    for _ in 0..5 {
        after.push(conn.get("/", &[]).await.status.as_u16());
    }
    assert_eq!(after[..2], [200, 200], "{after:?}");
    assert!(
        after[2..].iter().all(|&s| s == 429),
        "the new limit applies: {after:?}"
    );
    assert_eq!(metric(admin, "qalqan_shield_reloads_total").await, 1.0);
    assert_eq!(
        metric(admin, "qalqan_shield_connections_open").await,
        1.0,
        "still one connection"
    );

    // Listener and cache size changes are accepted for the rest but need a restart.
    let more = format!(
        "[[listen]]\naddress = \"127.0.0.3:0\"\n[cache]\nmax_bytes = \"64MiB\"\n{}",
        default_route(100)
    );
    let warnings = shield.reload(config(&origin, &more));
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("listener") && w.contains("restart")),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("cache") && w.contains("restart")),
        "{warnings:?}"
    );
    assert_eq!(
        shield.listen.len(),
        1,
        "no listener was opened by the reload"
    );
    let status = conn.get("/", &[]).await.status;
    assert_eq!(
        status, 200,
        "the kept-alive connection still works, under the new limit"
    );
    assert!(!conn.is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_warns_when_listener_settings_change_on_the_same_address() {
    let origin = Origin::simple(None).await;
    let shield = shield_apart(&origin, "").await;
    let same_address_with_proxy_protocol = format!(
        "[origin]\nurl = \"{}\"\n[[listen]]\naddress = \"127.0.0.1:0\"\nproxy_protocol = true\n\
         [admin]\naddress = \"127.0.0.2:0\"\n[access_log]\npath = \"\"\n\
         [client]\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
        origin.url()
    );
    let cfg = qalqan_shield::RawConfig::from_toml(&same_address_with_proxy_protocol).unwrap();
    let warnings = shield.reload(cfg);
    assert!(
        warnings.iter().any(|w| w.contains("restart")),
        "turning proxy_protocol on cannot take effect without a restart, yet no warning: {warnings:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_zero_listener_and_admin_do_not_clash() {
    let origin = Origin::simple(None).await;
    // `shield_for` puts both the listener and the admin on 127.0.0.1:0.
    let shield = shield_for(&origin, "[[listen]]\naddress = \"127.0.0.1:0\"\n").await;
    assert_eq!(shield.listen.len(), 2);
    assert_ne!(shield.listen[0], shield.listen[1]);
    assert_eq!(get(shield.listen[1], "/", &[]).await.status, 200);
    assert_eq!(
        get(shield.admin.unwrap(), "/healthz", &[]).await.status,
        200
    );
}
