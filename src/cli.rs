//! The command line: parse arguments, load config, hand over to the server.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{Access, CertSource, Config};
use crate::server::{Gateway, Options};

/// Passkey single sign-on for private services on a Tailscale network.
#[derive(Parser, Debug)]
#[command(name = "tailpass", version, about)]
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
}

/// Exit code for an invalid config (EX_USAGE would be 64; EX_CONFIG is 78,
/// but 64 is what most tooling expects from "bad invocation or config").
pub(crate) const EXIT_CONFIG: u8 = 64;

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TAILPASS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

/// Runs the CLI; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(c) => {
                print!("{}", describe(&c));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprint!("{e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Run { config } => {
            let c = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprint!("{e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            // Like Go programs: the soft descriptor limit goes up to the
            // hard one, so thousands of connections fit.
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
            rt.block_on(run(c, config))
        }
    }
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

/// What `check` prints: nodes with their URLs, routes with their access.
/// Never includes secret values.
pub(crate) fn describe(c: &Config) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "config OK");
    describe_nodes(&mut o, c);
    describe_routes(&mut o, c);
    describe_portal(&mut o, c);
    describe_warnings(&mut o, c);
    if let Some(l) = c.loopback {
        let _ = writeln!(
            o,
            "\nloopback listener: http://{l}/ (public routes and routes with loopback = true)"
        );
    }
    o
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
                "  funnel:     {}/ on the internet ({public} public routes)",
                crate::config::NodeOrigin::new(&fqdn, 443)
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
    let _ = writeln!(o, "\nroutes");
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
        let _ = writeln!(
            o,
            "  {:<12} {} -> {}{}  [{}{}]",
            r.path,
            r.host.as_deref().unwrap_or("*"),
            r.upstream,
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

/// The portal: providers, the URLs to register, rules, step-up.
fn describe_portal(o: &mut String, c: &Config) {
    use std::fmt::Write;
    if let Some(pt) = &c.portal {
        let _ = writeln!(
            o,
            "\nlogin portal under {} (sessions in {})",
            pt.prefix,
            pt.state_dir.display()
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
