//! Command line and environment. Parsed by hand: a dozen flags do not need a
//! parser crate in a binary that ships to every node.

use std::path::PathBuf;

use lifeboat_node_protocol::args::{
    ENV_CONTENT_STORE, EXPORT, FLAG_CA_BUNDLE, FLAG_CONTENT_STORE, FLAG_DOCKER_CONFIG,
    FLAG_FROM_PEER, FLAG_FROM_TUNNEL, FLAG_IMAGE, FLAG_LISTEN, FLAG_LOOPBACK, FLAG_PLAIN_HTTP,
    FLAG_RELAY_TO, FLAG_SERVE_SECONDS, FLAG_SOCKET, FLAG_TOKEN_FILE, IMPORT, INVENTORY, RELAY,
    SERVE,
};
use lifeboat_node_protocol::{CaBundleArgument, ExportImage, ImageArgumentError, ImportImage};

use crate::error::Error;

/// Where Kubernetes expects the termination message.
pub const DEFAULT_TERMINATION_LOG: &str = "/dev/termination-log";

/// Blobs copied at once unless told otherwise.
pub const DEFAULT_PARALLEL_BLOBS: usize = 3;

/// How long `serve` waits for its peer unless told otherwise.
pub const DEFAULT_SERVE_SECONDS: u64 = 300;

pub const USAGE: &str = "\
Usage:
  node-exporter export --image SRC[=DEST]... [options]
  node-exporter inventory [--image SRC]... [options]
  node-exporter import --image NAME[=FROM]... [--from-peer HOST:PORT --token-file PATH] [options]
  node-exporter import --image NAME@DIGEST... --from-tunnel PORT [options]
  node-exporter serve --image SRC... --listen PORT (--token-file PATH | --loopback) [options]
  node-exporter relay --listen PORT --to HOST:PORT [--serve-seconds N]

Pushes images out of this node's containerd content store into a registry
(export), lists which images and blobs the node holds (inventory), writes
images into this node's containerd (import: NAME is the reference pods use,
FROM the registry image to pull by digest, or, with --from-peer, a peer
node's serve), serves images to one importing peer (serve), or passes TCP
connections on to HOST:PORT for `kubectl lifeboat export/import` (relay).

