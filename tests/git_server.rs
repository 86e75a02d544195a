//! The git smart-HTTP harness (tests/common/git_server.rs) against the real
//! git CLI: basic auth through GIT_ASKPASS, branches that move, the delay
//! control, gzip and chunked request bodies, and a log free of the password.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use base64::Engine;
use common::git_server::{git_command, GitServer};
use tempfile::TempDir;

/// A GIT_ASKPASS script answering the server's user and the password read
/// from `password_file`.
struct Askpass {
    script: PathBuf,
    _dir: TempDir,
}

fn askpass(user: &str, password_file: &Path) -> Askpass {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("askpass.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncase \"$1\" in\n  Username*) printf '%s\\n' '{user}' ;;\n  \
             Password*) cat '{}'; echo ;;\n  *) exit 1 ;;\nesac\n",
            password_file.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700)).unwrap();
    Askpass { script, _dir: dir }
}

/// The right credentials for `server`.
fn good_askpass(server: &GitServer) -> Askpass {
    askpass(&server.user, &server.password_file())
}

/// `git` as a client of the server: no credential helper, credentials only
/// from `askpass`.
fn client(askpass: Option<&Askpass>) -> Command {
    let mut command = git_command();
    if let Some(askpass) = askpass {
        command.env("GIT_ASKPASS", &askpass.script);
    }
    command.args(["-c", "credential.helper="]);
    command
}

fn run(mut command: Command) -> Output {
    command.output().expect("git on PATH")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `git ls-remote url` as (ref, sha) pairs.
fn ls_remote(url: &str, askpass: &Askpass) -> Vec<(String, String)> {
    let mut command = client(Some(askpass));
    command.args(["ls-remote", url]);
    let output = run(command);
    assert!(output.status.success(), "ls-remote: {}", stderr(&output));
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let (sha, name) = line.split_once('\t').expect("sha<TAB>ref");
            (name.to_owned(), sha.to_owned())
        })
        .collect()
}

fn sha_of(refs: &[(String, String)], name: &str) -> String {
    refs.iter()
        .find(|(n, _)| n == name)
        .map(|(_, sha)| sha.clone())
        .unwrap_or_else(|| panic!("{name} not in {refs:?}"))
}

/// Neither the password nor the Authorization header's value is in the
/// server's log or stderr.
fn assert_no_secret(server: &GitServer) {
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", server.user, server.password));
    let log = server.log().join("\n");
    let stderr = server.stderr();
    for (what, text) in [("log", &log), ("stderr", &stderr)] {
        assert!(!text.contains(&server.password), "password in the {what}");
        assert!(!text.contains(&basic), "Authorization value in the {what}");
    }
}

#[test]
fn clone_with_the_right_credentials() {
    let server = GitServer::start();
    assert!(server.password.len() >= 24);
    let repo = server.repo("platform/automation.git");
    repo.write("site.yml", "- hosts: all\n");
    repo.write("roles/web/tasks/main.yml", "- ping:\n");
    repo.symlink("current.yml", "site.yml");
    let sha = repo.commit("first");
    assert_eq!(sha.len(), 40);
    assert_eq!(
        repo.url,
        format!("{}/platform/automation.git", server.base_url)
    );
    assert!(repo.bare.starts_with(server.root()));

    let into = tempfile::tempdir().unwrap();
    let dest = into.path().join("clone");
    let askpass = good_askpass(&server);
    let mut command = client(Some(&askpass));
    command
        .arg("clone")
        .arg("--quiet")
        .arg(&repo.url)
        .arg(&dest);
    let output = run(command);
    assert!(output.status.success(), "clone: {}", stderr(&output));

    assert_eq!(
        std::fs::read_to_string(dest.join("roles/web/tasks/main.yml")).unwrap(),
        "- ping:\n"
    );
    assert_eq!(
        std::fs::read_link(dest.join("current.yml")).unwrap(),
        Path::new("site.yml")
    );
    let head = run({
        let mut c = git_command();
        c.current_dir(&dest)
            .args(["rev-parse", "HEAD", "--abbrev-ref", "HEAD"]);
        c
    });
    assert_eq!(
        String::from_utf8(head.stdout).unwrap(),
        format!("{sha}\nmain\n")
    );

    // Protocol v2: a 401 (git sends no credentials until asked), then the
    // ref advertisement, ls-refs and fetch.
    let log = server.log();
    assert_eq!(
        log,
        [
            "GET /platform/automation.git/info/refs?service=git-upload-pack 401 user=-",
            "GET /platform/automation.git/info/refs?service=git-upload-pack 200 user=ci-bot",
            "POST /platform/automation.git/git-upload-pack 200 user=ci-bot",
            "POST /platform/automation.git/git-upload-pack 200 user=ci-bot",
        ]
    );
    assert_eq!(server.requests(), 4);
    assert_no_secret(&server);
}

