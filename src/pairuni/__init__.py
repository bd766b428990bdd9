"""pairuni: RL fine-tuning of unified vision-language models with understanding-generation pairs."""

__version__ = "0.1.0"
