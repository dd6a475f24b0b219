use std::io::IsTerminal as _;
use std::process::ExitCode;

use lifeboat_node_exporter::cli::{self, Command, Mode, Options};
use lifeboat_node_exporter::containerd::Containerd;
use lifeboat_node_exporter::report::{self, TERMINATION_MESSAGE_LIMIT, exit};
use lifeboat_node_exporter::{Error, export, import, inventory, relay, serve, socket};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: pod logs are read as plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    // The engine's HTTP client is built without a crypto provider of its
    // own; the binary picks ring for the whole process.
    registry_transfer::install_crypto_provider();

    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match cli::parse(&args, |name| std::env::var(name).ok()) {
        Ok(Command::Run(options)) => options,
        Ok(Command::Help) => {
            print!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("node-exporter {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            eprintln!("node-exporter: {error}\n\n{}", cli::USAGE);
            // Where the termination log goes is itself an argument that may
            // not have parsed: only the default is tried.
            let report = report::run_failed(&error);
            write_termination_message(
                std::path::Path::new(cli::DEFAULT_TERMINATION_LOG),
                &report.termination_message(TERMINATION_MESSAGE_LIMIT),
            );
            return exit_code(report.exit_code());
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the async runtime");
            return exit_code(exit::OTHER);
        }
    };
    let code = runtime.block_on(run(&options));
    tracing::info!(
        exit_code = code,
        peak_rss_kib = peak_rss_kib().unwrap_or(0),
        "finished"
    );
    exit_code(code)
}

/// The kernel's high-water mark of this process's resident memory.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resolves on SIGTERM or SIGINT. As PID 1 in a container a signal
/// without a handler is ignored, so the kubelet's stop would wait out the
/// grace period and SIGKILL: the handler is installed before any work.
fn stop_signal() -> Result<impl std::future::Future<Output = &'static str>, Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let io = |source| Error::Io {
        context: "cannot install the signal handler",
        path: "SIGTERM".into(),
        source,
    };
    let mut terminate = signal(SignalKind::terminate()).map_err(io)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(io)?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        }
    })
}

async fn run(options: &Options) -> i32 {
    let stop = match stop_signal() {
        Ok(stop) => stop,
        Err(error) => return fail_run(options, &error),
    };
    let mut stop = std::pin::pin!(stop);
    if options.mode == Mode::Relay {
        // No containerd: the relay only passes connections on.
        let stopped = async {
            let signal = (&mut stop).await;
            tracing::info!(signal, "stopping");
        };
        return match relay::run(options, stopped).await {
            Ok(()) => report::exit::OK,
            Err(error) => fail_run(options, &error),
        };
    }
    if options.mode == Mode::Serve {
        // serve stops by itself on the signal and reports what it served.
        let stopped = async {
            let signal = (&mut stop).await;
            tracing::warn!(signal, "stopping");
        };
        return run_mode(options, stopped).await;
    }
    tokio::select! {
        code = run_mode(options, std::future::pending()) => code,
        signal = &mut stop => {
            // The work is dropped where it stands: an import's or a
            // rebuild's lease expires by itself and takes what it held.
            tracing::warn!(signal, "stopped before finishing");
            fail_run(options, &Error::Terminated(signal))
        }
    }
}

fn fail_run(options: &Options, error: &Error) -> i32 {
    let report = report::run_failed(error);
    write_termination_message(
        &options.termination_log,
        &report.termination_message(TERMINATION_MESSAGE_LIMIT),
    );
    report.exit_code()
}

fn finish(options: &Options, report: &report::Report) -> i32 {
    let message = report.termination_message(TERMINATION_MESSAGE_LIMIT);
    // Also on stdout, whole, for humans and for `kubectl logs`.
    println!("{}", serde_json::to_string(report).unwrap_or_default());
    write_termination_message(&options.termination_log, &message);
    report.exit_code()
}

async fn run_mode(options: &Options, stop: impl std::future::Future<Output = ()>) -> i32 {
    let containerd = match connect(options).await {
        Ok(containerd) => containerd,
        Err(error) => {
            tracing::error!(reason = error.reason(), %error, "no containerd");
            let report = report::run_failed(&error);
            write_termination_message(
                &options.termination_log,
                &report.termination_message(TERMINATION_MESSAGE_LIMIT),
            );
            return report.exit_code();
        }
    };
    match options.mode {
        Mode::Export => finish(options, &export::run(&containerd, options).await),
        Mode::Import => finish(options, &import::run(&containerd, options).await),
        Mode::Serve => finish(options, &serve::run(&containerd, options, stop).await),
        Mode::Relay => report::exit::OK,
        Mode::Inventory => match inventory::run(&containerd, options).await {
            Ok(listing) => {
                println!("{}", serde_json::to_string(&listing).unwrap_or_default());
                write_termination_message(
                    &options.termination_log,
                    &inventory::termination_message(&listing, TERMINATION_MESSAGE_LIMIT),
                );
                if listing.missing.is_empty() || options.images.is_empty() {
                    exit::OK
                } else {
                    exit::NOT_ON_NODE
                }
            }
            Err(error) => {
                tracing::error!(reason = error.reason(), %error, "inventory failed");
                let report = report::run_failed(&error);
                write_termination_message(
                    &options.termination_log,
                    &report.termination_message(TERMINATION_MESSAGE_LIMIT),
                );
                report.exit_code()
            }
        },
    }
}

async fn connect(options: &Options) -> Result<Containerd, Error> {
    let path = socket::detect(
        options.socket.as_deref(),
        &options.host_root,
        socket::is_unix_socket,
    )?;
    tracing::info!(socket = %path.display(), namespace = %options.namespace, "connecting to containerd");
    Ok(Containerd::connect(&path, &options.namespace)
        .await?
        .with_content_store(options.content_store.clone()))
}

fn write_termination_message(path: &std::path::Path, message: &str) {
    // The kubelet provides the default file; outside Kubernetes it does not
    // exist and must not be created in /dev.
    if path == std::path::Path::new(cli::DEFAULT_TERMINATION_LOG) && !path.exists() {
        tracing::debug!("no termination log file; result only on stdout");
        return;
    }
    // A failure to write must not turn a successful export into a failure.
    if let Err(error) = std::fs::write(path, message) {
        tracing::warn!(path = %path.display(), %error, "could not write the termination message");
    }
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
