"""Secrets stay out of what the project writes and prints: secret-named values become ``***``.

A key is secret when its name holds token, password, secret or api_key (any case), except the
names that hold a tokenizer's special token (``eos_token``) or a count of tokens
(``max_new_tokens``), which are settings a run must record.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "***"
_SECRET = re.compile(r"token|password|passwd|secret|api_?key", re.I)
_NOT_SECRET = re.compile(r"(?:^|_)(?:pad|eos|bos|unk|sep|cls|mask)_token(?:_id)?$|tokens", re.I)


def is_secret_key(name: str) -> bool:
    """True for a key whose value is a credential (hub_token, api_key, WANDB_PASSWORD...)."""
    return bool(_SECRET.search(name)) and not _NOT_SECRET.search(name)


def redact(value: Any) -> Any:
    """A copy of a mapping/list tree with every secret-named key's value replaced by ``***``."""
    if isinstance(value, dict):
        return {key: REDACTED if is_secret_key(str(key)) and item not in (None, "")
                else redact(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(item) for item in value]
    return value


def redact_assignment(text: str) -> str:
    """``sft.hub_token=hf_x`` -> ``sft.hub_token=***`` (any other ``key=value`` unchanged)."""
    key, sep, value = text.partition("=")
    if sep and value and is_secret_key(key.strip().split(".")[-1].lstrip("-")):
        return f"{key}={REDACTED}"
    return text


def redact_argv(argv: list[str]) -> list[str]:
    """A command line with the values of ``--set KEY=secret`` and ``--api-key secret`` hidden."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        if arg.startswith("--") and "=" not in arg and is_secret_key(arg[2:].replace("-", "_")):
            hide_next = True
        out.append(redact_assignment(arg))
    return out
