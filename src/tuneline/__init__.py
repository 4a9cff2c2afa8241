"""tuneline: fine-tune LLMs safely and repeatably."""
__version__ = "0.1.0"
