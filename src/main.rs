//! parse args → init telemetry → load config → build app → run until signal.

use std::process::ExitCode;

use clap::Parser;
use paybridge::adapters::store::Store;
use paybridge::config::{Cli, Command};
use paybridge::startup::{Application, shutdown_signal};
use paybridge::transport::gateway::GatewayApp;

/// Exit code for a bad configuration (sysexits' EX_CONFIG).
const EXIT_CONFIG: u8 = 78;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(error) = paybridge::telemetry::init(&cli.telemetry) {
        eprintln!("error: {error}");
        return ExitCode::from(EXIT_CONFIG);
    }
    match cli.command {
        Command::Migrate(database) => {
            let result = async {
                let store =
                    Store::connect(&database.database_url, database.max_connections()).await?;
                store.migrate().await?;
                store.close().await;
                Ok::<_, paybridge::adapters::store::StoreError>(())
            }
            .await;
            match result {
                Ok(()) => {
                    tracing::info!("migrations applied");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!(
                        "error: PAYBRIDGE_DATABASE_URL: {}",
                        paybridge::app::error_chain(&error)
                    );
                    ExitCode::FAILURE
                }
            }
        }
        Command::Serve(args) => {
            let shutdown = match shutdown_signal() {
                Ok(shutdown) => shutdown,
                Err(error) => {
                    eprintln!("error: listening for signals: {error}");
                    return ExitCode::FAILURE;
                }
            };
            let config = match args.into_config() {
                Ok(config) => config,
                Err(error) => {
                    eprintln!("error: {error}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let app = match Application::build(config).await {
                Ok(app) => app,
                Err(error) => {
                    eprintln!("error: {error:#}");
                    return ExitCode::FAILURE;
                }
            };
            match app.run_until_stopped(shutdown).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("error: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Gateway(args) => {
            let shutdown = match shutdown_signal() {
                Ok(shutdown) => shutdown,
                Err(error) => {
                    eprintln!("error: listening for signals: {error}");
                    return ExitCode::FAILURE;
                }
            };
            let config = match args.into_config() {
                Ok(config) => config,
                Err(error) => {
                    eprintln!("error: {error}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let app = match GatewayApp::build(config).await {
                Ok(app) => app,
                Err(error) => {
                    eprintln!("error: {error:#}");
                    return ExitCode::FAILURE;
                }
            };
            match app.run_until_stopped(shutdown).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("error: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
