"""Q-PEFT: query-dependent parameter-efficient fine-tuning of LLM rerankers (no Ray here)."""

__version__ = "0.1.0"
