//! The operator's response rules (`--header`, `--expires`, `--error-page`, `--fallback`,
//! `--rules FILE`), decided by `ringwork_core::http::Rules`, and their reload on SIGHUP.
//!
//! The flags' rules come first, then the file's, in the order given. SIGHUP reads the file
//! again: if it parses, connections accepted from then on answer by the new rules (a
//! connection keeps the rules it started with, as nginx's old workers keep their
//! configuration for the connections they hold); if it does not, the error is said and the
//! old rules stay. Flags are read once, at start.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use ringwork_core::http::Rules;

/// What the rule flags gave.
#[derive(Clone, Debug, Default)]
pub struct RuleFlags {
    pub headers: Vec<String>,
    pub expires: Vec<String>,
    pub error_pages: Vec<String>,
    pub fallback: Option<String>,
    pub file: Option<PathBuf>,
}

/// The rules in force, shared by every worker (`Default`: none).
#[derive(Debug, Default)]
pub struct RuleSet {
    flags: Rules,
    file: Option<PathBuf>,
    current: RwLock<Arc<Rules>>,
}

impl RuleSet {
    /// The flags' rules, then the file's.
    pub fn load(flags: &RuleFlags) -> Result<RuleSet, String> {
        let mut rules = Rules::default();
        let each = |list: &[String], flag: &str, add: &mut dyn FnMut(&str) -> Result<(), _>| {
            list.iter().try_for_each(|spec| {
                add(spec)
                    .map_err(|e: ringwork_core::http::RuleError| format!("{flag} {spec:?}: {e}"))
            })
        };
        each(&flags.headers, "--header", &mut |s| rules.add_header(s))?;
        each(&flags.expires, "--expires", &mut |s| rules.add_expires(s))?;
        each(&flags.error_pages, "--error-page", &mut |s| {
            rules.add_error_page(s)
        })?;
        if let Some(path) = &flags.fallback {
            rules
                .set_fallback(path)
                .map_err(|e| format!("--fallback {path:?}: {e}"))?;
        }
        let with_file = match &flags.file {
            Some(file) => read_file(&rules, file)?,
            None => rules.clone(),
        };
        Ok(RuleSet {
            flags: rules,
            file: flags.file.clone(),
            current: RwLock::new(Arc::new(with_file)),
        })
    }

    /// The rules a connection accepted now answers by.
    pub fn current(&self) -> Arc<Rules> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Reads the rules file again (SIGHUP). `Ok(None)`: there is none (the flags' rules
    /// stay); on an error the old rules stay.
    pub fn reload(&self) -> Result<Option<&Path>, String> {
        let Some(file) = &self.file else {
            return Ok(None);
        };
        let rules = read_file(&self.flags, file)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(rules);
        Ok(Some(file))
    }
}

/// `base` and the rules of `file`.
fn read_file(base: &Rules, file: &Path) -> Result<Rules, String> {
    let text =
        std::fs::read_to_string(file).map_err(|e| format!("--rules {}: {e}", file.display()))?;
    let mut rules = base.clone();
    rules
        .add_file(&text)
        .map_err(|(line, e)| format!("--rules {}:{line}: {e}", file.display()))?;
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_takes_a_good_file_and_keeps_the_rules_on_a_bad_one() {
        let dir = std::env::temp_dir().join(format!("ringwork-rules-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("rules");
        std::fs::write(&file, "header *: X-A: 1\n").unwrap();
        let flags = RuleFlags {
            fallback: Some("/index.html".into()),
            file: Some(file.clone()),
            ..RuleFlags::default()
        };
        let set = RuleSet::load(&flags).unwrap();
        let first = set.current();
        assert_eq!(first.fallback(), Some("index.html"));
        std::fs::write(&file, "header *: X-B: 2\n").unwrap();
        assert_eq!(set.reload().unwrap(), Some(file.as_path()));
        let second = set.current();
        assert_ne!(first, second);
        assert_eq!(second.fallback(), Some("index.html"), "flags stay");
        std::fs::write(&file, "nonsense\n").unwrap();
        let err = set.reload().unwrap_err();
        assert!(err.contains(":1: "), "{err}");
        assert_eq!(set.current(), second);
        let bad = RuleFlags {
            headers: vec!["*.js".into()],
            ..RuleFlags::default()
        };
        assert!(RuleSet::load(&bad)
            .unwrap_err()
            .starts_with("--header \"*.js\": "));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