SRC is an image reference (registry/repo:tag, repo@sha256:...) or a bare digest
(an index, manifest or config digest, as in a pod's imageID). DEST is the full
target reference; without it the image goes to --target-registry, and without
that back to SRC's own registry.

Options:
  --image SRC[=DEST]        image to export or inspect; repeatable
                            [env NODE_EXPORTER_IMAGES, separated by commas or spaces]
  --target-registry HOST[/PREFIX]
                            default destination registry [env NODE_EXPORTER_TARGET_REGISTRY]
  --docker-config PATH      mounted dockerconfigjson with registry credentials
                            [env NODE_EXPORTER_DOCKER_CONFIG]
  --plain-http HOST         talk plain HTTP to this registry host; repeatable
                            [env NODE_EXPORTER_PLAIN_HTTP, comma separated]
  --ca-bundle REGISTRY=PATH trust the PEM certificates in PATH for REGISTRY; repeatable
                            [env NODE_EXPORTER_CA_BUNDLES, comma separated]
  --from-peer HOST:PORT     import: pull from a peer's serve instead of a registry
  --token-file PATH         import/serve: the one-time token the peer session uses
  --from-tunnel PORT        import: pull from `kubectl lifeboat import --to-nodes`, whose
                            port-forward connections arrive on 127.0.0.1:PORT
  --loopback                serve: listen on 127.0.0.1 only (reached by port-forward), no token
  --listen PORT             serve, relay: the TCP port to listen on (all addresses)
  --serve-seconds N         serve: give up waiting for the peer after N s; relay: exit
                            after N s [default 300]
  --to HOST:PORT            relay: where each connection goes
  --no-rebuild              fail instead of rebuilding discarded layers
  --allow-tag-move          let a target tag that points at another digest be moved
  --parallel N              blobs copied at once [default 3; env NODE_EXPORTER_PARALLEL]
  --snapshotter NAME        snapshotter holding unpacked layers (default: from labels, else overlayfs)
  --socket PATH             containerd socket [env CONTAINERD_ADDRESS]
                            (default: first found of containerd, k3s/RKE2, k0s, microk8s paths)
  --host-root PATH          where the host's / is mounted, for socket detection [default /]
  --content-store PATH      containerd's content store directory, mounted read-only: blobs
                            are read from its files, not through containerd's API
                            [env NODE_EXPORTER_CONTENT_STORE]
  --namespace NS            containerd namespace [default k8s.io]
  --termination-log PATH    where to write the JSON result [default /dev/termination-log]
  -h, --help                this text
  -V, --version             version

Exit codes: 0 ok, 1 other failure, 2 usage, 3 image not (completely) on this node,
4 push failed, 5 no containerd on this node.
";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Export,
    Inventory,
    Import,
    Serve,
    Relay,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    pub mode: Mode,
    /// The `--image` arguments, parsed (inventory takes no `=DEST`).
    pub images: Vec<ExportImage>,
    /// Import's `--image NAME[=FROM]` arguments.
    pub import_images: Vec<ImportImage>,
    pub ca_bundles: Vec<CaBundleArgument>,
    pub from_peer: Option<String>,
    pub token_file: Option<PathBuf>,
    /// import: the plugin's tunnel port on 127.0.0.1.
    pub from_tunnel: Option<u16>,
    /// serve: 127.0.0.1 only.
    pub loopback: bool,
    pub listen_port: Option<u16>,
    pub serve_seconds: u64,
    /// relay: where connections go.
    pub relay_to: Option<String>,
    pub target_registry: Option<String>,
    pub docker_config: Option<PathBuf>,
    pub plain_http: Vec<String>,
    pub allow_rebuild: bool,
    pub allow_tag_move: bool,
    pub parallel_blobs: usize,
    pub snapshotter: Option<String>,
    pub socket: Option<PathBuf>,
    pub host_root: PathBuf,
    /// containerd's content store directory, if mounted.
    pub content_store: Option<PathBuf>,
    pub namespace: String,
    pub termination_log: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Run(Box<Options>),
    Help,
    Version,
}

