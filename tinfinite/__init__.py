"""tinfinite: a small Llama inference engine with LM-Infinite attention.

    from tinfinite import Engine, ensure_default_model
    llm = Engine.load(ensure_default_model())

The names load on first use, so `import tinfinite` (and the command line's --help) stays
quick: torch is imported only when an Engine is.
"""
__all__ = ["Engine", "UserError", "ensure_default_model"]

_WHERE = {"Engine": "tinfinite.engine", "UserError": "tinfinite.errors",
          "ensure_default_model": "tinfinite.fetch"}


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'tinfinite' has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(_WHERE[name]), name)
