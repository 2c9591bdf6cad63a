"""Model folders: local, shipped or on the Hugging Face Hub; their cards and their upload."""
