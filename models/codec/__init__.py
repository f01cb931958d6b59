"""Mimi: stateful batched streaming decode and whole-clip encoding."""
