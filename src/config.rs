//! Configuration: everything payd reads at start-up, loaded and checked once.
//!
//! Settings come from `config.toml`, then a `.env` file in the current directory,
//! then the environment (later sources win; real environment variables win over
//! `.env`). The environment speaks two dialects: the names payment integrators
//! already use (`JWT_SECRET`, `ORDER_EXPIRE_MINUTES`, `WECHAT_PAY_MCH_ID`, …) and
//! the generic `PAYD_<SECTION>__<KEY>` form that reaches any key.
//!
//! Why raw → validated once: the file and the environment are merged into one
//! `toml::Table`, deserialized into loosely typed `Raw*` structs (every field
//! optional, unknown keys refused), and then converted in a single pass into the
//! strongly typed [`Config`]. That pass applies the defaults, parses durations,
//! sizes, addresses and URLs, derives the notify URLs from `server.base_url`, and
//! collects *every* problem it finds into one [`ConfigError`], so an operator fixes
//! a broken file in one go. The rest of payd only ever sees a `Config` that is
//! known to be valid and never re-parses a string.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, DeserializeOwned, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

/// The JWT secret used when none is configured. Fine for mock mode on a laptop;
/// refused as soon as `payment.mock_mode = false`.
pub const DEV_JWT_SECRET_PLACEHOLDER: &str = "payd-dev-secret-change-me";

/// The Stripe API version payd is written against, sent as `Stripe-Version`.
pub const STRIPE_API_VERSION: &str = "2025-08-27.basil";

// ---------------------------------------------------------------------------
// Defaults (CONFIG.md's table)
// ---------------------------------------------------------------------------

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

const DEFAULT_PORT: u16 = 3007;
const DEFAULT_BASE_URL: &str = "http://127.0.0.1:3007";
const DEFAULT_STORAGE_PATH: &str = "./data";
const DEFAULT_BODY_LIMIT: u64 = 64 * KIB;
const MIN_BODY_LIMIT: u64 = KIB;
const MAX_BODY_LIMIT: u64 = 16 * MIB;
const DEFAULT_CACHE_SIZE: u64 = 64 * MIB;
const DEFAULT_MAX_JOURNAL_SIZE: u64 = 128 * MIB;
const DEFAULT_PASSIVATE_AFTER: Duration = Duration::from_secs(30);
const DEFAULT_RESTART_BUDGET: u32 = 3;
const DEFAULT_LEEWAY: Duration = Duration::from_secs(5);
const DEFAULT_ORDER_EXPIRE: Duration = Duration::from_secs(30 * 60);
const DEFAULT_QR_CODE_EXPIRE: Duration = Duration::from_secs(15 * 60);
const DEFAULT_QUERY_RETRY_MAX: u32 = 5;
const MAX_QUERY_RETRY_MAX: i64 = 100;
const DEFAULT_QUERY_INTERVAL: Duration = Duration::from_secs(60);
const DEFAULT_MAX_ORDER_AMOUNT: &[(&str, i64)] = &[("CNY", 1_000_000), ("USD", 200_000)];
const DEFAULT_UPGRADE_MIN_AMOUNT: &[(&str, i64)] = &[("CNY", 100), ("USD", 50)];
const DEFAULT_TIERS: &[&str] = &["pro", "premium"];
const DEFAULT_PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_MAX_CONCURRENCY: usize = 32;
const DEFAULT_PAYMENT_PER_MINUTE: u32 = 20;
const DEFAULT_READ_PER_MINUTE: u32 = 600;
const DEFAULT_CALLBACK_PER_MINUTE: u32 = 6000;
const DEFAULT_FAILURE_RATE_ALERT: f64 = 0.10;
const DEFAULT_REFUND_RATE_ALERT: f64 = 0.05;
const DEFAULT_MIN_VOLUME: u32 = 20;
const DEFAULT_LARGE_TRANSACTION: &[(&str, i64)] = &[("CNY", 100_000), ("USD", 20_000)];
const DEFAULT_MONITOR_WINDOW: Duration = Duration::from_secs(60 * 60);
const DEFAULT_WECHAT_BASE_URL: &str = "https://api.mch.weixin.qq.com";
const DEFAULT_ALIPAY_GATEWAY: &str = "https://openapi.alipay.com/gateway.do";
const DEFAULT_STRIPE_API_BASE: &str = "https://api.stripe.com";
const DEFAULT_RECONCILIATION_TIME: &str = "10:30";
const DEFAULT_WEBHOOK_RETRY: &[Duration] = &[
    Duration::from_secs(15),
    Duration::from_secs(60),
    Duration::from_secs(5 * 60),
    Duration::from_secs(15 * 60),
    Duration::from_secs(60 * 60),
    Duration::from_secs(3 * 60 * 60),
    Duration::from_secs(6 * 60 * 60),
    Duration::from_secs(12 * 60 * 60),
    Duration::from_secs(24 * 60 * 60),
];
const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_RETENTION_INTERVAL: Duration = Duration::from_secs(60 * 60);
const DEFAULT_RETENTION_IDEMPOTENCY_KEYS: Duration = Duration::from_secs(24 * 60 * 60);
const DEFAULT_RETENTION_WEBHOOKS: Duration = Duration::from_secs(7 * 24 * 60 * 60);
const MIN_JWT_SECRET_BYTES: usize = 16;
const ONE_SECOND: Duration = Duration::from_secs(1);

/// Providers that may have a callback allowlist under `notify.allowed_ips`.
const CALLBACK_PROVIDERS: &[&str] = &["wechat", "alipay", "stripe"];

// ---------------------------------------------------------------------------
// The typed configuration
// ---------------------------------------------------------------------------

/// The validated configuration. Built only by the `load*` functions.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub actors: ActorsConfig,
    pub auth: AuthConfig,
    pub payment: PaymentConfig,
    pub membership: MembershipConfig,
    pub providers: ProvidersConfig,
    pub rate_limit: RateLimitConfig,
    pub monitor: MonitorConfig,
    pub wechat: WechatConfig,
    pub alipay: AlipayConfig,
    pub stripe: StripeConfig,
    pub notify: NotifyConfig,
    pub reconciliation: ReconciliationConfig,
    pub webhooks: WebhooksConfig,
    pub retention: RetentionConfig,
    pub packages: Vec<PackageSeed>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub bind: SocketAddr,
    /// Public URL, without a trailing slash.
    pub base_url: String,
    /// IPs / CIDRs whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<String>,
    /// Extra browser origins (no trailing slash).
    pub cors_origins: Vec<String>,
    pub body_limit_bytes: usize,
    /// A separate listener for `/metrics`; `None` serves it on `bind`.
    pub metrics_bind: Option<SocketAddr>,
}

#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub path: PathBuf,
    pub cache_size_bytes: u64,
    pub max_journal_size_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct ActorsConfig {
    pub passivate_after: Duration,
    pub restart_budget: u32,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub jwt_secret: Secret,
    pub leeway: Duration,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

#[derive(Debug, Clone)]
pub struct PaymentConfig {
    pub enabled: bool,
    pub mock_mode: bool,
    pub order_expire: Duration,
    /// Already capped at `order_expire`.
    pub qr_code_expire: Duration,
    pub query_retry_max: u32,
    pub query_interval: Duration,
    /// Minor units per currency code.
    pub max_order_amount: BTreeMap<String, i64>,
    /// Minor units per currency code.
    pub upgrade_min_amount: BTreeMap<String, i64>,
    pub late_payment: LatePayment,
}

/// What to do with a payment confirmed after the order was cancelled or expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LatePayment {
    Grant,
    Refund,
}

#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// Lowest to highest.
    pub tiers: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ProvidersConfig {
    pub timeout: Duration,
    pub max_concurrency: usize,
}

#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    pub payment_per_minute: u32,
    pub read_per_minute: u32,
    pub callback_per_minute: u32,
}

#[derive(Debug, Clone)]
pub struct MonitorConfig {
    pub failure_rate_alert: f64,
    pub refund_rate_alert: f64,
    pub min_volume: u32,
    /// Minor units per currency code.
    pub large_transaction: BTreeMap<String, i64>,
    pub window: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WechatApiVersion {
    V3,
    V2,
}

#[derive(Debug, Clone)]
pub struct WechatConfig {
    pub api_version: WechatApiVersion,
    pub app_id: Option<String>,
    pub mch_id: Option<String>,
    pub api_v3_key: Option<Secret>,
    pub api_key: Option<Secret>,
    pub private_key_path: Option<PathBuf>,
    pub cert_serial_no: Option<String>,
    pub cert_path: Option<PathBuf>,
    pub platform_public_key_path: Option<PathBuf>,
    pub platform_public_key_id: Option<String>,
    pub platform_cert_dir: Option<PathBuf>,
    pub notify_url: String,
    pub base_url: String,
}

#[derive(Debug, Clone)]
pub struct AlipayConfig {
    pub app_id: Option<String>,
    pub seller_id: Option<String>,
    /// Inline key text, or the trimmed contents of `private_key_path`.
    pub private_key: Option<Secret>,
    /// Where `private_key` was read from, when it came from a file.
    pub private_key_path: Option<PathBuf>,
    pub alipay_public_key: Option<String>,
    pub alipay_public_key_path: Option<PathBuf>,
    pub notify_url: String,
    pub return_url: String,
    pub gateway: String,
}

#[derive(Debug, Clone)]
pub struct StripeConfig {
    pub secret_key: Option<Secret>,
    pub publishable_key: Option<String>,
    pub webhook_secret: Option<Secret>,
    pub api_base: String,
    pub api_version: String,
    pub success_url: String,
    pub cancel_url: String,
}

#[derive(Debug, Clone)]
pub struct NotifyConfig {
    /// Provider name (`wechat`, `alipay`, `stripe`) → IPs / CIDRs. A provider
    /// without an entry accepts callbacks from anywhere.
    pub allowed_ips: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone)]
pub struct ReconciliationConfig {
    /// `"HH:MM"`, validated.
    pub time: String,
}

#[derive(Debug, Clone)]
pub struct WebhooksConfig {
    pub url: Option<String>,
    pub secret: Option<Secret>,
    /// Delays between delivery attempts.
    pub retry: Vec<Duration>,
    /// One delivery attempt, connection included.
    pub timeout: Duration,
}

/// What payd deletes on a schedule, and when.
#[derive(Debug, Clone)]
pub struct RetentionConfig {
    /// How often the pruner runs.
    pub interval: Duration,
    /// `Idempotency-Key` records older than this are deleted. Below 24 h it shortens
    /// the window in which a repeated request is answered with the first response.
    pub idempotency_keys: Duration,
    /// Delivered webhook events are deleted this long after delivery (pending and
    /// dead events are kept).
    pub webhooks: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageKind {
    Membership,
    Points,
}

/// A `[[packages]]` entry, seeded into storage on first start.
#[derive(Debug, Clone)]
pub struct PackageSeed {
    pub id: String,
    pub kind: PackageKind,
    pub name: String,
    pub description: String,
    /// Minor units.
    pub amount: i64,
    pub currency: String,
    pub membership_type: Option<String>,
    pub validity_days: Option<u32>,
    pub queries_count: Option<u32>,
    pub points: Option<u64>,
    pub bonus_points: Option<u64>,
    pub is_active: bool,
    pub sort_order: i32,
}

/// A secret string. `Debug` and `Display` print `[redacted]`; use
/// [`Secret::expose`] at the one place the value is needed.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether this is [`DEV_JWT_SECRET_PLACEHOLDER`].
    pub fn is_placeholder(&self) -> bool {
        self.0 == DEV_JWT_SECRET_PLACEHOLDER
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why the configuration could not be loaded. `Display` is always one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file (or an existing `.env`) could not be read.
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML, or `.env` is malformed.
    #[error("{origin}: {message}")]
    Syntax { origin: String, message: String },
    /// One or more keys are wrong; each entry names its key.
    #[error("{}", summarize(.problems))]
    Invalid { problems: Vec<String> },
}

impl ConfigError {
    /// The individual problems of an [`ConfigError::Invalid`] (empty otherwise).
    pub fn problems(&self) -> &[String] {
        match self {
            Self::Invalid { problems } => problems,
            _ => &[],
        }
    }
}

fn summarize(problems: &[String]) -> String {
    match problems {
        [one] => format!("invalid configuration: {one}"),
        many => format!(
            "invalid configuration ({} problems): {}",
            many.len(),
            many.join("; ")
        ),
    }
}

/// Collects problems as `key: message` lines, noting which environment variable
/// set the key when one did.
#[derive(Default)]
struct Problems {
    list: Vec<String>,
    /// Dotted key → the environment variable that set it.
    origins: BTreeMap<String, String>,
}

impl Problems {
    fn push(&mut self, key: &str, message: impl fmt::Display) {
        let line = match self.origin_of(key) {
            Some(var) => format!("{key}: {message} (set by {var})"),
            None => format!("{key}: {message}"),
        };
        self.list.push(line);
    }

