"""Model families: the adapter interface (:mod:`.base`), the adapters (:mod:`.hf_adapter` for every native
transformers family, :mod:`.minicpm_v_2_6`), which one serves a checkpoint (:mod:`.choice`, :mod:`.names`), loading
one through the chain (:mod:`.loading`), the chat template both engines render (:mod:`.chat_template`), and the
built-in tiny models (:mod:`.tiny`, :mod:`.tiny_families`, :mod:`.reference_configs`)."""
