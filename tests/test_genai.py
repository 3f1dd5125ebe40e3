"""MLflow 3's GenAI features through nginx, as a teammate (not an admin) uses them:
tracing with the full client, with the lightweight `mlflow-tracing` package
(its own virtualenv) and with a plain OpenTelemetry OTLP/HTTP exporter;
`mlflow.genai.evaluate` with code scorers; the prompt registry; and what a
READ-only teammate may and may not do with someone else's traces and prompts.
Bad input (no experiment header, an unknown alias, a scorer that raises) gets
a 4xx in MLflow's JSON error shape, never a 500."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from stack import ROOT, Stack, new_account, unique, wait_for

TRACING_VERSION = "3.17.2"  # the lightweight package, same release as the server
PACKAGE = f"mlflow-tracing=={TRACING_VERSION}"
VENVS = ROOT / "tests" / ".venvs"


def basic(user: tuple[str, str]) -> str:
    return "Basic " + base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()


def assert_json_error(r: requests.Response, status: int | tuple[int, ...]) -> dict:
    wanted = (status,) if isinstance(status, int) else status
    assert r.status_code in wanted, (r.status_code, r.text[:500])
    body = r.json()
    assert isinstance(body.get("error_code"), str) and isinstance(body.get("message"), str), body
    return body


@pytest.fixture(scope="module")
def people(stack: Stack, http: requests.Session) -> dict[str, tuple[str, str]]:
    """A teammate who owns the work, and a reader: another teammate with the default READ permission."""
    return {"owner": new_account(stack.url, http, "genai"), "reader": new_account(stack.url, http, "reader")}


@pytest.fixture
def as_user(tracking, monkeypatch: pytest.MonkeyPatch):
    """`as_user(user)`: the MLflow client in this process signs in as `user` from now on."""

    def switch(user: tuple[str, str]) -> None:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user[0])
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", user[1])

    return switch


@pytest.fixture(scope="module")
def owned(stack: Stack, people, tracking) -> dict:
    """The owner's experiment with one trace logged by `@mlflow.trace`, and a prompt with an alias."""
    import mlflow

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_USERNAME", people["owner"][0])
        mp.setenv("MLFLOW_TRACKING_PASSWORD", people["owner"][1])
        exp_id = mlflow.create_experiment(unique("genai"))
        mlflow.set_experiment(experiment_id=exp_id)

        @mlflow.trace(name="retrieve", span_type="RETRIEVER")
        def retrieve(question: str) -> list[str]:
            return [f"doc about {question}"]

        @mlflow.trace(name="answer_question")
        def answer_question(question: str) -> str:
            docs = retrieve(question)
            return f"{question} -> {len(docs)} doc(s)"

        output = answer_question("churn")
        trace_id = mlflow.get_last_active_trace_id()
        mlflow.flush_trace_async_logging()
        prompt = unique("prompt")
        mlflow.genai.register_prompt(name=prompt, template="Answer {{question}} briefly.", commit_message="first")
        mlflow.genai.set_prompt_alias(prompt, alias="production", version=1)
    return {"experiment_id": exp_id, "trace_id": trace_id, "output": output, "prompt": prompt}


def traces_in(experiment_id: str) -> list:
    import mlflow

    return mlflow.search_traces(experiment_ids=[experiment_id], return_type="list")


def test_full_client_trace_is_searchable_with_spans_inputs_and_outputs(owned: dict, people, as_user) -> None:
    as_user(people["owner"])
    found = [t for t in traces_in(owned["experiment_id"]) if t.info.trace_id == owned["trace_id"]]
    assert len(found) == 1, owned
    trace = found[0]
    assert trace.info.state.value == "OK"
    spans = {s.name: s for s in trace.data.spans}
    assert set(spans) == {"answer_question", "retrieve"}
    assert spans["answer_question"].inputs == {"question": "churn"}
    assert spans["answer_question"].outputs == owned["output"]
    assert spans["retrieve"].outputs == ["doc about churn"]
    assert spans["retrieve"].parent_id == spans["answer_question"].span_id


LIGHT_SCRIPT = """
import json, sys
import mlflow
from mlflow.version import IS_TRACING_SDK_ONLY

mlflow.set_experiment(experiment_id=sys.argv[1])

@mlflow.trace(name="light_answer")
def light_answer(question):
    return question.upper()

light_answer(sys.argv[2])
trace_id = mlflow.get_last_active_trace_id()
mlflow.flush_trace_async_logging()
print(json.dumps({"trace_id": trace_id, "sdk_only": IS_TRACING_SDK_ONLY, "version": mlflow.__version__}))
"""


def tracing_venv() -> Path:
    """A cached virtualenv with only `mlflow-tracing` (created on first use, reused after)."""
    venv = VENVS / f"mlflow-tracing-{TRACING_VERSION}"
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    if not stamp.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=300)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                f"mlflow-tracing=={TRACING_VERSION}",
            ],
            check=True,
            timeout=900,
        )
        stamp.write_text(TRACING_VERSION + "\n")
    return python


