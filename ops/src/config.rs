//! What every daemon does with its configuration before it starts: read the file `--config`
//! names (or take the defaults), and, when asked, print the effective configuration or check
//! it and stop. A deploy can vet a file, flags included, with the binary it will run
//! (`--check-config`), and an operator can see what a daemon would run with
//! (`--print-config`), the same way for every daemon.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A daemon's configuration: a TOML document whose every key has a documented default.
/// Parsing and printing are the same for every daemon; checking is each daemon's own.
pub trait DaemonConfig: Default + Serialize + DeserializeOwned {
    /// Checks every value as the daemon would before it starts, without reading the files it
    /// names or binding its addresses: the first problem, in words.
    fn check(&self) -> Result<(), String>;

    /// Parses a TOML document: unknown keys and bad values are refused, with where they are.
    fn parse_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The configuration as TOML, every key written out (for `--print-config`).
    fn render_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

/// Why a configuration was not taken: which file, and what was wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (the system's reason is the error's source).
    #[error("reading {path}")]
    Read {
        /// The file `--config` named.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The file was read but is not a valid configuration.
    #[error("in {path}: {detail}")]
    Parse {
        /// The file `--config` named.
        path: PathBuf,
        /// What the TOML parser found, with its line and column.
        detail: String,
    },
    /// The effective configuration (file and flags) has a bad value.
    #[error("{0}")]
    Invalid(String),
}

/// The flags every daemon shares (flattened into its own with `#[command(flatten)]`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DaemonArgs {
    /// TOML configuration file; flags override it.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Log as JSON lines instead of human text.
    #[arg(long)]
    pub log_json: bool,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Check the effective configuration and exit: 0 when the daemon would start with it,
    /// else the first problem (files it names are not read; addresses are not bound).
    #[arg(long)]
    pub check_config: bool,
}

impl DaemonArgs {
    /// The configuration `--config` names, or the defaults when it names none; the flags that
    /// override it are the caller's to apply.
    pub fn load<C: DaemonConfig>(&self) -> Result<C, ConfigError> {
        match &self.config {
            Some(path) => read(path),
            None => Ok(C::default()),
        }
    }

    /// Answers `--print-config` (the configuration as TOML on stdout) and `--check-config`
    /// (`configuration ok` on stdout, or the first problem as the error). True when one of
    /// them was asked for and the daemon should stop here.
    pub fn inspect<C: DaemonConfig>(&self, cfg: &C) -> Result<bool, ConfigError> {
        if self.print_config {
            print!("{}", cfg.render_toml());
            return Ok(true);
        }
        if self.check_config {
            cfg.check().map_err(ConfigError::Invalid)?;
            println!("configuration ok");
            return Ok(true);
        }
        Ok(false)
    }
}

fn read<C: DaemonConfig>(path: &Path) -> Result<C, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    C::parse_toml(&text).map_err(|detail| ConfigError::Parse {
        path: path.to_path_buf(),
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configuration with one number that must be positive.
    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Toy {
        n: i64,
    }

    impl Default for Toy {
        fn default() -> Self {
            Toy { n: 7 }
        }
    }

    impl DaemonConfig for Toy {
        fn check(&self) -> Result<(), String> {
            if self.n > 0 {
                Ok(())
            } else {
                Err(format!("n {} must be positive", self.n))
            }
        }
    }

    #[test]
    fn a_configuration_prints_as_it_parses() {
        let cfg = Toy { n: -4 };
        assert_eq!(cfg.render_toml(), "n = -4\n");
        assert_eq!(Toy::parse_toml(&cfg.render_toml()).unwrap(), cfg);
        assert_eq!(
            Toy::parse_toml("").unwrap(),
            Toy::default(),
            "every key has a default"
        );
        let err = Toy::parse_toml("n = \"x\"\n").unwrap_err();
        assert!(err.contains("line 1") && err.contains("invalid type"), "{err}");
    }

    #[test]
    fn no_file_means_the_defaults() {
        let cfg: Toy = DaemonArgs::default().load().unwrap();
        assert_eq!(cfg, Toy::default());
    }

    #[test]
    fn a_file_is_read_and_its_problems_name_it() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.toml");
        std::fs::write(&good, "n = 3\n").unwrap();
        let args = DaemonArgs {
            config: Some(good),
            ..DaemonArgs::default()
        };
        assert_eq!(args.load::<Toy>().unwrap(), Toy { n: 3 });

        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "n = 3\nm = 3\n").unwrap();
        let args = DaemonArgs {
            config: Some(bad.clone()),
            ..DaemonArgs::default()
        };
        let err = args.load::<Toy>().unwrap_err().to_string();
        assert!(err.starts_with(&format!("in {}: ", bad.display())), "{err}");
        assert!(
            err.contains("line 2") && err.contains("unknown field `m`"),
            "{err}"
        );

        let missing = dir.path().join("missing.toml");
        let args = DaemonArgs {
            config: Some(missing.clone()),
            ..DaemonArgs::default()
        };
        let err = args.load::<Toy>().unwrap_err();
        assert!(
            matches!(&err, ConfigError::Read { path, .. } if *path == missing),
            "{err}"
        );
    }

    #[test]
    fn inspection_stops_the_daemon_only_when_asked_and_reports_a_bad_value() {
        let plain = DaemonArgs::default();
        assert!(
            !plain.inspect(&Toy { n: -1 }).unwrap(),
            "nothing asked: the daemon goes on"
        );
        let check = DaemonArgs {
            check_config: true,
            ..DaemonArgs::default()
        };
        assert!(check.inspect(&Toy { n: 1 }).unwrap());
        let err = check.inspect(&Toy { n: -1 }).unwrap_err().to_string();
        assert_eq!(err, "n -1 must be positive");
        let print = DaemonArgs {
            print_config: true,
            ..DaemonArgs::default()
        };
        assert!(print.inspect(&Toy { n: -1 }).unwrap(), "printing does not check");
    }
}
