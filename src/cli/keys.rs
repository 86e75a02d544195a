//! Operators' commands on the keys file: `keys create`, `keys list` and
//! `keys revoke`. A running server picks each change up within seconds.

use std::io::Write;
use std::path::Path;

use crate::domain::{Error, Scopes};
use crate::grpc::auth::{self, Client, Credential};

fn read(file: &Path) -> Result<String, Error> {
    match std::fs::read_to_string(file) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(Error::internal(format!("read {}", file.display()), e)),
    }
}

/// Replaces the keys file in one step (a server never reads half a file),
/// readable by its owner only.
fn write_whole(file: &Path, text: &str) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let fail = |e: std::io::Error| Error::internal(format!("write {}", file.display()), e);
    let temp = dir.join(format!(
        ".{}.{}.tmp",
        file.file_name().and_then(|n| n.to_str()).unwrap_or("keys"),
        std::process::id()
    ));
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .map_err(fail)?;
    out.write_all(text.as_bytes()).map_err(fail)?;
    out.sync_all().map_err(fail)?;
    std::fs::rename(&temp, file).map_err(fail)
}

/// Adds a client: with a new key (printed once, only its hash is kept), or,
/// with `certificate`, one that presents a client certificate naming it.
pub fn create(file: &Path, name: &str, scopes: Scopes, certificate: bool) -> Result<(), Error> {
    let text = read(file)?;
    let clients = auth::parse_lines(&text)
        .map_err(|e| Error::invalid("file", format!("{}: {e}", file.display())))?;
    if clients.iter().any(|c| c.name == name) {
        return Err(Error::invalid(
            "name",
            format!(
                "client {name:?} is already in {}; revoke it first to replace it",
                file.display()
            ),
        ));
    }
    let (key, client) = if certificate {
        auth::client_name(name).map_err(|e| Error::invalid("name", e))?;
        let client = Client {
            name: name.to_owned(),
            credential: Credential::Certificate,
            scopes: std::sync::Arc::new(scopes),
        };
        (None, client)
    } else {
        let (key, client) = auth::new_key(name, scopes)?;
        (Some(key), client)
    };
    let mut text = text;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&client.line());
    text.push('\n');
    write_whole(file, &text)?;
    match key {
        Some(key) => {
            println!("{key}");
            eprintln!(
                "key for client {name:?} added to {}; it is shown only now. Send it as `authorization: Bearer <key>`.",
                file.display()
            );
        }
        None => eprintln!(
            "client {name:?} added to {}: it authenticates with a client certificate whose CN or a SAN is {name:?}.",
            file.display()
        ),
    }
    Ok(())
}

/// Prints each client with how it authenticates and its scopes; never a hash.
pub fn list(file: &Path) -> Result<(), Error> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Error::internal(format!("read {}", file.display()), e))?;
    let clients = auth::parse_lines(&text)
        .map_err(|e| Error::invalid("file", format!("{}: {e}", file.display())))?;
    for client in clients {
        let kind = match client.credential {
            Credential::KeyHash(_) => "key",
            Credential::Certificate => "certificate",
        };
        let words = client.scopes.words();
        let scopes = if words.is_empty() {
            "all scopes".to_owned()
        } else {
            words.join(" ")
        };
        println!("{}\t{kind}\t{scopes}", client.name);
    }
    Ok(())
}

/// Removes a client's lines; comments and other clients stay as they were.
pub fn revoke(file: &Path, name: &str) -> Result<(), Error> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Error::internal(format!("read {}", file.display()), e))?;
    let mut removed = 0;
    let kept: Vec<&str> = text
        .lines()
        .filter(|line| {
            let content = line.split('#').next().unwrap_or("");
            let matches = content.split_whitespace().next() == Some(name);
            removed += usize::from(matches);
            !matches
        })
        .collect();
    if removed == 0 {
        return Err(Error::invalid(
            "name",
            format!("no client {name:?} in {} (see `keys list`)", file.display()),
        ));
    }
    let mut text = kept.join("\n");
    text.push('\n');
    write_whole(file, &text)?;
    eprintln!(
        "client {name:?} removed from {}; servers stop accepting it within seconds.",
        file.display()
    );
    Ok(())
}