    fn push_line(&mut self, line: String) {
        self.list.push(line);
    }

    fn len(&self) -> usize {
        self.list.len()
    }

    fn origin_of(&self, key: &str) -> Option<&String> {
        let mut k = key;
        loop {
            if let Some(var) = self.origins.get(k) {
                return Some(var);
            }
            match k.rfind('.') {
                Some(i) => k = &k[..i],
                None => break,
            }
        }
        // A problem with a whole section (e.g. an unknown one) set from the
        // environment: name the variable that created it.
        let prefix = format!("{key}.");
        self.origins
            .iter()
            .find(|(k, _)| k.starts_with(&prefix))
            .map(|(_, var)| var)
    }
}

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

/// Loads `path`, then `.env` in the current directory (if present), then the
/// given environment. `env` looks up one variable; `env_vars` is the full list,
/// used only to find `PAYD_<SECTION>__<KEY>` names. Values from `env` /
/// `env_vars` win over `.env`.
pub fn load(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    env_vars: &[(String, String)],
) -> Result<Config, ConfigError> {
    load_with_dotenv(path, Some(Path::new(".env")), env, env_vars)
}

/// [`load`] with the real process environment.
pub fn load_process(path: &Path) -> Result<Config, ConfigError> {
    let vars: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let lookup = |name: &str| std::env::var(name).ok();
    load(path, &lookup, &vars)
}

/// Loads configuration from TOML text plus the given environment. Reads no
/// files except those named by `*_path` secret keys.
pub fn load_from_str(
    toml_text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    env_vars: &[(String, String)],
) -> Result<Config, ConfigError> {
    load_text(toml_text, "config", env, env_vars)
}

fn load_with_dotenv(
    path: &Path,
    dotenv: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
    env_vars: &[(String, String)],
) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let origin = path.display().to_string();
    let dotenv_vars = match dotenv {
        Some(dotenv) => read_dotenv(dotenv)?,
        None => Vec::new(),
    };
    if dotenv_vars.is_empty() {
        return load_text(&text, &origin, env, env_vars);
    }
    // Later lines of `.env` win over earlier ones; real variables win over `.env`.
    let dotenv_map: BTreeMap<String, String> = dotenv_vars.into_iter().collect();
    let merged_env = |name: &str| env(name).or_else(|| dotenv_map.get(name).cloned());
    let present: BTreeSet<&str> = env_vars.iter().map(|(k, _)| k.as_str()).collect();
    let mut merged_vars = env_vars.to_vec();
    for (k, v) in &dotenv_map {
        if !present.contains(k.as_str()) {
            merged_vars.push((k.clone(), v.clone()));
        }
    }
    load_text(&text, &origin, &merged_env, &merged_vars)
}

fn read_dotenv(path: &Path) -> Result<Vec<(String, String)>, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_dotenv(&text).map_err(|message| ConfigError::Syntax {
            origin: path.display().to_string(),
            message,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(ConfigError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn load_text(
    text: &str,
    origin: &str,
    env: &dyn Fn(&str) -> Option<String>,
    env_vars: &[(String, String)],
) -> Result<Config, ConfigError> {
    let mut table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| syntax_error(origin, text, &e))?;
    let mut problems = Problems::default();
    apply_env(&mut table, env, env_vars, &mut problems);
    let raw = RawConfig::from_table(table, &mut problems);
    let config = build(raw, &mut problems);
    if problems.list.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid {
            problems: problems.list,
        })
    }
}

fn syntax_error(origin: &str, text: &str, error: &toml::de::Error) -> ConfigError {
    let message = error.message().replace('\n', " ");
    let position = error
        .span()
        .and_then(|span| text.get(..span.start))
        .map(|before| {
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: ")
        })
        .unwrap_or_default();
    ConfigError::Syntax {
        origin: origin.to_owned(),
        message: format!("invalid TOML: {position}{message}"),
    }
}

// ---------------------------------------------------------------------------
// .env
// ---------------------------------------------------------------------------

/// Parses `.env` text: `KEY=VALUE` lines, `#` comments, an optional leading
/// `export `, optional single or double quotes (double quotes understand `\n`,
/// `\r`, `\t`, `\"` and `\\`), and ` #` comments after unquoted values.
pub fn parse_dotenv(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (index, raw_line) in text.lines().enumerate() {
        let line_no = index + 1;
        let line = raw_line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map_or(line, str::trim_start);
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {line_no}: expected KEY=VALUE"));
        };
        let key = key.trim();
        if !is_env_name(key) {
            return Err(format!(
                "line {line_no}: {key:?} is not a valid variable name"
            ));
        }
        let value = parse_dotenv_value(value.trim()).map_err(|m| format!("line {line_no}: {m}"))?;
        out.push((key.to_owned(), value));
    }
    Ok(out)
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_dotenv_value(value: &str) -> Result<String, String> {
    if let Some(rest) = value.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = rest.chars();
        loop {
            match chars.next() {
                None => return Err("unterminated double quote".to_owned()),
                Some('"') => break,
                Some('\\') => match chars.next() {
                    Some('n') => out.push('\n'),
                    Some('r') => out.push('\r'),
                    Some('t') => out.push('\t'),
                    Some('"') => out.push('"'),
                    Some('\\') => out.push('\\'),
                    Some(other) => {
                        out.push('\\');
                        out.push(other);
                    }
                    None => return Err("unterminated double quote".to_owned()),
                },
                Some(c) => out.push(c),
            }
        }
        check_after_quote(chars.as_str())?;
        Ok(out)
    } else if let Some(rest) = value.strip_prefix('\'') {
        let Some((inner, tail)) = rest.split_once('\'') else {
            return Err("unterminated single quote".to_owned());
        };
        check_after_quote(tail)?;
        Ok(inner.to_owned())
    } else {
        // An unquoted value ends at a `#` that follows whitespace.
        let mut end = value.len();
        let mut previous_was_space = false;
        for (i, c) in value.char_indices() {
            if c == '#' && previous_was_space {
                end = i;
                break;
            }
            previous_was_space = c.is_whitespace();
        }
        Ok(value[..end].trim_end().to_owned())
    }
}

fn check_after_quote(tail: &str) -> Result<(), String> {
    let tail = tail.trim();
    if tail.is_empty() || tail.starts_with('#') {
        Ok(())
    } else {
        Err("unexpected text after the closing quote".to_owned())
    }
}

// ---------------------------------------------------------------------------
// Environment overrides
// ---------------------------------------------------------------------------

/// How an integrator-named variable's text becomes a TOML value.
#[derive(Clone, Copy)]
enum EnvKind {
    /// Taken as a string.
    Text,
    /// Taken as a lowercased string (enum values).
    Lower,
    /// true/false/1/0/yes/no.
    Bool,
    /// A whole number.
    Int,
    /// A whole number of minutes, stored as `"{n}m"`.
    Minutes,
    /// A whole number of seconds, stored as `"{n}s"`.
    Seconds,
}

struct NamedEnv {
    key: &'static str,
    /// The first one set (non-empty) wins.
    vars: &'static [&'static str],
    kind: EnvKind,
}

