"""What saves, loads and holds whole rerankers: the adapter folder, the adapter cache
and the model card."""
