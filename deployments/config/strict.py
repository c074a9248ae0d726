"""The base of every config section: unknown keys refused, values frozen."""

from pydantic import BaseModel, ConfigDict

MIB = 1024**2


class StrictSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
