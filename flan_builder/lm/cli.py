"""``flan generate``: continue prompts with a model, a proxy-tuned one, or an endpoint, in batches."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from flan_builder.cli_args import batch_size, non_negative_float, positive_int

EPILOG = """examples:
  flan generate --model smollm2-135m --prompt "Translate to French: cheese"
  flan generate --model BASE --expert runs/heldout-nli --anti smollm2-135m --alpha 0.8 --prompt "..."
  flan generate --model smollm2-135m --prompts prompts.txt --out answers.jsonl   # one prompt per line
  flan generate --model smollm2-135m --prompts prompts.jsonl --temperature 0.7 --top-p 0.9 --seed 1
  flan generate --model smollm2-135m --chat --prompt "Write a question about cheese."
  flan generate --model http://127.0.0.1:8000/v1 --chat --prompt "..."   # an OpenAI-compatible server
  flan generate --model "https://api.openai.com/v1#gpt-4o-mini" --chat --prompt "..."  # $OPENAI_API_KEY
A .jsonl prompts file holds {"prompt": ...} objects; answers are written in the same order.
"""


def _prompts(args: argparse.Namespace) -> list[str]:
    from flan_builder.errors import FlanError

    prompts = list(args.prompt or [])
    if args.prompts:
        path = Path(args.prompts)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise FlanError(f"--prompts {path} could not be read ({exc}); give a UTF-8 text or .jsonl "
                            "file") from None
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            if path.suffix == ".jsonl":
                try:
                    prompts.append(str(json.loads(line)["prompt"]))
                except (ValueError, KeyError, TypeError):
                    raise FlanError(f"{path}:{number}: expected a JSON object with a \"prompt\" "
                                    "field") from None
            else:
                prompts.append(line.replace("\\n", "\n"))
    if not prompts:
        raise FlanError("nothing to generate: give --prompt TEXT (repeatable) or --prompts FILE")
    return prompts


def cmd_generate(args: argparse.Namespace) -> int:
    from flan_builder.atomic import write_text_atomic
    from flan_builder.errors import FlanError
    from flan_builder.lm.base import GenerationRequest
    from flan_builder.lm.load import as_endpoint, load_lm, proxy_from_flags
    from flan_builder.progress import quiet_library_logs

    prompts = _prompts(args)
    spec = proxy_from_flags(args.model, args.expert, args.anti, args.alpha) or args.model
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise FlanError(f"--top-p must be in (0, 1], got {args.top_p}")
    endpoint = as_endpoint(spec)
    settings = {k: v for k, v in (("api_key_env", args.api_key_env), ("concurrency", args.concurrency))
                if v is not None}
    if endpoint is not None:  # no torch or transformers needed
        if args.seed is not None:
            raise FlanError("--seed applies to a local model; an endpoint samples with the server's own seed")
        spec = replace(endpoint, **settings)
    else:
        if settings:
            raise FlanError("--api-key-env and --concurrency go with an endpoint (--model "
                            "http://HOST:PORT/v1)")
        quiet_library_logs()
        if args.seed is not None:
            from transformers import set_seed

            set_seed(args.seed)
    lm = load_lm(spec, args.batch_size)
    requests = [GenerationRequest(p, args.max_new_tokens, tuple(args.stop or ()), args.temperature,
                                  args.top_p or 1.0, chat=args.chat) for p in prompts]
    try:
        answers = lm.generate(requests)
    finally:
        lm.close()
    if args.out:
        lines = "".join(json.dumps({"prompt": p, "answer": a, "model": lm.name}) + "\n"
                        for p, a in zip(prompts, answers, strict=True))
        write_text_atomic(Path(args.out), lines)
        print(f"{len(answers)} answers -> {args.out}", file=sys.stderr)
    else:
        for prompt, answer in zip(prompts, answers, strict=True):
            print(answer if len(prompts) == 1 else f"### {prompt}\n{answer}\n")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``flan generate`` to the top-level parser."""
    parser = sub.add_parser("generate", help="continue prompts with a model (or a proxy-tuned one)",
                            epilog=EPILOG)
    parser.add_argument("--model", required=True,
                        help="alias, .gguf, model dir, Hub id, a `flan train` run, or an OpenAI-compatible "
                             "endpoint URL (http://HOST:PORT/v1, or .../v1#MODEL; default: its first model)")
    parser.add_argument("--chat", action="store_true",
                        help="each prompt is a user's chat message: a local model wraps it in its chat "
                             "template, an endpoint gets it through chat completions")
    parser.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    parser.add_argument("--prompts", help="a file: one prompt per line (\\n for a newline), or .jsonl")
    parser.add_argument("--out", help="write {prompt, answer} lines to this .jsonl file (atomically)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=64)
    parser.add_argument("--temperature", type=non_negative_float, default=0.0, help="0: greedy (default)")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling (with --temperature)")
    parser.add_argument("--stop", action="append", help="end the answer before this string (repeatable)")
    parser.add_argument("--seed", type=int, help="sampling seed")
    parser.add_argument("--batch-size", type=batch_size, default="auto")
    endpoint = parser.add_argument_group("an OpenAI-compatible endpoint (--model http://...)")
    endpoint.add_argument("--api-key-env", metavar="NAME",
                          help="the environment variable that holds the API key (default OPENAI_API_KEY; "
                               "unset: a placeholder that local servers accept)")
    endpoint.add_argument("--concurrency", type=positive_int,
                          help="requests in flight at once (default 4)")
    proxy = parser.add_argument_group("proxy-tuning (token level: one shared tokenizer)")
    proxy.add_argument("--expert", help="the tuned small model")
    proxy.add_argument("--anti", help="the expert before tuning")
    proxy.add_argument("--alpha", type=non_negative_float, default=None, help="default 1.0")
    parser.set_defaults(func=cmd_generate)
