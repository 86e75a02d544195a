//! The catalogue: the playbooks under the playbooks folder that callers may run.

use std::path::{Path, PathBuf};

use crate::domain::{validate, Error};

/// A playbook that can be run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaybookInfo {
    /// Path relative to the catalogue folder, e.g. `hello.yml`.
    pub name: String,
    /// The name of its first play.
    pub description: String,
}

/// The playbooks folder. Lookups re-read the disk, so playbooks added or
/// removed while the service runs are seen at once.
#[derive(Debug, Clone)]
pub struct Catalogue {
    root: PathBuf,
}

impl Catalogue {
    /// Opens the folder; it must exist and be a folder.
    pub fn open(root: impl Into<PathBuf>) -> Result<Catalogue, Error> {
        let given = root.into();
        let root = given.canonicalize().map_err(|e| {
            Error::Config(format!(
                "--playbooks-dir (PLAYBOOKS_DIR) {}: {e}; point it at the folder of playbooks",
                given.display()
            ))
        })?;
        if !root.is_dir() {
            return Err(Error::Config(format!(
                "--playbooks-dir (PLAYBOOKS_DIR) {} is not a folder; point it at the folder of playbooks",
                given.display()
            )));
        }
        Ok(Catalogue { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Resolves a playbook name to its file, refusing anything that is not a
    /// regular file inside the folder (after following symlinks).
    pub fn resolve(&self, name: &str) -> Result<PathBuf, Error> {
        validate::playbook_name(name).map_err(|e| Error::invalid("playbook", e))?;
        let candidate = self.root.join(name);
        let real = match candidate.canonicalize() {
            Ok(real) => real,
            Err(_) => return Err(Error::PlaybookNotFound(name.to_owned())),
        };
        if !real.starts_with(&self.root) {
            return Err(Error::invalid(
                "playbook",
                "resolves to a file outside the playbooks folder",
            ));
        }
        if !real.is_file() {
            return Err(Error::PlaybookNotFound(name.to_owned()));
        }
        Ok(real)
    }

    /// Every playbook (`*.yml`, `*.yaml`, in subfolders too), sorted by name.
    pub fn list(&self) -> Result<Vec<PlaybookInfo>, Error> {
        let mut found = Vec::new();
        self.walk(&self.root, &mut found)?;
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(found)
    }

    fn walk(&self, dir: &Path, found: &mut Vec<PlaybookInfo>) -> Result<(), Error> {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| Error::internal(format!("read {}", dir.display()), e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(relative) = path.strip_prefix(&self.root) else {
                continue;
            };
            let Some(name) = relative.to_str().map(str::to_owned) else {
                continue;
            };
            if name.rsplit('/').next().is_some_and(|n| n.starts_with('.')) {
                continue;
            }
            if path.is_dir() {
                // Roles and vars folders hold YAML that is not a playbook.
                if !matches!(
                    entry.file_name().to_str(),
                    Some("roles" | "group_vars" | "host_vars" | "vars" | "files" | "templates")
                ) {
                    self.walk(&path, found)?;
                }
            } else if validate::playbook_name(&name).is_ok() && self.resolve(&name).is_ok() {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                found.push(PlaybookInfo {
                    name,
                    description: first_play_name(&text).unwrap_or_default(),
                });
            }
        }
        Ok(())
    }
}

/// The `name:` of the first play: the first top-level list item's `name` key.
/// A line scan rather than a YAML parser: playbooks are written by operators,
/// and a description is a convenience.
fn first_play_name(text: &str) -> Option<String> {
    let mut in_first_item = false;
    for line in text.lines() {
        let trimmed = line.trim_end();
        if trimmed.is_empty() || trimmed.trim_start().starts_with('#') || trimmed == "---" {
            continue;
        }
        let item = trimmed.strip_prefix("- ");
        if in_first_item && item.is_some() {
            return None;
        }
        let body = match item {
            Some(body) => {
                in_first_item = true;
                body
            }
            None if in_first_item && line.starts_with("  ") && !line.starts_with("   ") => {
                &line[2..]
            }
            None => continue,
        };
        if let Some(value) = body.strip_prefix("name:") {
            let value = value.trim();
            let unquoted = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(value);
            return Some(unquoted.to_owned());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::first_play_name;

    #[test]
    fn first_play_names() {
        assert_eq!(
            first_play_name("---\n# x\n- name: Say hello\n  hosts: all\n").as_deref(),
            Some("Say hello")
        );
        assert_eq!(
            first_play_name("- hosts: all\n  name: \"Quoted\"\n  tasks:\n    - name: task\n")
                .as_deref(),
            Some("Quoted")
        );
        assert_eq!(
            first_play_name("- hosts: all\n  tasks:\n    - name: task\n- name: second\n"),
            None
        );
    }
}