/// Parses arguments (without the program name); `env` looks up environment
/// variables, which flags override (list flags add to them).
pub fn parse(args: &[String], env: impl Fn(&str) -> Option<String>) -> Result<Command, Error> {
    let mut args = args.iter();
    let mode = match args.next().map(String::as_str) {
        Some(EXPORT) => Mode::Export,
        Some(INVENTORY) => Mode::Inventory,
        Some(IMPORT) => Mode::Import,
        Some(SERVE) => Mode::Serve,
        Some(RELAY) => Mode::Relay,
        Some("-h" | "--help" | "help") => return Ok(Command::Help),
        Some("-V" | "--version") => return Ok(Command::Version),
        Some(other) => return Err(usage(format!("unknown command {other:?}"))),
        None => {
            return Err(usage(
                "missing command (export, inventory, import, serve or relay)".into(),
            ));
        }
    };
    let env_nonempty = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let mut options = Options {
        mode,
        images: Vec::new(),
        import_images: Vec::new(),
        ca_bundles: Vec::new(),
        from_peer: None,
        token_file: None,
        from_tunnel: None,
        loopback: false,
        listen_port: None,
        serve_seconds: DEFAULT_SERVE_SECONDS,
        relay_to: None,
        target_registry: env_nonempty("NODE_EXPORTER_TARGET_REGISTRY"),
        docker_config: env_nonempty("NODE_EXPORTER_DOCKER_CONFIG").map(PathBuf::from),
        plain_http: split_list(&env("NODE_EXPORTER_PLAIN_HTTP").unwrap_or_default()),
        allow_rebuild: true,
        allow_tag_move: false,
        parallel_blobs: DEFAULT_PARALLEL_BLOBS,
        snapshotter: None,
        socket: env_nonempty("CONTAINERD_ADDRESS").map(PathBuf::from),
        host_root: env_nonempty("NODE_EXPORTER_HOST_ROOT")
            .map_or_else(|| PathBuf::from("/"), PathBuf::from),
        content_store: env_nonempty(ENV_CONTENT_STORE).map(PathBuf::from),
        namespace: crate::containerd::K8S_NAMESPACE.to_owned(),
        termination_log: env_nonempty("NODE_EXPORTER_TERMINATION_LOG")
            .map_or_else(|| PathBuf::from(DEFAULT_TERMINATION_LOG), PathBuf::from),
    };
    if let Some(parallel) = env_nonempty("NODE_EXPORTER_PARALLEL") {
        options.parallel_blobs = parse_parallel(&parallel)?;
    }
    let mut image_args: Vec<String> = split_list(&env("NODE_EXPORTER_IMAGES").unwrap_or_default());
    let mut ca_bundle_args: Vec<String> =
        split_list(&env("NODE_EXPORTER_CA_BUNDLES").unwrap_or_default());
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_owned())),
            _ => (arg.as_str(), None),
        };
        let mut value = || -> Result<String, Error> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => args
                    .next()
                    .cloned()
                    .ok_or_else(|| usage(format!("{flag} needs a value"))),
            }
        };
        match flag {
            FLAG_IMAGE => image_args.push(value()?),
            "--target-registry" => options.target_registry = Some(value()?),
            FLAG_DOCKER_CONFIG => options.docker_config = Some(value()?.into()),
            FLAG_PLAIN_HTTP => options.plain_http.extend(split_list(&value()?)),
            FLAG_CA_BUNDLE => ca_bundle_args.push(value()?),
            FLAG_FROM_PEER => options.from_peer = Some(value()?),
            FLAG_TOKEN_FILE => options.token_file = Some(value()?.into()),
            FLAG_FROM_TUNNEL => options.from_tunnel = Some(parse_number(flag, &value()?)?),
            FLAG_LOOPBACK => options.loopback = true,
            FLAG_LISTEN => options.listen_port = Some(parse_number(flag, &value()?)?),
            FLAG_SERVE_SECONDS => options.serve_seconds = parse_number(flag, &value()?)?,
            FLAG_RELAY_TO => options.relay_to = Some(value()?),
            "--no-rebuild" => options.allow_rebuild = false,
            "--allow-tag-move" => options.allow_tag_move = true,
            "--parallel" => options.parallel_blobs = parse_parallel(&value()?)?,
            "--snapshotter" => options.snapshotter = Some(value()?),
            FLAG_SOCKET => options.socket = Some(value()?.into()),
            "--host-root" => options.host_root = value()?.into(),
            FLAG_CONTENT_STORE => options.content_store = Some(value()?.into()),
            "--namespace" => options.namespace = value()?,
            "--termination-log" => options.termination_log = value()?.into(),
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            other => return Err(usage(format!("unknown option {other:?}"))),
        }
    }
    with_images(options, &image_args, &ca_bundle_args)
}

