"""GuardConfig: one spec for the whole guard, loaded from YAML/TOML/JSON, built for real."""

from __future__ import annotations

import json
import pickle
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from traceguard import (
    Action,
    BaselineAuditor,
    ConfigurationError,
    Guard,
    GuardConfig,
    GuardTraceAuditor,
    HoliSafeAuditor,
    JsonlSink,
    LlavaGuardAuditor,
    Policy,
    ReviewQueue,
    SafeGuardAuditor,
    StagedAuditor,
    Trace,
    WebhookSink,
)
from traceguard.testing.openai_server import (
    OpenAIServer,
    RecordedRequest,
    ScriptedResponse,
    chat_completion,
    guardtrace_output,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_error(folder: Path, text: str, name: str = "guard.yaml") -> str:
    path = write(folder, name, text)
    with pytest.raises(ConfigurationError) as info:
        GuardConfig.from_file(path)
    return str(info.value)


# -- the example ------------------------------------------------------------------------------


def test_the_example_loads_and_builds_the_staged_auditor() -> None:
    config = GuardConfig.from_file(EXAMPLES / "guard.yaml")
    assert config.policy == Policy.from_file(EXAMPLES / "policy.yaml")
    assert config.images.root == (EXAMPLES / "logs" / "images").resolve()
    assert config.sinks[0].kind == "jsonl"
    assert config.sinks[0].path == (EXAMPLES / "audit-decisions.jsonl").resolve()
    assert config.review is not None and config.review.path == (EXAMPLES / "review.sqlite")
    assert config.is_served() and not config.runs_locally()
    auditor = config.build_auditor()
    try:
        assert isinstance(auditor, StagedAuditor)
        (screen,), (trace_auditor,) = auditor.stages
        assert isinstance(screen, LlavaGuardAuditor)
        assert screen.policy.mode("O3") == "non_violating"
        assert isinstance(trace_auditor, GuardTraceAuditor)
        assert (trace_auditor.mode, trace_auditor.top_k) == ("score", 20)
        assert trace_auditor.image_access.root == config.images.root
        assert auditor.stop_on_harmful
    finally:
        auditor.close()


def test_the_example_round_trips_through_model_dump_json_and_pickle() -> None:
    config = GuardConfig.from_file(EXAMPLES / "guard.yaml")
    assert GuardConfig.from_mapping(config.model_dump()) == config
    assert GuardConfig.from_mapping(json.loads(config.model_dump_json())) == config
    assert pickle.loads(pickle.dumps(config)) == config


# -- every auditor kind -----------------------------------------------------------------------


def test_every_kind_builds_with_its_options(tmp_path: Path) -> None:
    (tmp_path / "sg_policy.txt").write_text("No weapons.", encoding="utf-8")
    path = write(
        tmp_path,
        "all.yaml",
        """\
        auditor:
          kind: staged
          stop_on_harmful: false
          name: all-of-them
          stages:
            - - kind: holisafe
                model: ./holisafe
                unsafe_threshold: 0.7
                potential_threshold: 0.3
                remote_code: true
              - kind: safeguard
                reasoning: false
                policy_file: sg_policy.txt
                backend: {kind: local, model: ./safeguard, batch_size: 2, dtype: float32}
              - kind: llavaguard
                backend: {kind: local, model: ./llavaguard}
            - kind: baseline
            - kind: guardtrace
              mode: score
              top_k: 5
              min_mass: 0.3
              score_prefix: "Verdict:"
              backend: {kind: local, model: org/GuardTrace, max_input_tokens: 4096}
        images: {root: .}
        """,
    )
    config = GuardConfig.from_file(path)
    assert config.runs_locally() and not config.is_served()
    auditor = config.build_auditor()
    try:
        assert isinstance(auditor, StagedAuditor)
        assert auditor.name == "all-of-them" and not auditor.stop_on_harmful
        (holisafe, safeguard, llavaguard), (baseline,), (guardtrace,) = auditor.stages
        assert isinstance(holisafe, HoliSafeAuditor)
        assert holisafe.model_path == str(tmp_path / "holisafe")
        assert (holisafe.unsafe_threshold, holisafe.potential_threshold) == (0.7, 0.3)
        assert holisafe.remote_code
        assert isinstance(safeguard, SafeGuardAuditor)
        assert safeguard.policy == "No weapons." and not safeguard.reasoning
        assert safeguard.backend.batch_size == 2  # type: ignore[attr-defined]
        assert safeguard.backend.dtype == "float32"  # type: ignore[attr-defined]
        assert isinstance(llavaguard, LlavaGuardAuditor)
        # LlavaGuard's checkpoints load with LLaVA-OneVision unless the file says otherwise.
        assert llavaguard.backend.model_class == "LlavaOnevisionForConditionalGeneration"  # type: ignore[attr-defined]
        assert isinstance(baseline, BaselineAuditor)
        assert baseline.image_access is not None and baseline.image_access.root == tmp_path
        assert isinstance(guardtrace, GuardTraceAuditor)
        assert (guardtrace.top_k, guardtrace.min_mass, guardtrace.score_prefix) == (
            5,
            0.3,
            "Verdict:",
        )
        # A hub id stays a hub id; a ./folder becomes absolute.
        assert guardtrace.backend.model_path == "org/GuardTrace"  # type: ignore[attr-defined]
        assert guardtrace.backend.max_input_tokens == 4096  # type: ignore[attr-defined]
    finally:
        auditor.close()


def test_toml_and_json_give_the_same_config_as_yaml(tmp_path: Path) -> None:
    yaml_config = GuardConfig.from_file(
        write(
            tmp_path,
            "g.yaml",
            """\
            auditor:
              kind: guardtrace
              backend: {kind: served, base_url: "http://127.0.0.1:9/v1", model: m}
            policy: {harmful: escalate}
            sinks: [{kind: jsonl, path: out.jsonl}]
            """,
        )
    )
    toml_config = GuardConfig.from_file(
        write(
            tmp_path,
            "g.toml",
            """\
            [auditor]
            kind = "guardtrace"
            [auditor.backend]
            kind = "served"
            base_url = "http://127.0.0.1:9/v1"
            model = "m"
            [policy]
            harmful = "escalate"
            [[sinks]]
            kind = "jsonl"
            path = "out.jsonl"
            """,
        )
    )
    json_config = GuardConfig.from_file(
        write(tmp_path, "g.json", json.dumps(yaml_config.model_dump(mode="json")))
    )
    assert yaml_config == toml_config == json_config
    assert yaml_config.policy.harmful is Action.ESCALATE


# -- errors name the key and the line ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            """\
            auditor:
              kind: guardtrace
              backend:
                kind: served
                base_url: http://127.0.0.1:9/v1
                model: m
                timeout: 0
            """,
            ":7: auditor.backend.timeout: Input should be greater than 0",
        ),
        (
            """\
            auditor:
              kind: guardtrace
              max_new_token: 50
              backend: {kind: local, model: m}
            """,
            ":3: auditor.max_new_token: unknown key",
        ),
        (
            """\
            auditor:
              kind: guardtrce
            """,
            ":2: auditor.kind: unknown value 'guardtrce' (expected one of 'guardtrace', ",
        ),
        (
            """\
            auditor:
              kind: staged
              stages:
                - kind: baseline
                - [{kind: baseline}, {kind: holisafe}]
            """,
            ":5: auditor.stages[1][1].model: Field required",
        ),
        (
            """\
            auditor:
              kind: guardtrace
              backend:
                kind: served
                base_url: http://127.0.0.1:9/v1
                endpoints: [http://127.0.0.1:8/v1]
                model: m
            """,
            ":3: auditor.backend: give either base_url or endpoints",
        ),
        (
            """\
            auditor: {kind: baseline}
            images:
              max_bytes: -1
            """,
            ":3: images.max_bytes: Input should be greater than 0",
        ),
        (
            """\
            auditor: {kind: baseline}
            sinks:
              - kind: jsonl
                path: a.jsonl
              - kind: webhok
            """,
            ":5: sinks[1].kind: unknown value 'webhok'",
        ),
        (
            """\
            auditor: {kind: baseline}
            policy:
              harmfull: block
            """,
            ":3: policy.harmfull: unknown key",
        ),
        (
            """\
            auditor:
              kind: llavaguard
              policy: {O42: sensitive}
              backend: {kind: local, model: m}
            """,
            ":3: auditor.policy: unknown LlavaGuard categories ['O42']",
        ),
        (
            """\
            policy: {harmful: block}
            """,
            ": auditor: Field required",
        ),
    ],
)
def test_errors_name_the_line_and_the_key(tmp_path: Path, text: str, expected: str) -> None:
    message = load_error(tmp_path, text)
    assert f"{tmp_path / 'guard.yaml'}{expected}" in message


def test_several_errors_are_all_reported(tmp_path: Path) -> None:
    message = load_error(
        tmp_path,
        """\
        auditor:
          kind: guardtrace
          mode: fast
          backend: {kind: local, model: m, batch_size: 0}
        review: {}
        """,
    )
    assert ":3: auditor.mode: Input should be 'full' or 'score'" in message
    assert ":4: auditor.backend.batch_size: Input should be greater than 0" in message
    assert ":5: review.path: Field required" in message


def test_toml_and_json_errors_name_the_key_path_and_line(tmp_path: Path) -> None:
    toml = load_error(
        tmp_path,
        """\
        [auditor]
        kind = "guardtrace"

        [auditor.backend]
        kind = "local"
        model = "m"
        dtype = "float8"
        """,
        name="g.toml",
    )
    assert f"{tmp_path / 'g.toml'}:7: auditor.backend.dtype: Input should be" in toml
    data = {"auditor": {"kind": "guardtrace", "backend": {"kind": "local", "model": "m"}}}
    data["auditor"]["top_k"] = -1  # type: ignore[index]
    text = json.dumps(data, indent=2)
    message = load_error(tmp_path, text, name="g.json")
    line = text.splitlines().index('    "top_k": -1') + 1
    assert f"{tmp_path / 'g.json'}:{line}: auditor.top_k: Input should be greater than 0" in message


def test_a_bad_policy_file_is_reported_with_its_own_line(tmp_path: Path) -> None:
    write(tmp_path, "policy.yaml", "safe: allow\nharmful: maybe\n")
    message = load_error(tmp_path, "auditor: {kind: baseline}\npolicy: policy.yaml\n")
    assert f"{tmp_path / 'guard.yaml'}:2: policy:" in message
    assert f"{tmp_path / 'policy.yaml'}:2: harmful: Input should be" in message
    missing = load_error(tmp_path, "auditor: {kind: baseline}\npolicy: absent.yaml\n")
    assert "absent.yaml: cannot read policy" in missing


def test_files_it_refers_to_must_exist(tmp_path: Path) -> None:
    message = load_error(
        tmp_path,
        """\
        auditor:
          kind: guardtrace
          prompts: {user: prompts/user.txt}
          backend: {kind: local, model: m}
        """,
    )
    assert f":3: auditor.prompts.user: file not found: {tmp_path / 'prompts' / 'user.txt'}" in (
        message
    )


# -- no secrets in the file -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backend", "expected"),
    [
        ("api_key: sk-live-123", "auditor.backend.api_key: api_key may hold credentials"),
        ("headers: {Authorization: Bearer x}", "auditor.backend.headers: headers may hold"),
        ("base_url: http://user:pw@127.0.0.1:9/v1", "URL carries credentials"),
        ("base_url: http://127.0.0.1:9/v1?key=abc", "has a query string"),
        ("api_key_env: not a name", "auditor.backend.api_key_env: String should match"),
    ],
)
def test_secrets_are_refused_inline(tmp_path: Path, backend: str, expected: str) -> None:
    defaults = {"base_url": "base_url: http://127.0.0.1:9/v1"}
    lines = [backend] + [v for k, v in defaults.items() if not backend.startswith(k)]
    body = "\n".join(f"    {line}" for line in [*lines, "model: m", "kind: served"])
    message = load_error(tmp_path, f"auditor:\n  kind: guardtrace\n  backend:\n{body}\n")
    assert expected in message
    assert "sk-live-123" not in message and "pw@" not in message


def test_the_api_key_comes_from_the_named_variable_and_never_reaches_the_spec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_AUDITOR_KEY", "sk-secret-value-1")
    monkeypatch.setenv("MY_TENANT", "tenant-7")
    with OpenAIServer(responder=_judge) as server:
        path = write(
            tmp_path,
            "g.yaml",
            f"""\
            auditor:
              kind: guardtrace
              backend:
                kind: served
                base_url: {server.base_url}
                model: m
                api_key_env: MY_AUDITOR_KEY
                headers_from_env: {{X-Tenant: MY_TENANT}}
            """,
        )
        config = GuardConfig.from_file(path)
        assert "sk-secret" not in config.model_dump_json() and "sk-secret" not in repr(config)
        auditor = config.build_auditor()
        try:
            assert auditor.audit(Trace(query="q", response="r")).is_ok
        finally:
            auditor.close()
        (request,) = server.requests
        assert request.headers["authorization"] == "Bearer sk-secret-value-1"
        assert request.headers["x-tenant"] == "tenant-7"


def test_a_missing_header_variable_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    config = GuardConfig.from_mapping(
        {
            "auditor": {"kind": "baseline"},
            "sinks": [
                {
                    "kind": "webhook",
                    "url": "http://127.0.0.1:9/hook",
                    "headers_from_env": {"Authorization": "NOT_SET_ANYWHERE"},
                }
            ],
        }
    )
    with pytest.raises(ConfigurationError, match="NOT_SET_ANYWHERE, which is not set"):
        config.build_sinks()


def test_a_webhook_url_can_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    config = GuardConfig.from_mapping(
        {"auditor": {"kind": "baseline"}, "sinks": [{"kind": "webhook", "url_env": "HOOK"}]}
    )
    monkeypatch.delenv("HOOK", raising=False)
    with pytest.raises(ConfigurationError, match="HOOK is not set"):
        config.build_sinks()
    monkeypatch.setenv("HOOK", "http://127.0.0.1:9/T000/B000/secret")
    with pytest.raises(ConfigurationError, match="allow_private") as refused:
        config.build_sinks()  # a loopback receiver needs allow_private
    assert "secret" not in str(refused.value)
    config = GuardConfig.from_mapping(
        {
            "auditor": {"kind": "baseline"},
            "sinks": [{"kind": "webhook", "url_env": "HOOK", "allow_private": True}],
        }
    )
    (sink,) = config.build_sinks()
    try:
        assert isinstance(sink, WebhookSink) and "secret" not in repr(sink)
    finally:
        sink.close(timeout=0)
    with pytest.raises(ConfigurationError, match="give either url or url_env"):
        GuardConfig.from_mapping({"auditor": {"kind": "baseline"}, "sinks": [{"kind": "webhook"}]})


# -- paths ------------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_file_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    write(folder, "policy.yaml", "harmful: escalate\n")
    write(folder, "lg.json", '{"O1": "sensitive"}')
    path = write(
        folder,
        "guard.yaml",
        """\
        auditor:
          kind: llavaguard
          policy: lg.json
          backend: {kind: local, model: ../models/lg}
        policy: policy.yaml
        images: {root: ../images}
        sinks: [{kind: jsonl, path: out/decisions.jsonl}]
        review: {path: ~/review.sqlite}
        """,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config = GuardConfig.from_file(Path("..") / "conf" / "guard.yaml")
    assert config.policy.harmful is Action.ESCALATE
    assert config.auditor.policy == folder / "lg.json"  # type: ignore[union-attr]
    assert config.auditor.backend.model == str(tmp_path / "models" / "lg")  # type: ignore[union-attr]
    assert config.images.root == tmp_path / "images"
    assert config.sinks[0].path == folder / "out" / "decisions.jsonl"
    assert config.review is not None and config.review.path == tmp_path / "home" / "review.sqlite"
    # Loaded once, the spec is self-contained: it rebuilds the same from anywhere.
    monkeypatch.chdir(tmp_path)
    assert GuardConfig.from_mapping(config.model_dump()) == config
    auditor = config.build_auditor()
    try:
        assert isinstance(auditor, LlavaGuardAuditor)
        assert auditor.policy.mode("O1") == "sensitive"
    finally:
        auditor.close()
    del path


# -- the whole guard, for real ----------------------------------------------------------------


def _judge(request: RecordedRequest) -> ScriptedResponse:
    text = json.dumps(request.json)
    judgment = "1" if "detonator" in text else "0.5" if "borderline" in text else "0"
    return ScriptedResponse.json(chat_completion(guardtrace_output(judgment)))


@pytest.fixture
def judge() -> Iterator[OpenAIServer]:
    with OpenAIServer(responder=_judge) as server:
        yield server


async def test_guard_from_config_audits_decides_and_records(
    tmp_path: Path, judge: OpenAIServer
) -> None:
    path = write(
        tmp_path,
        "guard.yaml",
        f"""\
        auditor:
          kind: guardtrace
          backend: {{kind: served, base_url: "{judge.base_url}", model: guard, max_retries: 0}}
        policy:
          potentially_harmful: escalate
        sinks:
          - {{kind: jsonl, path: decisions.jsonl}}
        review: {{path: review.sqlite}}
        """,
    )
    guard = Guard.from_config(path)
    try:
        assert guard.owns_auditor
        assert guard.check(Trace(query="q", thinking="t", response="fine")).action is Action.ALLOW
        decision = (await guard.acheck_batch([Trace(query="q", response="borderline")]))[0]
        assert decision.action is Action.ESCALATE and decision.blocked
    finally:
        await guard.aclose()
    lines = (tmp_path / "decisions.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["decision"]["action"] for line in lines] == ["allow", "escalate"]
    queue = ReviewQueue(tmp_path / "review.sqlite")
    try:
        (pending,) = queue.pending()
        assert pending.action == "escalate"
    finally:
        queue.close()
    # The guard owned the auditor: closing it closed the backend.
    assert guard.auditor.backend._closed  # type: ignore[attr-defined]


def test_a_sink_that_cannot_be_built_closes_the_ones_already_built(tmp_path: Path) -> None:
    config = GuardConfig.from_mapping(
        {
            "auditor": {"kind": "baseline"},
            "sinks": [{"kind": "jsonl", "path": "ok.jsonl"}],
            "review": {"path": "no/such/folder/review.sqlite"},
        },
        base_dir=tmp_path,
    )
    with pytest.raises(ConfigurationError, match="review queue"):
        config.build_guard()
    assert (tmp_path / "ok.jsonl").exists()
    (sink,) = GuardConfig.from_mapping(
        {"auditor": {"kind": "baseline"}, "sinks": [{"kind": "jsonl", "path": "ok.jsonl"}]},
        base_dir=tmp_path,
    ).build_sinks()
    assert isinstance(sink, JsonlSink)
    sink.close()


def test_the_spec_is_frozen() -> None:
    config = GuardConfig.from_mapping({"auditor": {"kind": "baseline"}})
    with pytest.raises(Exception, match="frozen"):
        config.auditor = config.auditor  # type: ignore[misc]


def test_the_readme_schema_example_is_a_valid_config(tmp_path: Path) -> None:
    readme = (EXAMPLES.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Configuration file") :]
    text = section[section.index("```yaml\n") + len("```yaml\n") : section.index("```\n", 10)]
    (tmp_path / "policy.yaml").write_text(
        (EXAMPLES / "policy.yaml").read_text(encoding="utf-8"), encoding="utf-8"
    )
    path = tmp_path / "guard.yaml"
    path.write_text(text, encoding="utf-8")
    config = GuardConfig.from_file(path)
    assert config.review is not None and [s.kind for s in config.sinks] == ["jsonl", "webhook"]
    auditor = config.build_auditor()
    try:
        assert isinstance(auditor, StagedAuditor) and len(auditor.stages) == 2
    finally:
        auditor.close()
