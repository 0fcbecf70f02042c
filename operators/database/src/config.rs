//! The operator's configuration file: the database servers it may provision on, each with an
//! admin DSN read from a file or an environment variable (never from the file itself, never
//! logged), and the host and port that applications use to reach it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::types::DatabaseEngine;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OperatorConfig {
    /// Servers by name (`spec.server`; `default` when unset).
    #[serde(default)]
    pub servers: BTreeMap<String, ServerConfig>,
}

/// One database server.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerConfig {
    /// PostgreSQL or MySQL (MariaDB).
    pub engine: DatabaseEngine,
    /// A file holding the admin DSN (e.g. a mounted Secret).
    #[serde(default)]
    pub admin_dsn_file: Option<PathBuf>,
    /// An environment variable holding the admin DSN.
    #[serde(default)]
    pub admin_dsn_env: Option<String>,
    /// Host applications connect to (written to Secrets); default: the DSN's host.
    #[serde(default)]
    pub host: Option<String>,
    /// Port applications connect to; default: the DSN's port.
    #[serde(default)]
    pub port: Option<u16>,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("engine", &self.engine)
            .field("admin_dsn_file", &self.admin_dsn_file)
            .field("admin_dsn_env", &self.admin_dsn_env)
            .field("host", &self.host)
            .field("port", &self.port)
            .finish()
    }
}

/// A server ready to use: engine, admin DSN (secret) and the public address.
#[derive(Clone)]
pub struct Server {
    /// Name in the configuration.
    pub name: String,
    /// Engine.
    pub engine: DatabaseEngine,
    /// The admin DSN; secret.
    pub admin_dsn: String,
    /// Host for applications.
    pub host: String,
    /// Port for applications.
    pub port: u16,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("name", &self.name)
            .field("engine", &self.engine)
            .field("admin_dsn", &"***")
            .field("host", &self.host)
            .field("port", &self.port)
            .finish()
    }
}

/// The environment variable that overrides (or provides) server `name`'s admin DSN:
/// `DATABASE_OPERATOR_ADMIN_DSN_<NAME>`, upper-cased, `-` as `_`.
pub fn dsn_env_var(name: &str) -> String {
    format!(
        "DATABASE_OPERATOR_ADMIN_DSN_{}",
        name.to_uppercase().replace('-', "_")
    )
}

impl OperatorConfig {
    /// Read `path` (YAML); unknown fields are errors with their line.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_saphyr::from_str(&text).map_err(|e| {
            let first = e.to_string().lines().next().unwrap_or_default().to_string();
            anyhow::anyhow!("{}: {}", path.display(), first.trim_start_matches("error: "))
        })
    }

    /// Resolve every server: read DSNs from files or the environment (`env` looks variables
    /// up, so tests need not touch the process environment).
    pub fn resolve(&self, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Vec<Server>> {
        let mut out = Vec::new();
        for (name, s) in &self.servers {
            let dsn = match (env(&dsn_env_var(name)), &s.admin_dsn_env, &s.admin_dsn_file) {
                (Some(v), _, _) => v,
                (None, Some(var), _) => env(var)
                    .with_context(|| format!("server {name:?}: environment variable {var} is not set"))?,
                (None, None, Some(file)) => std::fs::read_to_string(file)
                    .with_context(|| format!("server {name:?}: reading adminDsnFile {}", file.display()))?
                    .trim()
                    .to_string(),
                (None, None, None) => bail!(
                    "server {name:?}: set adminDsnFile or adminDsnEnv (or the environment variable {})",
                    dsn_env_var(name)
                ),
            };
            let url = url::Url::parse(&dsn)
                .map_err(|e| anyhow::anyhow!("server {name:?}: the admin DSN is not a URL ({e})"))?;
            let scheme_ok = match s.engine {
                DatabaseEngine::PostgreSQL => matches!(url.scheme(), "postgres" | "postgresql"),
                DatabaseEngine::MySQL => matches!(url.scheme(), "mysql" | "mariadb"),
            };
            if !scheme_ok {
                bail!(
                    "server {name:?}: a {} server needs a DSN of scheme {}",
                    s.engine,
                    match s.engine {
                        DatabaseEngine::PostgreSQL => "postgresql://",
                        DatabaseEngine::MySQL => "mysql://",
                    }
                );
            }
            let default_port = match s.engine {
                DatabaseEngine::PostgreSQL => 5432,
                DatabaseEngine::MySQL => 3306,
            };
            out.push(Server {
                name: name.clone(),
                engine: s.engine,
                host: s
                    .host
                    .clone()
                    .or_else(|| url.host_str().map(str::to_string))
                    .unwrap_or("localhost".into()),
                port: s.port.or(url.port()).unwrap_or(default_port),
                admin_dsn: dsn,
            });
        }
        Ok(out)
    }
}

