"""Rewards: one signature `fn(prompts, completions, **columns) -> list[float | None]`, a registry
by name (`base`), rule-based understanding rewards (`understanding`), CLIP score and HPS v2.1
(`generation`), an HTTP reward server and client (`server`). See docs/rewards.md.

Kept free of imports so that loading the config (which validates reward names) stays light.
"""
