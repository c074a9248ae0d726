"""The decoding options vLLM's engine honours: each one :meth:`models.engines.vllm.inputs.PromptBuilder.sampling_params`
maps to vLLM's name for it. tests/test_engine_options.py checks this list against what that method reads, so an option
added to :class:`~models.requests.DecodingOptions` is refused by name on vLLM until it is mapped. No vLLM import: the
tests read it without vLLM's environment."""

HONOURED_OPTIONS = frozenset({
    "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty", "logit_bias",
    "min_tokens", "ignore_eos", "stop", "logprobs", "top_logprobs", "response_format",
})
