//! The README's configuration table against the program: every flag it
//! lists exists with that environment variable and that default, and every
//! server flag with an environment variable is in the table.

use std::collections::BTreeMap;
use std::process::Command;

#[derive(Debug, Default, Clone, PartialEq)]
struct Flag {
    env: Option<String>,
    default: Option<String>,
}

/// The flags of `command --help`, with their environment variable and
/// default as clap shows them.
fn help_flags(command: &str) -> BTreeMap<String, Flag> {
    let out = Command::new(env!("CARGO_BIN_EXE_ansible-runner-service"))
        .args([command, "--help"])
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    assert!(out.status.success(), "{command} --help");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut flags = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("--") {
            let name = format!("--{}", rest.split([' ', ',']).next().unwrap());
            flags.insert(name.clone(), Flag::default());
            current = Some(name);
        }
        let Some(flag) = current.as_ref().and_then(|c| flags.get_mut(c)) else {
            continue;
        };
        // Long help puts these on lines of their own, short help at the end
        // of the flag's line.
        if let Some((_, env)) = line.split_once("[env: ") {
            flag.env = Some(env.split(['=', ']']).next().unwrap().to_owned());
        }
        if let Some((_, default)) = line.split_once("[default: ") {
            flag.default = Some(default.split(']').next().unwrap().to_owned());
        }
    }
    flags
}

fn cells(row: &str) -> Vec<String> {
    row.trim()
        .trim_matches('|')
        .split(" | ")
        .map(|c| c.trim().to_owned())
        .collect()
}

/// The first `code` span of a cell, or the cell itself.
fn code(cell: &str) -> String {
    match cell.split('`').nth(1) {
        Some(inner) if cell.starts_with('`') => inner.to_owned(),
        _ => cell.to_owned(),
    }
}

#[test]
fn the_configuration_table_matches_the_flags() {
    let mut program: BTreeMap<String, Flag> = BTreeMap::new();
    let mut server_flags = BTreeMap::new();
    for command in ["serve", "worker", "migrate", "prune", "list"] {
        for (name, flag) in help_flags(command) {
            if ["serve", "worker"].contains(&command) && flag.env.is_some() {
                server_flags.insert(name.clone(), command);
            }
            program.entry(name).or_insert(flag);
        }
    }
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table = readme
        .split("\n## Configuration")
        .nth(1)
        .expect("a Configuration section");
    let mut documented = Vec::new();
    for row in table.lines().filter(|l| l.starts_with("| `--")) {
        let cells = cells(row);
        let flags: Vec<String> = cells[0].split(", ").map(code).collect();
        let envs: Vec<String> = cells[1].split(", ").map(code).collect();
        assert_eq!(flags.len(), envs.len(), "{row}");
        for (name, env) in flags.iter().zip(&envs) {
            documented.push(name.clone());
            let flag = program
                .get(name)
                .unwrap_or_else(|| panic!("README lists {name}, which no command has"));
            assert_eq!(flag.env.as_deref(), Some(env.as_str()), "{name}'s variable");
            let default = &cells[2];
            if default == "false" {
                // A switch: off unless given (clap shows no default for it).
                assert!(
                    matches!(flag.default.as_deref(), None | Some("false")),
                    "{name} is a switch, off by default"
                );
            } else if default.starts_with("none") || default.starts_with("number of") {
                assert_eq!(flag.default, None, "README says {name} has no default");
            } else {
                assert_eq!(
                    flag.default.as_deref(),
                    Some(code(default).as_str()),
                    "{name}'s default"
                );
            }
        }
    }
    let missing: Vec<&String> = server_flags
        .keys()
        .filter(|name| !documented.contains(name))
        .collect();
    assert!(
        missing.is_empty(),
        "server flags the README's table leaves out: {missing:?}"
    );
}
