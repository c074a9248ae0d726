"""docs/api.md's structured-output example: a video detective's list of events, ``{"events": [{"t", "what"}]}``."""

EVENTS_SCHEMA = {
    "type": "object",
    "properties": {
        "events": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"t": {"type": "number"}, "what": {"type": "string"}},
                "required": ["t", "what"],
            },
        }
    },
    "required": ["events"],
}
