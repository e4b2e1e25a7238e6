"""Documents in, clean attributed chunks out. Never imports the store or the LLM."""
