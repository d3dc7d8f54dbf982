"""ModelUrlPolicy: which model URLs a caller may name (both doors use it; see
tests/test_both_doors.py for the doors themselves)."""

from __future__ import annotations

import pytest

from pytrickle_worker.config import WorkerConfig
from pytrickle_worker.engine.mpta.policy import ModelUrlPolicy, ModelUrlRefusedError

LOCAL = (
    "/models/a.mpta",
    "models/a.mpta",
    "file:///models/a.mpta",
    "FILE:///models/a.mpta",
    "C:\\models\\a.mpta",
)


def policy(**environ: str) -> ModelUrlPolicy:
    return WorkerConfig.load(
        environ={f"PTW_{k.upper()}": v for k, v in environ.items()}
    ).model_url_policy()


def test_nothing_set_allows_every_http_host_and_local_archives() -> None:
    rule = policy()
    for url in ("http://anywhere.example/a.mpta", "https://10.0.0.1:8443/a.mpta", *LOCAL):
        rule.check(url)


def test_an_allow_list_names_hosts_case_insensitively_and_refuses_local_archives() -> None:
    rule = policy(model_url_hosts="Models.Example, 127.0.0.1")
    rule.check("https://models.example/a.mpta")
    rule.check("http://MODELS.example:9000/a.mpta")  # the port is not compared
    rule.check("http://user:pw@127.0.0.1/a.mpta")
    with pytest.raises(ModelUrlRefusedError, match=r"host 'evil\.example' is not allowed"):
        rule.check("http://evil.example/a.mpta")
    with pytest.raises(ModelUrlRefusedError, match=r"host 'models\.example\.evil' is not"):
        rule.check("http://models.example.evil/a.mpta")
    for url in LOCAL:
        with pytest.raises(ModelUrlRefusedError, match="PTW_ALLOW_LOCAL_MODELS=true allows"):
            rule.check(url)


def test_allow_local_models_decides_local_archives_whatever_the_allow_list() -> None:
    for url in LOCAL:
        policy(model_url_hosts="models.example", allow_local_models="true").check(url)
        with pytest.raises(ModelUrlRefusedError, match="PTW_ALLOW_LOCAL_MODELS is false"):
            policy(allow_local_models="false").check(url)
    policy(allow_local_models="false").check("http://anywhere.example/a.mpta")


@pytest.mark.parametrize(
    "url", ["gopher://127.0.0.1/a.mpta", "ftp://models.example/a.mpta", "s3://bucket/a.mpta"]
)
def test_other_schemes_are_refused_under_every_setting(url: str) -> None:
    for rule in (policy(), policy(model_url_hosts="127.0.0.1,models.example")):
        with pytest.raises(ModelUrlRefusedError, match="unsupported scheme"):
            rule.check(url)


def test_an_invalid_url_is_refused_without_its_credentials() -> None:
    with pytest.raises(ModelUrlRefusedError, match="not a valid URL") as refused:
        policy(model_url_hosts="models.example").check("http://u:s3cr3t@[::1/a.mpta")
    assert "s3cr3t" not in str(refused.value)


def test_trusted_sources_pass_even_when_their_kind_is_refused() -> None:
    config = WorkerConfig.load(environ={"PTW_MODEL_URL_HOSTS": "models.example"})
    rule = config.model_url_policy(["/srv/preloaded.mpta"])
    rule.check("/srv/preloaded.mpta")
    with pytest.raises(ModelUrlRefusedError):
        rule.check("/srv/other.mpta")
    assert "local archives refused" in rule.describe()
