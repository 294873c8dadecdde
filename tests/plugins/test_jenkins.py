"""The Jenkins plugin's pure half with payloads written from the documented formats: the Notification
plugin's JSON (its JobState/BuildState/ScmState model, serialized by Gson with lower_case_with_
underscores) and the JSON API's builds; webhook authentication; results; full names of jobs in
folders and multibranch projects; and the keys that make a notification and a poll of the same state
one event."""

from __future__ import annotations

import base64
import copy
import json
import os
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from flowforged import credentials
from flowforged.errors import ConfigError, WebhookRejected
from flowforged.model import Status
from flowforged.secrets import Secret
from flowforged.signatures import signature_header
from flowforged.store.ingest import event_key
from flowforged_plugins.jenkins import (
    JenkinsProvider,
    JenkinsSourceConfig,
    branch_name,
    full_name,
    normalize_api_build,
    remote,
)
from tests.conftest import ROOT, base_config, make_config
from tests.fakes.jenkins_api import apply_tree, parse_tree

SECRET = "jk-webhook-secret-77e1"
NOW = 1_731_000_000.0
START_MS = 1_730_999_000_000  # the build's start, epoch milliseconds
DURATION_MS = 252_500

# The Notification plugin's delivery for the COMPLETED phase of build 42 of a job in a folder
# (https://github.com/jenkinsci/notification-plugin: model/JobState, BuildState, ScmState; `timestamp`
# is the phase's moment, here the build's end: start + duration).
COMPLETED: dict[str, Any] = {
    "name": "api",
    "display_name": "api",
    "url": "job/platform/job/api/",
    "build": {
        "full_url": "https://jenkins.example.com/job/platform/job/api/42/",
        "number": 42,
        "queue_id": 1187,
        "phase": "COMPLETED",
        "status": "FAILURE",
        "url": "job/platform/job/api/42/",
        "scm": {
            "url": "https://github.com/acme/remote.git",
            "branch": "origin/main",
            "commit": "c3f1e9a7b2d4e6f8a0b1c2d3e4f5a6b7c8d9e0f1",
            "changes": ["src/login.py"],
            "culprits": ["ada"],
        },
        "parameters": {"BRANCH": "main", "DEPLOY": "false"},
        "log": "",
        "notes": "",
        "artifacts": {},
        "timestamp": START_MS + DURATION_MS,
        "duration": DURATION_MS,
        "test_summary": {"total": 120, "failed": 2, "passed": 117, "skipped": 1, "failed_tests": ["LoginTest"]},
    },
}

# The same build through the JSON API (GET /job/platform/job/api/api/json?tree=builds[...]), a
# Pipeline run: ParametersAction, CauseAction and the Git plugin's BuildData among its actions.
API_BUILD: dict[str, Any] = {
    "_class": "org.jenkinsci.plugins.workflow.job.WorkflowRun",
    "number": 42,
    "url": "https://jenkins.example.com/job/platform/job/api/42/",
    "result": "FAILURE",
    "building": False,
    "inProgress": False,
    "timestamp": START_MS,
    "duration": DURATION_MS,
    "queueId": 1187,
    "actions": [
        {
            "_class": "hudson.model.ParametersAction",
            "parameters": [
                {"_class": "hudson.model.StringParameterValue", "name": "BRANCH", "value": "main"},
                {"_class": "hudson.model.BooleanParameterValue", "name": "DEPLOY", "value": False},
                {"_class": "hudson.model.PasswordParameterValue", "name": "SECRET_KEY"},
            ],
        },
        {
            "_class": "hudson.model.CauseAction",
            "causes": [
                {
                    "_class": "hudson.model.Cause$UserIdCause",
                    "shortDescription": "Started by user Ada",
                    "userName": "Ada Lovelace",
                }
            ],
        },
        {
            "_class": "hudson.plugins.git.util.BuildData",
            "lastBuiltRevision": {
                "SHA1": "c3f1e9a7b2d4e6f8a0b1c2d3e4f5a6b7c8d9e0f1",
                "branch": [{"SHA1": "c3f1e9a7b2d4e6f8a0b1c2d3e4f5a6b7c8d9e0f1", "name": "origin/main"}],
            },
        },
        {"_class": "org.jenkinsci.plugins.workflow.libs.LibrariesAction"},
        {},
    ],
    "changeSets": [
        {
            "_class": "hudson.plugins.git.GitChangeSetList",
            "items": [
                {"commitId": "b0b1", "msg": "Refactor the session store", "author": {"fullName": "Grace Hopper"}},
                {
                    "commitId": "c3f1",
                    "msg": "Fix the flaky login test\n\nIt raced.",
                    "author": {"fullName": "Ada Lovelace"},
                },
            ],
        }
    ],
}