/// The servers from the configuration file at `path`, if any; without one (or with no
/// servers in it), a `default` server from `DATABASE_OPERATOR_ADMIN_DSN_DEFAULT`, its engine
/// taken from the DSN's scheme.
pub fn load_servers(
    path: Option<&Path>,
    env: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<Vec<Server>> {
    let mut config = match path {
        Some(p) => OperatorConfig::load(p)?,
        None => OperatorConfig::default(),
    };
    if config.servers.is_empty()
        && let Some(dsn) = env(&dsn_env_var("default"))
    {
        {
            let engine = match dsn.split("://").next() {
                Some("postgres" | "postgresql") => DatabaseEngine::PostgreSQL,
                Some("mysql" | "mariadb") => DatabaseEngine::MySQL,
                _ => bail!(
                    "{}: expected a postgresql:// or mysql:// URL",
                    dsn_env_var("default")
                ),
            };
            config.servers.insert(
                "default".into(),
                ServerConfig {
                    engine,
                    admin_dsn_file: None,
                    admin_dsn_env: None,
                    host: None,
                    port: None,
                },
            );
        }
    }
    if config.servers.is_empty() {
        bail!(
            "no database servers configured: pass --config FILE or set {}",
            dsn_env_var("default")
        );
    }
    config.resolve(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_resolve_from_env_and_files_without_showing_dsns() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("dsn");
        std::fs::write(&file, "mysql://admin:s3cret@db2:3307/\n").unwrap();
        let yaml = format!(
            "servers:\n  default:\n    engine: PostgreSQL\n    adminDsnEnv: PG\n    host: pg.example\n  maria:\n    engine: MySQL\n    adminDsnFile: {}\n",
            file.display()
        );
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, yaml).unwrap();
        let c = OperatorConfig::load(&path).unwrap();
        let servers = c
            .resolve(|v| (v == "PG").then(|| "postgresql://postgres:pw@10.0.0.1/postgres".to_string()))
            .unwrap();
        assert_eq!(servers[0].host, "pg.example");
        assert_eq!(servers[0].port, 5432);
        assert_eq!((servers[1].host.as_str(), servers[1].port), ("db2", 3307));
        assert!(!format!("{servers:?}").contains("s3cret"));
        let err = c.resolve(|_| None).unwrap_err().to_string();
        assert!(err.contains("environment variable PG is not set"), "{err}");
        let over = c
            .resolve(|v| match v {
                "DATABASE_OPERATOR_ADMIN_DSN_DEFAULT" => Some("postgresql://a:b@h:1/x".into()),
                _ => None,
            })
            .unwrap();
        assert_eq!(over[0].port, 1);
        std::fs::write(
            &path,
            "servers:\n  default:\n    engine: PostgreSQL\n    adminDsn: x\n",
        )
        .unwrap();
        let err = OperatorConfig::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("line 4") && err.contains("unknown field `adminDsn`"),
            "{err}"
        );
    }
}
