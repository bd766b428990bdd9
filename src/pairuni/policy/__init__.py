"""Policy backends behind one protocol (`base.UnifiedPolicy`): `janus.JanusPolicy` for Janus and
Janus-Pro, `tiny.build_tiny_janus` for an offline test checkpoint. See docs/policy.md.

Nothing heavy is imported here, so `pairuni --help` stays instant.
"""
