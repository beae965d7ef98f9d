"""An OpenAI-compatible endpoint behind the LM interface.

Against a real server: ``transformers serve`` with a tiny random Llama (SmolLM2 tokenizer and
chat template) on a free port. Without one: the spec, the budget and the order of answers
through a stand-in client, and the error messages through a small stdlib HTTP server that
answers 401 / 403 / slowly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from flan_builder.errors import FlanError
from flan_builder.lm.base import GenerationRequest, LoglikelihoodRequest
from flan_builder.lm.load import as_endpoint, check_spec, load_lm, proxy_spec, spec_name
from flan_builder.lm.openai_compat import BudgetExceeded, EndpointLM, EndpointSpec, is_endpoint
from tests.helpers import REPO, assert_one_line_error, free_port

pytest.importorskip("openai")

PROMPTS = ["Translate to French: the cat", "Q: What is two plus two?\nA:", "Write a story about a dog",
           "List three colours:", "Hello", "The capital of France is"]


def _requests(chat: bool, max_new_tokens: int = 6, stop: tuple[str, ...] = ()) -> list[GenerationRequest]:
    return [GenerationRequest(p, max_new_tokens, stop, chat=chat) for p in PROMPTS]


# -- without a server: spec, load helpers, budget, order -----------------------------------------

def test_endpoint_spec_from_url_name_and_checks():
    spec = EndpointSpec.from_url("http://127.0.0.1:8000/v1/")
    assert (spec.base_url, spec.model, spec.name) == ("http://127.0.0.1:8000/v1", None, "http://127.0.0.1:8000/v1")
    named = EndpointSpec.from_url("https://api.example.com/v1#org/model-7b", concurrency=2)
    assert (named.model, named.concurrency, named.name) == ("org/model-7b", 2,
                                                            "https://api.example.com/v1#org/model-7b")
    assert is_endpoint("HTTPS://x/v1") and not is_endpoint("smollm2-135m") and not is_endpoint(None)
    spec.check()
    bad = [(dict(base_url="ftp://x/v1"), "http:// or https://"), (dict(concurrency=0), "concurrency"),
           (dict(max_requests=-1), "max_requests"), (dict(max_tokens_total=1.5), "max_tokens_total"),
           (dict(max_retries=-1), "max_retries"), (dict(timeout=0), "timeout"),
           (dict(api_key_env="MY KEY"), "api_key_env")]
    for change, message in bad:
        with pytest.raises(FlanError, match=message):
            EndpointSpec(**{"base_url": "http://x/v1", **change}).check()


def test_load_helpers_take_endpoints_and_proxy_tuning_refuses_them():
    spec = EndpointSpec("http://127.0.0.1:9/v1", "m")
    assert spec_name(spec) == "http://127.0.0.1:9/v1#m" and spec_name("http://h/v1") == "http://h/v1"
    assert as_endpoint(spec) is spec and as_endpoint("http://h/v1#m") == EndpointSpec("http://h/v1", "m")
    assert as_endpoint("smollm2-135m") is None
    check_spec("http://127.0.0.1:9/v1")  # settings only: the server is asked when the model loads
    with pytest.raises(FlanError, match="concurrency"):
        check_spec(EndpointSpec("http://h/v1", concurrency=0))
    with pytest.raises(FlanError, match="an endpoint does not return"):
        proxy_spec("http://h/v1", "a", "b")


class _StandInClient:
    """The two ``create`` calls of an openai client: echo the prompt after a shuffling delay."""

    def __init__(self, tokens_per_call=(3, 2)):
        self.calls, self.closed, self.tokens = [], False, tokens_per_call
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self._chat))
        self.completions = SimpleNamespace(create=self._completion)

    def _answer(self, text, settings):
        self.calls.append(settings)
        time.sleep(0.02 * (len(text) % 5))  # later requests often finish first
        usage = SimpleNamespace(prompt_tokens=self.tokens[0], completion_tokens=self.tokens[1])
        return f" <{text}> STOP tail ", usage

    def _chat(self, messages, **settings):
        text, usage = self._answer(messages[0]["content"], settings)
        return SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(content=text))], usage=usage)

    def _completion(self, prompt, **settings):
        text, usage = self._answer(prompt, settings)
        return SimpleNamespace(choices=[SimpleNamespace(text=text)], usage=usage)

    def close(self):
        self.closed = True


def test_answers_in_request_order_with_settings_and_usage_without_a_server():
    client = _StandInClient()
    lm = EndpointLM(EndpointSpec("http://h/v1", concurrency=4), client, "m")
    stops = ("#1", "#2", "#3", "#4", "STOP")  # only four go to the server; all five cut here
    answers = lm.generate([GenerationRequest(p, 7, stops, 0.5, 0.9, chat=i % 2 == 0)
                           for i, p in enumerate(PROMPTS)])
    assert answers == [f"<{p}>" for p in PROMPTS]  # cut at STOP, stripped, in request order
    assert {c["model"] for c in client.calls} == {"m"} and all(c["max_tokens"] == 7 for c in client.calls)
    assert all((c["temperature"], c["top_p"], c["stop"]) == (0.5, 0.9, list(stops[:4])) for c in client.calls)
    assert lm.usage == {"requests": 6, "prompt_tokens": 18, "completion_tokens": 12}
    lm.close()
    assert client.closed


def test_budgets_stop_a_run_cleanly_without_a_server():
    lm = EndpointLM(EndpointSpec("http://h/v1", concurrency=2, max_requests=5), _StandInClient(), "m")
    assert len(lm.generate(_requests(False)[:3])) == 3
    with pytest.raises(BudgetExceeded, match="max_requests=5") as caught:
        lm.generate(_requests(False)[:3])  # would need 6 of 5: nothing is sent
    assert (caught.value.budget, caught.value.limit, caught.value.used) == ("max_requests", 5, 3)
    assert lm.usage["requests"] == 3 and isinstance(caught.value, FlanError)

    client = _StandInClient(tokens_per_call=(4, 6))
    lm = EndpointLM(EndpointSpec("http://h/v1", concurrency=1, max_tokens_total=25), client, "m")
    with pytest.raises(BudgetExceeded, match="max_tokens_total=25") as caught:
        lm.generate(_requests(False, stop=("STOP",)))  # 10 tokens a request: the third passes 25
    assert caught.value.answers == [f"<{p}>" for p in PROMPTS[:3]] + [None] * 3
    assert (caught.value.used, len(client.calls)) == (30, 3) and "3 of 6 request(s)" in str(caught.value)
    with pytest.raises(BudgetExceeded):
        lm.generate(_requests(False)[:1])  # spent: nothing more goes out
    assert len(client.calls) == 3


# -- a stdlib HTTP server for the error replies transformers serve does not give -----------------

class _Replies(BaseHTTPRequestHandler):
    mode = "ok"

    def log_message(self, *args):
        pass

    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.mode == "401":
            self._send(401, {"error": {"message": f"Incorrect API key: {self.headers['Authorization']}"}})
        else:
            self._send(200, {"object": "list", "data": [{"id": "stub", "object": "model", "created": 0,
                                                         "owned_by": "me"}]})

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.mode == "slow":
            time.sleep(3)
        self._send(403, {"error": {"message": f"no access for {self.headers['Authorization']}"}})


class _QuickServer(ThreadingHTTPServer):
    daemon_threads, block_on_close = True, False  # a slow reply does not hold up the teardown

    def handle_error(self, request, client_address):
        pass  # the client that timed out hung up: a broken pipe here is expected


@pytest.fixture
def replies():
    server = _QuickServer(("127.0.0.1", 0), type("Handler", (_Replies,), {}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_key_errors_name_the_variable_and_never_show_the_key(replies, monkeypatch):
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("FLAN_TEST_KEY", secret)
    url = f"http://127.0.0.1:{replies.server_address[1]}/v1"
    spec = EndpointSpec(url, api_key_env="FLAN_TEST_KEY", max_retries=0)
    replies.RequestHandlerClass.mode = "401"
    with pytest.raises(FlanError) as caught:
        load_lm(spec)
    assert "rejected the API key in $FLAN_TEST_KEY" in str(caught.value) and secret not in str(caught.value)
    replies.RequestHandlerClass.mode = "403"
    lm = load_lm(spec)  # the model list answers; the request is refused with the key echoed back
    assert lm.model == "stub" and secret not in repr(lm.info) and secret not in repr(lm.spec)
    with pytest.raises(FlanError) as caught:
        lm.generate([GenerationRequest("hi", chat=True)])
    message = str(caught.value)
    assert "(403" in message and "$FLAN_TEST_KEY" in message and "Bearer ***" in message
    assert secret not in message
    lm.close()


def test_a_slow_server_is_a_one_line_timeout(replies):
    replies.RequestHandlerClass.mode = "slow"
    url = f"http://127.0.0.1:{replies.server_address[1]}/v1"
    lm = load_lm(EndpointSpec(url, timeout=0.5, max_retries=0))
    with pytest.raises(FlanError, match=r"did not answer within 0.5 s \(after 0 retries\)"):
        lm.generate([GenerationRequest("hi")])
    lm.close()


def test_unreachable_endpoint_and_bad_flags_are_one_line_errors(capsys):
    from flan_builder.cli import main

    url = f"http://127.0.0.1:{free_port()}/v1"
    code = main(["generate", "--model", url, "--prompt", "hi"])
    assert_one_line_error(code, capsys.readouterr().err, f"could not reach {url}: ", "is the server running?")
    code = main(["generate", "--model", url, "--prompt", "hi", "--seed", "1"])
    assert_one_line_error(code, capsys.readouterr().err, "--seed applies to a local model")
    code = main(["generate", "--model", "smollm2-135m", "--prompt", "hi", "--concurrency", "2"])
    assert_one_line_error(code, capsys.readouterr().err, "go with an endpoint")


# -- a real server: transformers serve -------------------------------------------------------------

def test_chat_and_completions_come_back_in_request_order_with_usage(served, tiny_model_dir):
    lm = load_lm(served.url)  # no model named: the first one the server lists
    assert lm.model == served.model == str(tiny_model_dir)
    assert lm.info["kind"] == "endpoint" and lm.info["base_url"] == served.url
    one_at_a_time = load_lm(EndpointSpec(served.url, concurrency=1))
    for chat in (True, False):
        answers = lm.generate(_requests(chat))
        # greedy decoding: the same prompt gives the same text, so concurrent answers in request order
        # are exactly the one-at-a-time answers, and different prompts give different text
        assert answers == one_at_a_time.generate(_requests(chat))
        assert all(isinstance(a, str) for a in answers) and len(set(answers)) > 1
    assert lm.usage["requests"] == 2 * len(PROMPTS)
    assert 0 < lm.usage["completion_tokens"] <= 2 * len(PROMPTS) * 6
    assert lm.usage["prompt_tokens"] > 2 * len(PROMPTS)
    # a stop string cuts the answer where the server (and we) stop
    full = one_at_a_time.generate([GenerationRequest(PROMPTS[0], 12)])[0]
    word = full.split()[len(full.split()) // 2]
    assert one_at_a_time.generate([GenerationRequest(PROMPTS[0], 12, (word,))]) == \
        [full[: full.find(word)].strip()]
    lm.close()
    one_at_a_time.close()


def test_budget_error_against_the_server(served):
    lm = load_lm(EndpointSpec(served.url, max_requests=8, concurrency=3))
    lm.generate(_requests(True))
    with pytest.raises(BudgetExceeded, match="6 of max_requests=8 are already used"):
        lm.generate(_requests(True))
    assert lm.usage["requests"] == 6
    lm.close()
    lm = load_lm(EndpointSpec(served.url, max_tokens_total=1, concurrency=1))
    with pytest.raises(BudgetExceeded, match="max_tokens_total=1") as caught:
        lm.generate(_requests(False))
    assert caught.value.answers[0] is not None and caught.value.answers[1:] == [None] * (len(PROMPTS) - 1)
    assert lm.usage["requests"] == 1 and caught.value.used == lm.usage["prompt_tokens"] + \
        lm.usage["completion_tokens"]
    lm.close()


def test_loglikelihood_and_unknown_model_are_one_line_errors(served):
    lm = load_lm(served.url)
    with pytest.raises(FlanError, match="do not return prompt log-probabilities") as caught:
        lm.loglikelihood([LoglikelihoodRequest("a", " b")])
    assert "\n" not in str(caught.value) and "local model" in str(caught.value)
    lm.close()
    lm = load_lm(f"{served.url}#no/such-model")
    with pytest.raises(FlanError, match="'no/such-model'") as caught:
        lm.generate([GenerationRequest("hi", chat=True)])
    assert "\n" not in str(caught.value)
    lm.close()


def test_flan_generate_with_an_endpoint_url(served, tmp_path):
    def flan(*args):
        return subprocess.run([sys.executable, "-m", "flan_builder.cli", "generate", "--model", served.url,
                               *args], cwd=REPO, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "TQDM_DISABLE": "1"})

    done = flan("--prompt", "Translate to French: cheese", "--max-new-tokens", "5")
    assert done.returncode == 0 and done.stdout.strip() and "Traceback" not in done.stderr, done.stderr
    out = tmp_path / "answers.jsonl"
    done = flan("--chat", "--concurrency", "3", "--max-new-tokens", "5", "--out", str(out),
                *[arg for p in PROMPTS[:4] for arg in ("--prompt", p)])
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == PROMPTS[:4] and {r["model"] for r in rows} == {served.url}
    lm = load_lm(served.url)
    expected = lm.generate([GenerationRequest(p, 5, chat=True) for p in PROMPTS[:4]])
    assert [r["answer"] for r in rows] == expected
    lm.close()