const fn named(key: &'static str, vars: &'static [&'static str], kind: EnvKind) -> NamedEnv {
    NamedEnv { key, vars, kind }
}

/// The environment names integrators already use (CONFIG.md's env column).
const NAMED_ENV: &[NamedEnv] = &[
    named("server.base_url", &["BASE_URL"], EnvKind::Text),
    named("auth.jwt_secret", &["JWT_SECRET"], EnvKind::Text),
    named("payment.enabled", &["PAYMENT_ENABLED"], EnvKind::Bool),
    named("payment.mock_mode", &["PAYMENT_MOCK_MODE"], EnvKind::Bool),
    named(
        "payment.order_expire",
        &["ORDER_EXPIRE_MINUTES"],
        EnvKind::Minutes,
    ),
    named(
        "payment.qr_code_expire",
        &["QR_CODE_EXPIRE_MINUTES"],
        EnvKind::Minutes,
    ),
    named(
        "payment.query_retry_max",
        &["PAYMENT_QUERY_RETRY_MAX"],
        EnvKind::Int,
    ),
    named(
        "payment.query_interval",
        &["PAYMENT_QUERY_INTERVAL_SECONDS"],
        EnvKind::Seconds,
    ),
    named(
        "payment.late_payment",
        &["PAYMENT_LATE_PAYMENT"],
        EnvKind::Lower,
    ),
    named(
        "rate_limit.payment_per_minute",
        &["RATE_LIMIT_PAYMENT_PER_MINUTE"],
        EnvKind::Int,
    ),
    named(
        "wechat.api_version",
        &["WECHAT_PAY_API_VERSION"],
        EnvKind::Lower,
    ),
    named(
        "wechat.app_id",
        &["WECHAT_PAY_APP_ID", "WECHAT_APPID"],
        EnvKind::Text,
    ),
    named(
        "wechat.mch_id",
        &["WECHAT_PAY_MCH_ID", "WECHAT_MCH_ID"],
        EnvKind::Text,
    ),
    named(
        "wechat.api_v3_key",
        &["WECHAT_PAY_API_V3_KEY"],
        EnvKind::Text,
    ),
    named(
        "wechat.api_key",
        &["WECHAT_PAY_API_KEY", "WECHAT_API_KEY"],
        EnvKind::Text,
    ),
    named(
        "wechat.private_key_path",
        &["WECHAT_PAY_PRIVATE_KEY_PATH", "WECHAT_KEY_PATH"],
        EnvKind::Text,
    ),
    named(
        "wechat.cert_serial_no",
        &["WECHAT_PAY_CERT_SERIAL_NO"],
        EnvKind::Text,
    ),
    named(
        "wechat.cert_path",
        &["WECHAT_PAY_CERT_PATH", "WECHAT_CERT_PATH"],
        EnvKind::Text,
    ),
    named(
        "wechat.platform_public_key_path",
        &["WECHAT_PAY_PUBLIC_KEY_PATH"],
        EnvKind::Text,
    ),
    named(
        "wechat.platform_public_key_id",
        &["WECHAT_PAY_PUBLIC_KEY_ID"],
        EnvKind::Text,
    ),
    named(
        "wechat.platform_cert_dir",
        &["WECHAT_PAY_PLATFORM_CERT_DIR"],
        EnvKind::Text,
    ),
    named(
        "wechat.notify_url",
        &["WECHAT_PAY_NOTIFY_URL"],
        EnvKind::Text,
    ),
    named("wechat.base_url", &["WECHAT_PAY_BASE_URL"], EnvKind::Text),
    named("alipay.app_id", &["ALIPAY_APP_ID"], EnvKind::Text),
    named("alipay.seller_id", &["ALIPAY_SELLER_ID"], EnvKind::Text),
    named("alipay.private_key", &["ALIPAY_PRIVATE_KEY"], EnvKind::Text),
    named(
        "alipay.private_key_path",
        &["ALIPAY_PRIVATE_KEY_PATH"],
        EnvKind::Text,
    ),
    named(
        "alipay.alipay_public_key",
        &["ALIPAY_PUBLIC_KEY"],
        EnvKind::Text,
    ),
    named(
        "alipay.alipay_public_key_path",
        &["ALIPAY_PUBLIC_KEY_PATH"],
        EnvKind::Text,
    ),
    named("alipay.notify_url", &["ALIPAY_NOTIFY_URL"], EnvKind::Text),
    named("alipay.return_url", &["ALIPAY_RETURN_URL"], EnvKind::Text),
    named("alipay.gateway", &["ALIPAY_GATEWAY"], EnvKind::Text),
    named("stripe.secret_key", &["STRIPE_SECRET_KEY"], EnvKind::Text),
    named(
        "stripe.publishable_key",
        &["STRIPE_PUBLISHABLE_KEY"],
        EnvKind::Text,
    ),
    named(
        "stripe.webhook_secret",
        &["STRIPE_WEBHOOK_SECRET"],
        EnvKind::Text,
    ),
    named("stripe.api_base", &["STRIPE_API_BASE"], EnvKind::Text),
    named("stripe.api_version", &["STRIPE_API_VERSION"], EnvKind::Text),
];

/// Keys that have a `<key>_path` twin; setting one form from the environment
/// drops the other form coming from the file, so the environment wins cleanly.
const PATH_TWINS: &[(&str, &str)] = &[
    ("auth", "jwt_secret"),
    ("alipay", "private_key"),
    ("alipay", "alipay_public_key"),
    ("stripe", "secret_key"),
    ("stripe", "webhook_secret"),
    ("wechat", "api_v3_key"),
    ("wechat", "api_key"),
    ("webhooks", "secret"),
];

struct Assignment {
    path: Vec<String>,
    value: toml::Value,
    var: String,
}

/// Applies integrator-named variables, then `PAYD_<SECTION>__<KEY>` variables
/// (so the generic form wins when both name the same key). Empty values count
/// as unset: `.env` templates often list every name with nothing after `=`.
fn apply_env(
    table: &mut toml::Table,
    env: &dyn Fn(&str) -> Option<String>,
    env_vars: &[(String, String)],
    problems: &mut Problems,
) {
    let mut assignments = Vec::new();

    for entry in NAMED_ENV {
        let found = entry.vars.iter().find_map(|&var| {
            env(var)
                .filter(|value| !value.trim().is_empty())
                .map(|value| (var, value))
        });
        let Some((var, value)) = found else { continue };
        match convert_named(entry.kind, var, entry.key, &value) {
            Ok(value) => assignments.push(Assignment {
                path: entry.key.split('.').map(str::to_owned).collect(),
                value,
                var: var.to_owned(),
            }),
            Err(line) => problems.push_line(line),
        }
    }

    // Deduplicated (last wins) and sorted, so the outcome does not depend on
    // the order of the process environment.
    let generic: BTreeMap<&str, &str> = env_vars
        .iter()
        .filter(|(name, _)| name.starts_with("PAYD_") && name.contains("__"))
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    for (name, value) in generic {
        let rest = &name["PAYD_".len()..];
        // Section and key are lowercased; deeper segments keep their case
        // (e.g. currency codes in `PAYD_MONITOR__LARGE_TRANSACTION__CNY`).
        let path: Vec<String> = rest
            .split("__")
            .enumerate()
            .map(|(i, s)| {
                if i < 2 {
                    s.to_ascii_lowercase()
                } else {
                    s.to_owned()
                }
            })
            .collect();
        if path.iter().any(String::is_empty) {
            problems.push_line(format!(
                "{name}: malformed variable name; use PAYD_<SECTION>__<KEY>"
            ));
            continue;
        }
        if value.trim().is_empty() {
            continue;
        }
        assignments.push(Assignment {
            path,
            value: generic_value(value),
            var: name.to_owned(),
        });
    }

    // Drop the file's other form of a secret the environment sets.
    for a in &assignments {
        if let [section, key] = a.path.as_slice()
            && let Some(twin) = path_twin(section, key)
            && let Some(toml::Value::Table(t)) = table.get_mut(section.as_str())
        {
            t.remove(twin.as_str());
        }
    }

    for a in assignments {
        let dotted = a.path.join(".");
        match set_path(table, &a.path, a.value) {
            Ok(()) => {
                problems.origins.insert(dotted, a.var);
            }
            Err(reason) => {
                problems.push_line(format!("{dotted}: cannot set from {}: {reason}", a.var))
            }
        }
    }
}

fn path_twin(section: &str, key: &str) -> Option<String> {
    PATH_TWINS.iter().find_map(|(s, k)| {
        if *s != section {
            None
        } else if *k == key {
            Some(format!("{k}_path"))
        } else if key.strip_suffix("_path") == Some(*k) {
            Some((*k).to_owned())
        } else {
            None
        }
    })
}

fn convert_named(kind: EnvKind, var: &str, key: &str, raw: &str) -> Result<toml::Value, String> {
    let value = raw.trim();
    match kind {
        EnvKind::Text => Ok(toml::Value::String(value.to_owned())),
        EnvKind::Lower => Ok(toml::Value::String(value.to_ascii_lowercase())),
        EnvKind::Bool => parse_bool(value).map(toml::Value::Boolean).ok_or_else(|| {
            format!("{key}: {var}={value:?} is not a boolean (use true/false/1/0/yes/no)")
        }),
        EnvKind::Int => value
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| format!("{key}: {var}={value:?} is not a whole number")),
        EnvKind::Minutes => value
            .parse::<u64>()
            .map(|n| toml::Value::String(format!("{n}m")))
            .map_err(|_| format!("{key}: {var}={value:?} is not a whole number of minutes")),
        EnvKind::Seconds => value
            .parse::<u64>()
            .map(|n| toml::Value::String(format!("{n}s")))
            .map_err(|_| format!("{key}: {var}={value:?} is not a whole number of seconds")),
    }
}

/// A `PAYD_…` value: a TOML boolean, integer, float, array or inline table when
/// it is written as one, otherwise a string. Integers must be written
/// canonically (`0123` stays the string "0123", which matters for ids).
fn generic_value(raw: &str) -> toml::Value {
    let t = raw.trim();
    match t {
        "true" => return toml::Value::Boolean(true),
        "false" => return toml::Value::Boolean(false),
        _ => {}
    }
    if let Ok(n) = t.parse::<i64>()
        && n.to_string() == t
    {
        return toml::Value::Integer(n);
    }
    if looks_like_decimal(t)
        && let Ok(f) = t.parse::<f64>()
        && f.is_finite()
    {
        return toml::Value::Float(f);
    }
    if (t.starts_with('[') || t.starts_with('{'))
        && let Ok(v) = t.parse::<toml::Value>()
        && matches!(v, toml::Value::Array(_) | toml::Value::Table(_))
    {
        return v;
    }
    toml::Value::String(t.to_owned())
}

