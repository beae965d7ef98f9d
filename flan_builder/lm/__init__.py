"""Language models behind one interface (``LM.loglikelihood`` / ``LM.generate``).

``base`` holds the interface and request types (no torch); ``hf`` a transformers model with
an optional PEFT adapter; ``proxy`` a proxy-tuned triple; ``openai_compat`` an
OpenAI-compatible server (generation only); ``scoring`` the rank-scoring internals
(shared-prefix cache, full-sequence reference); ``load`` turns a model spec into a loaded
backend.
"""
