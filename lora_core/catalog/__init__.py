"""What the project knows about base models as plain data (model families, the named bases): no torch, no files,
so the service reads it as the predictors do."""