/// Parses the collected `--image` and `--ca-bundle` values and checks what
/// each mode needs of them.
fn with_images(
    mut options: Options,
    image_args: &[String],
    ca_bundle_args: &[String],
) -> Result<Command, Error> {
    options.ca_bundles = ca_bundle_args
        .iter()
        .map(|a| {
            CaBundleArgument::parse(a)
                .ok_or_else(|| usage(format!("{FLAG_CA_BUNDLE} wants REGISTRY=PATH, not {a:?}")))
        })
        .collect::<Result<_, _>>()?;
    // Bad references are usage errors, caught before touching containerd.
    if options.mode == Mode::Import {
        options.import_images = image_args
            .iter()
            .map(|a| ImportImage::parse(a).map_err(argument_error))
            .collect::<Result<_, _>>()?;
        check_import(&options)?;
        return Ok(Command::Run(Box::new(options)));
    }
    options.images = image_args
        .iter()
        .map(|a| parse_image_arg(a))
        .collect::<Result<_, _>>()?;
    if options.mode == Mode::Serve {
        check_serve(&options)?;
    }
    if options.mode == Mode::Relay && (options.listen_port.is_none() || options.relay_to.is_none())
    {
        return Err(usage(format!(
            "relay needs {FLAG_LISTEN} and {FLAG_RELAY_TO}"
        )));
    }
    if options.mode == Mode::Export && options.images.is_empty() {
        return Err(usage("export needs at least one --image".into()));
    }
    if matches!(options.mode, Mode::Inventory | Mode::Serve)
        && options.images.iter().any(|i| i.destination.is_some())
    {
        return Err(usage("inventory and serve take no =DEST".into()));
    }
    Ok(Command::Run(Box::new(options)))
}

fn parse_parallel(value: &str) -> Result<usize, Error> {
    match value.trim().parse::<usize>() {
        Ok(n) if (1..=64).contains(&n) => Ok(n),
        _ => Err(usage(format!("--parallel wants 1 to 64, not {value:?}"))),
    }
}

fn parse_number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, Error> {
    value
        .trim()
        .parse()
        .map_err(|_| usage(format!("{flag} wants a number, not {value:?}")))
}

/// An import pulls each image from its `FROM`, or every image from a peer
/// (with the peer's token): never a mix, never neither.
fn check_import(options: &Options) -> Result<(), Error> {
    if options.import_images.is_empty() {
        return Err(usage("import needs at least one --image".into()));
    }
    let with_from = options
        .import_images
        .iter()
        .filter(|i| i.from.is_some())
        .count();
    if options.from_tunnel.is_some() {
        return if options.from_peer.is_some() || options.token_file.is_some() || with_from > 0 {
            Err(usage(format!(
                "{FLAG_FROM_TUNNEL} pulls every image through the tunnel: no =FROM, {FLAG_FROM_PEER} or {FLAG_TOKEN_FILE}"
            )))
        } else {
            Ok(())
        };
    }
    match (&options.from_peer, &options.token_file) {
        (Some(_), Some(_)) if with_from == 0 => Ok(()),
        (Some(_), Some(_)) => Err(usage(format!(
            "{FLAG_FROM_PEER} pulls every image from the peer: give no =FROM"
        ))),
        (Some(_), None) | (None, Some(_)) => Err(usage(format!(
            "{FLAG_FROM_PEER} and {FLAG_TOKEN_FILE} go together"
        ))),
        (None, None) if with_from == options.import_images.len() => Ok(()),
        (None, None) => Err(usage(format!(
            "each --image needs =FROM (a registry image), or give {FLAG_FROM_PEER}"
        ))),
    }
}

fn check_serve(options: &Options) -> Result<(), Error> {
    if options.images.is_empty() {
        return Err(usage("serve needs at least one --image".into()));
    }
    // Off loopback, other pods reach the port: only the token keeps them out.
    if options.listen_port.is_none() || (options.token_file.is_none() && !options.loopback) {
        return Err(usage(format!(
            "serve needs {FLAG_LISTEN} and {FLAG_TOKEN_FILE} (or {FLAG_LOOPBACK})"
        )));
    }
    Ok(())
}

/// One `--image SRC[=DEST]`, with the protocol's parser (the one the
/// operator's arguments are built to).
fn parse_image_arg(arg: &str) -> Result<ExportImage, Error> {
    ExportImage::parse(arg).map_err(argument_error)
}

