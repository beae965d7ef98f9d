"""Model specs (a name, a proxy-tuned triple, an endpoint) -> a loaded LM, one backend per kind.

A name that starts with http:// or https:// is an OpenAI-compatible endpoint
(``http://host:8000/v1``: the first model it lists; ``http://host:8000/v1#MODEL``: that one).
"""

from __future__ import annotations

from typing import Any

from flan_builder.errors import FlanError
from flan_builder.lm.base import LM

ModelSpec = Any  # a model name or endpoint URL (str), a ProxySpec or an EndpointSpec


def proxy_spec(base: str, expert: str | None, anti: str | None, alpha: Any = 1.0,
               level: str = "token") -> Any:
    """A checked ProxySpec from flags or a suite entry; expert and anti come together."""
    from flan_builder.lm.openai_compat import is_endpoint
    from flan_builder.lm.proxy import ProxySpec

    served = [name for name in (base, expert, anti) if is_endpoint(name)]
    if served:
        raise FlanError(f"proxy-tuning combines next-token logits, which an endpoint does not return: "
                        f"{served[0]} cannot be part of it; use local models")
    if (expert is None) != (anti is None):
        given, missing = ("--expert", "--anti") if anti is None else ("--anti", "--expert")
        raise FlanError(f"proxy-tuning needs both the tuned expert and its untuned twin: {given} was "
                        f"given without {missing}")
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise FlanError(f"proxy-tuning alpha must be a number >= 0, got {alpha!r}") from None
    spec = ProxySpec(base=str(base), expert=str(expert), anti=str(anti), alpha=value, level=level)
    spec.check()
    return spec


def proxy_from_flags(base: str, expert: str | None, anti: str | None, alpha: float | None,
                     level: str = "token") -> Any:
    """The proxy-tuned model that --expert / --anti / --alpha / --proxy-level ask for, or None."""
    if expert is None and anti is None:
        if alpha is not None or level != "token":
            flag = "--alpha" if alpha is not None else "--proxy-level"
            raise FlanError(f"{flag} goes with --expert and --anti (proxy-tuning)")
        return None
    return proxy_spec(base, expert, anti, 1.0 if alpha is None else alpha, level)


def spec_name(spec: ModelSpec) -> str:
    """The key a model's results are stored under."""
    return spec if isinstance(spec, str) else spec.name


def as_endpoint(spec: ModelSpec) -> Any:
    """The EndpointSpec a spec stands for (an EndpointSpec, or an http(s) URL), else None."""
    from flan_builder.lm.openai_compat import EndpointSpec, is_endpoint

    if isinstance(spec, EndpointSpec):
        return spec
    return EndpointSpec.from_url(spec) if is_endpoint(spec) else None


def check_spec(spec: ModelSpec) -> None:
    """Fail before any work when a model cannot be found (an endpoint: when its settings cannot work)."""
    endpoint = as_endpoint(spec)
    if endpoint is not None:
        endpoint.check()  # the server itself is asked when the model loads
        return
    from flan_builder.lm.hf import check_model

    for name in [spec] if isinstance(spec, str) else [spec.base, spec.expert, spec.anti]:
        check_model(name)


def load_lm(spec: ModelSpec, batch_size: int | str = "auto") -> LM:
    """Load the backend a spec names (a transformers model, a proxy-tuned triple, an endpoint)."""
    endpoint = as_endpoint(spec)
    if endpoint is not None:
        from flan_builder.lm.openai_compat import EndpointLM

        return EndpointLM.connect(endpoint)
    if isinstance(spec, str):
        from flan_builder.lm.hf import HFLM

        return HFLM.load(spec, batch_size)
    from flan_builder.lm.proxy import ProxyLM

    return ProxyLM.load(spec, batch_size)
