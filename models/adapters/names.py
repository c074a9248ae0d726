"""The adapter names a config may give, without importing transformers (the ingress reads the config)."""

from typing import Literal

AdapterName = Literal["auto", "transformers", "minicpm-v-2.6"]
TRANSFORMERS = "transformers"
MINICPM_V_2_6 = "minicpm-v-2.6"
