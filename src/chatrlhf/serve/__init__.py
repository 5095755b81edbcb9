"""Talking to a trained model: terminal chat and the OpenAI-compatible server with its web page."""
