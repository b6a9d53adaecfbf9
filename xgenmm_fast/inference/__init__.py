"""Inference: prompts with images -> answers."""
