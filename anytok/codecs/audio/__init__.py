"""Audio tokenizer families (one file each)."""
