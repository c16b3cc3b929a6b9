"""Pure status code: spec + observed children/reports -> status (phase, conditions, progress)."""
