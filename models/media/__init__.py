"""A request's media as model inputs: data URLs and images (:mod:`.inputs`), video frames sampled under limits
(:mod:`.video`, :mod:`.decode_budget`), media by URL from allowed prefixes (:mod:`.remote`), the prompt tokens they
become (:mod:`.visual_tokens`), cheaper requests after an out-of-memory (:mod:`.request_shrink`) and thumbnails
(:mod:`.thumbnails`). Torch-free: the ingress decodes media."""
