"""LoRA Studio's shared core: everything the two Cog predictors and the service use."""

__version__ = "0.1.0"
