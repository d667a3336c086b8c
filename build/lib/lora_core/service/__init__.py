"""The Replicate-style platform: HTTP API, store, file store, workers, webhooks, web pages.

Nothing here imports torch or diffusers: predictions run in Cog's own HTTP server (one
process per predictor, or remote GPU containers), reached only through Cog's protocol, so
the service starts in a second and scales apart from the GPUs.
"""
