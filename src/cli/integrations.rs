//! `pipes integrations add | list | show | remove` and `pipes providers`: the
//! admin API's integration routes from the command line, with the same
//! validation (`crate::provisioning`).

use std::collections::BTreeMap;
use std::time::Duration;

use clap::{Args, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::cache::TokenCache;
use crate::config::Config;
use crate::oauth::catalog::Catalog;
use crate::owner::Ownership;
use crate::provisioning::{self, CreateIntegration, CredentialsInput, CustomProviderInput};
use crate::redis_conn::Redis;
use crate::secret::Secret;
use crate::store::integrations;

#[derive(Debug, Subcommand)]
pub enum IntegrationsCommand {
    /// Adds an integration: a catalog provider (`--provider github`) or a custom one (`--authorization-url` …).
    Add(Box<AddArgs>),
    /// Lists integrations.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Shows one integration as the API does, with its account counts.
    Show {
        slug: String,
        /// The provider's organization-owned integration (shared accounts).
        #[arg(long)]
        organization: bool,
    },
    /// Removes an integration and every account connected to it.
    Remove {
        slug: String,
        /// The provider's organization-owned integration (shared accounts).
        #[arg(long)]
        organization: bool,
        /// Required: this deletes every connected account of the integration.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// A catalog slug (see `pipes providers`), or the slug of a new custom provider.
    #[arg(long)]
    provider: String,
    #[arg(long)]
    client_id: String,
    /// Prefer the environment variable: a flag value shows in the process list.
    #[arg(long, env = "PIPES_CLIENT_SECRET", hide_env_values = true)]
    client_secret: Option<String>,
    /// Comma-separated; default: the catalog provider's default scopes.
    #[arg(long, value_delimiter = ',')]
    scopes: Option<Vec<String>>,
    #[arg(long)]
    description: Option<String>,
    /// Create it disabled.
    #[arg(long)]
    disabled: bool,
    /// Organization-owned: each organization connects one shared account.
    #[arg(long)]
    organization: bool,
    /// Let an owner connect several accounts (`connection_intent: add`).
    #[arg(long)]
    multiple_connections: bool,
    /// A catalog config value, `key=value` (e.g. `subdomain=acme` for Zendesk); repeatable.
    #[arg(long = "provider-config", value_parser = parse_key_value)]
    provider_config: Vec<(String, String)>,
    /// Custom provider: display name.
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    authorization_url: Option<String>,
    #[arg(long)]
    token_url: Option<String>,
    #[arg(long)]
    refresh_token_url: Option<String>,
    #[arg(long)]
    revocation_url: Option<String>,
    /// Custom provider: `true` (default) or `false`.
    #[arg(long)]
    pkce: Option<bool>,
    /// Custom provider: " ", "," or "+".
    #[arg(long)]
    scope_separator: Option<String>,
    /// Custom provider: request_body or basic_auth_header.
    #[arg(long)]
    auth_method: Option<String>,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .ok_or_else(|| format!("`{s}` is not key=value"))
}

impl AddArgs {
    fn into_body(self) -> CreateIntegration {
        let custom = self.authorization_url.is_some() || self.token_url.is_some() || self.name.is_some();
        CreateIntegration {
            custom_provider: custom.then(|| CustomProviderInput {
                name: Some(self.name.clone().unwrap_or_else(|| self.provider.clone())),
                authorization_url: self.authorization_url,
                token_url: self.token_url,
                refresh_token_url: self.refresh_token_url,
                revocation_url: self.revocation_url,
                pkce_enabled: self.pkce,
                request_scope_separator: self.scope_separator,
                authenticate_via: self.auth_method,
                ..CustomProviderInput::default()
            }),
            provider: Some(self.provider),
            description: self.description,
            enabled: Some(!self.disabled),
            scopes: self.scopes,
            credentials: Some(CredentialsInput {
                kind: Some("custom".into()),
                client_id: Some(self.client_id),
                client_secret: self.client_secret.map(Secret::new),
            }),
            config: (!self.provider_config.is_empty())
                .then(|| self.provider_config.into_iter().collect::<BTreeMap<_, _>>()),
            auth_methods: None,
            api_key: None,
            multiple_connections: Some(self.multiple_connections),
            ownership: self.organization.then(|| Ownership::Organization.as_str().to_owned()),
        }
    }
}

fn ownership(organization: bool) -> Ownership {
    if organization {
        Ownership::Organization
    } else {
        Ownership::User
    }
}

/// Drops an integration's cached tokens (best effort: Redis holds only derived data).
async fn evict(config: &Config, slug: &str) {
    let cancel = CancellationToken::new();
    if let Ok(redis) =
        Redis::start(&config.redis_url, &config.redis_prefix, config.redis_timeout, &Default::default(), cancel.clone())
    {
        if redis.wait_connected(Duration::from_secs(3)).await {
            TokenCache::new(redis, config.encryption_keys.clone(), config.min_validity).evict_integration(slug).await;
        } else {
            eprintln!("warning: Redis unreachable; cached tokens of `{slug}` expire on their own");
        }
    }
    cancel.cancel();
}

pub async fn run(config: &Config, cmd: IntegrationsCommand) -> anyhow::Result<()> {
    let db = crate::db::pool(&config.database_url, 2)?;
    let ring = &config.encryption_keys;
    match cmd {
        IntegrationsCommand::Add(args) => {
            let draft = provisioning::validate_create((*args).into_body(), config.allow_private_network)
                .await
                .map_err(|errors| {
                    let lines: Vec<String> = errors
                        .iter()
                        .map(|e| format!("  {}: {}", e.field, e.message.as_deref().unwrap_or(&e.code)))
                        .collect();
                    anyhow::anyhow!("invalid integration:\n{}", lines.join("\n"))
                })?;
            let integration = integrations::insert(&db, ring, &draft).await?;
            println!("created integration `{}` ({})", integration.slug, integration.id);
            println!("register this redirect URI at the provider: {}", config.redirect_uri(&integration.slug));
        }
        IntegrationsCommand::List { json } => {
            let all = integrations::all(&db, ring).await?;
            if json {
                let views: Vec<_> = all.iter().map(|i| crate::api::integrations::view(i, config)).collect();
                println!("{}", serde_json::to_string_pretty(&views)?);
            } else {
                println!("{:<24} {:<14} {:<8} {:<8} SCOPES", "SLUG", "PROVIDER", "ENABLED", "STATE");
                for i in all {
                    let view = crate::api::integrations::view(&i, config);
                    println!(
                        "{:<24} {:<14} {:<8} {:<8} {}",
                        i.slug,
                        view.integration_type,
                        i.enabled,
                        view.state,
                        i.scopes.join(" ")
                    );
                }
            }
        }
        IntegrationsCommand::Show { slug, organization } => {
            let integration = integrations::by_slug(&db, ring, &slug, ownership(organization))
                .await?
                .ok_or_else(|| anyhow::anyhow!("no integration `{slug}`"))?;
            let mut view = serde_json::to_value(crate::api::integrations::view(&integration, config))?;
            let counts: serde_json::Map<String, serde_json::Value> = integrations::account_counts(&db, &integration.id)
                .await?
                .into_iter()
                .map(|(state, n)| (state, n.into()))
                .collect();
            view["connected_accounts"] = serde_json::Value::Object(counts);
            println!("{}", serde_json::to_string_pretty(&view)?);
        }
        IntegrationsCommand::Remove { slug, organization, yes } => {
            anyhow::ensure!(yes, "this deletes `{slug}` and every account connected to it; add --yes to confirm");
            let integration = integrations::by_slug(&db, ring, &slug, ownership(organization))
                .await?
                .ok_or_else(|| anyhow::anyhow!("no integration `{slug}`"))?;
            let removed = integrations::delete(&db, &integration)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no integration `{slug}`"))?;
            evict(config, &slug).await;
            println!("removed integration `{slug}` and {removed} connected account(s)");
        }
    }
    Ok(())
}

#[derive(Debug, clap::Subcommand)]
pub enum ProvidersCommand {
    /// One provider's setup guide: where to register the app, the steps, the redirect
    /// URI to paste, scopes with what each grants, connect-time parameters.
    Show {
        slug: String,
        #[arg(long)]
        json: bool,
    },
}

/// The catalog `pipes providers` reads (the built-in one with `PIPES_CATALOG_FILE` over
/// it), and Pipes' public URL, for the redirect URI.
fn catalog() -> anyhow::Result<(&'static Catalog, String)> {
    let settings = crate::config::Settings::from_env()?;
    if let Some(path) = settings.get("PIPES_CATALOG_FILE") {
        Catalog::install(Catalog::with_operator_file(std::path::Path::new(path.trim()))?);
    }
    let public = settings.get("PIPES_PUBLIC_URL").unwrap_or_else(|| "http://localhost:8080".into());
    Ok((Catalog::builtin(), public.trim().trim_end_matches('/').to_owned()))
}

/// `pipes providers`: the catalog, or the providers matching `search` and `category`.
pub fn providers(
    show: Option<&ProvidersCommand>,
    search: Option<&str>,
    category: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let (catalog, public_url) = catalog()?;
    if let Some(ProvidersCommand::Show { slug, json }) = show {
        let spec = catalog.get(slug).ok_or_else(|| anyhow::anyhow!("no provider `{slug}` in the catalog"))?;
        if *json {
            println!("{}", serde_json::to_string_pretty(spec)?);
        } else {
            print!("{}", setup_guide(spec, &public_url));
        }
        return Ok(());
    }
    if let Some(c) = category.filter(|c| !crate::oauth::catalog::CATEGORIES.contains(c)) {
        anyhow::bail!("no category `{c}`; the categories: {}", crate::oauth::catalog::CATEGORIES.join(", "));
    }
    let needle = search.map(str::to_lowercase);
    let listed: Vec<_> = catalog
        .iter()
        .filter(|p| category.is_none_or(|c| p.categories.iter().any(|pc| pc == c)))
        .filter(|p| {
            needle.as_deref().is_none_or(|n| {
                [&p.slug, &p.name, &p.description].iter().any(|t| t.to_lowercase().contains(n))
                    || p.aliases.iter().chain(&p.categories).any(|t| t.contains(n))
            })
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&listed)?);
        return Ok(());
    }
    println!("{:<18} {:<22} {:<24} {:<14} {:<5} {:<8} CONFIG", "SLUG", "NAME", "CATEGORIES", "AUTH", "PKCE", "EXPIRES");
    for p in &listed {
        let auth = match (&p.oauth, &p.api_key) {
            (Some(_), Some(_)) => "oauth,api_key",
            (None, Some(_)) => "api_key",
            _ => "oauth",
        };
        let (pkce, expires) = match &p.oauth {
            Some(o) => (if o.pkce { "yes" } else { "no" }, if o.tokens_expire { "yes" } else { "never" }),
            None => ("-", "-"),
        };
        println!(
            "{:<18} {:<22} {:<24} {:<14} {:<5} {:<8} {}",
            p.slug,
            p.name,
            p.categories.join(","),
            auth,
            pkce,
            expires,
            p.config_params.join(",")
        );
    }
    println!("{} of {} providers", listed.len(), catalog.len());
    Ok(())
}

/// What an operator needs to set `spec` up, as text for the terminal.
pub fn setup_guide(spec: &crate::oauth::catalog::ProviderSpec, public_url: &str) -> String {
    use crate::oauth::catalog::KeyPlacement;
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "{} ({})\n{}\n", spec.name, spec.slug, spec.description);
    let what = if spec.oauth.is_some() { "Register the OAuth app" } else { "Create an API key" };
    let _ = writeln!(out, "{what}: {}", spec.docs_url);
    for (i, step) in spec.setup_steps.iter().enumerate() {
        let _ = writeln!(out, "  {}. {step}", i.saturating_add(1));
    }
    if let Some(oauth) = &spec.oauth {
        let _ = writeln!(out, "\nRedirect URI: {public_url}/data-integrations/{}/callback", spec.slug);
        let auth = serde_json::to_value(oauth.client_auth).ok().and_then(|v| v.as_str().map(str::to_owned));
        let _ = writeln!(
            out,
            "Client authentication: {}; PKCE: {}",
            auth.unwrap_or_default(),
            if oauth.pkce { "yes" } else { "no" }
        );
        if oauth.scopes_configured_at_provider {
            let _ = writeln!(out, "Scopes are chosen in the app's settings at {}; none are sent.", spec.name);
        }
        let describe = |scope: &str| oauth.scope_descriptions.get(scope).map(String::as_str).unwrap_or("");
        if !oauth.default_scopes.is_empty() {
            let _ = writeln!(out, "\nDefault scopes:");
            for scope in &oauth.default_scopes {
                let _ = writeln!(out, "  {scope:<40} {}", describe(scope));
            }
        }
        for (name, scopes) in &oauth.scope_sets {
            let _ = writeln!(out, "Scope set `{name}`:");
            for scope in scopes {
                let _ = writeln!(out, "  {scope:<40} {}", describe(scope));
            }
        }
    }
    if let Some(key) = &spec.api_key {
        let _ = writeln!(out, "\nAPI keys (auth_methods [\"api_key\"]):");
        if let Some(help) = &key.key_help {
            let _ = writeln!(out, "  Where: {help}");
        }
        let sent = match key.placement {
            KeyPlacement::Header => {
                format!("header {}: {}", key.header.as_deref().unwrap_or(""), key.format.as_deref().unwrap_or(""))
            }
            KeyPlacement::Query => format!("query parameter {}", key.query_param.as_deref().unwrap_or("")),
            KeyPlacement::Basic => format!("Basic auth {}", key.basic.as_deref().unwrap_or("")),
        };
        let _ = writeln!(out, "  Sent as: {sent}");
        if let Some(verify) = &key.verify {
            let _ = writeln!(out, "  Checked with: {} {}", verify.method, verify.url);
        }
    }
    if !spec.params.is_empty() {
        let _ = writeln!(out, "\nConnect-time parameters (integration config):");
        for (name, p) in &spec.params {
            let _ = writeln!(out, "  {name}: {}", p.description);
        }
    }
    if let Some(base) = &spec.api_base_url {
        let _ = writeln!(out, "\nAPI base URL: {base}");
    }
    let _ = writeln!(out, "\nSources:");
    for source in &spec.sources {
        let _ = writeln!(out, "  {source}");
    }
    out
}
