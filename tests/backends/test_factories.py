"""``backends.local`` / ``backends.served`` and the auditors' ``local()`` / ``served()``.

The option lists are written once (``LocalOptions``, ``ServedOptions``); these tests keep them,
the auditors' conveniences and the configuration spec in step with the constructors.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, get_type_hints

import pytest
from pydantic import BaseModel

from traceguard import (
    GuardTraceAuditor,
    HoliSafeAuditor,
    LlavaGuardAuditor,
    OpenAICompatibleBackend,
    SafeGuardAuditor,
    Trace,
    TransformersBackend,
    backends,
)
from traceguard._config_auditors import GuardTraceSpec, HoliSafeSpec, LlavaGuardSpec, SafeGuardSpec
from traceguard._config_backends import LocalBackendSpec, ServedBackendSpec
from traceguard.testing.openai_server import (
    OpenAIServer,
    RecordedRequest,
    ScriptedResponse,
    chat_completion,
    top_logprobs_completion,
)

AUDITORS = [GuardTraceAuditor, LlavaGuardAuditor, SafeGuardAuditor]


def keyword_defaults(function: Callable[..., Any]) -> dict[str, Any]:
    """Keyword-only parameters and their defaults (``inspect.Parameter.empty`` if required)."""
    return {
        name: parameter.default
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    }


# -- the option lists -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "backend"),
    [
        (backends.LocalOptions, TransformersBackend),
        (backends.ServedOptions, OpenAICompatibleBackend),
    ],
)
def test_option_lists_are_the_constructors_keywords(options: type, backend: type) -> None:
    assert set(get_type_hints(options)) == set(keyword_defaults(backend.__init__)) - {"name"}


@pytest.mark.parametrize("auditor", AUDITORS)
@pytest.mark.parametrize("convenience", ["local", "served"])
def test_conveniences_take_every_auditor_option_with_the_same_default(
    auditor: type, convenience: str
) -> None:
    assert keyword_defaults(getattr(auditor, convenience)) == keyword_defaults(auditor.__init__)
    parameters = inspect.signature(getattr(auditor, convenience)).parameters
    assert [p.kind for p in parameters.values()][-1] is inspect.Parameter.VAR_KEYWORD


@pytest.mark.parametrize(
    ("spec", "constructor", "not_in_spec"),
    [
        (LocalBackendSpec, TransformersBackend.__init__, set()),
        (ServedBackendSpec, OpenAICompatibleBackend.__init__, set()),
        (GuardTraceSpec, GuardTraceAuditor.__init__, {"prompts", "image_access", "score_prefix"}),
        (LlavaGuardSpec, LlavaGuardAuditor.__init__, {"policy", "image_access"}),
        (SafeGuardSpec, SafeGuardAuditor.__init__, {"policy", "image_access"}),
        (HoliSafeSpec, HoliSafeAuditor.__init__, {"image_access", "prompt"}),
    ],
)
def test_config_specs_mirror_the_constructors(
    spec: type[BaseModel], constructor: Callable[..., Any], not_in_spec: set[str]
) -> None:
    """Every option of the constructor is in the spec, with the same default (secrets aside)."""
    fields = spec.model_fields
    for name, default in keyword_defaults(constructor).items():
        if name in not_in_spec or name in ("api_key", "headers"):
            continue
        assert name in fields, name
        if default is not inspect.Parameter.empty:
            assert fields[name].default == default, name


# -- the factories ----------------------------------------------------------------------------


def test_factories_build_the_backends_with_their_options() -> None:
    local = backends.local("org/model", device="cpu", batch_size=3, name="mine")
    assert isinstance(local, TransformersBackend)
    assert (local.model_path, local.batch_size, local.name) == ("org/model", 3, "mine")
    served = backends.served(
        ["http://127.0.0.1:9/v1", "http://127.0.0.1:8/v1"], "m", max_concurrency=3, timeout=2.0
    )
    try:
        assert isinstance(served, OpenAICompatibleBackend)
        assert (served.model, served.max_concurrency, served.name) == ("m", 3, "http:m")
    finally:
        served.close()


def test_a_misspelt_backend_option_is_an_error_not_ignored() -> None:
    with pytest.raises(TypeError, match="max_retry"):
        backends.served("http://127.0.0.1:9/v1", "m", max_retry=0)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="devcie"):
        GuardTraceAuditor.local("org/m", devcie="cpu")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="top_kk"):
        GuardTraceAuditor.served("http://127.0.0.1:9/v1", "m", top_kk=5)  # type: ignore[call-arg]


# -- the auditors' conveniences ---------------------------------------------------------------


def _score_responder(prefix: str) -> Callable[[RecordedRequest], ScriptedResponse]:
    table = {"": {"0": 0.6, "1": 0.3, "I": 0.1}, "0": {".": 0.5, "\n": 0.5}, "0.": {"5": 1.0}}

    def respond(request: RecordedRequest) -> ScriptedResponse:
        body = request.json
        if not body.get("logprobs"):
            return ScriptedResponse.json(chat_completion("“Judgment”: 0"))
        after = body["messages"][-1]["content"][len(prefix) :]
        return ScriptedResponse.json(top_logprobs_completion(table[after], as_probabilities=True))

    return respond


def test_guardtrace_served_takes_score_options_and_backend_options() -> None:
    prefix = "My verdict, “Judgment”: "
    with OpenAIServer(responder=_score_responder(prefix)) as server:
        auditor = GuardTraceAuditor.served(
            server.base_url,
            "guard",
            mode="score",
            top_k=5,
            min_mass=0.3,
            score_prefix=prefix,
            max_retries=0,
            max_concurrency=2,
            name="scorer",
        )
        try:
            assert (auditor.top_k, auditor.min_mass, auditor.name) == (5, 0.3, "scorer")
            assert isinstance(auditor.backend, OpenAICompatibleBackend)
            assert auditor.backend.max_concurrency == 2
            verdict = auditor.audit(Trace(query="q", thinking="t", response="r"))
        finally:
            auditor.close()
    assert verdict.is_ok and verdict.probabilities is not None
    logprob_requests = [r.json for r in server.requests if r.json.get("logprobs")]
    assert logprob_requests
    assert all(body["top_logprobs"] == 5 for body in logprob_requests)
    assert all(body["messages"][-1]["content"].startswith(prefix) for body in logprob_requests)


def test_guardtrace_local_passes_score_options_to_the_auditor_and_the_rest_to_the_backend() -> None:
    auditor = GuardTraceAuditor.local(
        "org/m", mode="score", top_k=7, min_mass=0.2, batch_size=2, max_input_tokens=1024
    )
    assert (auditor.mode, auditor.top_k, auditor.min_mass) == ("score", 7, 0.2)
    assert isinstance(auditor.backend, TransformersBackend)
    assert (auditor.backend.batch_size, auditor.backend.max_input_tokens) == (2, 1024)


def test_llavaguard_conveniences() -> None:
    local = LlavaGuardAuditor.local(max_new_tokens=50, batch_size=2, name="lg")
    assert isinstance(local.backend, TransformersBackend)
    assert local.backend.model_class == "LlavaOnevisionForConditionalGeneration"
    assert local.backend.model_path == "AIML-TUDA/LlavaGuard-v1.2-0.5B-OV-hf"
    assert (local.max_new_tokens, local.name, local.backend.batch_size) == (50, "lg", 2)
    assert LlavaGuardAuditor.local("x", model_class="Other").backend.model_class == "Other"  # type: ignore[attr-defined]
    served = LlavaGuardAuditor.served(
        ["http://127.0.0.1:9/v1"], "lg", no_image="invalid_input", timeout=3.0
    )
    try:
        assert served.no_image == "invalid_input"
        assert isinstance(served.backend, OpenAICompatibleBackend)
    finally:
        served.close()


def test_safeguard_conveniences() -> None:
    local = SafeGuardAuditor.local(reasoning=False, dtype="float32")
    assert isinstance(local.backend, TransformersBackend)
    assert local.backend.model_path == "tyodd/SafeGuard-VL-RL"
    assert local.backend.dtype == "float32" and not local.reasoning
    assert local.max_new_tokens == 8  # the one-word answer's budget
    served = SafeGuardAuditor.served(
        "http://127.0.0.1:9/v1", "sg", policy="No knives.", max_new_tokens=64, max_retries=1
    )
    try:
        assert (served.policy, served.max_new_tokens) == ("No knives.", 64)
        assert isinstance(served.backend, OpenAICompatibleBackend)
    finally:
        served.close()
