"""LLM2LLM (Lee et al. 2024): a teacher writes new training examples from what the student gets wrong.

``recipe`` reads and checks ``train/llm2llm-*.yaml`` (torch-free); ``task_rows`` samples the
seed and knows how a task's raw rows look (fields, label, references); ``teacher`` renders
the teacher prompts (Jinja files in ``prompts/``), asks a teacher through the LM interface
and parses its answers; ``nearest`` is the perfect-teacher control (real held-aside rows);
``dedup`` drops near-copies by ROUGE-L; ``grading`` decides which rows the student gets
right; ``loop`` runs the iterations (build -> ``training`` -> grade -> teacher -> next);
``report`` writes ``report.md`` / ``report.png``; ``cli`` is ``flan llm2llm``.
"""