def test_lightweight_tracing_package_logs_a_trace_through_nginx(stack: Stack, owned: dict, people, as_user) -> None:
    python = tracing_venv()
    marker = unique("light")
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": stack.url,
        "MLFLOW_TRACKING_USERNAME": people["owner"][0],
        "MLFLOW_TRACKING_PASSWORD": people["owner"][1],
    }
    proc = subprocess.run(
        [str(python), "-c", LIGHT_SCRIPT, owned["experiment_id"], marker],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=VENVS,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["sdk_only"] is True and out["version"] == TRACING_VERSION, out
    # Read back with the full client.
    import mlflow

    as_user(people["owner"])
    trace = wait_for("the lightweight trace", lambda: mlflow.get_trace(out["trace_id"]))
    (span,) = trace.data.spans
    assert span.name == "light_answer"
    assert span.inputs == {"question": marker} and span.outputs == marker.upper()


def otlp_spans(marker: str):
    """Two finished OpenTelemetry spans (a root and a child), from a private tracer provider."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("mlflow-stack-tests")
    with tracer.start_as_current_span("otlp-root") as root:
        root.set_attribute("marker", marker)
        with tracer.start_as_current_span("otlp-child") as child:
            child.set_attribute("step", 1)
    provider.shutdown()
    spans = memory.get_finished_spans()
    assert len(spans) == 2
    return spans


def otlp_body(spans) -> bytes:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    return encode_spans(spans).SerializeToString()


def test_otlp_exporter_posts_spans_that_become_a_searchable_trace(stack: Stack, owned: dict, people, as_user) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult

    marker = unique("otlp")
    spans = otlp_spans(marker)
    exporter = OTLPSpanExporter(
        endpoint=f"{stack.url}/v1/traces",
        headers={"x-mlflow-experiment-id": owned["experiment_id"], "Authorization": basic(people["owner"])},
        timeout=30,
    )
    assert exporter.export(spans) == SpanExportResult.SUCCESS
    exporter.shutdown()

    trace_id = "tr-" + format(spans[0].context.trace_id, "032x")
    as_user(people["owner"])
    found = wait_for(
        "the OTLP trace in search_traces",
        lambda: [t for t in traces_in(owned["experiment_id"]) if t.info.trace_id == trace_id],
    )
    names = {s.name for s in found[0].data.spans}
    assert names == {"otlp-root", "otlp-child"}
    root = next(s for s in found[0].data.spans if s.name == "otlp-root")
    assert root.attributes.get("marker") == marker


def test_otlp_without_experiment_header_is_a_json_4xx(stack: Stack, people) -> None:
    body = otlp_body(otlp_spans(unique("noheader")))
    headers = {"Content-Type": "application/x-protobuf", "Authorization": basic(people["owner"])}
    r = requests.post(f"{stack.url}/v1/traces", data=body, headers=headers, timeout=30)
    assert_json_error(r, (400, 422))
    # A header naming no experiment: 4xx too.
    r = requests.post(
        f"{stack.url}/v1/traces", data=body, headers={**headers, "x-mlflow-experiment-id": "999999999"}, timeout=30
    )
    assert_json_error(r, (400, 403, 404))


def test_genai_evaluate_with_code_scorers_stores_its_results(owned: dict, people, as_user) -> None:
    import mlflow
    from mlflow.genai.scorers import scorer

    @scorer
    def exact_match(outputs, expectations) -> bool:
        return outputs == expectations["answer"]

    @scorer
    def answer_length(outputs) -> int:
        return len(outputs)

    @scorer
    def broken(outputs) -> bool:
        raise ValueError("this scorer has a bug")

    data = [
        {"inputs": {"question": "2+2"}, "outputs": "4", "expectations": {"answer": "4"}},
        {"inputs": {"question": "3+3"}, "outputs": "seven", "expectations": {"answer": "6"}},
    ]
    as_user(people["owner"])
    mlflow.set_experiment(experiment_id=owned["experiment_id"])
    result = mlflow.genai.evaluate(data=data, scorers=[exact_match, answer_length, broken])
    assert result.metrics["exact_match/mean"] == pytest.approx(0.5)
    assert result.metrics["answer_length/mean"] == pytest.approx(3.0)

    # Stored on the server: the run's metrics and each trace's assessments.
    run = mlflow.MlflowClient().get_run(result.run_id)
    assert run.info.experiment_id == owned["experiment_id"]
    assert run.data.metrics["exact_match/mean"] == pytest.approx(0.5)
    traces = mlflow.search_traces(run_id=result.run_id, return_type="list")
    assert len(traces) == 2
    seen = {}
    for trace in traces:
        by_name = {a.name: a for a in trace.info.assessments}
        question = trace.data.spans[0].inputs["question"]
        seen[question] = by_name["exact_match"].feedback.value
        assert by_name["answer_length"].feedback.value == len("4" if question == "2+2" else "seven")
        # The scorer that raised: an error recorded on the trace, not a failed request.
        assert by_name["broken"].feedback.error is not None, by_name["broken"]
        assert "this scorer has a bug" in (by_name["broken"].feedback.error.error_message or "")
    assert seen == {"2+2": True, "3+3": False}


def test_prompt_registry_versions_and_aliases(owned: dict, people, as_user) -> None:
    import mlflow

    as_user(people["owner"])
    name = owned["prompt"]
    v2 = mlflow.genai.register_prompt(name=name, template="Answer {{question}} in one word.", commit_message="shorter")
    assert v2.version == 2
    loaded = mlflow.genai.load_prompt(f"prompts:/{name}@production", cache_ttl_seconds=0)
    assert loaded.version == 1 and loaded.format(question="why") == "Answer why briefly."
    mlflow.genai.set_prompt_alias(name, alias="production", version=2)
    loaded = mlflow.genai.load_prompt(f"prompts:/{name}@production", cache_ttl_seconds=0)
    assert loaded.version == 2 and loaded.format(question="why") == "Answer why in one word."
    assert (
        mlflow.genai.load_prompt(f"prompts:/{name}/1", cache_ttl_seconds=0).template == "Answer {{question}} briefly."
    )


def test_unknown_prompt_alias_is_a_4xx(stack: Stack, owned: dict, people, as_user) -> None:
    import mlflow
    from mlflow.exceptions import MlflowException

    as_user(people["owner"])
    with pytest.raises(MlflowException) as raised:
        mlflow.genai.load_prompt(f"prompts:/{owned['prompt']}@no-such-alias", cache_ttl_seconds=0)
    assert 400 <= raised.value.get_http_status_code() < 500 and "no-such-alias" in raised.value.message
    r = requests.get(
        f"{stack.url}/api/2.0/mlflow/registered-models/alias",
        params={"name": owned["prompt"], "alias": "no-such-alias"},
        auth=people["owner"],
        timeout=30,
    )
    assert_json_error(r, (400, 404))


def test_a_reader_reads_traces_and_prompts_but_writes_neither(stack: Stack, owned: dict, people, as_user) -> None:
    import mlflow
    from mlflow.exceptions import MlflowException

    exp_id, reader = owned["experiment_id"], people["reader"]
    as_user(people["owner"])
    before = {t.info.trace_id for t in traces_in(exp_id)}

    # Reads: search and get the owner's trace, load the owner's prompt.
    as_user(reader)
    assert owned["trace_id"] in {t.info.trace_id for t in traces_in(exp_id)}
    assert mlflow.get_trace(owned["trace_id"]).data.spans
    assert mlflow.genai.load_prompt(f"prompts:/{owned['prompt']}/1", cache_ttl_seconds=0).version == 1

    # Writes: a trace into the owner's experiment, through OTLP and the REST API.
    body = otlp_body(otlp_spans(unique("reader")))
    r = requests.post(
        f"{stack.url}/v1/traces",
        data=body,
        headers={
            "Content-Type": "application/x-protobuf",
            "Authorization": basic(reader),
            "x-mlflow-experiment-id": exp_id,
        },
        timeout=30,
    )
    assert_json_error(r, 403)
    start = {
        "trace": {
            "trace_info": {
                "trace_id": "tr-" + "ab" * 16,
                "trace_location": {"type": "MLFLOW_EXPERIMENT", "mlflow_experiment": {"experiment_id": exp_id}},
                "request_time": "2026-12-05T00:00:00Z",
                "state": "OK",
            }
        }
    }
    r = requests.post(f"{stack.url}/api/3.0/mlflow/traces", json=start, auth=reader, timeout=30)
    # MLflow's basic auth refuses Flask routes with a plain-text 403, as for every other write.
    assert r.status_code == 403 and "Permission denied" in r.text, (r.status_code, r.text[:300])
    # ... and a new version or alias of the owner's prompt.
    with pytest.raises(MlflowException) as raised:
        mlflow.genai.register_prompt(name=owned["prompt"], template="Reader's {{question}}")
    assert raised.value.get_http_status_code() == 403, raised.value
    with pytest.raises(MlflowException) as raised:
        mlflow.genai.set_prompt_alias(owned["prompt"], alias="reader", version=1)
    assert raised.value.get_http_status_code() == 403, raised.value

    # Nothing was written.
    as_user(people["owner"])
    assert {t.info.trace_id for t in traces_in(exp_id)} == before
    assert mlflow.genai.load_prompt(owned["prompt"], version=3, allow_missing=True, cache_ttl_seconds=0) is None
    with pytest.raises(MlflowException) as raised:
        mlflow.genai.load_prompt(f"prompts:/{owned['prompt']}@reader", cache_ttl_seconds=0)
    assert 400 <= raised.value.get_http_status_code() < 500, raised.value
