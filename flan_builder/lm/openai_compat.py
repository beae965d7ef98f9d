"""A model behind an OpenAI-compatible server (vLLM, llama.cpp, TGI, ``transformers serve``, OpenAI).

Generation only: chat requests go to ``chat.completions`` as one user message, plain ones to
the legacy ``completions`` endpoint. Requests run ``concurrency`` at a time and come back in
request order. Retries with backoff (connection errors, 408, 409, 429, 5xx) are the
``openai`` client's own (``max_retries``); what still fails becomes one FlanError naming the
cause. A per-run budget (requests, tokens) stops a data-writing teacher cleanly.

The API key is read from an environment variable when the client is made and is never put
in ``info``, a message or a file. ``openai`` is imported only when a client is made, so
this module (and the specs in it) imports without it.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from flan_builder.errors import FlanError
from flan_builder.lm.base import LM, GenerationRequest, LoglikelihoodRequest, cut_at_stop

PLACEHOLDER_KEY = "EMPTY"  # what local servers (vLLM, llama.cpp, transformers serve) accept
MAX_STOP_STRINGS = 4  # the OpenAI API refuses more; the rest are still cut locally


def is_endpoint(name: Any) -> bool:
    """True when a model name is an http(s) URL, i.e. a server rather than weights."""
    return isinstance(name, str) and name.lower().startswith(("http://", "https://"))


@dataclass(frozen=True)
class EndpointSpec:
    """An OpenAI-compatible server, the model it serves (None: the first it lists) and a budget."""

    base_url: str
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 4
    max_retries: int = 5
    timeout: float = 120.0  # seconds per attempt
    max_requests: int | None = None  # per run (this loaded model), None: no limit
    max_tokens_total: int | None = None  # prompt + completion tokens per run, None: no limit

    @classmethod
    def from_url(cls, text: str, **settings: Any) -> EndpointSpec:
        """``http://host:8000/v1`` (first listed model) or ``http://host:8000/v1#MODEL``."""
        url, _, model = text.partition("#")
        return cls(base_url=url.rstrip("/"), model=model or None, **settings)

    @property
    def name(self) -> str:
        return f"{self.base_url}#{self.model}" if self.model else self.base_url

    def check(self) -> None:
        """Settings that cannot work are one-line errors before any request."""
        if not is_endpoint(self.base_url) or len(self.base_url.split("://", 1)[1]) == 0:
            raise FlanError(f"an endpoint is an http:// or https:// URL such as http://127.0.0.1:8000/v1, "
                            f"got {self.base_url!r}")
        for field in ("concurrency", "max_requests", "max_tokens_total"):
            value = getattr(self, field)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise FlanError(f"endpoint {field} must be a whole number >= 1, got {value!r}")
        retries = self.max_retries
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise FlanError(f"endpoint max_retries must be a whole number >= 0, got {self.max_retries!r}")
        if isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float)) \
                or not self.timeout > 0:
            raise FlanError(f"endpoint timeout must be a number of seconds > 0, got {self.timeout!r}")
        if not self.api_key_env or not self.api_key_env.replace("_", "").isalnum():
            raise FlanError(f"api_key_env names an environment variable (e.g. OPENAI_API_KEY), got "
                            f"{self.api_key_env!r}")


class BudgetExceeded(FlanError):
    """A run's request or token budget is spent; ``answers`` holds what did come back (None: not sent)."""

    def __init__(self, message: str, budget: str, limit: int, used: int,
                 answers: list[str | None] | None = None) -> None:
        super().__init__(message)
        self.budget, self.limit, self.used = budget, limit, used
        self.answers = answers or []


