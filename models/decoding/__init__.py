"""Turning logits into an answer: sampling (:mod:`.token_sampler`), stop strings (:mod:`.stop_strings`), streaming
text (:mod:`.detokenizer`, :mod:`.answer_builder`), and structured output (:mod:`.grammar`, compiled in a process of
its own by :mod:`.grammar_server`)."""