#[test]
fn a_wrong_password_or_none_is_refused() {
    let server = GitServer::start();
    let repo = server.repo("platform/automation.git");
    repo.write("site.yml", "- hosts: all\n");
    repo.commit("first");

    let wrong_dir = tempfile::tempdir().unwrap();
    let wrong_file = wrong_dir.path().join("wrong");
    std::fs::write(&wrong_file, "not-the-password").unwrap();
    let wrong = askpass(&server.user, &wrong_file);
    let into = tempfile::tempdir().unwrap();
    let mut command = client(Some(&wrong));
    command
        .arg("clone")
        .arg(&repo.url)
        .arg(into.path().join("clone"));
    let output = run(command);
    assert!(!output.status.success(), "a clone with a wrong password");
    assert!(
        stderr(&output).contains("Authentication failed"),
        "{}",
        stderr(&output)
    );
    let log = server.log();
    assert!(
        log.iter().any(|l| l.ends_with(" 401 user=ci-bot")),
        "{log:?}"
    );
    assert!(log.iter().all(|l| l.contains(" 401 ")), "{log:?}");

    // No credentials at all (and no terminal to ask on).
    let before = server.requests();
    let mut command = client(None);
    command.args(["ls-remote", &repo.url]);
    let output = run(command);
    assert!(!output.status.success());
    let log = server.log();
    assert_eq!(
        log[before..],
        ["GET /platform/automation.git/info/refs?service=git-upload-pack 401 user=-"]
    );
    assert_no_secret(&server);
}

#[test]
fn ls_remote_follows_branches_and_tags() {
    let server = GitServer::start();
    let repo = server.repo("team/playbooks.git");
    let askpass = good_askpass(&server);

    repo.write("a.yml", "one\n");
    let first = repo.commit("first");
    repo.tag("v1");
    let refs = ls_remote(&repo.url, &askpass);
    assert_eq!(sha_of(&refs, "HEAD"), first);
    assert_eq!(sha_of(&refs, "refs/heads/main"), first);
    assert_ne!(sha_of(&refs, "refs/tags/v1"), first, "an annotated tag");
    assert_eq!(sha_of(&refs, "refs/tags/v1^{}"), first);

    repo.write("a.yml", "two\n");
    repo.remove("a.yml");
    repo.write("b/c.yml", "three\n");
    let second = repo.commit("second");
    assert_ne!(second, first);
    assert_eq!(repo.head(), second);
    let refs = ls_remote(&repo.url, &askpass);
    assert_eq!(sha_of(&refs, "refs/heads/main"), second);
    assert_eq!(sha_of(&refs, "refs/tags/v1^{}"), first, "the tag stays");

    repo.switch("release");
    let third = repo.commit_big_file("blob.bin", 100_000);
    repo.lightweight_tag("v2");
    repo.switch("main");
    assert_eq!(repo.head(), second);
    let refs = ls_remote(&repo.url, &askpass);
    assert_eq!(sha_of(&refs, "refs/heads/main"), second);
    assert_eq!(sha_of(&refs, "refs/heads/release"), third);
    assert_eq!(sha_of(&refs, "refs/tags/v2"), third);
    assert_no_secret(&server);
}