fn looks_like_decimal(t: &str) -> bool {
    let digits = t.strip_prefix('-').unwrap_or(t);
    match digits.split_once('.') {
        Some((int, frac)) => {
            !int.is_empty()
                && !frac.is_empty()
                && int.bytes().all(|b| b.is_ascii_digit())
                && frac.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let Some((first, rest)) = path.split_first() else {
        return Err("empty key".to_owned());
    };
    if rest.is_empty() {
        table.insert(first.clone(), value);
        return Ok(());
    }
    let entry = table
        .entry(first.clone())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    match entry {
        toml::Value::Table(inner) => set_path(inner, rest, value),
        other => Err(format!("{first} is {}, not a table", other.type_str())),
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Raw (as written) configuration
// ---------------------------------------------------------------------------

/// A string as written; also accepts a number (`mch_id = 1230000109`).
#[derive(Debug, Clone, Default)]
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Text, E> {
                Ok(Text(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
        }
        deserializer.deserialize_any(TextVisitor)
    }
}

/// A list of strings; also accepts one comma-separated string (handy from the
/// environment: `PAYD_SERVER__CORS_ORIGINS=https://a.example,https://b.example`).
#[derive(Debug, Clone, Default)]
struct TextList(Vec<String>);

impl<'de> Deserialize<'de> for TextList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = TextList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TextList, E> {
                Ok(TextList(
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect(),
                ))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TextList, A::Error> {
                let mut out = Vec::new();
                while let Some(item) = seq.next_element::<Text>()? {
                    out.push(item.0);
                }
                Ok(TextList(out))
            }
        }
        deserializer.deserialize_any(ListVisitor)
    }
}

/// A boolean; also accepts "true"/"false"/"1"/"0"/"yes"/"no" and 0/1.
#[derive(Debug, Clone, Copy, Default)]
struct Flag(bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FlagVisitor;
        impl<'de> Visitor<'de> for FlagVisitor {
            type Value = Flag;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a boolean (true/false/1/0/yes/no)")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Flag, E> {
                Ok(Flag(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Flag, E> {
                parse_bool(v)
                    .map(Flag)
                    .ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Flag, E> {
                match v {
                    0 => Ok(Flag(false)),
                    1 => Ok(Flag(true)),
                    _ => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Flag, E> {
                match v {
                    0 => Ok(Flag(false)),
                    1 => Ok(Flag(true)),
                    _ => Err(E::invalid_value(de::Unexpected::Unsigned(v), &self)),
                }
            }
        }
        deserializer.deserialize_any(FlagVisitor)
    }
}

#[derive(Debug, Default)]
struct RawConfig {
    server: RawServer,
    storage: RawStorage,
    actors: RawActors,
    auth: RawAuth,
    payment: RawPayment,
    membership: RawMembership,
    providers: RawProviders,
    rate_limit: RawRateLimit,
    monitor: RawMonitor,
    wechat: RawWechat,
    alipay: RawAlipay,
    stripe: RawStripe,
    notify: RawNotify,
    reconciliation: RawReconciliation,
    webhooks: RawWebhooks,
    retention: RawRetention,
    /// With each entry's position in the file, for error messages.
    packages: Vec<(usize, RawPackage)>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawServer {
    bind: Option<Text>,
    base_url: Option<Text>,
    trusted_proxies: Option<TextList>,
    cors_origins: Option<TextList>,
    body_limit: Option<Text>,
    metrics_bind: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawStorage {
    path: Option<Text>,
    cache_size: Option<Text>,
    max_journal_size: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawActors {
    passivate_after: Option<Text>,
    restart_budget: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawAuth {
    jwt_secret: Option<Text>,
    jwt_secret_path: Option<Text>,
    leeway: Option<Text>,
    issuer: Option<Text>,
    audience: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawPayment {
    enabled: Option<Flag>,
    mock_mode: Option<Flag>,
    order_expire: Option<Text>,
    qr_code_expire: Option<Text>,
    query_retry_max: Option<i64>,
    query_interval: Option<Text>,
    max_order_amount: Option<BTreeMap<String, i64>>,
    upgrade_min_amount: Option<BTreeMap<String, i64>>,
    late_payment: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawMembership {
    tiers: Option<TextList>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawProviders {
    timeout: Option<Text>,
    max_concurrency: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawRateLimit {
    payment_per_minute: Option<i64>,
    read_per_minute: Option<i64>,
    callback_per_minute: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawMonitor {
    failure_rate_alert: Option<f64>,
    refund_rate_alert: Option<f64>,
    min_volume: Option<i64>,
    large_transaction: Option<BTreeMap<String, i64>>,
    window: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawWechat {
    api_version: Option<Text>,
    app_id: Option<Text>,
    mch_id: Option<Text>,
    api_v3_key: Option<Text>,
    api_v3_key_path: Option<Text>,
    api_key: Option<Text>,
    api_key_path: Option<Text>,
    private_key_path: Option<Text>,
    cert_serial_no: Option<Text>,
    cert_path: Option<Text>,
    platform_public_key_path: Option<Text>,
    platform_public_key_id: Option<Text>,
    platform_cert_dir: Option<Text>,
    notify_url: Option<Text>,
    base_url: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawAlipay {
    app_id: Option<Text>,
    seller_id: Option<Text>,
    private_key: Option<Text>,
    private_key_path: Option<Text>,
    alipay_public_key: Option<Text>,
    alipay_public_key_path: Option<Text>,
    notify_url: Option<Text>,
    return_url: Option<Text>,
    gateway: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawStripe {
    secret_key: Option<Text>,
    secret_key_path: Option<Text>,
    publishable_key: Option<Text>,
    webhook_secret: Option<Text>,
    webhook_secret_path: Option<Text>,
    api_base: Option<Text>,
    api_version: Option<Text>,
    success_url: Option<Text>,
    cancel_url: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawNotify {
    allowed_ips: Option<BTreeMap<String, TextList>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawReconciliation {
    time: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawWebhooks {
    url: Option<Text>,
    secret: Option<Text>,
    secret_path: Option<Text>,
    retry: Option<TextList>,
    timeout: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawRetention {
    interval: Option<Text>,
    idempotency_keys: Option<Text>,
    webhooks: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawPackage {
    id: Option<Text>,
    kind: Option<Text>,
    name: Option<Text>,
    description: Option<Text>,
    amount: Option<i64>,
    currency: Option<Text>,
    membership_type: Option<Text>,
    validity_days: Option<i64>,
    queries_count: Option<i64>,
    points: Option<i64>,
    bonus_points: Option<i64>,
    is_active: Option<Flag>,
    sort_order: Option<i64>,
}

const SECTIONS: &str = "server, storage, actors, auth, payment, membership, providers, \
    rate_limit, monitor, wechat, alipay, stripe, notify, reconciliation, webhooks, retention, \
    packages";

impl RawConfig {
    /// Deserializes section by section, so one bad section does not hide the
    /// problems of the others.
    fn from_table(table: toml::Table, p: &mut Problems) -> Self {
        let mut raw = Self::default();
        for (name, value) in table {
            match name.as_str() {
                "server" => raw.server = section(p, &name, value),
                "storage" => raw.storage = section(p, &name, value),
                "actors" => raw.actors = section(p, &name, value),
                "auth" => raw.auth = section(p, &name, value),
                "payment" => raw.payment = section(p, &name, value),
                "membership" => raw.membership = section(p, &name, value),
                "providers" => raw.providers = section(p, &name, value),
                "rate_limit" => raw.rate_limit = section(p, &name, value),
                "monitor" => raw.monitor = section(p, &name, value),
                "wechat" => raw.wechat = section(p, &name, value),
                "alipay" => raw.alipay = section(p, &name, value),
                "stripe" => raw.stripe = section(p, &name, value),
                "notify" => raw.notify = section(p, &name, value),
                "reconciliation" => raw.reconciliation = section(p, &name, value),
                "webhooks" => raw.webhooks = section(p, &name, value),
                "retention" => raw.retention = section(p, &name, value),
                "packages" => raw.packages = raw_packages(p, value),
                _ => p.push(
                    &name,
                    format!("unknown section (expected one of {SECTIONS})"),
                ),
            }
        }
        raw
    }
}

fn section<T: DeserializeOwned + Default>(p: &mut Problems, name: &str, value: toml::Value) -> T {
    if !matches!(value, toml::Value::Table(_)) {
        p.push(
            name,
            format!("expected a table, found {}", value.type_str()),
        );
        return T::default();
    }
    match T::deserialize(value) {
        Ok(raw) => raw,
        Err(e) => {
            de_problem(p, name, &e);
            T::default()
        }
    }
}

fn raw_packages(p: &mut Problems, value: toml::Value) -> Vec<(usize, RawPackage)> {
    let toml::Value::Array(items) = value else {
        p.push("packages", "expected an array of tables ([[packages]])");
        return Vec::new();
    };
    let mut out = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        let key = format!("packages[{index}]");
        if !matches!(item, toml::Value::Table(_)) {
            p.push(&key, format!("expected a table, found {}", item.type_str()));
            continue;
        }
        match RawPackage::deserialize(item) {
            Ok(pkg) => out.push((index, pkg)),
            Err(e) => de_problem(p, &key, &e),
        }
    }
    out
}

/// Turns a deserialization error into `full.key: message`. The toml error keeps
/// its key path private but renders it as a final "in `a.b`" line.
fn de_problem(p: &mut Problems, base: &str, error: &toml::de::Error) {
    let rendered = error.to_string();
    let inner = rendered
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("in `").and_then(|l| l.strip_suffix('`')));
    let key = match inner {
        Some(inner) if !inner.is_empty() => format!("{base}.{inner}"),
        _ => base.to_owned(),
    };
    let message = error.message().replace('\n', " ");
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some((field, tail)) = rest.split_once('`')
    {
        p.push(&format!("{key}.{field}"), format!("unknown key{tail}"));
        return;
    }
    p.push(&key, message);
}

// ---------------------------------------------------------------------------
// Raw → typed, with validation
// ---------------------------------------------------------------------------

fn build(raw: RawConfig, p: &mut Problems) -> Config {
    let server = build_server(raw.server, p);
    let storage = build_storage(raw.storage, p);
    let actors = build_actors(raw.actors, p);
    let payment = build_payment(raw.payment, p);
    let auth = build_auth(raw.auth, payment.mock_mode, p);
    let membership = build_membership(raw.membership, p);
    let providers = build_providers(raw.providers, p);
    let rate_limit = build_rate_limit(raw.rate_limit, p);
    let monitor = build_monitor(raw.monitor, p);
    let wechat = build_wechat(raw.wechat, &server.base_url, p);
    let alipay = build_alipay(raw.alipay, &server.base_url, p);
    let stripe = build_stripe(raw.stripe, &server.base_url, p);
    let notify = build_notify(raw.notify, p);
    let reconciliation = build_reconciliation(raw.reconciliation, p);
    let webhooks = build_webhooks(raw.webhooks, p);
    let retention = build_retention(raw.retention, p);
    let packages = build_packages(raw.packages, &membership.tiers, p);
    Config {
        server,
        storage,
        actors,
        auth,
        payment,
        membership,
        providers,
        rate_limit,
        monitor,
        wechat,
        alipay,
        stripe,
        notify,
        reconciliation,
        webhooks,
        retention,
        packages,
    }
}

fn build_server(raw: RawServer, p: &mut Problems) -> ServerConfig {
    let default_bind = SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT));
    let bind = socket_addr(p, "server.bind", raw.bind).unwrap_or(default_bind);
    let base_url = base_url(p, "server.base_url", raw.base_url, DEFAULT_BASE_URL);

    let mut trusted_proxies = Vec::new();
    for entry in list(raw.trusted_proxies) {
        if is_ip_or_cidr(&entry) {
            trusted_proxies.push(entry);
        } else {
            p.push(
                "server.trusted_proxies",
                format!("{entry:?} is not an IP address or CIDR"),
            );
        }
    }

    let mut cors_origins = Vec::new();
    for origin in list(raw.cors_origins) {
        let origin = origin.trim_end_matches('/').to_owned();
        if check_url(p, "server.cors_origins", &origin) {
            cors_origins.push(origin);
        }
    }

    let body_limit = size(p, "server.body_limit", raw.body_limit, DEFAULT_BODY_LIMIT);
    let body_limit = if (MIN_BODY_LIMIT..=MAX_BODY_LIMIT).contains(&body_limit) {
        body_limit
    } else {
        p.push("server.body_limit", "must be between 1KiB and 16MiB");
        DEFAULT_BODY_LIMIT
    };
    let body_limit_bytes = usize::try_from(body_limit).unwrap_or(64 * 1024);

    let metrics_bind = socket_addr(p, "server.metrics_bind", raw.metrics_bind);

    ServerConfig {
        bind,
        base_url,
        trusted_proxies,
        cors_origins,
        body_limit_bytes,
        metrics_bind,
    }
}

fn build_storage(raw: RawStorage, p: &mut Problems) -> StorageConfig {
    let path = text(raw.path).map_or_else(|| PathBuf::from(DEFAULT_STORAGE_PATH), PathBuf::from);
    let cache_size_bytes = size(p, "storage.cache_size", raw.cache_size, DEFAULT_CACHE_SIZE);
    let mut max_journal_size_bytes = size(
        p,
        "storage.max_journal_size",
        raw.max_journal_size,
        DEFAULT_MAX_JOURNAL_SIZE,
    );
    if max_journal_size_bytes == 0 {
        p.push("storage.max_journal_size", "must be greater than 0");
        max_journal_size_bytes = DEFAULT_MAX_JOURNAL_SIZE;
    }
    StorageConfig {
        path,
        cache_size_bytes,
        max_journal_size_bytes,
    }
}

fn build_actors(raw: RawActors, p: &mut Problems) -> ActorsConfig {
    ActorsConfig {
        passivate_after: duration(
            p,
            "actors.passivate_after",
            raw.passivate_after,
            DEFAULT_PASSIVATE_AFTER,
            ONE_SECOND,
        ),
        restart_budget: int(
            p,
            "actors.restart_budget",
            raw.restart_budget,
            DEFAULT_RESTART_BUDGET,
            1,
            i64::from(u32::MAX),
        ),
    }
}

fn build_auth(raw: RawAuth, mock_mode: bool, p: &mut Problems) -> AuthConfig {
    let before = p.len();
    let configured = secret(p, "auth", "jwt_secret", raw.jwt_secret, raw.jwt_secret_path);
    let read_ok = p.len() == before;
    let jwt_secret = configured.unwrap_or_else(|| Secret::new(DEV_JWT_SECRET_PLACEHOLDER));
    if read_ok {
        if jwt_secret.expose().len() < MIN_JWT_SECRET_BYTES {
            p.push(
                "auth.jwt_secret",
                format!("must be at least {MIN_JWT_SECRET_BYTES} bytes"),
            );
        } else if jwt_secret.is_placeholder() && !mock_mode {
            p.push(
                "auth.jwt_secret",
                "the development placeholder is refused when payment.mock_mode = false; set JWT_SECRET",
            );
        }
    }
    AuthConfig {
        jwt_secret,
        // Zero leeway is a legitimate choice, so only a parse error is refused.
        leeway: duration(p, "auth.leeway", raw.leeway, DEFAULT_LEEWAY, Duration::ZERO),
        issuer: text(raw.issuer),
        audience: text(raw.audience),
    }
}

fn build_payment(raw: RawPayment, p: &mut Problems) -> PaymentConfig {
    let order_expire = duration(
        p,
        "payment.order_expire",
        raw.order_expire,
        DEFAULT_ORDER_EXPIRE,
        ONE_SECOND,
    );
    let qr_code_expire = duration(
        p,
        "payment.qr_code_expire",
        raw.qr_code_expire,
        DEFAULT_QR_CODE_EXPIRE,
        ONE_SECOND,
    )
    // A QR code never outlives its order.
    .min(order_expire);

    let late_payment = match text(raw.late_payment).map(|s| s.to_ascii_lowercase()) {
        None => LatePayment::Grant,
        Some(s) if s == "grant" => LatePayment::Grant,
        Some(s) if s == "refund" => LatePayment::Refund,
        Some(s) => {
            p.push(
                "payment.late_payment",
                format!("{s:?} must be \"grant\" or \"refund\""),
            );
            LatePayment::Grant
        }
    };
    PaymentConfig {
        enabled: raw.enabled.is_none_or(|f| f.0),
        mock_mode: raw.mock_mode.is_none_or(|f| f.0),
        order_expire,
        qr_code_expire,
        query_retry_max: int(
            p,
            "payment.query_retry_max",
            raw.query_retry_max,
            DEFAULT_QUERY_RETRY_MAX,
            0,
            MAX_QUERY_RETRY_MAX,
        ),
        query_interval: duration(
            p,
            "payment.query_interval",
            raw.query_interval,
            DEFAULT_QUERY_INTERVAL,
            ONE_SECOND,
        ),
        max_order_amount: amounts(
            p,
            "payment.max_order_amount",
            raw.max_order_amount,
            DEFAULT_MAX_ORDER_AMOUNT,
        ),
        upgrade_min_amount: amounts(
            p,
            "payment.upgrade_min_amount",
            raw.upgrade_min_amount,
            DEFAULT_UPGRADE_MIN_AMOUNT,
        ),
        late_payment,
    }
}

fn build_membership(raw: RawMembership, p: &mut Problems) -> MembershipConfig {
    let Some(given) = raw.tiers else {
        return MembershipConfig {
            tiers: DEFAULT_TIERS.iter().map(|s| (*s).to_owned()).collect(),
        };
    };
    let mut tiers = Vec::new();
    let mut seen = BTreeSet::new();
    for tier in given.0 {
        let tier = tier.trim().to_owned();
        if tier.is_empty() {
            p.push("membership.tiers", "tier names must not be empty");
        } else if !seen.insert(tier.clone()) {
            p.push("membership.tiers", format!("{tier:?} is listed twice"));
        } else {
            tiers.push(tier);
        }
    }
    if tiers.is_empty() {
        p.push("membership.tiers", "must list at least one tier");
    }
    MembershipConfig { tiers }
}

fn build_providers(raw: RawProviders, p: &mut Problems) -> ProvidersConfig {
    ProvidersConfig {
        timeout: duration(
            p,
            "providers.timeout",
            raw.timeout,
            DEFAULT_PROVIDER_TIMEOUT,
            ONE_SECOND,
        ),
        max_concurrency: int(
            p,
            "providers.max_concurrency",
            raw.max_concurrency,
            DEFAULT_MAX_CONCURRENCY,
            1,
            i64::from(u32::MAX),
        ),
    }
}

fn build_rate_limit(raw: RawRateLimit, p: &mut Problems) -> RateLimitConfig {
    let max = i64::from(u32::MAX);
    RateLimitConfig {
        payment_per_minute: int(
            p,
            "rate_limit.payment_per_minute",
            raw.payment_per_minute,
            DEFAULT_PAYMENT_PER_MINUTE,
            1,
            max,
        ),
        read_per_minute: int(
            p,
            "rate_limit.read_per_minute",
            raw.read_per_minute,
            DEFAULT_READ_PER_MINUTE,
            1,
            max,
        ),
        callback_per_minute: int(
            p,
            "rate_limit.callback_per_minute",
            raw.callback_per_minute,
            DEFAULT_CALLBACK_PER_MINUTE,
            1,
            max,
        ),
    }
}

fn build_monitor(raw: RawMonitor, p: &mut Problems) -> MonitorConfig {
    MonitorConfig {
        failure_rate_alert: rate(
            p,
            "monitor.failure_rate_alert",
            raw.failure_rate_alert,
            DEFAULT_FAILURE_RATE_ALERT,
        ),
        refund_rate_alert: rate(
            p,
            "monitor.refund_rate_alert",
            raw.refund_rate_alert,
            DEFAULT_REFUND_RATE_ALERT,
        ),
        min_volume: int(
            p,
            "monitor.min_volume",
            raw.min_volume,
            DEFAULT_MIN_VOLUME,
            0,
            i64::from(u32::MAX),
        ),
        large_transaction: amounts(
            p,
            "monitor.large_transaction",
            raw.large_transaction,
            DEFAULT_LARGE_TRANSACTION,
        ),
        window: duration(
            p,
            "monitor.window",
            raw.window,
            DEFAULT_MONITOR_WINDOW,
            ONE_SECOND,
        ),
    }
}

fn build_wechat(raw: RawWechat, base: &str, p: &mut Problems) -> WechatConfig {
    let api_version = match text(raw.api_version).map(|s| s.to_ascii_lowercase()) {
        None => WechatApiVersion::V3,
        Some(s) if s == "v3" => WechatApiVersion::V3,
        Some(s) if s == "v2" => WechatApiVersion::V2,
        Some(s) => {
            p.push(
                "wechat.api_version",
                format!("{s:?} must be \"v3\" or \"v2\""),
            );
            WechatApiVersion::V3
        }
    };
    WechatConfig {
        api_version,
        app_id: text(raw.app_id),
        mch_id: text(raw.mch_id),
        api_v3_key: secret(
            p,
            "wechat",
            "api_v3_key",
            raw.api_v3_key,
            raw.api_v3_key_path,
        ),
        api_key: secret(p, "wechat", "api_key", raw.api_key, raw.api_key_path),
        private_key_path: path(raw.private_key_path),
        cert_serial_no: text(raw.cert_serial_no),
        cert_path: path(raw.cert_path),
        platform_public_key_path: path(raw.platform_public_key_path),
        platform_public_key_id: text(raw.platform_public_key_id),
        platform_cert_dir: path(raw.platform_cert_dir),
        notify_url: derived_url(
            p,
            "wechat.notify_url",
            raw.notify_url,
            format!("{base}/api/v1/notify/wechat"),
        ),
        base_url: base_url(p, "wechat.base_url", raw.base_url, DEFAULT_WECHAT_BASE_URL),
    }
}

fn build_alipay(raw: RawAlipay, base: &str, p: &mut Problems) -> AlipayConfig {
    let private_key_path = path(raw.private_key_path.clone());
    let private_key = secret(
        p,
        "alipay",
        "private_key",
        raw.private_key,
        raw.private_key_path,
    );
    let alipay_public_key = text(raw.alipay_public_key);
    let alipay_public_key_path = path(raw.alipay_public_key_path);
    if alipay_public_key.is_some() && alipay_public_key_path.is_some() {
        p.push(
            "alipay.alipay_public_key",
            "set either alipay_public_key or alipay_public_key_path, not both",
        );
    }
    AlipayConfig {
        app_id: text(raw.app_id),
        seller_id: text(raw.seller_id),
        private_key,
        private_key_path,
        alipay_public_key,
        alipay_public_key_path,
        notify_url: derived_url(
            p,
            "alipay.notify_url",
            raw.notify_url,
            format!("{base}/api/v1/notify/alipay"),
        ),
        return_url: derived_url(
            p,
            "alipay.return_url",
            raw.return_url,
            format!("{base}/payment/return"),
        ),
        gateway: derived_url(
            p,
            "alipay.gateway",
            raw.gateway,
            DEFAULT_ALIPAY_GATEWAY.to_owned(),
        ),
    }
}

fn build_stripe(raw: RawStripe, base: &str, p: &mut Problems) -> StripeConfig {
    StripeConfig {
        secret_key: secret(
            p,
            "stripe",
            "secret_key",
            raw.secret_key,
            raw.secret_key_path,
        ),
        publishable_key: text(raw.publishable_key),
        webhook_secret: secret(
            p,
            "stripe",
            "webhook_secret",
            raw.webhook_secret,
            raw.webhook_secret_path,
        ),
        api_base: base_url(p, "stripe.api_base", raw.api_base, DEFAULT_STRIPE_API_BASE),
        api_version: text(raw.api_version).unwrap_or_else(|| STRIPE_API_VERSION.to_owned()),
        success_url: derived_url(
            p,
            "stripe.success_url",
            raw.success_url,
            format!("{base}/payment/return"),
        ),
        cancel_url: derived_url(
            p,
            "stripe.cancel_url",
            raw.cancel_url,
            format!("{base}/payment/return"),
        ),
    }
}

fn build_notify(raw: RawNotify, p: &mut Problems) -> NotifyConfig {
    let mut allowed_ips = BTreeMap::new();
    for (provider, ips) in raw.allowed_ips.unwrap_or_default() {
        let provider = provider.to_ascii_lowercase();
        let key = format!("notify.allowed_ips.{provider}");
        if !CALLBACK_PROVIDERS.contains(&provider.as_str()) {
            p.push(&key, "unknown provider (expected wechat, alipay or stripe)");
            continue;
        }
        let mut list = Vec::new();
        for ip in ips.0 {
            let ip = ip.trim().to_owned();
            if is_ip_or_cidr(&ip) {
                list.push(ip);
            } else {
                p.push(&key, format!("{ip:?} is not an IP address or CIDR"));
            }
        }
        allowed_ips.insert(provider, list);
    }
    NotifyConfig { allowed_ips }
}

fn build_reconciliation(raw: RawReconciliation, p: &mut Problems) -> ReconciliationConfig {
    let time = match text(raw.time) {
        None => DEFAULT_RECONCILIATION_TIME.to_owned(),
        Some(s) => parse_hhmm(&s).unwrap_or_else(|| {
            p.push(
                "reconciliation.time",
                format!("{s:?} must be a time like \"10:30\" (HH:MM)"),
            );
            DEFAULT_RECONCILIATION_TIME.to_owned()
        }),
    };
    ReconciliationConfig { time }
}

fn build_webhooks(raw: RawWebhooks, p: &mut Problems) -> WebhooksConfig {
    let url = text(raw.url).filter(|u| check_url(p, "webhooks.url", u));
    let secret = secret(p, "webhooks", "secret", raw.secret, raw.secret_path);
    let retry = match raw.retry {
        None => DEFAULT_WEBHOOK_RETRY.to_vec(),
        Some(list) => list
            .0
            .into_iter()
            .filter_map(|entry| {
                let entry = entry.trim().to_owned();
                parse_duration_at(p, "webhooks.retry", &entry, ONE_SECOND)
            })
            .collect(),
    };
    if url.is_some() && secret.is_none() {
        p.push(
            "webhooks.secret",
            "is required when webhooks.url is set: every event is signed with it",
        );
    }
    let timeout = duration(
        p,
        "webhooks.timeout",
        raw.timeout,
        DEFAULT_WEBHOOK_TIMEOUT,
        ONE_SECOND,
    );
    WebhooksConfig {
        url,
        secret,
        retry,
        timeout,
    }
}

fn build_retention(raw: RawRetention, p: &mut Problems) -> RetentionConfig {
    RetentionConfig {
        interval: duration(
            p,
            "retention.interval",
            raw.interval,
            DEFAULT_RETENTION_INTERVAL,
            ONE_SECOND,
        ),
        idempotency_keys: duration(
            p,
            "retention.idempotency_keys",
            raw.idempotency_keys,
            DEFAULT_RETENTION_IDEMPOTENCY_KEYS,
            ONE_SECOND,
        ),
        webhooks: duration(
            p,
            "retention.webhooks",
            raw.webhooks,
            DEFAULT_RETENTION_WEBHOOKS,
            ONE_SECOND,
        ),
    }
}

fn build_packages(
    raw: Vec<(usize, RawPackage)>,
    tiers: &[String],
    p: &mut Problems,
) -> Vec<PackageSeed> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (index, pkg) in raw {
        let id = text(pkg.id);
        let key = match &id {
            Some(id) => format!("packages.{id}"),
            None => format!("packages[{index}]"),
        };
        let field = |name: &str| format!("{key}.{name}");

        let id = match id {
            None => {
                p.push(&field("id"), "is required");
                String::new()
            }
            Some(id) => {
                if !is_package_id(&id) {
                    p.push(
                        &field("id"),
                        "must be 1 to 64 characters of a-z, 0-9, _ and -",
                    );
                } else if !seen.insert(id.clone()) {
                    p.push(&field("id"), "is used by more than one package");
                }
                id
            }
        };

        let kind = match text(pkg.kind).map(|s| s.to_ascii_lowercase()) {
            None => {
                p.push(&field("kind"), "is required (\"membership\" or \"points\")");
                None
            }
            Some(s) if s == "membership" => Some(PackageKind::Membership),
            Some(s) if s == "points" => Some(PackageKind::Points),
            Some(s) => {
                p.push(
                    &field("kind"),
                    format!("{s:?} must be \"membership\" or \"points\""),
                );
                None
            }
        };

        let name = text(pkg.name).unwrap_or_else(|| {
            p.push(&field("name"), "is required");
            String::new()
        });
        let description = text(pkg.description).unwrap_or_default();

        let amount = match pkg.amount {
            None => {
                p.push(&field("amount"), "is required (minor units)");
                0
            }
            Some(a) if a <= 0 => {
                p.push(&field("amount"), "must be greater than 0");
                0
            }
            Some(a) => a,
        };

        let currency = match text(pkg.currency) {
            None => {
                p.push(&field("currency"), "is required");
                String::new()
            }
            Some(c) => {
                if !is_currency(&c) {
                    p.push(
                        &field("currency"),
                        format!("{c:?} must be 3 uppercase letters"),
                    );
                }
                c
            }
        };

        let is_active = pkg.is_active.is_none_or(|f| f.0);
        let sort_order = int(
            p,
            &field("sort_order"),
            pkg.sort_order,
            0_i32,
            i64::from(i32::MIN),
            i64::from(i32::MAX),
        );

        let membership_type = text(pkg.membership_type);
        let mut seed = PackageSeed {
            id,
            kind: PackageKind::Membership,
            name,
            description,
            amount,
            currency,
            membership_type: None,
            validity_days: None,
            queries_count: None,
            points: None,
            bonus_points: None,
            is_active,
            sort_order,
        };

        match kind {
            None => continue,
            Some(PackageKind::Membership) => {
                seed.kind = PackageKind::Membership;
                match membership_type {
                    None => p.push(
                        &field("membership_type"),
                        "is required for a membership package",
                    ),
                    Some(t) => {
                        if !tiers.contains(&t) {
                            p.push(
                                &field("membership_type"),
                                format!(
                                    "{t:?} is not one of membership.tiers ({})",
                                    tiers.join(", ")
                                ),
                            );
                        }
                        seed.membership_type = Some(t);
                    }
                }
                match pkg.validity_days {
                    None => p.push(
                        &field("validity_days"),
                        "is required for a membership package",
                    ),
                    Some(_) => {
                        seed.validity_days = Some(int(
                            p,
                            &field("validity_days"),
                            pkg.validity_days,
                            1_u32,
                            1,
                            i64::from(u32::MAX),
                        ));
                    }
                }
                match pkg.queries_count {
                    None => p.push(
                        &field("queries_count"),
                        "is required for a membership package (0 is allowed)",
                    ),
                    Some(_) => {
                        seed.queries_count = Some(int(
                            p,
                            &field("queries_count"),
                            pkg.queries_count,
                            0_u32,
                            0,
                            i64::from(u32::MAX),
                        ));
                    }
                }
                if pkg.points.is_some() {
                    p.push(&field("points"), "is not allowed on a membership package");
                }
                if pkg.bonus_points.is_some() {
                    p.push(
                        &field("bonus_points"),
                        "is not allowed on a membership package",
                    );
                }
            }
            Some(PackageKind::Points) => {
                seed.kind = PackageKind::Points;
                match pkg.points {
                    None => p.push(&field("points"), "is required for a points package"),
                    Some(_) => {
                        seed.points =
                            Some(int(p, &field("points"), pkg.points, 1_u64, 1, i64::MAX));
                    }
                }
                seed.bonus_points = Some(int(
                    p,
                    &field("bonus_points"),
                    pkg.bonus_points,
                    0_u64,
                    0,
                    i64::MAX,
                ));
                if membership_type.is_some() {
                    p.push(
                        &field("membership_type"),
                        "is not allowed on a points package",
                    );
                }
                if pkg.validity_days.is_some() {
                    p.push(
                        &field("validity_days"),
                        "is not allowed on a points package",
                    );
                }
                if pkg.queries_count.is_some() {
                    p.push(
                        &field("queries_count"),
                        "is not allowed on a points package",
                    );
                }
            }
        }
        out.push(seed);
    }
    out
}

// ---------------------------------------------------------------------------
// Field helpers
// ---------------------------------------------------------------------------

/// Trimmed text; empty means "not set".
fn text(raw: Option<Text>) -> Option<String> {
    raw.map(|t| t.0.trim().to_owned()).filter(|s| !s.is_empty())
}

fn path(raw: Option<Text>) -> Option<PathBuf> {
    text(raw).map(PathBuf::from)
}

fn list(raw: Option<TextList>) -> Vec<String> {
    raw.map(|l| l.0)
        .unwrap_or_default()
        .into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

fn socket_addr(p: &mut Problems, key: &str, raw: Option<Text>) -> Option<SocketAddr> {
    let s = text(raw)?;
    match s.parse::<SocketAddr>() {
        Ok(addr) => Some(addr),
        Err(_) => {
            p.push(
                key,
                format!("{s:?} is not an address like \"127.0.0.1:3007\""),
            );
            None
        }
    }
}

/// An `http(s)://` URL used as a prefix: trailing slashes are trimmed.
fn base_url(p: &mut Problems, key: &str, raw: Option<Text>, default: &str) -> String {
    let url = text(raw).unwrap_or_else(|| default.to_owned());
    let url = url.trim_end_matches('/').to_owned();
    if check_url(p, key, &url) {
        url
    } else {
        default.to_owned()
    }
}

/// An `http(s)://` URL kept as written, defaulting to `derived`.
fn derived_url(p: &mut Problems, key: &str, raw: Option<Text>, derived: String) -> String {
    match text(raw) {
        None => derived,
        Some(url) => {
            check_url(p, key, &url);
            url
        }
    }
}

fn check_url(p: &mut Problems, key: &str, url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    let host = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"));
    match host {
        Some(rest) if !rest.is_empty() && !rest.starts_with('/') => true,
        _ => {
            p.push(key, format!("{url:?} must start with http:// or https://"));
            false
        }
    }
}

fn secret(
    p: &mut Problems,
    section: &str,
    key: &str,
    inline: Option<Text>,
    file: Option<Text>,
) -> Option<Secret> {
    let full = format!("{section}.{key}");
    match (text(inline), text(file)) {
        (Some(_), Some(_)) => {
            p.push(&full, format!("set either {key} or {key}_path, not both"));
            None
        }
        (Some(value), None) => Some(Secret(value)),
        (None, Some(file)) => {
            let path_key = format!("{full}_path");
            match std::fs::read_to_string(&file) {
                Ok(contents) => {
                    let contents = contents.trim();
                    if contents.is_empty() {
                        p.push(&path_key, format!("{file} is empty"));
                        None
                    } else {
                        Some(Secret(contents.to_owned()))
                    }
                }
                Err(e) => {
                    p.push(&path_key, format!("cannot read {file}: {e}"));
                    None
                }
            }
        }
        (None, None) => None,
    }
}

fn duration(
    p: &mut Problems,
    key: &str,
    raw: Option<Text>,
    default: Duration,
    min: Duration,
) -> Duration {
    match text(raw) {
        None => default,
        Some(s) => parse_duration_at(p, key, &s, min).unwrap_or(default),
    }
}

fn parse_duration_at(p: &mut Problems, key: &str, s: &str, min: Duration) -> Option<Duration> {
    match humantime::parse_duration(s) {
        Ok(d) if d < min => {
            p.push(
                key,
                format!("must be at least {}", humantime::format_duration(min)),
            );
            None
        }
        Ok(d) => Some(d),
        Err(e) => {
            p.push(
                key,
                format!("{s:?} is not a duration ({e}); use e.g. \"90s\", \"30m\", \"2h\""),
            );
            None
        }
    }
}

fn size(p: &mut Problems, key: &str, raw: Option<Text>, default: u64) -> u64 {
    match text(raw) {
        None => default,
        Some(s) => match parse_size(&s) {
            Ok(n) => n,
            Err(reason) => {
                p.push(
                    key,
                    format!("{s:?} is not a size ({reason}); use e.g. \"64KiB\", \"128MiB\""),
                );
                default
            }
        },
    }
}

/// `"512B"`, `"64KB"` (1000), `"64KiB"` (1024), up to TB / TiB; a bare number
/// is bytes. Units are case-insensitive.
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    if digits.is_empty() {
        return Err("expected a whole number followed by a unit".to_owned());
    }
    let n: u64 = digits.parse().map_err(|_| "number too large".to_owned())?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        other => return Err(format!("unknown unit {other:?}")),
    };
    n.checked_mul(multiplier)
        .ok_or_else(|| "too large".to_owned())
}

fn int<T: TryFrom<i64>>(
    p: &mut Problems,
    key: &str,
    raw: Option<i64>,
    default: T,
    min: i64,
    max: i64,
) -> T {
    let Some(v) = raw else { return default };
    if v < min {
        p.push(key, format!("must be at least {min}"));
        return default;
    }
    if v > max {
        p.push(key, format!("must be at most {max}"));
        return default;
    }
    T::try_from(v).unwrap_or(default)
}

fn rate(p: &mut Problems, key: &str, raw: Option<f64>, default: f64) -> f64 {
    match raw {
        None => default,
        Some(r) if r.is_finite() && (0.0..=1.0).contains(&r) => r,
        Some(_) => {
            p.push(key, "must be between 0 and 1");
            default
        }
    }
}

fn amounts(
    p: &mut Problems,
    key: &str,
    raw: Option<BTreeMap<String, i64>>,
    default: &[(&str, i64)],
) -> BTreeMap<String, i64> {
    let Some(raw) = raw else {
        return default.iter().map(|(c, a)| ((*c).to_owned(), *a)).collect();
    };
    let mut out = BTreeMap::new();
    for (currency, amount) in raw {
        let entry_key = format!("{key}.{currency}");
        let mut ok = true;
        if !is_currency(&currency) {
            p.push(&entry_key, "currency must be 3 uppercase letters");
            ok = false;
        }
        if amount <= 0 {
            p.push(&entry_key, "amount must be greater than 0");
            ok = false;
        }
        if ok {
            out.insert(currency, amount);
        }
    }
    out
}

fn is_currency(c: &str) -> bool {
    c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase())
}

fn is_package_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn is_ip_or_cidr(s: &str) -> bool {
    match s.split_once('/') {
        None => s.parse::<IpAddr>().is_ok(),
        Some((ip, len)) => {
            let len_ok = !len.is_empty() && len.bytes().all(|b| b.is_ascii_digit());
            match (ip.parse::<IpAddr>(), len.parse::<u8>()) {
                (Ok(IpAddr::V4(_)), Ok(l)) => len_ok && l <= 32,
                (Ok(IpAddr::V6(_)), Ok(l)) => len_ok && l <= 128,
                _ => false,
            }
        }
    }
}

/// `"HH:MM"` (a TOML local time such as `10:30:00` is accepted when its seconds
/// are zero), normalized to `"HH:MM"`.
fn parse_hhmm(s: &str) -> Option<String> {
    let s = s.strip_suffix(":00").filter(|r| r.len() == 5).unwrap_or(s);
    let b = s.as_bytes();
    if b.len() != 5 || b[2] != b':' {
        return None;
    }
    if ![b[0], b[1], b[3], b[4]].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let hour = (b[0] - b'0') * 10 + (b[1] - b'0');
    let minute = (b[3] - b'0') * 10 + (b[4] - b'0');
    (hour < 24 && minute < 60).then(|| s.to_owned())
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    const REAL_SECRET: &str = "a-real-secret-that-is-long-enough";

    fn load_with(toml_text: &str, pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let lookup = |name: &str| {
            vars.iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        load_from_str(toml_text, &lookup, &vars)
    }

    fn error_text(result: Result<Config, ConfigError>) -> String {
        match result {
            Ok(config) => panic!("expected an error, got {config:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn shipped_config_loads() {
        let config =
            load_with(include_str!("../config.toml"), &[]).expect("shipped config.toml loads");
        assert_eq!(config.packages.len(), 5);
        assert!(config.payment.mock_mode);
        assert_eq!(
            config.server.bind,
            "127.0.0.1:3007".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(config.storage.path, PathBuf::from("./data"));

        let ids: Vec<&str> = config.packages.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(
            ids,
            ["basic", "premium", "enterprise", "coins_100", "coins_500"]
        );

        let basic = &config.packages[0];
        assert_eq!(basic.kind, PackageKind::Membership);
        assert_eq!(basic.name, "基础套餐");
        assert_eq!(basic.amount, 990);
        assert_eq!(basic.currency, "CNY");
        assert_eq!(basic.membership_type.as_deref(), Some("pro"));
        assert_eq!(basic.validity_days, Some(30));
        assert_eq!(basic.queries_count, Some(100));
        assert_eq!(basic.sort_order, 1);
        assert!(basic.is_active);

        let coins = &config.packages[4];
        assert_eq!(coins.kind, PackageKind::Points);
        assert_eq!(coins.name, "500 金币");
        assert_eq!(coins.amount, 4490);
        assert_eq!(coins.points, Some(500));
        assert_eq!(coins.bonus_points, Some(75));
        assert_eq!(coins.membership_type, None);
        assert_eq!(coins.sort_order, 11);
    }

    #[test]
    fn shipped_config_matches_builtin_defaults() {
        let shipped = load_with(include_str!("../config.toml"), &[]).unwrap();
        let builtin = load_with("", &[]).unwrap();
        // Everything but packages should be the same: the file spells out defaults.
        let strip = |c: &Config| {
            let mut c = c.clone();
            c.packages.clear();
            format!("{c:?}")
        };
        assert_eq!(strip(&shipped), strip(&builtin));
    }

    #[test]
    fn defaults_from_empty_string() {
        let c = load_with("", &[]).unwrap();
        assert_eq!(c.server.bind, SocketAddr::from(([127, 0, 0, 1], 3007)));
        assert_eq!(c.server.base_url, "http://127.0.0.1:3007");
        assert!(c.server.trusted_proxies.is_empty());
        assert!(c.server.cors_origins.is_empty());
        assert_eq!(c.server.body_limit_bytes, 64 * 1024);
        assert_eq!(c.server.metrics_bind, None);
        assert_eq!(c.storage.path, PathBuf::from("./data"));
        assert_eq!(c.storage.cache_size_bytes, 64 * 1024 * 1024);
        assert_eq!(c.storage.max_journal_size_bytes, 128 * 1024 * 1024);
        assert_eq!(c.actors.passivate_after, Duration::from_secs(30));
        assert_eq!(c.actors.restart_budget, 3);
        assert!(c.auth.jwt_secret.is_placeholder());
        assert_eq!(c.auth.leeway, Duration::from_secs(5));
        assert_eq!(c.auth.issuer, None);
        assert!(c.payment.enabled);
        assert!(c.payment.mock_mode);
        assert_eq!(c.payment.order_expire, Duration::from_secs(1800));
        assert_eq!(c.payment.qr_code_expire, Duration::from_secs(900));
        assert_eq!(c.payment.query_retry_max, 5);
        assert_eq!(c.payment.query_interval, Duration::from_secs(60));
        assert_eq!(c.payment.max_order_amount.get("CNY"), Some(&1_000_000));
        assert_eq!(c.payment.max_order_amount.get("USD"), Some(&200_000));
        assert_eq!(c.payment.upgrade_min_amount.get("CNY"), Some(&100));
        assert_eq!(c.payment.upgrade_min_amount.get("USD"), Some(&50));
        assert_eq!(c.payment.late_payment, LatePayment::Grant);
        assert_eq!(c.membership.tiers, ["pro", "premium"]);
        assert_eq!(c.providers.timeout, Duration::from_secs(10));
        assert_eq!(c.providers.max_concurrency, 32);
        assert_eq!(c.rate_limit.payment_per_minute, 20);
        assert_eq!(c.rate_limit.read_per_minute, 600);
        assert_eq!(c.rate_limit.callback_per_minute, 6000);
        assert!((c.monitor.failure_rate_alert - 0.10).abs() < 1e-12);
        assert!((c.monitor.refund_rate_alert - 0.05).abs() < 1e-12);
        assert_eq!(c.monitor.min_volume, 20);
        assert_eq!(c.monitor.large_transaction.get("CNY"), Some(&100_000));
        assert_eq!(c.monitor.large_transaction.get("USD"), Some(&20_000));
        assert_eq!(c.monitor.window, Duration::from_secs(3600));
        assert_eq!(c.wechat.api_version, WechatApiVersion::V3);
        assert_eq!(c.wechat.base_url, "https://api.mch.weixin.qq.com");
        assert_eq!(
            c.wechat.notify_url,
            "http://127.0.0.1:3007/api/v1/notify/wechat"
        );
        assert_eq!(c.wechat.mch_id, None);
        assert_eq!(c.alipay.gateway, "https://openapi.alipay.com/gateway.do");
        assert_eq!(
            c.alipay.notify_url,
            "http://127.0.0.1:3007/api/v1/notify/alipay"
        );
        assert_eq!(c.alipay.return_url, "http://127.0.0.1:3007/payment/return");
        assert_eq!(c.stripe.api_base, "https://api.stripe.com");
        assert_eq!(c.stripe.api_version, "2025-08-27.basil");
        assert_eq!(c.stripe.success_url, "http://127.0.0.1:3007/payment/return");
        assert_eq!(c.stripe.cancel_url, "http://127.0.0.1:3007/payment/return");
        assert!(c.notify.allowed_ips.is_empty());
        assert_eq!(c.reconciliation.time, "10:30");
        assert_eq!(c.webhooks.url, None);
        assert!(c.webhooks.secret.is_none());
        assert_eq!(c.webhooks.retry.len(), 9);
        assert_eq!(c.webhooks.retry[0], Duration::from_secs(15));
        assert_eq!(c.webhooks.retry[8], Duration::from_secs(24 * 3600));
        assert_eq!(c.webhooks.timeout, Duration::from_secs(10));
        assert_eq!(c.retention.interval, Duration::from_secs(3600));
        assert_eq!(c.retention.idempotency_keys, Duration::from_secs(24 * 3600));
        assert_eq!(c.retention.webhooks, Duration::from_secs(7 * 24 * 3600));
        assert!(c.packages.is_empty());
    }

    #[test]
    fn integrator_env_names_override() {
        let c = load_with(
            "",
            &[
                ("ORDER_EXPIRE_MINUTES", "2"),
                ("PAYMENT_MOCK_MODE", "false"),
                ("JWT_SECRET", REAL_SECRET),
                ("PAYMENT_ENABLED", "No"),
                ("PAYMENT_QUERY_INTERVAL_SECONDS", "30"),
                ("RATE_LIMIT_PAYMENT_PER_MINUTE", "7"),
                ("WECHAT_PAY_MCH_ID", "1230000109"),
            ],
        )
        .unwrap();
        assert_eq!(c.payment.order_expire, Duration::from_secs(120));
        // QR cadence is capped by the (now shorter) order lifetime.
        assert_eq!(c.payment.qr_code_expire, Duration::from_secs(120));
        assert!(!c.payment.mock_mode);
        assert!(!c.payment.enabled);
        assert_eq!(c.auth.jwt_secret.expose(), REAL_SECRET);
        assert_eq!(c.payment.query_interval, Duration::from_secs(30));
        assert_eq!(c.rate_limit.payment_per_minute, 7);
        assert_eq!(c.wechat.mch_id.as_deref(), Some("1230000109"));
    }

    #[test]
    fn first_alias_wins_and_empty_is_unset() {
        let c = load_with(
            "[wechat]\napp_id = \"wx_file\"\n",
            &[
                ("WECHAT_PAY_MCH_ID", "111"),
                ("WECHAT_MCH_ID", "222"),
                ("WECHAT_PAY_APP_ID", ""),
            ],
        )
        .unwrap();
        assert_eq!(c.wechat.mch_id.as_deref(), Some("111"));
        assert_eq!(c.wechat.app_id.as_deref(), Some("wx_file"));

        let c = load_with("", &[("WECHAT_MCH_ID", "222")]).unwrap();
        assert_eq!(c.wechat.mch_id.as_deref(), Some("222"));
    }

    #[test]
    fn generic_payd_names_override() {
        let c = load_with(
            "[server]\nbind = \"127.0.0.1:1\"\n",
            &[
                ("PAYD_SERVER__BIND", "0.0.0.0:8080"),
                ("PAYD_STORAGE__PATH", "/var/lib/payd"),
                ("PAYD_STORAGE__CACHE_SIZE", "1GiB"),
                (
                    "PAYD_SERVER__CORS_ORIGINS",
                    "https://a.example/, https://b.example",
                ),
                ("PAYD_MONITOR__LARGE_TRANSACTION__CNY", "5000"),
                ("PAYD_PAYMENT__MAX_ORDER_AMOUNT", "{ EUR = 10000 }"),
                ("PAYD_MONITOR__FAILURE_RATE_ALERT", "0.25"),
                ("PAYD_WECHAT__MCH_ID", "0123"),
                ("UNRELATED__THING", "x"),
            ],
        )
        .unwrap();
        assert_eq!(c.server.bind, "0.0.0.0:8080".parse::<SocketAddr>().unwrap());
        assert_eq!(c.storage.path, PathBuf::from("/var/lib/payd"));
        assert_eq!(c.storage.cache_size_bytes, 1 << 30);
        assert_eq!(
            c.server.cors_origins,
            ["https://a.example", "https://b.example"]
        );
        assert_eq!(c.monitor.large_transaction.get("CNY"), Some(&5000));
        assert_eq!(c.payment.max_order_amount.len(), 1);
        assert_eq!(c.payment.max_order_amount.get("EUR"), Some(&10000));
        assert!((c.monitor.failure_rate_alert - 0.25).abs() < 1e-12);
        assert_eq!(c.wechat.mch_id.as_deref(), Some("0123"));
    }

    #[test]
    fn derived_urls_follow_base_url_from_env() {
        let c = load_with(
            "[server]\nbase_url = \"http://file.example\"\n[alipay]\nreturn_url = \"https://shop.example/done\"\n",
            &[("BASE_URL", "https://pay.example.com/")],
        )
        .unwrap();
        assert_eq!(c.server.base_url, "https://pay.example.com");
        assert_eq!(
            c.wechat.notify_url,
            "https://pay.example.com/api/v1/notify/wechat"
        );
        assert_eq!(
            c.alipay.notify_url,
            "https://pay.example.com/api/v1/notify/alipay"
        );
        assert_eq!(c.alipay.return_url, "https://shop.example/done");
        assert_eq!(
            c.stripe.success_url,
            "https://pay.example.com/payment/return"
        );
    }

    #[test]
    fn bad_env_value_names_variable_and_key() {
        let err = error_text(load_with("", &[("PAYMENT_MOCK_MODE", "maybe")]));
        assert!(err.contains("PAYMENT_MOCK_MODE"), "{err}");
        assert!(err.contains("payment.mock_mode"), "{err}");

        let err = error_text(load_with("", &[("ORDER_EXPIRE_MINUTES", "ten")]));
        assert!(err.contains("ORDER_EXPIRE_MINUTES"), "{err}");
        assert!(err.contains("payment.order_expire"), "{err}");

        let err = error_text(load_with("", &[("ORDER_EXPIRE_MINUTES", "0")]));
        assert!(
            err.contains("payment.order_expire: must be at least 1s"),
            "{err}"
        );
        assert!(err.contains("ORDER_EXPIRE_MINUTES"), "{err}");
    }

    #[test]
    fn bad_duration_names_its_key() {
        let err = error_text(load_with("[payment]\norder_expire = \"soon\"\n", &[]));
        assert!(err.contains("payment.order_expire"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");

        let err = error_text(load_with("[payment]\norder_expire = \"0s\"\n", &[]));
        assert!(
            err.contains("payment.order_expire: must be at least 1s"),
            "{err}"
        );
    }

    #[test]
    fn late_payment_takes_grant_or_refund_only() {
        let c = load_with("[payment]\nlate_payment = \"refund\"\n", &[]).unwrap();
        assert_eq!(c.payment.late_payment, LatePayment::Refund);
        let err = error_text(load_with("[payment]\nlate_payment = \"keep\"\n", &[]));
        assert!(err.contains("payment.late_payment"), "{err}");

        let c = load_with("[payment]\nlate_payment = \"grant\"\n", &[]).unwrap();
        assert_eq!(c.payment.late_payment, LatePayment::Grant);
    }

    #[test]
    fn unknown_key_is_refused_by_name() {
        let err = error_text(load_with("[server]\nbnd = \"0.0.0.0:1\"\n", &[]));
        assert!(err.contains("server.bnd"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");

        let err = error_text(load_with("[sever]\nbind = \"0.0.0.0:1\"\n", &[]));
        assert!(err.contains("sever"), "{err}");

        let err = error_text(load_with("", &[("PAYD_SERVER__BND", "x")]));
        assert!(err.contains("server.bnd"), "{err}");
        assert!(err.contains("PAYD_SERVER__BND"), "{err}");
    }

    #[test]
    fn placeholder_secret_refused_without_mock_mode() {
        let err = error_text(load_with("", &[("PAYMENT_MOCK_MODE", "false")]));
        assert!(err.contains("auth.jwt_secret"), "{err}");
        assert!(err.contains("set JWT_SECRET"), "{err}");

        let err = error_text(load_with("[auth]\njwt_secret = \"short\"\n", &[]));
        assert!(
            err.contains("auth.jwt_secret: must be at least 16 bytes"),
            "{err}"
        );
    }

    #[test]
    fn secret_debug_is_redacted() {
        let secret = Secret::new("hunter2-hunter2-hunter2");
        assert_eq!(format!("{secret:?}"), "[redacted]");
        assert_eq!(format!("{secret}"), "[redacted]");
        assert_eq!(secret.expose(), "hunter2-hunter2-hunter2");

        let c = load_with(
            "",
            &[
                ("JWT_SECRET", REAL_SECRET),
                ("STRIPE_SECRET_KEY", "sk_test_abcdef"),
            ],
        )
        .unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains(REAL_SECRET), "{debug}");
        assert!(!debug.contains("sk_test_abcdef"), "{debug}");
    }

    #[test]
    fn all_problems_are_collected() {
        let err = load_with(
            "[payment]\norder_expire = \"soon\"\nquery_retry_max = 500\n[actors]\nrestart_budget = 0\n\
             [reconciliation]\ntime = \"25:00\"\n[server]\nbody_limit = \"1GiB\"\n",
            &[],
        )
        .unwrap_err();
        let problems = err.problems();
        assert_eq!(problems.len(), 5, "{problems:?}");
        let text = err.to_string();
        for key in [
            "payment.order_expire",
            "payment.query_retry_max",
            "actors.restart_budget",
            "reconciliation.time",
            "server.body_limit",
        ] {
            assert!(text.contains(key), "{key} missing from {text}");
        }
        assert!(!text.contains('\n'));
    }

    #[test]
    fn type_errors_name_the_key() {
        let err = error_text(load_with("[actors]\nrestart_budget = \"three\"\n", &[]));
        assert!(err.contains("actors.restart_budget"), "{err}");

        let err = error_text(load_with(
            "[payment]\nmax_order_amount = { CNY = 1.5 }\n",
            &[],
        ));
        assert!(err.contains("payment.max_order_amount"), "{err}");

        let err = error_text(load_with(
            "[payment]\nmax_order_amount = { cny = 0 }\n",
            &[],
        ));
        assert!(err.contains("payment.max_order_amount.cny"), "{err}");
    }

    #[test]
    fn toml_syntax_error_is_one_line() {
        let err = error_text(load_with("[server\nbind = 1\n", &[]));
        assert!(err.contains("invalid TOML"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn package_rules() {
        let base = "[[packages]]\nid = \"p\"\nname = \"P\"\namount = 100\ncurrency = \"CNY\"\n";
        let err = error_text(load_with(
            &format!(
                "{base}kind = \"membership\"\nmembership_type = \"pro\"\nvalidity_days = 30\nqueries_count = 0\npoints = 5\n"
            ),
            &[],
        ));
        assert!(err.contains("packages.p.points"), "{err}");

        let err = error_text(load_with(
            &format!(
                "{base}kind = \"membership\"\nmembership_type = \"gold\"\nvalidity_days = 0\n"
            ),
            &[],
        ));
        assert!(err.contains("packages.p.membership_type"), "{err}");
        assert!(err.contains("packages.p.validity_days"), "{err}");
        assert!(err.contains("packages.p.queries_count"), "{err}");

        let c = load_with(&format!("{base}kind = \"points\"\npoints = 5\n"), &[]).unwrap();
        assert_eq!(c.packages[0].bonus_points, Some(0));
        assert_eq!(c.packages[0].description, "");
        assert!(c.packages[0].is_active);
        assert_eq!(c.packages[0].sort_order, 0);

        let err = error_text(load_with(
            &format!("{base}kind = \"points\"\npoints = 5\n{base}kind = \"points\"\npoints = 0\n"),
            &[],
        ));
        assert!(err.contains("packages.p.id"), "{err}");
        assert!(err.contains("packages.p.points"), "{err}");

        let err = error_text(load_with(
            "[[packages]]\nid = \"Bad Id\"\nkind = \"points\"\nname = \"x\"\namount = -1\ncurrency = \"cny\"\npoints = 1\n",
            &[],
        ));
        assert!(err.contains(".id"), "{err}");
        assert!(err.contains(".amount"), "{err}");
        assert!(err.contains(".currency"), "{err}");
    }

    #[test]
    fn secret_path_form() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("jwt");
        std::fs::write(&file, format!("  {REAL_SECRET}\n")).unwrap();
        let toml_text = format!(
            "[auth]\njwt_secret_path = {:?}\n",
            file.display().to_string()
        );
        let c = load_with(&toml_text, &[]).unwrap();
        assert_eq!(c.auth.jwt_secret.expose(), REAL_SECRET);

        // The environment's inline form replaces the file's path form.
        let c = load_with(&toml_text, &[("JWT_SECRET", "another-secret-0123456789")]).unwrap();
        assert_eq!(c.auth.jwt_secret.expose(), "another-secret-0123456789");

        let both = format!("{toml_text}jwt_secret = \"{REAL_SECRET}\"\n");
        let err = error_text(load_with(&both, &[]));
        assert!(err.contains("auth.jwt_secret"), "{err}");

        let missing = dir.path().join("nope");
        let toml_text = format!(
            "[stripe]\nsecret_key_path = {:?}\n",
            missing.display().to_string()
        );
        let err = error_text(load_with(&toml_text, &[]));
        assert!(err.contains("stripe.secret_key_path"), "{err}");
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn missing_file_names_the_path() {
        let lookup = |_: &str| -> Option<String> { None };
        let err = load(Path::new("/definitely/not/here/payd.toml"), &lookup, &[]).unwrap_err();
        assert!(
            err.to_string().contains("/definitely/not/here/payd.toml"),
            "{err}"
        );
    }

    #[test]
    fn dotenv_is_read_and_real_env_wins() {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, "").unwrap();
        let dotenv_path = dir.path().join(".env");
        std::fs::write(
            &dotenv_path,
            "# comment\nexport ORDER_EXPIRE_MINUTES=3\nPAYD_SERVER__BIND='0.0.0.0:9000'\nBASE_URL=\"https://env.example\" # note\n",
        )
        .unwrap();
        let vars = vec![("BASE_URL".to_owned(), "https://real.example".to_owned())];
        let lookup = |name: &str| (name == "BASE_URL").then(|| "https://real.example".to_owned());
        let c = load_with_dotenv(&config_path, Some(&dotenv_path), &lookup, &vars).unwrap();
        assert_eq!(c.payment.order_expire, Duration::from_secs(180));
        assert_eq!(c.server.bind, "0.0.0.0:9000".parse::<SocketAddr>().unwrap());
        assert_eq!(c.server.base_url, "https://real.example");
    }

    #[test]
    fn dotenv_parsing() {
        let parsed = parse_dotenv(
            "A=1\n  export B = two words # comment\nC=\"quoted # not comment\\n\"\nD='single'\nE=\nF=x#y\r\n",
        )
        .unwrap();
        let get = |k: &str| {
            parsed
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("A"), Some("1"));
        assert_eq!(get("B"), Some("two words"));
        assert_eq!(get("C"), Some("quoted # not comment\n"));
        assert_eq!(get("D"), Some("single"));
        assert_eq!(get("E"), Some(""));
        assert_eq!(get("F"), Some("x#y"));
        assert!(parse_dotenv("NOEQUALS\n").is_err());
        assert!(parse_dotenv("A=\"open\n").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("64KB"), Ok(64_000));
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size("128MiB"), Ok(128 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("99999999999TiB").is_err());
    }

    #[test]
    fn reconciliation_time_and_cidrs() {
        assert_eq!(parse_hhmm("10:30").as_deref(), Some("10:30"));
        assert_eq!(parse_hhmm("10:30:00").as_deref(), Some("10:30"));
        assert_eq!(parse_hhmm("00:00").as_deref(), Some("00:00"));
        assert_eq!(parse_hhmm("24:00"), None);
        assert_eq!(parse_hhmm("9:30"), None);
        assert!(is_ip_or_cidr("10.0.0.0/8"));
        assert!(is_ip_or_cidr("::1"));
        assert!(is_ip_or_cidr("2001:db8::/32"));
        assert!(!is_ip_or_cidr("10.0.0.0/33"));
        assert!(!is_ip_or_cidr("example.com"));

        let c = load_with(
            "[notify.allowed_ips]\nwechat = [\"101.226.103.0/25\"]\n[reconciliation]\ntime = \"02:15\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.notify.allowed_ips["wechat"], ["101.226.103.0/25"]);
        assert_eq!(c.reconciliation.time, "02:15");
    }
}
