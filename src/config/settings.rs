//! Where settings come from: the TOML file, then the environment.

use std::path::Path;

use figment::providers::Format as _;

use super::ConfigError;

/// Raw settings, layered by figment: a TOML file, then the environment (or values set
/// in code), later layers winning. A key is the setting's name without `PIPES_`, in
/// lower case, however a source spells it (`PIPES_LISTEN` or `listen`).
#[derive(Default, Clone)]
pub struct Settings(figment::Figment);

/// The names of the settings only: their values may be keys and passwords.
impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> =
            self.0.extract::<figment::value::Dict>().map(|dict| dict.into_keys().collect()).unwrap_or_default();
        f.debug_tuple("Settings").field(&names).finish()
    }
}

fn key_of(name: &str) -> String {
    let lower = name.trim().to_ascii_lowercase();
    lower.strip_prefix("pipes_").map(str::to_owned).unwrap_or(lower)
}

impl Settings {
    /// The file named by `PIPES_CONFIG`, if any, under `PIPES_*` from the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut settings = Settings::default();
        if let Ok(path) = std::env::var("PIPES_CONFIG") {
            settings.merge_file(Path::new(&path))?;
        }
        settings.merge_env();
        Ok(settings)
    }

    /// `PIPES_*` from the environment, over what is there (`PIPES_CONFIG` names a file).
    pub fn merge_env(&mut self) {
        let env =
            figment::providers::Env::prefixed("PIPES_").filter(|key| !key.as_str().eq_ignore_ascii_case("config"));
        self.0 = std::mem::take(&mut self.0).merge(env);
    }

    /// The keys of a TOML file (`PIPES_LISTEN = "…"` or `listen = "…"`), over what is there.
    pub fn merge_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let file_error = |source: Box<dyn std::error::Error + Send + Sync>| ConfigError::File {
            path: path.display().to_string(),
            source,
        };
        if !path.is_file() {
            return Err(file_error("no such file".into()));
        }
        let table: figment::value::Dict = figment::Figment::from(figment::providers::Toml::file_exact(path))
            .extract()
            .map_err(|e| file_error(Box::new(e)))?;
        for (name, value) in table {
            self.0 = std::mem::take(&mut self.0).merge((key_of(&name), value));
        }
        Ok(())
    }

    pub fn set(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.0 = std::mem::take(&mut self.0).merge((key_of(key), value.into()));
        self
    }

    /// The setting as text (a list as its items joined by commas); `None` when unset or blank.
    pub(crate) fn get(&self, key: &str) -> Option<String> {
        fn text(value: &serde_json::Value) -> Option<String> {
            match value {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                serde_json::Value::Bool(b) => Some(b.to_string()),
                serde_json::Value::Array(items) => Some(items.iter().filter_map(text).collect::<Vec<_>>().join(",")),
                serde_json::Value::Null | serde_json::Value::Object(_) => None,
            }
        }
        let value = self.0.find_value(&key_of(key)).ok()?;
        serde_json::to_value(value).ok().as_ref().and_then(text).filter(|v| !v.trim().is_empty())
    }

    /// The setting as text, or `default`.
    pub(super) fn get_or(&self, key: &str, default: &str) -> String {
        self.get(key).unwrap_or_else(|| default.to_owned())
    }
}