#[test]
fn a_delay_holds_every_answer() {
    use std::os::unix::process::CommandExt;
    let server = GitServer::start();
    let repo = server.repo("slow.git");
    repo.commit("empty");
    let askpass = good_askpass(&server);

    server.set_delay(3);
    let mut command = client(Some(&askpass));
    command
        .args(["ls-remote", &repo.url])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        // Its own group, so git-remote-http goes down with it.
        .process_group(0);
    let mut child = command.spawn().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        child.try_wait().unwrap().is_none(),
        "ls-remote finished within 1 s despite the delay"
    );
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(-(child.id() as i32), libc::SIGKILL);
    }
    child.wait().unwrap();

    server.set_delay(0);
    let started = Instant::now();
    let refs = ls_remote(&repo.url, &askpass);
    assert_eq!(sha_of(&refs, "refs/heads/main"), repo.head());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn gzip_and_chunked_request_bodies() {
    let server = GitServer::start();
    let repo = server.repo("many.git");
    // 1500 commits, each tagged: a fetch wants 1500 objects, a request body
    // of ~75 KB, which git gzips, or sends chunked past http.postBuffer.
    let mut stream = String::new();
    for i in 0..1500 {
        let message = format!("c{i}\n");
        stream += &format!(
            "commit refs/heads/main\nmark :{}\ncommitter A <a@example.test> {} +0000\n\
             data {}\n{message}",
            i + 1,
            1_700_000_000 + i,
            message.len()
        );
        if i > 0 {
            stream += &format!("from :{i}\n");
        }
        stream += &format!("\nreset refs/tags/t{i}\nfrom :{}\n\n", i + 1);
    }
    let mut import = git_command();
    import
        .current_dir(&repo.bare)
        .args(["fast-import", "--quiet"])
        .stdin(std::process::Stdio::piped());
    let mut child = import.spawn().unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stream.as_bytes())
            .unwrap();
    }
    assert!(child.wait().unwrap().success());

    let askpass = good_askpass(&server);
    let into = tempfile::tempdir().unwrap();
    for (name, config) in [
        ("gzip", "http.postBuffer=1048576"),
        ("chunked", "http.postBuffer=70000"),
    ] {
        let dest = into.path().join(name);
        let mut command = client(Some(&askpass));
        command
            .args(["-c", config, "clone", "--quiet", "--bare", &repo.url])
            .arg(&dest);
        let output = run(command);
        assert!(output.status.success(), "{name}: {}", stderr(&output));
        let tags = run({
            let mut c = git_command();
            c.current_dir(&dest).args(["tag", "--list"]);
            c
        });
        assert_eq!(
            String::from_utf8(tags.stdout).unwrap().lines().count(),
            1500,
            "{name}"
        );
    }
    assert_no_secret(&server);
}

#[test]
fn pushes_over_http_are_refused() {
    let server = GitServer::start();
    let repo = server.repo("ro.git");
    repo.write("a", "a\n");
    let sha = repo.commit("first");
    let askpass = good_askpass(&server);

    let into = tempfile::tempdir().unwrap();
    let dest = into.path().join("clone");
    let mut command = client(Some(&askpass));
    command.args(["clone", "--quiet", &repo.url]).arg(&dest);
    assert!(run(command).status.success());
    let mut command = client(Some(&askpass));
    command.current_dir(&dest).args([
        "-c",
        "user.name=X",
        "-c",
        "user.email=x@example.test",
        "commit",
        "--quiet",
        "--allow-empty",
        "-m",
        "pushed",
    ]);
    assert!(run(command).status.success());
    let mut command = client(Some(&askpass));
    command
        .current_dir(&dest)
        .args(["push", "origin", "HEAD:main"]);
    let output = run(command);
    assert!(!output.status.success(), "a push over HTTP");
    assert!(
        server
            .log()
            .iter()
            .any(|l| l.contains("service=git-receive-pack 403 user=ci-bot")),
        "{:?}",
        server.log()
    );
    let refs = ls_remote(&repo.url, &askpass);
    assert_eq!(sha_of(&refs, "refs/heads/main"), sha);
}

#[test]
fn the_password_never_reaches_the_log() {
    let server = GitServer::start();
    let repo = server.repo("secret.git");
    repo.commit("empty");
    let good = good_askpass(&server);
    ls_remote(&repo.url, &good);

    // The right password with a wrong user: refused; the log names the
    // user sent, and holds nothing of the password.
    let file = server.password_file();
    assert_eq!(std::fs::read_to_string(&file).unwrap(), server.password);
    let bad = askpass("someone-else", &file);
    let mut command = client(Some(&bad));
    command.args(["ls-remote", &repo.url]);
    assert!(!run(command).status.success());
    let log = server.log();
    assert!(
        log.iter().any(|l| l.ends_with(" 401 user=someone-else")),
        "{log:?}"
    );
    assert!(log.iter().any(|l| l.ends_with(" 200 user=ci-bot")));
    assert_no_secret(&server);
}
