"""The research pipeline example: refine_question -> literature_scout -> synthesis."""