fn argument_error(error: ImageArgumentError) -> Error {
    match error {
        ImageArgumentError::Empty(_) => usage(error.to_string()),
        ImageArgumentError::Reference { input, error } => Error::InvalidReference {
            reference: input,
            reason: error.to_string(),
        },
        ImageArgumentError::DestinationDigest(input) => Error::InvalidReference {
            reference: input,
            reason: "a target cannot name a digest".to_owned(),
        },
        ImageArgumentError::ImportDigestMissing(_)
        | ImageArgumentError::ImportDigestConflict(_) => usage(error.to_string()),
    }
}

fn split_list(list: &str) -> Vec<String> {
    list.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn usage(message: String) -> Error {
    Error::Usage(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn run(command: Command) -> Options {
        match command {
            Command::Run(options) => *options,
            other => panic!("expected options, got {other:?}"),
        }
    }

    fn image(text: &str) -> ExportImage {
        ExportImage::parse(text).unwrap()
    }

    #[test]
    fn parses_export_flags_in_both_spellings() {
        let options = run(parse(
            &args(&[
                "export",
                "--image",
                "nginx:1=backup:5000/nginx",
                &format!("--image=sha256:{}", "a".repeat(64)),
                "--target-registry=backup:5000/m",
                "--plain-http",
                "backup:5000,other:5000",
                "--no-rebuild",
                "--socket",
                "/s.sock",
                "--termination-log=/tmp/t",
            ]),
            no_env,
        )
        .unwrap());
        assert_eq!(options.mode, Mode::Export);
        assert_eq!(
            options.images,
            vec![
                image("nginx:1=backup:5000/nginx"),
                image(&format!("sha256:{}", "a".repeat(64))),
            ]
        );
        assert_eq!(options.target_registry.as_deref(), Some("backup:5000/m"));
        assert_eq!(options.plain_http, vec!["backup:5000", "other:5000"]);
        assert!(!options.allow_rebuild);
        assert_eq!(options.socket, Some(PathBuf::from("/s.sock")));
        assert_eq!(options.termination_log, PathBuf::from("/tmp/t"));
        assert_eq!(options.namespace, "k8s.io");
    }

    #[test]
    fn environment_supplies_defaults_and_images() {
        let env = |name: &str| match name {
            "NODE_EXPORTER_IMAGES" => Some("a:1, b:2\nc:3".to_owned()),
            "CONTAINERD_ADDRESS" => Some("/env.sock".to_owned()),
            _ => None,
        };
        let options = run(parse(&args(&["export", "--socket", "/flag.sock"]), env).unwrap());
        assert_eq!(options.images.len(), 3);
        assert_eq!(options.socket, Some(PathBuf::from("/flag.sock")));
        assert_eq!(
            options.termination_log,
            PathBuf::from("/dev/termination-log")
        );
    }

    #[test]
    fn usage_errors() {
        for bad in [
            vec![],
            vec!["frobnicate"],
            vec!["export"],
            vec!["export", "--image"],
            vec!["export", "--image", "a="],
            vec!["export", "--image", "a", "--bogus"],
            vec!["export", "--image", "a", "--parallel", "0"],
            vec!["inventory", "--image", "a=b:1"],
        ] {
            let result = parse(&args(&bad), no_env);
            assert!(
                matches!(result, Err(Error::Usage(_))),
                "{bad:?}: {result:?}"
            );
        }
        for bad in [
            vec!["export", "--image", "ghcr.io/Bad/Ref"],
            vec!["export", "--image", "sha256:123"],
            vec!["export", "--image", "a=x//y"],
        ] {
            let result = parse(&args(&bad), no_env);
            assert!(
                matches!(result, Err(Error::InvalidReference { .. })),
                "{bad:?}: {result:?}"
            );
        }
        assert_eq!(parse(&args(&["--help"]), no_env).unwrap(), Command::Help);
        assert_eq!(
            parse(&args(&["inventory", "-V"]), no_env).unwrap(),
            Command::Version
        );
        assert!(matches!(
            parse(&args(&["inventory"]), no_env),
            Ok(Command::Run(_))
        ));
    }
}

/// The operator builds node-exporter's command line with the protocol
/// crate's builders; this parser must read back exactly what they wrote.
#[cfg(test)]
mod protocol_round_trip {
    use lifeboat_node_protocol::{
        Destination, ExportArguments, ImageReference, ImageSource, InventoryArguments,
    };

    use super::*;

    fn reference(text: &str) -> ImageReference {
        ImageReference::parse(text).unwrap()
    }

    fn options(args: Vec<String>) -> Options {
        match parse(&args, |_| None) {
            Ok(Command::Run(options)) => *options,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn export_arguments_built_by_the_operator_parse_back() {
        let digest = format!("sha256:{}", "c".repeat(64));
        let images = vec![
            // In place: no destination.
            ExportImage::to(
                reference(&format!("127.0.0.1:5001/demo/app:v1@{digest}")),
                &reference("127.0.0.1:5001/demo/app:v1"),
            ),
            // Elsewhere, with an IPv6 registry and a tag.
            ExportImage::to(
                reference(&format!("nginx@{digest}")),
                &reference("[::1]:5002/mirror/nginx:1.27"),
            ),
            // A bare digest with an explicit untagged destination.
            ExportImage {
                source: ImageSource::parse(&digest).unwrap(),
                destination: Some(Destination::parse("backup.example/x").unwrap()),
            },
        ];
        let built = ExportArguments {
            images: images.clone(),
            plain_http: vec!["127.0.0.1:5001".into(), "[::1]:5002".into()],
            socket: Some("/run/containerd/containerd.sock".into()),
            docker_config: Some("/var/run/lifeboat/registry/config.json".into()),
        };
        let options = options(built.to_args());
        assert_eq!(options.mode, Mode::Export);
        assert_eq!(options.images, images);
        assert_eq!(options.images[0].destination, None);
        assert_eq!(options.plain_http, built.plain_http);
        assert_eq!(
            options.socket,
            Some(PathBuf::from("/run/containerd/containerd.sock"))
        );
        assert_eq!(
            options.docker_config,
            Some(PathBuf::from("/var/run/lifeboat/registry/config.json"))
        );
    }

    #[test]
    fn import_and_serve_arguments_built_by_the_operator_parse_back() {
        use lifeboat_node_protocol::{
            CaBundleArgument, ImportArguments, ImportImage, ServeArguments,
        };
        let digest = format!("sha256:{}", "e".repeat(64));
        let images = vec![
            ImportImage::parse(&format!(
                "127.0.0.1:5001/demo/web:1.0=[::1]:5002/b/web@{digest}"
            ))
            .unwrap(),
        ];
        let bundle = CaBundleArgument {
            registry: "[::1]:5002".into(),
            path: "/var/run/lifeboat/ca/ca.crt".into(),
        };
        let built = ImportArguments {
            images: images.clone(),
            ca_bundles: vec![bundle.clone()],
            docker_config: Some("/c.json".into()),
            ..ImportArguments::default()
        };
        let parsed = options(built.to_args());
        assert_eq!(parsed.mode, Mode::Import);
        assert_eq!(parsed.import_images, images);
        assert_eq!(parsed.ca_bundles, vec![bundle]);
        let peer = ImportArguments {
            images: vec![ImportImage::parse(&format!("r.io/a:1@{digest}")).unwrap()],
            from_peer: Some("10.0.0.7:7070".into()),
            token_file: Some("/t/token".into()),
            ..ImportArguments::default()
        };
        let parsed = options(peer.to_args());
        assert_eq!(parsed.from_peer.as_deref(), Some("10.0.0.7:7070"));
        assert_eq!(parsed.token_file, Some(PathBuf::from("/t/token")));
        let serve = ServeArguments {
            images: vec![ImageSource::parse(&format!("r.io/a@{digest}")).unwrap()],
            listen_port: 7070,
            token_file: Some("/t/token".into()),
            loopback: false,
            serve_seconds: Some(30),
            socket: None,
        };
        let parsed = options(serve.to_args());
        assert_eq!(
            (parsed.mode, parsed.listen_port, parsed.serve_seconds),
            (Mode::Serve, Some(7070), 30)
        );
        assert!(!parsed.loopback);
        let loopback = options(
            ServeArguments {
                token_file: None,
                loopback: true,
                ..serve
            }
            .to_args(),
        );
        assert!(loopback.loopback && loopback.token_file.is_none());
        let tunnel = options(
            ImportArguments {
                images: vec![ImportImage::parse(&format!("r.io/a:1@{digest}")).unwrap()],
                from_tunnel: Some(7071),
                ..ImportArguments::default()
            }
            .to_args(),
        );
        assert_eq!(tunnel.from_tunnel, Some(7071));
        let relay = lifeboat_node_protocol::RelayArguments {
            listen_port: 7071,
            to: "registry.air.svc:5000".into(),
            serve_seconds: Some(60),
        };
        let parsed = options(relay.to_args());
        assert_eq!(
            (
                parsed.mode,
                parsed.listen_port,
                parsed.relay_to.as_deref(),
                parsed.serve_seconds
            ),
            (Mode::Relay, Some(7071), Some("registry.air.svc:5000"), 60)
        );
        assert!(matches!(
            parse(
                &["relay".to_owned(), "--listen".to_owned(), "1".to_owned()],
                |_| None
            ),
            Err(Error::Usage(_))
        ));
    }

    #[test]
    fn imports_pull_from_registries_or_a_peer_never_both() {
        let digest = format!("sha256:{}", "e".repeat(64));
        let from = format!("r.io/a:1=b.io/a@{digest}");
        let pinned = format!("r.io/a:1@{digest}");
        for bad in [
            vec!["import"],
            vec!["import", "--image", "r.io/a:1=b.io/a:1"],
            vec!["import", "--image", &pinned],
            vec![
                "import",
                "--image",
                &from,
                "--from-peer",
                "h:1",
                "--token-file",
                "/t",
            ],
            vec!["import", "--image", &pinned, "--from-peer", "h:1"],
            vec!["import", "--image", &from, "--ca-bundle", "no-path"],
            vec!["serve", "--image", &pinned],
            vec!["serve", "--image", &pinned, "--listen", "1"],
            vec!["import", "--image", &from, "--from-tunnel", "1"],
            vec![
                "import",
                "--image",
                &pinned,
                "--from-tunnel",
                "1",
                "--from-peer",
                "h:1",
            ],
            vec![
                "serve",
                "--image",
                &pinned,
                "--listen",
                "x",
                "--token-file",
                "/t",
            ],
        ] {
            let args: Vec<String> = bad.iter().map(|s| s.to_string()).collect();
            let result = parse(&args, |_| None);
            assert!(
                matches!(result, Err(Error::Usage(_))),
                "{bad:?}: {result:?}"
            );
        }
    }

    #[test]
    fn inventory_arguments_built_by_the_operator_parse_back() {
        let digest = format!("sha256:{}", "d".repeat(64));
        let sources = vec![
            ImageSource::from(reference(&format!("127.0.0.1:5001/a@{digest}"))),
            ImageSource::parse(&digest).unwrap(),
        ];
        let built = InventoryArguments {
            images: sources.clone(),
            socket: Some("/s.sock".into()),
        };
        let options = options(built.to_args());
        assert_eq!(options.mode, Mode::Inventory);
        let parsed: Vec<ImageSource> = options.images.into_iter().map(|i| i.source).collect();
        assert_eq!(parsed, sources);
    }
}