def notification(phase: str, **build: Any) -> dict[str, Any]:
    payload = copy.deepcopy(COMPLETED)
    payload["build"]["phase"] = phase
    if phase in ("QUEUED", "STARTED"):
        payload["build"].pop("status")
        payload["build"]["duration"] = 0
        payload["build"]["timestamp"] = START_MS - 3000 if phase == "QUEUED" else START_MS
    if phase == "FINALIZED":
        payload["build"]["timestamp"] = START_MS + DURATION_MS + 1800
    payload["build"].update(build)
    return payload


def polled(build: dict[str, Any] | None = None, job: str = "platform/api", multibranch: bool = False) -> dict[str, Any]:
    return {"job": {"full_name": job, "multibranch": multibranch}, "build": build or copy.deepcopy(API_BUILD)}


def provider(**config: Any) -> JenkinsProvider:
    config.setdefault("webhook_secret", Secret(SECRET, "inline"))
    return JenkinsProvider("jenkins", JenkinsSourceConfig(type="jenkins", **config))


def basic(password: str, user: str = "flowforge") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# --- authentication -------------------------------------------------------------------------------


def test_the_notification_plugins_basic_authorization_a_token_or_a_signature_authenticate() -> None:
    jk = provider()
    body = json.dumps(COMPLETED).encode()
    # An endpoint URL https://flowforge:<secret>@host/hooks/jenkins: the plugin sends its user information.
    jk.verify(basic(SECRET), body, NOW)
    jk.verify(basic(SECRET, user="anyone"), body, NOW)  # the user name is not the secret
    odd = provider(webhook_secret=Secret("p@ss:w/rd", "inline"))
    odd.verify(basic("p%40ss%3Aw%2Frd"), body, NOW)  # as the plugin sends it from a URL's user information
    odd.verify(basic("p@ss:w/rd"), body, NOW)
    jk.verify({"X-FlowForge-Token": SECRET}, body, NOW)
    jk.verify({"X-FlowForge-Signature": signature_header(SECRET, int(NOW), body)}, body, NOW)


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "no X-FlowForge-Signature"),
        ({"Authorization": "Bearer " + SECRET}, "no X-FlowForge-Signature"),
        (basic("wrong"), "does not match"),
        (basic(SECRET + "x"), "does not match"),
        ({"Authorization": "Basic !!not-base64!!"}, "cannot be decoded"),
        ({"X-FlowForge-Token": "wrong"}, "does not match"),
        ({"X-FlowForge-Signature": f"timestamp={int(NOW)},signature=00"}, "does not match"),
    ],
)
def test_bad_credentials_are_rejected(headers: dict[str, str], reason: str) -> None:
    with pytest.raises(WebhookRejected, match=reason):
        provider().verify(headers, b"{}", NOW)


def test_a_replayed_signature_is_rejected() -> None:
    body = json.dumps(COMPLETED).encode()
    old = {"X-FlowForge-Signature": signature_header(SECRET, int(NOW) - 301, body)}
    with pytest.raises(WebhookRejected, match="window"):
        provider().verify(old, body, NOW)
    # A valid token does not rescue a signature that fails: the signature is checked first.
    with pytest.raises(WebhookRejected):
        provider().verify({**old, "X-FlowForge-Token": SECRET}, body, NOW)


def test_no_secret_is_kept_with_a_delivery() -> None:
    assert not {"Authorization", "X-FlowForge-Token"} & set(JenkinsProvider.stored_headers)
    assert provider().delivery_id(basic(SECRET)) is None


# --- names ----------------------------------------------------------------------------------------


def test_full_names_from_job_urls() -> None:
    assert full_name("job/app/") == "app"
    assert full_name("job/platform/job/api/") == "platform/api"
    assert full_name("job/platform/job/api/42/") == "platform/api"
    assert full_name("https://ci.example.com/jenkins/job/a%20b/job/c/7/") == "a b/c"
    # A multibranch project's branch job is named with its / encoded, served encoded once more.
    assert full_name("job/org/job/repo/job/feature%252Flogin/") == "org/repo/feature%2Flogin"
    assert full_name("job/job/job/x/") == "job/x"
    with pytest.raises(ValueError, match="not the URL of a Jenkins job"):
        full_name("view/all/")
    assert remote.job_path("org/repo/feature%2Flogin") == "/job/org/job/repo/job/feature%252Flogin"
    assert remote.job_path("") == ""


