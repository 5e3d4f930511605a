//! parse args → init telemetry → load config → build app → run until signal.

use std::process::ExitCode;

use clap::Parser;
use paybridge::adapters::store::Store;
use paybridge::config::{Cli, Command, TenantCommand};
use paybridge::startup::{Application, shutdown_signal};
use paybridge::transport::gateway::GatewayApp;

/// Exit code for a bad configuration (sysexits' EX_CONFIG).
const EXIT_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Tenant(command) = cli.command {
        return tenant(command);
    }
    // The gateway runs on one thread: it is a thin, I/O-bound sidecar (the chart gives it half a
    // core), and a worker per node core would only add wake-ups across threads and CFS
    // throttling. One thread costs less CPU per return at equal or better rates (bench/README.md).
    let runtime = match cli.command {
        Command::Gateway(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Command::Serve(_) | Command::Migrate(_) | Command::Tenant(_) => {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
        }
    };
    match runtime {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(error) => {
            eprintln!("error: starting the async runtime: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `paybridge tenant …`: no runtime, no telemetry; the answer on stdout, a refusal on stderr.
fn tenant(command: TenantCommand) -> ExitCode {
    match command {
        TenantCommand::New(args) => match paybridge::tenants::new_tenant(
            &args.id,
            &args.origins,
            &args.success_url,
            &args.failure_url,
        ) {
            Ok(new) => {
                // The token goes to stderr, the block to stdout: `… >> tenants.toml` appends the
                // block, and the token is seen once, on the terminal.
                eprintln!(
                    "tenant {}'s bearer token (shown only this once; paybridge keeps only its SHA-256):\n{}\n",
                    args.id, new.token
                );
                print!("{}", new.toml);
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        },
        TenantCommand::Check { file } => match paybridge::tenants::check_file(&file) {
            Ok(summary) => {
                println!("{summary}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        },
    }
}

async fn run(cli: Cli) -> ExitCode {
    let service = match cli.command {
        Command::Gateway(_) => paybridge::telemetry::Service::Gateway,
        Command::Serve(_) | Command::Migrate(_) | Command::Tenant(_) => {
            paybridge::telemetry::Service::Core
        }
    };
    let telemetry = match paybridge::telemetry::init(&cli.telemetry, service) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let code = run_command(cli.command).await;
    // The spans still batched are exported before the process ends.
    telemetry.shutdown().await;
    code
}

async fn run_command(command: Command) -> ExitCode {
    match command {
        Command::Migrate(database) => {
            let result = async {
                let store =
                    Store::connect(&database.database_url, database.max_connections()).await?;
                store.migrate().await?;
                store.close().await;
                Ok::<_, paybridge::app::ports::StoreError>(())
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
            run_service(
                || args.into_config(),
                Application::build,
                Application::run_until_stopped,
            )
            .await
        }
        Command::Tenant(_) => unreachable!("handled before the runtime starts"),
        Command::Gateway(args) => {
            run_service(
                || args.into_config(),
                GatewayApp::build,
                GatewayApp::run_until_stopped,
            )
            .await
        }
    }
}

/// The signal future a long-running command stops on.
type Shutdown = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs `serve` or `gateway`: signal handlers first (so that a SIGTERM during start-up stops the
/// process cleanly), then the checked settings, the build and the run, each failure printed as
/// one line with its exit code.
async fn run_service<C, A, Built, Ran>(
    config: impl FnOnce() -> Result<C, String>,
    build: impl FnOnce(C) -> Built,
    run: impl FnOnce(A, Shutdown) -> Ran,
) -> ExitCode
where
    Built: Future<Output = anyhow::Result<A>>,
    Ran: Future<Output = anyhow::Result<()>>,
{
    let shutdown: Shutdown = match shutdown_signal() {
        Ok(shutdown) => Box::pin(shutdown),
        Err(error) => {
            eprintln!("error: listening for signals: {error}");
            return ExitCode::FAILURE;
        }
    };
    let config = match config() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let app = match build(config).await {
        Ok(app) => app,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    match run(app, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
