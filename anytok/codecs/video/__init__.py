"""Video tokenizer families (one file each)."""
