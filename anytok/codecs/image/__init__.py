"""Image tokenizer families (one file each)."""
