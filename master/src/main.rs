//! `decnet`: the operator CLI. Parses arguments, runs the command, and maps
//! errors to a one-paragraph report and an exit code (1 failure, 2 usage).

use clap::Parser;

/// Exit quietly, as `yes | head` does (128 + SIGPIPE), when stdout is a
/// pipe whose reader has gone: `println!` panics on `EPIPE` because Rust
/// ignores SIGPIPE (which the daemons in this binary rely on, writing to
/// sockets).
fn quiet_on_closed_stdout() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(141);
        }
        default_hook(info);
    }));
}

fn main() {
    quiet_on_closed_stdout();
    let cli = decnet_master::cli::Cli::parse();
    decnet_telemetry::init_logging(cli.log_format, cli.default_log_level());
    decnet_pki::provider::install_default();
    // Descriptors must not run out before the connection caps do.
    decnet_server::descriptors::raise_nofile_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(err) = runtime.block_on(decnet_master::cli::run(cli)) {
        // Errors may quote what a worker answered: shown inert.
        let inert =
            |e: &dyn std::fmt::Display| decnet_master::table::inert(&e.to_string()).into_owned();
        eprintln!("error: {}", inert(&err));
        for cause in err.chain().skip(1) {
            eprintln!("  caused by: {}", inert(&cause));
        }
        std::process::exit(decnet_master::usage::exit_code(&err));
    }
}
