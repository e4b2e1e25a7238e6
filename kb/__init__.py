"""Lore KB: the store, retrieval, answers, NPCs, fine-tuning, evaluation, CLI and server."""