def _one_line(text: Any, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _server_says(exc: Any) -> str:
    """The server's own words in an error body (OpenAI, FastAPI and plain-text shapes)."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            body = inner.get("message") or inner.get("detail") or inner
        else:
            body = inner
    return _one_line(body or getattr(exc, "message", "") or exc)


class EndpointLM(LM):
    """A connected OpenAI-compatible server and the model it serves."""

    def __init__(self, spec: EndpointSpec, client: Any, model: str) -> None:
        super().__init__(spec.name, {"kind": "endpoint", "base_url": spec.base_url, "model": model,
                                     "api_key_env": spec.api_key_env, "concurrency": spec.concurrency})
        self.spec, self.client, self.model = spec, client, model
        self._lock = threading.Lock()

    @classmethod
    def connect(cls, spec: EndpointSpec) -> EndpointLM:
        """A client for the spec; asks the server for its models (fails fast if it is not there)."""
        spec.check()
        try:
            import openai
        except ImportError:
            raise FlanError("an endpoint needs the openai client: pip install openai (it comes with the "
                            "[eval] extra)") from None
        key = os.environ.get(spec.api_key_env) or PLACEHOLDER_KEY
        client = openai.OpenAI(base_url=spec.base_url, api_key=key, max_retries=spec.max_retries,
                               timeout=spec.timeout)
        model = spec.model
        try:
            # one retry, not max_retries: a server that is not running should say so at once
            listed = [m.id for m in client.with_options(max_retries=min(1, spec.max_retries)).models.list()]
        except openai.NotFoundError:
            if model is None:
                client.close()
                raise FlanError(f"{spec.base_url}/models answered 404: does the URL end in /v1 (e.g. "
                                "http://127.0.0.1:8000/v1)? A server without a model list needs the model "
                                f"named: {spec.base_url}#MODEL") from None
            listed = []  # a server without the list still serves a named model
        except openai.OpenAIError as exc:
            client.close()
            raise _explain(exc, spec, model) from None
        if model is None:
            if not listed:
                client.close()
                raise FlanError(f"{spec.base_url} lists no models; start it with one, or name one as "
                                f"{spec.base_url}#MODEL")
            model = listed[0]
        return cls(spec, client, model)

    # -- budget -------------------------------------------------------------------------------

    def _tokens_used(self) -> int:
        return self.usage["prompt_tokens"] + self.usage["completion_tokens"]

    def _check_request_budget(self, count: int) -> None:
        limit = self.spec.max_requests
        if limit is not None and self.usage["requests"] + count > limit:
            used = self.usage["requests"]
            raise BudgetExceeded(f"request budget: this call needs {count} request(s) but {used} of "
                                 f"max_requests={limit} are already used; raise max_requests or stop here",
                                 "max_requests", limit, used, [None] * count)

    def _token_budget_spent(self) -> bool:
        limit = self.spec.max_tokens_total
        return limit is not None and self._tokens_used() >= limit

    def _count(self, usage: Any) -> None:
        with self._lock:
            self.usage["requests"] += 1
            if usage is not None:  # a server may leave usage out; then only requests are counted
                self.usage["prompt_tokens"] += int(getattr(usage, "prompt_tokens", 0) or 0)
                self.usage["completion_tokens"] += int(getattr(usage, "completion_tokens", 0) or 0)

    # -- requests -----------------------------------------------------------------------------

    def loglikelihood(self, requests: list[LoglikelihoodRequest]) -> list[float]:
        raise FlanError(f"{self.name} is an OpenAI-compatible endpoint: chat endpoints do not return "
                        "prompt log-probabilities, so it cannot rank options; score with a local model "
                        "(e.g. --model smollm2-135m) and use the endpoint for generation")

    def _complete(self, request: GenerationRequest) -> str:
        import openai

        settings: dict[str, Any] = {"model": self.model, "max_tokens": request.max_new_tokens,
                                    "temperature": request.temperature, "top_p": request.top_p}
        stops = [s for s in request.stop if s][:MAX_STOP_STRINGS]
        if stops:
            settings["stop"] = stops
        try:
            if request.chat:
                response = self.client.chat.completions.create(
                    messages=[{"role": "user", "content": request.prompt}], **settings)
                text = response.choices[0].message.content if response.choices else None
            else:
                response = self.client.completions.create(prompt=request.prompt, **settings)
                text = response.choices[0].text if response.choices else None
        except openai.OpenAIError as exc:
            raise _explain(exc, self.spec, self.model) from None
        self._count(getattr(response, "usage", None))
        if text is None and not response.choices:
            raise FlanError(f"{self.spec.base_url} answered without a choice for model {self.model!r}")
        return cut_at_stop(text or "", request.stop).strip()

    def generate(self, requests: list[GenerationRequest]) -> list[str]:
        """Answers in request order, ``concurrency`` requests in flight at a time."""
        self._check_request_budget(len(requests))
        answers: list[str | None] = [None] * len(requests)
        halt = threading.Event()  # set on the first failure or when the token budget is spent

        def run(i: int) -> None:
            if halt.is_set():
                return
            if self._token_budget_spent():
                halt.set()
                return
            try:
                answers[i] = self._complete(requests[i])
            except BaseException:
                halt.set()
                raise

        pool = ThreadPoolExecutor(self.spec.concurrency, thread_name_prefix="flan-endpoint")
        try:
            futures = [pool.submit(run, i) for i in range(len(requests))]
            wait(futures, return_when=FIRST_EXCEPTION)
        except BaseException:  # Ctrl-C: send nothing more, leave the requests in flight
            halt.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)  # the requests already in flight finish (and are counted)
        for future in futures:
            if future.exception() is not None:
                raise future.exception()  # the first failing request in request order
        if any(a is None for a in answers):
            limit, used = self.spec.max_tokens_total or 0, self._tokens_used()
            unsent = sum(a is None for a in answers)
            raise BudgetExceeded(f"token budget spent: {used:,} of max_tokens_total={limit:,} tokens used "
                                 f"({self.usage['prompt_tokens']:,} prompt + "
                                 f"{self.usage['completion_tokens']:,} completion, "
                                 f"{self.usage['requests']} requests); {unsent} of {len(requests)} "
                                 "request(s) in this call were not sent", "max_tokens_total", limit, used,
                                 answers)
        return [a for a in answers if a is not None]

    def close(self) -> None:
        self.client.close()


def _explain(exc: Any, spec: EndpointSpec, model: str | None) -> FlanError:
    """One line naming why a request failed (after the client's own retries)."""
    import openai

    url, what = spec.base_url, f"model {model!r}" if model else "the server"
    tries = f"after {spec.max_retries} retr{'y' if spec.max_retries == 1 else 'ies'}"
    if isinstance(exc, openai.APITimeoutError):
        return FlanError(f"{url} did not answer within {spec.timeout:g} s ({tries}); raise the timeout, "
                         "lower the concurrency or max_new_tokens, or check the server's load")
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc.__context__ or exc
        return FlanError(f"could not reach {url}: {_one_line(cause)}; is the server running?")
    if isinstance(exc, openai.AuthenticationError):
        where = "" if os.environ.get(spec.api_key_env) else f" (${spec.api_key_env} is not set)"
        return FlanError(f"{url} rejected the API key in ${spec.api_key_env}{where} (401); set "
                         f"${spec.api_key_env} to a valid key")
    if isinstance(exc, openai.PermissionDeniedError):
        return FlanError(f"{url} refused access to {what} with the API key in ${spec.api_key_env} (403): "
                         f"{_redact(_server_says(exc), spec)}")
    if isinstance(exc, openai.NotFoundError):
        return FlanError(f"{url} does not serve {what} (404: {_redact(_server_says(exc), spec)}); check "
                         "the model name (omit it to use the first one listed) and that the URL ends in /v1")
    if isinstance(exc, openai.RateLimitError):
        return FlanError(f"{url} is rate-limiting this key (429, {tries}): "
                         f"{_redact(_server_says(exc), spec)}; lower the concurrency or wait")
    if isinstance(exc, openai.APIStatusError):
        return FlanError(f"{url} refused the request for {what} ({exc.status_code}: "
                         f"{_redact(_server_says(exc), spec)})")
    return FlanError(f"{url}: {_redact(_one_line(exc), spec)}")


def _redact(text: str, spec: EndpointSpec) -> str:
    """A server may echo the key in its message; it never reaches ours."""
    key = os.environ.get(spec.api_key_env)
    return text.replace(key, "***") if key and len(key) >= 4 else text
