"""The HTTP service (``genoflow serve``): artifacts to genome browsers and tools.

Byte ranges over ``/data``, ``/index`` and ``/files``; GA4GH htsget; jobs that build a missing
artifact through a Dagster run on the instance the UI reads. Sits between the CLI and the
instance layer: it may import instance, defs, build and below. No request part ever becomes a
filesystem path: every file served is found through the registry and the cache.
"""