def test_branch_names_as_git_reports_them() -> None:
    for value in ("origin/main", "refs/heads/main", "refs/remotes/origin/main", "main"):
        assert branch_name(value) == "main"
    assert branch_name("origin/feature/login") == "feature/login"
    assert branch_name(None) is None


# --- normalization --------------------------------------------------------------------------------


def test_each_phase_of_a_build() -> None:
    jk = provider()
    [queued] = jk.normalize("QUEUED", notification("QUEUED"))
    [started] = jk.normalize("STARTED", notification("STARTED"))
    [completed] = jk.normalize("COMPLETED", notification("COMPLETED"))
    [finalized] = jk.normalize("FINALIZED", notification("FINALIZED"))
    assert [(e.status, e.provider_status) for e in (queued, started, completed, finalized)] == [
        (Status.PENDING, "QUEUED"),
        (Status.RUNNING, "STARTED"),
        (Status.FAILED, "FAILURE"),
        (Status.FAILED, "FAILURE"),
    ]
    assert queued.updated_at < started.updated_at < completed.updated_at <= finalized.updated_at
    assert (completed.pipeline, completed.run_id, completed.number) == ("platform/api", "platform/api#42", 42)
    assert (completed.started_at, completed.finished_at) == ("2024-11-07T17:03:20Z", "2024-11-07T17:07:32Z")
    assert (completed.branch, completed.sha, completed.author) == ("main", COMPLETED["build"]["scm"]["commit"], "ada")
    assert completed.url == "https://jenkins.example.com/job/platform/job/api/42/"
    assert finalized.started_at is None  # its moment is after the end: the start stays as it was
    assert jk.normalize("NONE", notification("NONE")) == []  # a manual notifyEndpoints step
    assert jk.event_name({}, COMPLETED) == "COMPLETED" and jk.event_name({}, {"name": "x"}) == "unknown"


@pytest.mark.parametrize(
    ("result", "status"),
    [
        ("SUCCESS", Status.SUCCESS),
        ("UNSTABLE", Status.FAILED),
        ("FAILURE", Status.FAILED),
        ("ABORTED", Status.CANCELLED),
        ("NOT_BUILT", Status.SKIPPED),
    ],
)
def test_results(result: str, status: Status) -> None:
    [hooked] = provider().normalize("COMPLETED", notification("COMPLETED", status=result))
    polled_run = normalize_api_build("jenkins", polled({**API_BUILD, "result": result}))
    assert (
        (hooked.status, hooked.provider_status) == (polled_run.status, polled_run.provider_status) == (status, result)
    )


def test_a_build_in_progress_has_no_result() -> None:
    building = {**API_BUILD, "result": None, "building": True, "inProgress": True, "duration": 0}
    run = normalize_api_build("jenkins", polled(building))
    assert (run.status, run.provider_status, run.finished_at) == (Status.RUNNING, "STARTED", None)


@pytest.mark.parametrize("phase", ["STARTED", "COMPLETED"])
def test_a_polled_build_has_the_key_of_its_notification(phase: str) -> None:
    build = copy.deepcopy(API_BUILD)
    if phase == "STARTED":
        build.update(result=None, building=True, inProgress=True, duration=0)
    [hooked] = provider().normalize(phase, notification(phase))
    [from_api] = provider().normalize(remote.BUILD_EVENT, polled(build))
    assert event_key(from_api) == event_key(hooked)
    assert (from_api.branch, from_api.sha, from_api.started_at) == (hooked.branch, hooked.sha, hooked.started_at)
    # The API tells more: the commit, who started it and how.
    assert (from_api.commit_message, from_api.author, from_api.trigger) == (
        "Fix the flaky login test",
        "Ada Lovelace",
        "user",
    )


def test_the_older_text_timestamp_of_the_plugin_reads_the_same() -> None:
    # Older versions of the plugin wrote `timestamp` as text (yyyy-MM-dd'T'HH:mm:ss.Sz, UTC as +00:00).
    [text] = provider().normalize("STARTED", notification("STARTED", timestamp="2024-11-07T17:03:20.0+00:00"))
    [number] = provider().normalize("STARTED", notification("STARTED"))
    assert text.updated_at == number.updated_at


