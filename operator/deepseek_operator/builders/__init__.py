"""Pure builders: typed spec + owner metadata -> desired child manifests (plain dicts). No I/O, no kopf."""
