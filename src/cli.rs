//! The command line: parse arguments, load config, hand over to the server.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use crate::config::{Access, CertSource, Config, ConfigError};
use crate::server::{Gateway, Options};

/// The version `--version` prints and `tailpass_build_info` carries: the
/// crate's version and the commit it was built from (build.rs).
pub(crate) const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("TAILPASS_COMMIT"),
    ")"
);

/// The commit the binary was built from (`unknown` without git).
pub(crate) const COMMIT: &str = env!("TAILPASS_COMMIT");

const EXIT_STATUS_HELP: &str = "\
Exit status:
  0   success (run: stopped by SIGTERM or Ctrl-C after draining)
  1   start-up failed (joining the tailnet, binding a port, a certificate)
  2   bad command line
  64  invalid configuration, or an invalid TAILPASS_LOG filter

Environment:
  TAILPASS_LOG  log filter (tracing EnvFilter syntax), default `info`
  NO_COLOR      no colour in text logs (colour is only used on a terminal)";

/// Passkey single sign-on for private services on a Tailscale network.
#[derive(Parser, Debug)]
#[command(name = "tailpass", version = VERSION, about, after_help = EXIT_STATUS_HELP)]
pub(crate) struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub(crate) log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Log output format.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Join the tailnet and serve.
    Run {
        /// Config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate the config without joining; print what it will serve.
    Check {
        /// Config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print a shell completion script (e.g. `tailpass completions bash >
    /// /etc/bash_completion.d/tailpass`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `tailpass man | man -l -`.
    Man,
    /// The signed identity assertion's keys (docs/assertion.md).
    Assertion {
        /// What to do with them.
        #[command(subcommand)]
        action: AssertionCommand,
    },
}

/// `tailpass assertion …`.
#[derive(Subcommand, Debug)]
pub(crate) enum AssertionCommand {
    /// Add a new signing key to the key file; the previous key stays
    /// published. A running tailpass signs with the new key after a reload
    /// (SIGHUP, `systemctl reload tailpass`).
    Rotate {
        /// Config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the JWKS (the public keys) of the key file.
    Jwks {
        /// Config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// Exit code for an invalid config (EX_USAGE would be 64; EX_CONFIG is 78,
/// but 64 is what most tooling expects from "bad invocation or config").
pub(crate) const EXIT_CONFIG: u8 = 64;

/// The log filter from `TAILPASS_LOG` (default `info`, also when set but
/// empty: an empty filter would silence everything, config errors
/// included); an invalid filter is an error naming the variable, never
/// silently replaced.
fn log_filter(value: Option<String>) -> Result<tracing_subscriber::EnvFilter, String> {
    match value.filter(|v| !v.trim().is_empty()) {
        None => Ok(tracing_subscriber::EnvFilter::new("info")),
        Some(v) => tracing_subscriber::EnvFilter::builder()
            .parse(&v)
            .map_err(|e| format!("TAILPASS_LOG: invalid log filter {v:?}: {e}")),
    }
}

/// Colour only for text logs on a terminal, and never under `NO_COLOR`
/// (journald and log files get plain text).
fn use_colour(format: LogFormat, terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    format == LogFormat::Text && terminal && no_color.is_none_or(|v| v.is_empty())
}

fn init_logs(format: LogFormat) -> Result<(), String> {
    use std::io::IsTerminal;
    let filter = log_filter(std::env::var("TAILPASS_LOG").ok())?;
    let ansi = use_colour(
        format,
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR"),
    );
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
    Ok(())
}

/// Says why a config is invalid: the readable list on stderr, or with
/// `--log-format json` one JSON log event per problem.
fn config_invalid(e: &ConfigError, format: LogFormat) -> ExitCode {
    match format {
        LogFormat::Text => eprint!("{e}"),
        LogFormat::Json => {
            let file = e.file.as_ref().map(|f| f.display().to_string());
            for p in &e.problems {
                tracing::error!(file = file.as_deref().unwrap_or("-"), problem = %p, "invalid configuration");
            }
        }
    }
    ExitCode::from(EXIT_CONFIG)
}

/// Runs the CLI; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = init_logs(cli.log_format) {
        eprintln!("tailpass: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let format = cli.log_format;
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(c) => to_stdout(describe(&c).as_bytes()),
            Err(e) => config_invalid(&e, format),
        },
        Command::Run { config } => match Config::load(&config) {
            Ok(c) => start(c, config),
            Err(e) => config_invalid(&e, format),
        },
        Command::Assertion { action } => assertion(action, format),
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "tailpass", &mut out);
            to_stdout(&out)
        }
        Command::Man => {
            let mut out = Vec::new();
            match clap_mangen::Man::new(Cli::command()).render(&mut out) {
                Ok(()) => to_stdout(&out),
                Err(e) => {
                    eprintln!("tailpass: rendering the manual page: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `tailpass assertion rotate|jwks`: the key file named by the config.
fn assertion(action: AssertionCommand, format: LogFormat) -> ExitCode {
    let (AssertionCommand::Rotate { config } | AssertionCommand::Jwks { config }) = &action;
    let c = match Config::load(config) {
        Ok(c) => c,
        Err(e) => return config_invalid(&e, format),
    };
    let Some(a) = &c.assertion else {
        eprintln!(
            "tailpass: {}: no [assertion] section and no route with assertion = true",
            config.display()
        );
        return ExitCode::from(EXIT_CONFIG);
    };
    let done = match action {
        AssertionCommand::Rotate { .. } => rotate(a),
        AssertionCommand::Jwks { .. } => crate::assertion::Signer::open(&a.key_file, now())
            .map(|s| format!("{}\n", s.jwks()))
            .map_err(|e| e.to_string()),
    };
    match done {
        Ok(out) => to_stdout(out.as_bytes()),
        Err(e) => {
            eprintln!("tailpass: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Rotates the key file, rewrites the JWKS file and says what to do next.
fn rotate(a: &crate::config::Assertion) -> Result<String, String> {
    use crate::assertion::{KEEP_RETIRED, Signer, rotate};
    let r = rotate(&a.key_file, now(), KEEP_RETIRED).map_err(|e| e.to_string())?;
    if let Some(f) = &a.jwks_file {
        let s = Signer::open(&a.key_file, now()).map_err(|e| e.to_string())?;
        s.write_jwks(f).map_err(|e| e.to_string())?;
    }
    Ok(format!(
        "new signing key {} in {}\npublished keys: {}{}\nnext: reload tailpass (SIGHUP, e.g. systemctl reload tailpass) to sign with it\n",
        r.kid,
        a.key_file.display(),
        r.published.join(", "),
        match r.dropped {
            0 => String::new(),
            n => format!(" ({n} retired more than a day ago dropped)"),
        }
    ))
}

fn now() -> i64 {
    crate::session::now()
}

/// Writes a command's output; a closed pipe (`tailpass check | head`) is
/// not an error, any other write failure is reported, never a panic.
fn to_stdout(out: &[u8]) -> ExitCode {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(out).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tailpass: writing to standard output: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `run` with a valid config: raise the descriptor limit, start the runtime
/// and serve until a signal.
fn start(c: Config, path: PathBuf) -> ExitCode {
    // Like Go programs: the soft descriptor limit goes up to the hard one,
    // so thousands of connections fit.
    match crate::listen::raise_limit() {
        Ok(l) if l.soft < 4096 => {
            tracing::warn!(
                soft = l.soft,
                hard = l.hard,
                "the file descriptor limit is low; raise LimitNOFILE (systemd) or ulimit -n"
            )
        }
        Ok(l) => tracing::info!(
            soft = l.soft,
            hard = l.hard,
            before = l.before,
            "file descriptor limit"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the file descriptor limit")
        }
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tailpass: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run(c, path))
}

async fn run(config: Config, path: PathBuf) -> ExitCode {
    use tokio::signal::unix::{SignalKind, signal};
    // Signals are set up before the (slow) start so none is missed.
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return ExitCode::FAILURE;
    };
    for w in placeholder_warnings(&config)
        .into_iter()
        .chain(assertion_warnings(&config))
    {
        tracing::warn!(problem = %w, "configuration");
    }
    let mut gw = match Gateway::start(config, Options::default()).await {
        Ok(g) => g,
        Err(e) => {
            tracing::error!(error = %e, "start-up failed");
            return ExitCode::FAILURE;
        }
    };
    for n in &gw.nodes {
        tracing::info!(node = %n.hostname, url = %format!("{}/", n.origin), "serving");
    }
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = hup.recv() => reload(&mut gw, &path),
        }
    }
    tracing::info!("shutting down: draining requests in flight");
    gw.shutdown().await;
    ExitCode::SUCCESS
}

/// SIGHUP: read the file again; apply it if valid, else keep serving the
/// old one and say why.
fn reload(gw: &mut Gateway, path: &std::path::Path) {
    match Config::load(path) {
        Ok(c) => match gw.reload(c) {
            Ok(notes) => {
                for n in notes {
                    tracing::warn!(note = %n, "reload");
                }
                tracing::info!(config = %path.display(), "configuration reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "reload failed; keeping the previous configuration")
            }
        },
        Err(e) => {
            gw.metrics().reload("rejected");
            tracing::error!(problems = %e.to_string().trim_end(), "invalid configuration; keeping the previous one");
        }
    }
}

/// What `check` prints: nodes with their URLs, routes with their access,
/// the listeners it binds. Never includes secret values.
pub(crate) fn describe(c: &Config) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "config OK");
    describe_nodes(&mut o, c);
    describe_routes(&mut o, c);
    describe_overrides(&mut o, c);
    describe_portal(&mut o, c);
    describe_warnings(&mut o, c);
    describe_listeners(&mut o, c);
    o
}

/// `1 public route`, `2 public routes`.
fn count(n: usize, what: &str) -> String {
    match n {
        1 => format!("1 {what}"),
        n => format!("{n} {what}s"),
    }
}

/// The loopback, admin and public listeners it will bind.
fn describe_listeners(o: &mut String, c: &Config) {
    use std::fmt::Write;
    if c.loopback.is_none() && c.admin.is_none() && c.public.is_none() {
        return;
    }
    let _ = writeln!(o);
    if let Some(l) = c.loopback {
        let _ = writeln!(
            o,
            "loopback listener: http://{l}/ (public routes and routes with loopback = true)"
        );
    }
    if let Some(a) = c.admin {
        let _ = writeln!(
            o,
            "admin listener:    http://{a}/healthz and http://{a}/metrics"
        );
        if c.assertion.is_some() {
            let _ = writeln!(
                o,
                "                   http://{a}/.well-known/jwks.json (identity assertion keys)"
            );
        }
    }
    if let Some(p) = &c.public {
        let _ = writeln!(
            o,
            "public listener:   {} (HTTPS for {}; public routes only)",
            p.listen,
            p.domains.join(", ")
        );
    }
}

/// Problems that do not stop tailpass but will stop a sign-in: the
/// example's all-zero `client_id` left in place. Said by `check` and
/// logged by `run`.
pub(crate) fn placeholder_warnings(c: &Config) -> Vec<String> {
    c.providers
        .iter()
        .enumerate()
        .filter(|(_, p)| {
            p.client_id.contains('0') && p.client_id.chars().all(|ch| ch == '0' || ch == '-')
        })
        .map(|(i, p)| {
            format!(
                "provider[{i}].client_id: {:?} is the example's placeholder; sign-in will fail until it is the client id the provider shows (Pocket ID: Administration → OIDC Clients)",
                p.client_id
            )
        })
        .collect()
}

/// Assertion settings that work but help nobody: keys no upstream can
/// fetch, or keys no route uses. Said by `check` and logged by `run`.
pub(crate) fn assertion_warnings(c: &Config) -> Vec<String> {
    let Some(a) = &c.assertion else {
        return Vec::new();
    };
    let mut w = Vec::new();
    if c.admin.is_none() && a.jwks_file.is_none() {
        w.push("assertion: no [admin] listener and no assertion.jwks_file: upstreams have nowhere to fetch the public keys from".to_string());
    }
    if !c.routes.iter().any(|r| r.assertion) {
        w.push("assertion: no route has assertion = true; nothing is signed".to_string());
    }
    w
}

/// Each node: URL, state, auth key (never its value), certificate, Funnel.
fn describe_nodes(o: &mut String, c: &Config) {
    use std::fmt::Write;
    for n in &c.nodes {
        let fqdn = c.node_fqdn(n);
        let _ = writeln!(o, "\nnode {}", n.hostname);
        let _ = writeln!(o, "  url:        {}/", c.node_origin(n));
        let _ = writeln!(o, "  state dir:  {}", n.state_dir.display());
        let _ = writeln!(
            o,
            "  auth key:   {}",
            if n.auth_key.is_some() {
                "set (hidden)"
            } else {
                "none (node must already be registered)"
            }
        );
        let cert = match &n.cert {
            CertSource::Tailnet => "the node's own ts.net certificate".to_string(),
            CertSource::LocalCa => {
                "local CA (clients must trust <state dir>/local-ca/ca.pem)".to_string()
            }
            CertSource::Files { cert_file, .. } => format!("PEM file {}", cert_file.display()),
        };
        let _ = writeln!(o, "  cert:       {cert}");
        if n.http_redirect {
            let _ = writeln!(o, "  http:       http://{fqdn}/ redirects to https");
        }
        let public = c
            .routes
            .iter()
            .filter(|r| {
                r.node.as_deref().is_none_or(|x| x == n.hostname) && r.access == Access::Public
            })
            .count();
        if n.funnel {
            let _ = writeln!(
                o,
                "  funnel:     {}/ on the internet ({})",
                crate::config::NodeOrigin::new(&fqdn, 443),
                count(public, "public route")
            );
            if public == 0 {
                let _ = writeln!(
                    o,
                    "  warning:    funnel is on but no route is public: Funnel will answer 404 only"
                );
            }
        }
    }
}

/// Each route: path, host, upstream and who may use it.
fn describe_routes(o: &mut String, c: &Config) {
    use std::fmt::Write;
    let _ = writeln!(o, "\nroutes (node, path, host -> upstream)");
    for r in &c.routes {
        let mut access = match &r.access {
            Access::Public => "public (tailnet, Funnel, loopback)".to_string(),
            tailnet => match tailnet.requirement() {
                Some(need) => format!("tailnet peers with {need}"),
                None => "any tailnet peer".to_string(),
            },
        };
        if let Some(l) = &r.login {
            let join = match r.require {
                crate::config::Combine::All => "and",
                crate::config::Combine::Any => "or",
            };
            let who = if l.roles.is_empty() {
                "any role".to_string()
            } else {
                format!("role {}", l.roles.join(" or "))
            };
            access.push_str(&format!(", {join} signed in with {who}"));
            if let Some(a) = l.max_auth_age {
                access.push_str(&format!(
                    " (sign-in at most {} old)",
                    humantime::format_duration(a)
                ));
            }
        }
        if !r.methods.is_empty() {
            let m: Vec<&str> = r.methods.iter().map(|m| m.as_str()).collect();
            access.push_str(&format!(", methods {}", m.join(",")));
        }
        if r.assertion {
            access.push_str(", signed assertion");
        }
        let _ = writeln!(
            o,
            "  {:<10} {:<12} {} -> {}{}  [{}{}]",
            r.node.as_deref().unwrap_or("*"),
            r.path,
            r.host.as_deref().unwrap_or("*"),
            r.target(),
            if r.strip_prefix {
                " (prefix stripped)"
            } else {
                ""
            },
            access,
            if r.loopback { ", also loopback" } else { "" }
        );
    }
}

/// A node's own route on the same path (and host) as an every-node route
/// wins on that node, whatever the file order; `check` says so.
fn describe_overrides(o: &mut String, c: &Config) {
    use std::fmt::Write;
    for own in c.routes.iter().filter(|r| r.node.is_some()) {
        let every = c
            .routes
            .iter()
            .find(|r| r.node.is_none() && r.path == own.path && r.host == own.host);
        if let (Some(every), Some(n)) = (every, &own.node) {
            let _ = writeln!(
                o,
                "  on node {n}, route[{}] {} is served instead of every node's route[{}]",
                own.index, own.path, every.index
            );
        }
    }
}

/// A Redis session store as `check` shows it: where, and shared with whom.
fn describe_redis(r: &crate::config::RedisStore) -> String {
    let mut d = format!(
        "Redis at {}, keys {}:*, outage grace {}",
        r.url,
        r.key_prefix,
        humantime::format_duration(r.outage_grace)
    );
    if let Some(s) = &r.share {
        let who: Vec<&str> = s.tags.iter().chain(&s.users).map(String::as_str).collect();
        d.push_str(&format!(
            "; shared on node {} with {}",
            s.node,
            who.join(", ")
        ));
    }
    d
}

/// The portal: providers, the URLs to register, rules, step-up.
fn describe_portal(o: &mut String, c: &Config) {
    use std::fmt::Write;
    if let Some(pt) = &c.portal {
        let store = match &pt.store {
            crate::config::SessionStore::File => pt.state_dir.display().to_string(),
            crate::config::SessionStore::Redis(r) => describe_redis(r),
        };
        let _ = writeln!(
            o,
            "\nlogin portal under {} (sessions in {store})",
            pt.prefix
        );
        for p in &c.providers {
            let _ = writeln!(
                o,
                "  provider {}: issuer {}, client id {}, scopes {}",
                p.name,
                p.issuer,
                p.client_id,
                p.scopes.join(" ")
            );
        }
        let _ = writeln!(o, "  register these at the provider:");
        for (prov, cb, out) in crate::portal::registration_uris(c) {
            let _ = writeln!(o, "    {prov}: redirect URI             {cb}");
            let _ = writeln!(o, "    {prov}: post-logout redirect URI {out}");
        }
        for r in &c.rules {
            let _ = writeln!(o, "  rule[{}] grants {}", r.index, r.roles.join(", "));
        }
        let step_up: Vec<_> = c
            .routes
            .iter()
            .filter_map(|r| Some((r, r.login.as_ref()?.max_auth_age?)))
            .collect();
        if !step_up.is_empty() {
            let _ = writeln!(o, "  step-up (proof of a fresh sign-in):");
        }
        for (r, age) in &step_up {
            for p in &c.providers {
                let how = if p.trust_prompt_login {
                    "auth_time in its ID tokens, or a sign-in answering prompt=login if its discovery lists it (trust_prompt_login)"
                } else {
                    "auth_time in its ID tokens (Pocket ID up to 2.9 sends none: set trust_prompt_login = true for Pocket ID 2.6+)"
                };
                let _ = writeln!(
                    o,
                    "    {} needs a sign-in at most {} old; {} must prove it with {how}",
                    r.path,
                    humantime::format_duration(*age),
                    p.name
                );
            }
        }
    }
}

/// Routes nobody can reach, and rules a default provider setup never matches.
fn describe_warnings(o: &mut String, c: &Config) {
    use std::fmt::Write;
    let mut warnings = crate::policy::unsatisfiable(&c.routes, &c.rules);
    warnings.extend(placeholder_warnings(c));
    warnings.extend(assertion_warnings(c));
    for r in &c.rules {
        if !r.emails.is_empty() || !r.domains.is_empty() {
            warnings.push(format!(
                "rule[{}] matches emails or domains: an email the provider marks email_verified = false never matches. Pocket ID marks every email unverified unless its admin turns on \"Emails verified\" (Application Configuration); a groups rule works without it",
                r.index
            ));
        }
    }
    if !warnings.is_empty() {
        let _ = writeln!(o);
        for w in warnings {
            let _ = writeln!(o, "warning: {w}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assertion_keys_nobody_can_fetch_or_use_are_warned_about() {
        let node = "[[node]]\nhostname = \"gw\"\nstate_dir = \"/var/lib/tailpass/gw\"\n";
        let route = |a: bool| {
            format!(
                "[[route]]\npath = \"/a\"\nupstream = \"http://127.0.0.1:1\"\nassertion = {a}\n"
            )
        };
        let keys = "[assertion]\nkey_file = \"/var/lib/tailpass/keys.json\"\n";
        let parse = |t: String| Config::parse(&t, &|_| None).unwrap();
        let w = assertion_warnings(&parse(format!("{node}{}{keys}", route(true))));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("nowhere to fetch the public keys"), "{w:?}");
        let admin = "[admin]\nlisten = \"127.0.0.1:9477\"\n";
        let c = parse(format!("{node}{}{keys}{admin}", route(true)));
        assert!(assertion_warnings(&c).is_empty());
        assert!(describe(&c).contains("/.well-known/jwks.json"));
        let c = parse(format!("{node}{}{keys}{admin}", route(false)));
        assert_eq!(
            assertion_warnings(&c),
            ["assertion: no route has assertion = true; nothing is signed"]
        );
        assert!(describe(&c).contains("warning: assertion: no route"));
        assert!(assertion_warnings(&parse(format!("{node}{}", route(false)))).is_empty());
    }

    #[test]
    fn colour_only_for_text_on_a_terminal_without_no_color() {
        assert!(use_colour(LogFormat::Text, true, None));
        assert!(!use_colour(LogFormat::Text, false, None), "journald, files");
        assert!(!use_colour(LogFormat::Json, true, None));
        assert!(!use_colour(LogFormat::Text, true, Some("1".into())));
        // no-color.org: an empty NO_COLOR does not count.
        assert!(use_colour(LogFormat::Text, true, Some("".into())));
    }

    #[test]
    fn log_filter_defaults_to_info_and_refuses_nonsense() {
        assert_eq!(log_filter(None).unwrap().to_string(), "info");
        assert_eq!(log_filter(Some(" ".into())).unwrap().to_string(), "info");
        assert!(log_filter(Some("warn,tailpass::access=info".into())).is_ok());
        let e = log_filter(Some("tailpass=loud".into())).unwrap_err();
        assert!(
            e.starts_with("TAILPASS_LOG: ") && e.contains("tailpass=loud"),
            "{e}"
        );
    }
}
