"""Build-time tools, never imported at run time: ``cog_schema`` writes the OpenAPI schema Cog's Go build would."""
