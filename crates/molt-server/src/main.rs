//! `molt-server`: the fleet server's thin binary entry.
//!
//! `molt-server init DIR` and `molt-server run --config FILE`; the `molt`
//! CLI offers the same as `molt server init|run`.

use std::path::PathBuf;

use anyhow::Context;

fn usage() -> ! {
    eprintln!("usage: molt-server init DIR [--name HOST]...\n       molt-server run --config FILE");
    std::process::exit(2);
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    match args.first().map(String::as_str) {
        Some("init") => {
            let dir = PathBuf::from(args.get(1).unwrap_or_else(|| usage()));
            let names: Vec<String> = args[2..]
                .chunks(2)
                .filter(|c| c[0] == "--name")
                .filter_map(|c| c.get(1).cloned())
                .collect();
            let done = runtime.block_on(molt_server::init(&dir, &names))?;
            println!("config: {}", done.config_path.display());
            println!(
                "admin token: {} (also in {})",
                done.admin_token,
                dir.join(molt_server::ADMIN_TOKEN_FILE).display()
            );
            println!("next: molt-server run --config {}", done.config_path.display());
            Ok(())
        }
        Some("run") => {
            let path = match (args.get(1).map(String::as_str), args.get(2)) {
                (Some("--config"), Some(p)) => PathBuf::from(p),
                _ => usage(),
            };
            let config = molt_server::Config::load(&path)?;
            runtime.block_on(async move {
                let https = tokio::net::TcpListener::bind(config.listen.https)
                    .await
                    .with_context(|| format!("binding listen.https = {}", config.listen.https))?;
                let running = molt_server::start(config, https).await?;
                // One line a supervisor (or a test) can parse.
                println!(
                    "molt-server listening mqtt={} https={} mqtt_local={}",
                    running.addrs.mqtt, running.addrs.https, running.addrs.mqtt_local
                );
                use std::io::Write;
                let _ = std::io::stdout().flush();
                molt_server::shutdown_signal().await;
                running.stop().await;
                anyhow::Ok(())
            })
        }
        _ => usage(),
    }
}
