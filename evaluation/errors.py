"""The one error type users of `evaluation` can cause; the CLI prints it as a single line (exit 2)."""


class EvaluationError(Exception):
    """Bad evaluation input: unknown task, missing task folder, empty suite, model without a tokenizer,
    a model that cannot be loaded offline. The message says what is wrong and what to do."""


class EvaluationCancelled(Exception):
    """Scoring stopped because the caller's `should_cancel` said so (between lm-eval batches). Not an
    EvaluationError: a job that sees it was cancelled, it did not fail."""
