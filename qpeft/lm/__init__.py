"""The language model layer: the frozen LM, its packaged files, the CPU's dtype, the
gated attention and the token layout of a (query, document) pair."""
