//! Section (g): git sources. A playbook from a git repository (hello.yml's
//! content as `site.yml`), served over smart HTTP with basic auth on loopback
//! by tests/common/git_http.py, runs on one service (warm executor) one job at
//! a time: the first run (the mirror's fetch and the checkout included), then
//! `--latency-jobs` runs of it with `main` fetched within the freshness window,
//! interleaved with as many runs of the catalogue's hello.yml. Counts the git
//! server's requests during the cached runs and checks every job's commit.

use std::time::Instant;

use ansible_runner_service::pb::{self, submit_job_request::Source};
use serde_json::{json, Value};

use crate::git_server::{GitServer, USER as GIT_USER};
use crate::harness::{
    median, percentile, playbook_request, progress, sorted, summary, Bench, Service,
};
use crate::submit_to_terminal::{run_to_end, successful};

/// The repository, under the server's root and the provider's prefix.
const REPO_PATH: &str = "bench/automation.git";
/// The playbook's path in the repository.
const REPO_PLAYBOOK: &str = "site.yml";
/// What the cached git runs' median may exceed the catalogue's by (issue 13).
pub const TARGET_MS: f64 = 20.0;

/// Median and p90 (and the usual percentiles) of samples in seconds, in ms.
fn figures(samples: &[f64]) -> Value {
    let p90 = percentile(&sorted(samples.to_vec()), 0.9) * 1e3;
    let mut figures = summary(samples.to_vec());
    figures["p90_ms"] = json!(p90);
    figures
}

/// (g) the first run of a git playbook, then the cached runs of it
/// interleaved with the catalogue's hello.yml (pair i runs git first when i
/// is even, the catalogue first when odd; the median of the differences
/// within pairs is reported too, as it is less moved by the load of the
/// machine changing during the run), on one service after one
/// catalogue warm-up run, not counted. A job counts as failed unless it ends
/// SUCCESSFUL with the expected `source_commit` (the repository's head for a
/// git run, none for a catalogue run).
pub async fn section_g(bench: &mut Bench) -> Value {
    let jobs = bench.args.latency_jobs;
    let hello = std::fs::read_to_string(bench.playbooks.join("hello.yml")).expect("read hello.yml");
    // The tests' git server (tests/common/git_server.rs): the same
    // `git http-backend` behind basic auth, on loopback.
    let server = GitServer::start();
    let test_repo = server.repo(REPO_PATH);
    test_repo.write(REPO_PLAYBOOK, &hello);
    let head = test_repo.commit("bench playbook");
    let repo = test_repo.url.clone();

    let dir = tempfile::tempdir().expect("temp dir");
    let providers = dir.path().join("providers.yml");
    std::fs::write(
        &providers,
        format!(
            "providers:\n  - name: bench\n    scheme: http\n    host: \"{}\"\n    \
             path_prefixes: [bench]\n    username: {GIT_USER}\n    credential_file: {}\n",
            server.base_url.trim_start_matches("http://"),
            server.password_file().display()
        ),
    )
    .expect("write the providers file");
    let mut settings = bench.settings("g").await;
    settings.git.providers_file = Some(providers);
    settings.git.cache_dir = dir.path().join("git-cache");
    let fresh_for = settings.git.fetch_fresh_for;
    let service = Service::start(&settings).await;
    let client = &service.client;

    let git_request = pb::SubmitJobRequest {
        source: Some(Source::GitPlaybook(pb::GitFile {
            repo: repo.clone(),
            r#ref: "main".into(),
            path: REPO_PLAYBOOK.into(),
        })),
        ..Default::default()
    };
    let catalogue_request = playbook_request("hello.yml");
    let mut failed = 0;
    let mut check = |job: &Option<pb::Job>, commit: &str| {
        let ok = successful(job) && job.as_ref().is_some_and(|j| j.source_commit == commit);
        if !ok {
            failed += 1;
            eprintln!("bench: (g) unexpected job (expected commit {commit:?}): {job:?}");
        }
    };

    progress(&format!("(g) git sources: {repo} at {head}"));
    let (_, job) = run_to_end(client, &catalogue_request).await;
    check(&job, "");
    let before_first = server.requests();
    let (first, job) = run_to_end(client, &git_request).await;
    check(&job, &head);
    let first_requests = server.requests() - before_first;

    progress(&format!(
        "(g) {jobs} cached git runs interleaved with {jobs} catalogue runs"
    ));
    let before_cached = server.requests();
    let cached_started = Instant::now();
    let (mut git_samples, mut catalogue_samples) = (Vec::new(), Vec::new());
    let mut paired = Vec::new();
    for i in 0..jobs {
        for git_turn in [i % 2 == 0, i % 2 == 1] {
            if git_turn {
                let (seconds, job) = run_to_end(client, &git_request).await;
                check(&job, &head);
                git_samples.push(seconds);
            } else {
                let (seconds, job) = run_to_end(client, &catalogue_request).await;
                check(&job, "");
                catalogue_samples.push(seconds);
            }
        }
        paired.push((git_samples[i] - catalogue_samples[i]) * 1e3);
    }
    let cached_seconds = cached_started.elapsed().as_secs_f64();
    let cached_requests = server.requests() - before_cached;
    if cached_seconds > fresh_for.as_secs_f64() {
        progress(&format!(
            "(g) the cached runs took {cached_seconds:.0} s, longer than the freshness \
             window ({} s): refetches are expected",
            fresh_for.as_secs()
        ));
    }
    service.stop().await;
    drop(server);

    let git_median = median(&git_samples);
    let catalogue_median = median(&catalogue_samples);
    let difference_ms = (git_median - catalogue_median) * 1e3;
    json!({
        "jobs": jobs,
        "repo_commit": head,
        "fetch_fresh_for_seconds": fresh_for.as_secs(),
        "first_run_ms": first * 1e3,
        "git_requests_first_run": first_requests,
        "git_cached": figures(&git_samples),
        "catalogue": figures(&catalogue_samples),
        "git_median_minus_catalogue_median_ms": difference_ms,
        "target_ms": TARGET_MS,
        "met": difference_ms <= TARGET_MS,
        "median_of_paired_differences_ms": median(&paired),
        "clone_cost_ms": (first - catalogue_median) * 1e3,
        "cached_runs_seconds": cached_seconds,
        "git_requests_during_cached_runs": cached_requests,
        "failed": failed,
    })
}