def test_branches_of_multibranch_jobs_and_of_parameters() -> None:
    feature = copy.deepcopy(API_BUILD)
    run = normalize_api_build("jenkins", polled(feature, job="org/repo/feature%2Flogin", multibranch=True))
    assert (run.pipeline, run.run_id, run.branch) == (
        "org/repo/feature%2Flogin",
        "org/repo/feature%2Flogin#42",
        "feature/login",
    )
    no_git = {**API_BUILD, "actions": API_BUILD["actions"][:1]}
    assert normalize_api_build("jenkins", polled(no_git)).branch == "main"  # the BRANCH parameter
    freestyle = {k: v for k, v in API_BUILD.items() if k not in ("changeSets", "inProgress")}
    freestyle["changeSet"] = {"items": [{"msg": "Bump", "author": {"fullName": "Ada"}}], "kind": "git"}
    assert normalize_api_build("jenkins", polled(freestyle)).commit_message == "Bump"
    hook = notification("STARTED")
    hook["build"]["scm"].pop("branch")
    [started] = provider().normalize("STARTED", hook)
    assert started.branch == "main"
    assert remote.build_parameters(API_BUILD) == {"BRANCH": "main", "DEPLOY": False}  # no password's value


# --- config and helpers ---------------------------------------------------------------------------


def test_config(db_path: Any) -> None:
    source = {"type": "jenkins", "webhook_secret": SECRET, "token": "11abc", "repos": ["job/app"], "poll_interval": 60}
    with pytest.raises(ConfigError) as caught:
        make_config(base_config(db_path, sources={"jenkins": source}))
    problems = dict(caught.value.problems)
    assert problems["sources.jenkins.username"].startswith("missing")
    assert problems["sources.jenkins.api_url"].startswith("missing")
    assert "full name" in problems["sources.jenkins.repos"]
    good = {**source, "username": "flowforge", "api_url": "https://jenkins.example.com/", "repos": ["platform", "*"]}
    config = make_config(base_config(db_path, sources={"jenkins": good}))
    assert config.source_configs["jenkins"].max_rps == 10.0
    assert remote.parse_repos(["platform", "*", "org/repo/"]) == ["platform", "", "org/repo"]


async def test_basic_auth_without_aiohttp_basicauth() -> None:
    auth = credentials.basic("flowforge", "11ab:cd")
    encoded = base64.b64encode(b"flowforge:11ab:cd").decode()
    assert await auth.header() == ("Authorization", f"Basic {encoded}")
    assert set(auth.secrets()) == {"11ab:cd", encoded}  # both scrubbed from errors


def test_the_fakes_tree_follows_jenkins() -> None:
    # What the plugin's tree= asks for, applied as Jenkins does: named fields only, ranges of lists.
    tree = parse_tree(f"builds[{remote.BUILD_TREE}]{{0,1}}")
    job = {"_class": "x", "name": "api", "builds": [API_BUILD, {**API_BUILD, "number": 41}], "color": "red"}
    answered = apply_tree(job, tree)
    assert set(answered) == {"_class", "builds"} and [b["number"] for b in answered["builds"]] == [42]
    assert answered["builds"][0]["actions"][1]["causes"][0] == {
        "_class": "hudson.model.Cause$UserIdCause",
        "shortDescription": "Started by user Ada",
        "userName": "Ada Lovelace",
    }
    assert apply_tree({"builds": list(range(10))}, parse_tree("builds{3,}"))["builds"] == list(range(3, 10))


def example_source(name: str) -> dict[str, Any]:
    """The commented-out example of a source in config.example.yaml, uncommented and parsed."""
    lines = (ROOT / "config.example.yaml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"  # {name}:"))
    block = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith("  #   "):
            break
        block.append(line)
    return yaml.safe_load("\n".join(line.replace("  # ", "  ", 1) for line in block))[name]


@pytest.mark.parametrize("name", ["buildkite", "jenkins"])
def test_the_commented_examples_in_config_example_yaml_are_valid(db_path: Any, name: str) -> None:
    data = base_config(db_path, sources={name: example_source(name)})
    environ = {f"FLOWFORGED_SECRET_{name.upper()}_{kind}": "x" for kind in ("WEBHOOK", "TOKEN")}
    config = make_config(data, environ)
    assert config.source_configs[name].poll_interval == 60.0


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_the_readmes_openssl_recipe_signs_as_flowforge_checks(tmp_path: Any) -> None:
    readme = (ROOT / "README.md").read_text()
    [recipe] = [line.strip() for line in readme.splitlines() if line.strip().startswith("sig=$(")]
    body = json.dumps(COMPLETED).encode() + b"\n"
    (tmp_path / "body.json").write_bytes(body)
    script = f'ts={int(NOW)}\n{recipe}\nprintf "timestamp=%s,signature=%s" "$ts" "$sig"'
    header = subprocess.run(
        ["bash", "-c", script],
        cwd=tmp_path,
        env={"SECRET": SECRET, "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    provider().verify({"X-FlowForge-Signature": header}, body, NOW)
