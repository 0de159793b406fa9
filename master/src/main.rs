//! `decnet`: the operator CLI. Parses arguments, runs the command, and maps
//! errors to a one-paragraph report and an exit code (1 failure, 2 usage).

use clap::Parser;

fn main() {
    let cli = decnet_master::cli::Cli::parse();
    decnet_telemetry::init_logging(cli.log_format, "warn");
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
